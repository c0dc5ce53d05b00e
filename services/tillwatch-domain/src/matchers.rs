//! Label matchers for silences and maintenance windows, as Alertmanager
//! writes them: `label=value`, `label!=value`, `label=~regex`,
//! `label!~regex` (regexes anchored at both ends). A missing label is the
//! empty string.

use std::collections::BTreeMap;

use regex::Regex;

/// Why a matcher's text is not one.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    #[error("matcher {0:?}: expected label=value, label!=value, label=~regex or label!~regex")]
    Syntax(String),
    #[error("matcher {text:?}: {source}")]
    Regex {
        text: String,
        #[source]
        source: regex::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Matcher {
    label: String,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Re(Regex),
    NotRe(Regex),
}

impl Matcher {
    pub fn parse(text: &str) -> Result<Matcher, MatcherError> {
        let bad = || MatcherError::Syntax(text.to_string());
        let at = text.find(['=', '!']).ok_or_else(bad)?;
        let (label, rest) = text.split_at(at);
        let label = label.trim();
        if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad());
        }
        let regex = |r: &str| {
            Regex::new(&format!("^(?:{r})$")).map_err(|source| MatcherError::Regex {
                text: text.to_string(),
                source,
            })
        };
        let unquote = |v: &str| v.trim().trim_matches('"').to_string();
        let op = if let Some(v) = rest.strip_prefix("=~") {
            Op::Re(regex(&unquote(v))?)
        } else if let Some(v) = rest.strip_prefix("!~") {
            Op::NotRe(regex(&unquote(v))?)
        } else if let Some(v) = rest.strip_prefix("!=") {
            Op::Ne(unquote(v))
        } else if let Some(v) = rest.strip_prefix('=') {
            Op::Eq(unquote(v))
        } else {
            return Err(bad());
        };
        Ok(Matcher {
            label: label.to_string(),
            op,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.label).map(String::as_str).unwrap_or("");
        match &self.op {
            Op::Eq(v) => value == v,
            Op::Ne(v) => value != v,
            Op::Re(r) => r.is_match(value),
            Op::NotRe(r) => !r.is_match(value),
        }
    }
}

/// Parses every matcher, naming the first bad one.
pub fn parse_all(texts: &[String]) -> Result<Vec<Matcher>, MatcherError> {
    texts.iter().map(|t| Matcher::parse(t)).collect()
}

pub fn all_match(matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    !matchers.is_empty() && matchers.iter().all(|m| m.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matchers_match_like_alertmanagers() {
        let l = labels(&[("merchant_id", "m-1"), ("alertname", "battery_low")]);
        let m = |t: &str| Matcher::parse(t).unwrap().matches(&l);
        assert!(m("merchant_id=m-1"));
        assert!(m("merchant_id=\"m-1\""));
        assert!(!m("merchant_id!=m-1"));
        assert!(m("alertname=~battery_.*"));
        assert!(!m("alertname=~battery"), "anchored");
        assert!(m("alertname!~offline|tamper"));
        assert!(m("store_id="), "a missing label is empty");
        assert!(!all_match(&[], &l), "no matchers match nothing");
    }

    #[test]
    fn a_bad_matcher_is_named() {
        for bad in ["merchant", "=x", "a b=c", "x=~("] {
            let err = Matcher::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
