//! The optional runtime hints file an image may carry to declare custom interpreters.
//!
//! `/opt/attune/.attune-runtime.yaml` (or `/.attune-runtime.yaml`) holds a list of runtimes,
//! either at the top level or under `runtimes:`:
//!
//! ```yaml
//! runtimes:
//!   - name: python
//!     interpreter: /opt/conda/bin/python
//!   - name: deno
//!     interpreter: deno run --allow-read
//!     extension: .ts
//!     version_command: deno --version
//! ```
//!
//! A hint whose name is a known runtime wins over detection for that runtime; other names are
//! reported as custom runtimes at registration.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where the agent looks for a hints file, first found wins.
pub const HINTS_FILE_PATHS: [&str; 2] =
    ["/opt/attune/.attune-runtime.yaml", "/.attune-runtime.yaml"];

/// One runtime declared by the image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RuntimeHint {
    /// A runtime name (`python`) or a custom one (`deno`).
    pub name: String,
    /// The program, optionally followed by arguments (`deno run --allow-read`).
    pub interpreter: String,
    /// File extension of entry points for this runtime (informational).
    #[serde(default)]
    pub extension: Option<String>,
    /// Command printing the version (`deno --version`).
    #[serde(default)]
    pub version_command: Option<String>,
}

impl RuntimeHint {
    /// The interpreter program and its arguments.
    pub fn interpreter_words(&self) -> Vec<String> {
        self.interpreter
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// The version command's program and arguments, if any.
    pub fn version_command_words(&self) -> Option<Vec<String>> {
        let words: Vec<String> = self
            .version_command
            .as_deref()?
            .split_whitespace()
            .map(str::to_string)
            .collect();
        (!words.is_empty()).then_some(words)
    }
}

/// The runtimes a hints file declares, with the file they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeHints {
    pub source: Option<PathBuf>,
    pub runtimes: Vec<RuntimeHint>,
}

/// A hints file that exists but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HintsError {
    #[error("read runtime hints file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid runtime hints file {path}{location}: {message}")]
    Invalid {
        path: PathBuf,
        /// `" line L column C"` when known.
        location: String,
        message: String,
    },
}

#[derive(Deserialize)]
struct HintsDocument {
    runtimes: Vec<RuntimeHint>,
}

/// Loads the first hints file found at [`HINTS_FILE_PATHS`]; none found is not an error.
pub fn load_default_hints() -> Result<RuntimeHints, HintsError> {
    for path in HINTS_FILE_PATHS {
        let path = Path::new(path);
        if path.exists() {
            return load_hints(path);
        }
    }
    Ok(RuntimeHints::default())
}

/// Loads and checks one hints file.
pub fn load_hints(path: &Path) -> Result<RuntimeHints, HintsError> {
    let text = std::fs::read_to_string(path).map_err(|source| HintsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let runtimes = parse_hints(&text).map_err(|(location, message)| HintsError::Invalid {
        path: path.to_path_buf(),
        location,
        message,
    })?;
    Ok(RuntimeHints {
        source: Some(path.to_path_buf()),
        runtimes,
    })
}

/// Parses a hints document; the error carries `" line L column C"` (or nothing) and a message.
fn parse_hints(text: &str) -> Result<Vec<RuntimeHint>, (String, String)> {
    let describe = |error: serde_norway::Error| {
        let location = error
            .location()
            .map(|location| format!(" line {} column {}", location.line(), location.column()))
            .unwrap_or_default();
        let message = error.to_string();
        // serde_norway appends " at line L column C"; the location is already in front.
        let message = match message.find(" at line ") {
            Some(index) if !location.is_empty() => message[..index].to_string(),
            _ => message,
        };
        (location, message)
    };
    let document: serde_norway::Value = serde_norway::from_str(text).map_err(describe)?;
    let runtimes: Vec<RuntimeHint> = match document {
        serde_norway::Value::Null => Vec::new(),
        serde_norway::Value::Sequence(_) => serde_norway::from_str(text).map_err(describe)?,
        serde_norway::Value::Mapping(_) => {
            serde_norway::from_str::<HintsDocument>(text)
                .map_err(describe)?
                .runtimes
        }
        _ => {
            return Err((
                String::new(),
                "expected a list of runtimes or a map with a runtimes list".to_string(),
            ))
        }
    };
    for (index, hint) in runtimes.iter().enumerate() {
        if hint.name.trim().is_empty() {
            return Err((
                String::new(),
                format!("runtime #{} has an empty name", index + 1),
            ));
        }
        if hint.interpreter.trim().is_empty() {
            return Err((
                String::new(),
                format!("runtime {} has an empty interpreter", hint.name),
            ));
        }
    }
    Ok(runtimes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_map_with_runtimes() {
        let runtimes = parse_hints(
            "runtimes:\n  - name: deno\n    interpreter: deno run\n    extension: .ts\n    version_command: deno --version\n  - name: python\n    interpreter: /opt/conda/bin/python\n",
        )
        .unwrap();
        assert_eq!(runtimes.len(), 2);
        assert_eq!(runtimes[0].name, "deno");
        assert_eq!(runtimes[0].interpreter_words(), vec!["deno", "run"]);
        assert_eq!(runtimes[0].extension.as_deref(), Some(".ts"));
        assert_eq!(
            runtimes[0].version_command_words(),
            Some(vec!["deno".to_string(), "--version".to_string()])
        );
        assert_eq!(runtimes[1].version_command_words(), None);
    }

    #[test]
    fn parses_a_top_level_list_and_an_empty_file() {
        let runtimes = parse_hints("- name: lua\n  interpreter: lua5.4\n").unwrap();
        assert_eq!(runtimes[0].interpreter, "lua5.4");
        assert!(parse_hints("").unwrap().is_empty());
    }

    #[test]
    fn bad_yaml_names_file_and_line() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(".attune-runtime.yaml");
        std::fs::write(
            &path,
            "runtimes:\n  - name: deno\n    interpreter: [unclosed\n",
        )
        .unwrap();
        let message = load_hints(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "invalid runtime hints file {} line ",
                path.display()
            )),
            "{message}"
        );
        assert!(
            !message.contains(" at line "),
            "location repeated: {message}"
        );

        std::fs::write(&path, "runtimes:\n  - name: deno\n").unwrap();
        let message = load_hints(&path).unwrap_err().to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("interpreter"), "{message}");

        std::fs::write(&path, "- name: ''\n  interpreter: x\n").unwrap();
        let message = load_hints(&path).unwrap_err().to_string();
        assert!(message.contains("empty name"), "{message}");

        std::fs::write(&path, "just a string\n").unwrap();
        let message = load_hints(&path).unwrap_err().to_string();
        assert!(message.contains("expected a list of runtimes"), "{message}");
    }
}
