//! Secret parameters encrypted at rest: the store seals every secret parameter value with
//! AES-256-GCM before it writes an execution, and only the controller opens them, to build the
//! agent's job. Views never need them (they show `********`).
//!
//! The keyring is a file (`server.secrets_key_file`, mode 0600) of lines `<id>:<64 hex
//! digits>`; the first line is the key new values are sealed with, the others still open
//! values sealed earlier — to rotate, put a new key first, keep the old ones until no live
//! execution needs them. A sealed value is the text `attune-sealed:v1:<id>:<hex nonce>:<hex
//! ciphertext>` in place of the value (the ciphertext holds the value's JSON), so a reader
//! without the key sees nothing of it. A value that is not sealed (written before sealing
//! existed) is used as it is.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The prefix of a sealed value.
pub const SEALED_PREFIX: &str = "attune-sealed:v1:";

/// Why the keyring or a sealed value cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("secrets key file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("secret parameter {name:?} was sealed with key {key_id:?}, which the keyring (server.secrets_key_file) does not hold")]
    UnknownKey { name: String, key_id: String },
    #[error("secret parameter {name:?} cannot be opened: {reason}")]
    Damaged { name: String, reason: String },
}

/// The keys secret parameters are sealed and opened with.
pub struct Keyring {
    current: (String, [u8; 32]),
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(
            formatter,
            "Keyring(current {}, keys {ids:?})",
            self.current.0
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

impl Keyring {
    /// Reads the keyring at `path`; when the file does not exist, writes a new one with one
    /// random key (mode 0600) first.
    pub fn load_or_create(path: &Path) -> Result<Keyring, KeyringError> {
        let file_error = |reason: String| KeyringError::File {
            path: path.to_path_buf(),
            reason,
        };
        if !path.exists() {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|error| file_error(error.to_string()))?;
            if let Some(parent) = path
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).map_err(|error| file_error(error.to_string()))?;
            }
            // create_new: of two servers starting at once, one writes and the other reads.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(mut file) => {
                    writeln!(file, "k1:{}", hex(&key))
                        .map_err(|error| file_error(error.to_string()))?;
                    file.sync_all()
                        .map_err(|error| file_error(error.to_string()))?;
                    tracing::info!(path = %path.display(), "wrote a new secrets key (mode 0600): keep it, and give the same file to every server");
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(file_error(error.to_string())),
            }
        }
        let text = std::fs::read_to_string(path).map_err(|error| file_error(error.to_string()))?;
        Keyring::parse(&text).map_err(file_error)
    }

    /// Parses `<id>:<64 hex digits>` lines (blank lines and `#` comments skipped).
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, key) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected <id>:<64 hex digits>", number + 1))?;
            let valid_id = !id.is_empty()
                && id.len() <= 32
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_id {
                return Err(format!(
                    "line {}: key id must be 1 to 32 letters, digits, '-' or '_'",
                    number + 1
                ));
            }
            let key: [u8; 32] = unhex(key.trim())
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| format!("line {}: key {id} is not 64 hex digits", number + 1))?;
            if keys.iter().any(|(known, _)| known == id) {
                return Err(format!("line {}: key id {id} appears twice", number + 1));
            }
            keys.push((id.to_string(), key));
        }
        let current = keys.first().cloned().ok_or("holds no key")?;
        Ok(Keyring { current, keys })
    }

    /// Seals one value (its JSON) with the current key.
    pub fn seal(&self, value: &Value) -> String {
        let (id, key) = &self.current;
        let cipher = Aes256Gcm::new_from_slice(key).expect("a 32-byte key");
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("the operating system's random source");
        let plaintext = value.to_string();
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .expect("AES-GCM encryption of a bounded value");
        format!("{SEALED_PREFIX}{id}:{}:{}", hex(&nonce), hex(&ciphertext))
    }

    /// Opens a sealed value; `name` is the parameter, for errors.
    pub fn open(&self, name: &str, sealed: &str) -> Result<Value, KeyringError> {
        let damaged = |reason: &str| KeyringError::Damaged {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let rest = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or_else(|| damaged("not a sealed value"))?;
        let mut parts = rest.splitn(3, ':');
        let (Some(id), Some(nonce), Some(ciphertext)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(damaged("malformed"));
        };
        let key = self
            .keys
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, key)| key)
            .ok_or_else(|| KeyringError::UnknownKey {
                name: name.to_string(),
                key_id: id.to_string(),
            })?;
        let nonce = unhex(nonce)
            .filter(|nonce| nonce.len() == 12)
            .ok_or_else(|| damaged("bad nonce"))?;
        let ciphertext = unhex(ciphertext).ok_or_else(|| damaged("bad ciphertext"))?;
        let cipher = Aes256Gcm::new_from_slice(key).expect("a 32-byte key");
        let plaintext = cipher
            .decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
            .map_err(|_| damaged("authentication failed (another key, or altered)"))?;
        serde_json::from_slice(&plaintext).map_err(|_| damaged("not JSON"))
    }

    /// `parameters` with every secret one sealed.
    pub fn seal_parameters(
        &self,
        parameters: &Map<String, Value>,
        secret_names: &[String],
    ) -> Map<String, Value> {
        parameters
            .iter()
            .map(|(name, value)| {
                if secret_names.contains(name) {
                    (name.clone(), Value::String(self.seal(value)))
                } else {
                    (name.clone(), value.clone())
                }
            })
            .collect()
    }

    /// `parameters` with every sealed secret opened.
    pub fn open_parameters(
        &self,
        parameters: &Map<String, Value>,
        secret_names: &[String],
    ) -> Result<Map<String, Value>, KeyringError> {
        parameters
            .iter()
            .map(|(name, value)| match value {
                Value::String(text)
                    if secret_names.contains(name) && text.starts_with(SEALED_PREFIX) =>
                {
                    Ok((name.clone(), self.open(name, text)?))
                }
                _ => Ok((name.clone(), value.clone())),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keyring(text: &str) -> Keyring {
        Keyring::parse(text).unwrap()
    }

    #[test]
    fn sealed_secrets_open_with_their_key_only_and_show_nothing() {
        let first = format!("k1:{}", "11".repeat(32));
        let ring = keyring(&first);
        let parameters = json!({"token": "s3cret", "pin": 1234, "name": "Ada"});
        let names = vec!["token".to_string(), "pin".to_string()];
        let sealed = ring.seal_parameters(parameters.as_object().unwrap(), &names);
        let text = Value::Object(sealed.clone()).to_string();
        assert!(!text.contains("s3cret") && !text.contains("1234"), "{text}");
        assert_eq!(sealed["name"], json!("Ada"));
        let opened = ring.open_parameters(&sealed, &names).unwrap();
        assert_eq!(Value::Object(opened), parameters);
        // Two seals of one value differ (a fresh nonce each time).
        assert_ne!(ring.seal(&json!("x")), ring.seal(&json!("x")));

        // Rotation: a new key first, the old one kept, opens both; without it, a clear error.
        let rotated = keyring(&format!("k2:{}\n{first}\n", "22".repeat(32)));
        assert_eq!(
            Value::Object(rotated.open_parameters(&sealed, &names).unwrap()),
            parameters
        );
        assert!(rotated
            .seal(&json!("x"))
            .starts_with("attune-sealed:v1:k2:"));
        let without = keyring(&format!("k2:{}", "22".repeat(32)));
        let error = without
            .open_parameters(&sealed, &names)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("key \"k1\"") && error.contains("server.secrets_key_file"),
            "{error}"
        );
        // Altered, or sealed under the same id with another key: refused.
        let impostor = keyring(&format!("k1:{}", "33".repeat(32)));
        let error = impostor
            .open_parameters(&sealed, &names)
            .unwrap_err()
            .to_string();
        assert!(error.contains("authentication failed"), "{error}");
        // An old, unsealed value is used as it is.
        let plain = json!({"token": "old"});
        assert_eq!(
            Value::Object(
                ring.open_parameters(plain.as_object().unwrap(), &names)
                    .unwrap()
            ),
            plain
        );
    }

    #[test]
    fn a_bad_keyring_file_is_named() {
        assert!(Keyring::parse("").unwrap_err().contains("no key"));
        assert!(Keyring::parse("k1:abcd")
            .unwrap_err()
            .contains("not 64 hex digits"));
        assert!(Keyring::parse("nocolon").unwrap_err().contains("line 1"));
        let twice = format!("a:{0}\na:{0}", "00".repeat(32));
        assert!(Keyring::parse(&twice).unwrap_err().contains("twice"));
    }
}
