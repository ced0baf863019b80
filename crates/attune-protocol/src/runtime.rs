//! Runtimes, parameter delivery and parameter format: the vocabulary of an action's execution.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An interpreter family that runs an action's entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Shell,
    Python,
    Node,
    Ruby,
    Go,
    Java,
    Perl,
    R,
    /// The entry point is itself an executable; never auto-detected.
    Native,
}

impl Runtime {
    /// Every runtime, in detection order.
    pub const ALL: [Runtime; 9] = [
        Runtime::Shell,
        Runtime::Python,
        Runtime::Node,
        Runtime::Ruby,
        Runtime::Go,
        Runtime::Java,
        Runtime::Perl,
        Runtime::R,
        Runtime::Native,
    ];

    /// The canonical lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Shell => "shell",
            Runtime::Python => "python",
            Runtime::Node => "node",
            Runtime::Ruby => "ruby",
            Runtime::Go => "go",
            Runtime::Java => "java",
            Runtime::Perl => "perl",
            Runtime::R => "r",
            Runtime::Native => "native",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A runtime name that is not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRuntime(pub String);

impl fmt::Display for UnknownRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown runtime {:?} (known: shell, python, node, ruby, go, java, perl, r, native)",
            self.0
        )
    }
}

impl std::error::Error for UnknownRuntime {}

impl FromStr for Runtime {
    type Err = UnknownRuntime;

    /// Accepts the canonical names and Attune's `runner_type` aliases
    /// (`local-shell-script`, `python-script`, `nodejs`, `bash`, ...), case-insensitively.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lowered = name.trim().to_ascii_lowercase();
        let runtime = match lowered.as_str() {
            "shell" | "sh" | "bash" | "local-shell-script" | "local-shell-cmd" | "shell-script" => {
                Runtime::Shell
            }
            "python" | "python3" | "python-script" => Runtime::Python,
            "node" | "nodejs" | "node.js" | "javascript" | "node-script" => Runtime::Node,
            "ruby" => Runtime::Ruby,
            "go" | "golang" => Runtime::Go,
            "java" => Runtime::Java,
            "perl" => Runtime::Perl,
            "r" | "rscript" => Runtime::R,
            "native" | "binary" | "builtin" | "standalone" => Runtime::Native,
            _ => return Err(UnknownRuntime(name.to_string())),
        };
        Ok(runtime)
    }
}

/// How parameters reach the action's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParameterDelivery {
    /// `ATTUNE_ACTION_<NAME>` environment variables (secrets are never delivered this way).
    #[default]
    Env,
    /// Written to the process's standard input in `parameter_format`.
    Stdin,
    /// Written to a file whose path is in `ATTUNE_PARAMETER_FILE`.
    File,
}

/// How parameters are encoded for stdin and file delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParameterFormat {
    /// `NAME='value'` lines.
    Dotenv,
    #[default]
    Json,
    Yaml,
}

/// Which output stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}
