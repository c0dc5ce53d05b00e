//! Values that configuration spells as text (opening hours, time zones,
//! label matchers), parsed once when the configuration loads.
//!
//! A [`Written<T>`] holds the parsed value beside the text it was written
//! as: loading a configuration with a bad value fails there, with the
//! key and line the TOML reader names, so no role parses it again; writing
//! the configuration back gives the text unchanged.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use jiff::tz::TimeZone;

use crate::hours::{HoursError, TimeZoneError, WeeklyHours, time_zone};
use crate::matchers::{Matcher, MatcherError};

/// A type with one text form to parse from.
pub trait FromText: Sized {
    type Err: fmt::Display;
    fn from_text(text: &str) -> Result<Self, Self::Err>;
}

impl FromText for WeeklyHours {
    type Err = HoursError;
    fn from_text(text: &str) -> Result<Self, HoursError> {
        WeeklyHours::parse(text)
    }
}

impl FromText for TimeZone {
    type Err = TimeZoneError;
    fn from_text(text: &str) -> Result<Self, TimeZoneError> {
        time_zone(text)
    }
}

impl FromText for Matcher {
    type Err = MatcherError;
    fn from_text(text: &str) -> Result<Self, MatcherError> {
        Matcher::parse(text)
    }
}

/// An IANA time zone, checked against the zone database at load.
pub type Zone = Written<TimeZone>;

/// A value parsed from `text`, kept with it.
#[derive(Clone)]
pub struct Written<T> {
    text: String,
    value: T,
}

impl<T: FromText> Written<T> {
    pub fn parse(text: &str) -> Result<Written<T>, T::Err> {
        Ok(Written {
            value: T::from_text(text)?,
            text: text.to_string(),
        })
    }
}

impl<T> Written<T> {
    /// The text as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed value.
    pub fn value(&self) -> &T {
        &self.value
    }
}

impl<T> Deref for Written<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: FromText> FromStr for Written<T> {
    type Err = T::Err;
    fn from_str(text: &str) -> Result<Self, T::Err> {
        Written::parse(text)
    }
}

/// Two are equal when written alike.
impl<T> PartialEq for Written<T> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<T> fmt::Debug for Written<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl<T> fmt::Display for Written<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<T> serde::Serialize for Written<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de, T: FromText> serde::Deserialize<'de> for Written<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Written::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_keeps_its_text_and_a_bad_one_is_named() {
        let hours: Written<WeeklyHours> = "Mon-Fri 08:00-20:00".parse().unwrap();
        assert_eq!(hours.text(), "Mon-Fri 08:00-20:00");
        assert_eq!(
            *hours.value(),
            WeeklyHours::parse("Mon-Fri 08:00-20:00").unwrap()
        );
        let err = "Mon-Fri 8-20".parse::<Written<WeeklyHours>>().unwrap_err();
        assert!(err.to_string().contains("\"Mon-Fri 8-20\""), "{err}");
        let err = "Europe/Nowhere".parse::<Written<TimeZone>>().unwrap_err();
        assert!(err.to_string().contains("Europe/Nowhere"), "{err}");
        assert!("merchant".parse::<Written<Matcher>>().is_err());
    }
}
