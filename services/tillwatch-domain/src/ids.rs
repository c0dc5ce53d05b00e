use std::fmt;
use std::sync::Arc;

/// Longest id accepted for devices, merchants and stores.
pub const MAX_ID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {0} characters long; at most {MAX_ID_LEN} are allowed")]
    TooLong(usize),
    #[error("id contains {0:?}; only letters, digits and . _ : - are allowed")]
    BadChar(char),
    #[error("id is only dots; it names a directory, not a terminal, merchant or store")]
    Dots,
}

fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(IdError::BadChar(c));
    }
    // Ids become path segments (the lake's files, the pages' links).
    if s.chars().all(|c| c == '.') {
        return Err(IdError::Dots);
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        // Design: `Arc<str>` because one id is shared by every reading of a
        // batch and by the gateway's dedup index; clones are a refcount bump.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Checks the id's syntax (1..=64 characters of `[A-Za-z0-9._:-]`).
            pub fn new(s: &str) -> Result<Self, IdError> {
                check_id(s)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A terminal's id, unique across the fleet.
    DeviceId
);
string_id!(
    /// A merchant (the business that owns terminals).
    MerchantId
);
string_id!(
    /// A store (one site of a merchant).
    StoreId
);

/// Random per device boot; with the sequence number it orders a device's
/// readings within one boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BootId(pub u64);

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(DeviceId::new("term-000123").is_ok());
        assert!(DeviceId::new("a.b_c:d-9").is_ok());
        assert_eq!(DeviceId::new(""), Err(IdError::Empty));
        assert_eq!(DeviceId::new(&"x".repeat(65)), Err(IdError::TooLong(65)));
        assert_eq!(DeviceId::new("dev/1"), Err(IdError::BadChar('/')));
        assert_eq!(DeviceId::new("dev 1"), Err(IdError::BadChar(' ')));
        assert_eq!(DeviceId::new("."), Err(IdError::Dots));
        assert_eq!(StoreId::new(".."), Err(IdError::Dots));
        assert!(DeviceId::new("..a").is_ok());
    }
}
