//! Mosquitto password files (`mosquitto_passwd`): one `username:hash` per
//! line, the hash `$7$ITERATIONS$SALT$HASH` (PBKDF2-HMAC-SHA512, Mosquitto
//! 2's default) or `$6$SALT$HASH` (salted SHA-512, older files), salt and
//! hash in base64. One file serves both the embedded broker and a
//! production Mosquitto.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}: no accounts in it")]
    Empty(PathBuf),
}

#[derive(Clone)]
enum Hash {
    Pbkdf2Sha512 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// The accounts of a password file.
#[derive(Clone, Default)]
pub struct PasswordFile {
    accounts: HashMap<String, Hash>,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordFile")
            .field("accounts", &self.accounts.len())
            .finish()
    }
}

impl PasswordFile {
    pub fn read(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file =
            PasswordFile::parse(&text).map_err(|(line, message)| PasswordFileError::Line {
                path: path.to_path_buf(),
                line,
                message,
            })?;
        if file.accounts.is_empty() {
            return Err(PasswordFileError::Empty(path.to_path_buf()));
        }
        Ok(file)
    }

    /// Parses the text of a file; an error is `(line number, what is
    /// wrong)` and never quotes the hash.
    pub fn parse(text: &str) -> Result<PasswordFile, (usize, String)> {
        let mut accounts = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or((n, "expected username:hash".to_string()))?;
            if user.is_empty() {
                return Err((n, "the username is empty".into()));
            }
            let decode = |field: &str, what: &str| {
                STANDARD
                    .decode(field)
                    .map_err(|_| (n, format!("the {what} of {user:?} is not base64")))
            };
            let parts: Vec<&str> = hash.split('$').collect();
            let hash = match parts.as_slice() {
                ["", "7", iterations, salt, hash] => Hash::Pbkdf2Sha512 {
                    iterations: iterations
                        .parse::<u32>()
                        .ok()
                        .and_then(NonZeroU32::new)
                        .ok_or((
                            n,
                            format!("the iteration count of {user:?} is not a number"),
                        ))?,
                    salt: decode(salt, "salt")?,
                    hash: decode(hash, "hash")?,
                },
                ["", "6", salt, hash] => Hash::Sha512 {
                    salt: decode(salt, "salt")?,
                    hash: decode(hash, "hash")?,
                },
                _ => {
                    return Err((
                        n,
                        format!(
                            "the password of {user:?} is not a mosquitto_passwd hash ($7$… or $6$…); \
                             plain-text passwords are not accepted"
                        ),
                    ));
                }
            };
            if accounts.insert(user.to_string(), hash).is_some() {
                return Err((n, format!("{user:?} appears twice")));
            }
        }
        Ok(PasswordFile { accounts })
    }

    /// How many logins the file holds.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Whether `password` is `username`'s.
    pub fn verify(&self, username: &str, password: &str) -> bool {
        match self.accounts.get(username) {
            Some(Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            }) => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password.as_bytes(),
                hash,
            )
            .is_ok(),
            Some(Hash::Sha512 { salt, hash }) => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
                ctx.update(password.as_bytes());
                ctx.update(salt);
                let got = ctx.finish();
                got.as_ref().len() == hash.len()
                    && got
                        .as_ref()
                        .iter()
                        .zip(hash)
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with Mosquitto 2.0's `mosquitto_passwd -b` (and `-H sha512`).
    const FILE: &str = "\
# terminals
term-0001:$7$101$Ar6xU5E6weNYxuTn$kfEc0nR9GnEHNNWdwcOz6ySDPE2tWcsD8S5rbzQHb7+VRThakqv9e5mFiKqZcTOPlRLbynIYNocETlxnGJcgJg==
term-0002:$6$ygX5R4Uo9wvpDcEU$wYbpDZnyFi2R6N3UqtP+EMdPr9Ov9+6FmL+UYOeTd8hS8OVrnlJFhNUwjP7o29Jjfnfclnh9Narsd68VBWuavg==
";

    #[test]
    fn mosquitto_hashes_verify_and_nothing_else_does() {
        let file = PasswordFile::parse(FILE).unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.verify("term-0001", "correct horse"));
        assert!(file.verify("term-0002", "battery staple"));
        assert!(!file.verify("term-0001", "battery staple"));
        assert!(!file.verify("term-0002", "correct horse"));
        assert!(!file.verify("term-0003", "correct horse"));
        assert!(!file.verify("term-0001", ""));
    }

    #[test]
    fn a_bad_line_is_named_without_quoting_the_secret() {
        let (line, message) = PasswordFile::parse("a:$7$101$AAAA$AAAA\nb:hunter2\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(
            message.contains("\"b\"") && message.contains("plain-text"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
        let (line, message) = PasswordFile::parse("a:$7$x$AAAA$AAAA\n").unwrap_err();
        assert_eq!(line, 1);
        assert!(message.contains("iteration"), "{message}");
        let (_, message) = PasswordFile::parse("a:$6$AAAA$AAAA\na:$6$AAAA$AAAA\n").unwrap_err();
        assert!(message.contains("twice"), "{message}");
    }
}
