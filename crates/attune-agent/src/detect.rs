//! Finding interpreters in an unknown image: binary lookup, version probes, overrides and hints.

use crate::hints::{RuntimeHint, RuntimeHints};
use crate::process::inherited_environment;
use attune_protocol::{DetectedRuntime, Runtime};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

/// How long one version probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Directories searched after `PATH`, in order (then `/opt/*/bin`).
pub const FALLBACK_DIRECTORIES: [&str; 3] = ["/usr/local/bin", "/usr/bin", "/bin"];

/// Ordered directories where interpreters are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath {
    directories: Vec<PathBuf>,
}

impl SearchPath {
    /// `PATH` entries, then `/usr/local/bin`, `/usr/bin`, `/bin`, then every `/opt/*/bin`.
    pub fn from_path_variable(path_variable: Option<&OsStr>) -> Self {
        let mut directories: Vec<PathBuf> = path_variable
            .map(|value| std::env::split_paths(value).collect())
            .unwrap_or_default();
        directories.extend(FALLBACK_DIRECTORIES.iter().map(PathBuf::from));
        if let Ok(entries) = std::fs::read_dir("/opt") {
            let mut opt_directories: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin"))
                .filter(|directory| directory.is_dir())
                .collect();
            opt_directories.sort();
            directories.extend(opt_directories);
        }
        Self::only(directories)
    }

    /// The agent's own `PATH` plus the fallbacks.
    pub fn from_environment() -> Self {
        Self::from_path_variable(std::env::var_os("PATH").as_deref())
    }

    /// Exactly these directories (relative and empty entries are dropped, duplicates removed).
    pub fn only(directories: Vec<PathBuf>) -> Self {
        let mut unique: Vec<PathBuf> = Vec::new();
        for directory in directories {
            if directory.is_absolute() && !unique.contains(&directory) {
                unique.push(directory);
            }
        }
        Self {
            directories: unique,
        }
    }

    pub fn directories(&self) -> &[PathBuf] {
        &self.directories
    }

    /// The first executable file called `name`; a name with a `/` is checked as it is.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        if name.contains('/') {
            let path = PathBuf::from(name);
            return is_executable_file(&path).then_some(path);
        }
        self.directories
            .iter()
            .map(|directory| directory.join(name))
            .find(|candidate| is_executable_file(candidate))
    }
}

/// A regular file (after symlinks) with an execute bit.
pub fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Binaries that provide a runtime, in preference order for detection.
pub fn runtime_binaries(runtime: Runtime) -> &'static [&'static str] {
    match runtime {
        Runtime::Shell => &["bash", "sh"],
        Runtime::Python => &["python3", "python"],
        Runtime::Node => &["node", "nodejs"],
        Runtime::Ruby => &["ruby"],
        Runtime::Go => &["go"],
        Runtime::Java => &["java"],
        Runtime::Perl => &["perl"],
        Runtime::R => &["Rscript", "R"],
        Runtime::Native => &[],
    }
}

/// Arguments that make a runtime's binary print its version.
pub fn version_arguments(runtime: Runtime, binary: &Path) -> &'static [&'static str] {
    let file_name = binary
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or_default();
    match runtime {
        // busybox and bash print their banner for --help; dash prints nothing useful.
        Runtime::Shell if file_name.starts_with("bash") => &["--version"],
        Runtime::Shell => &["--help"],
        Runtime::Python | Runtime::Node | Runtime::Ruby | Runtime::R => &["--version"],
        Runtime::Go => &["version"],
        Runtime::Java => &["-version"],
        Runtime::Perl => &["-v"],
        Runtime::Native => &[],
    }
}

/// The version number in a runtime's version output, in that family's real format.
pub fn parse_version(runtime: Runtime, output: &str) -> Option<String> {
    match runtime {
        Runtime::Shell => version_after(output, "GNU bash, version ")
            .or_else(|| version_after(output, "BusyBox v"))
            .or_else(|| version_after(output, "zsh ")),
        Runtime::Python => word_after(output, "Python "),
        Runtime::Node => output
            .split_whitespace()
            .find_map(|word| word.strip_prefix('v'))
            .and_then(leading_version),
        Runtime::Ruby => version_after(output, "ruby "),
        Runtime::Go => word_after(output, "go version go").and_then(|word| leading_version(&word)),
        Runtime::Java => {
            let start = output.find("version \"")? + "version \"".len();
            let rest = &output[start..];
            let version = &rest[..rest.find('"')?];
            (!version.is_empty()).then(|| version.to_string())
        }
        Runtime::Perl => version_after(output, "(v").or_else(|| {
            let major = version_after(output, "This is perl ")?;
            let minor = version_after(output, ", version ")?;
            let patch = version_after(output, ", subversion ").unwrap_or_else(|| "0".to_string());
            Some(format!("{major}.{minor}.{patch}"))
        }),
        Runtime::R => version_after(output, "R) version ")
            .or_else(|| version_after(output, "R version "))
            .or_else(|| version_after(output, "front-end version ")),
        Runtime::Native => None,
    }
    .or_else(|| parse_generic_version(output))
}

/// The first word that looks like a dotted version number (`v1.2.3`, `"17.0.9"`, `3.11`).
pub fn parse_generic_version(output: &str) -> Option<String> {
    output.split_whitespace().find_map(|word| {
        let word = word.trim_matches(|character: char| !character.is_ascii_alphanumeric());
        let word = word.strip_prefix('v').unwrap_or(word);
        let version = leading_version(word)?;
        version.contains('.').then_some(version)
    })
}

/// `1.2.3` from the start of `text` (digits and inner dots), if it starts with a digit.
fn leading_version(text: &str) -> Option<String> {
    let end = text
        .find(|character: char| !(character.is_ascii_digit() || character == '.'))
        .unwrap_or(text.len());
    let version = text[..end].trim_end_matches('.');
    (version.starts_with(|character: char| character.is_ascii_digit())).then(|| version.to_string())
}

fn version_after(output: &str, marker: &str) -> Option<String> {
    let start = output.find(marker)? + marker.len();
    leading_version(&output[start..])
}

fn word_after(output: &str, marker: &str) -> Option<String> {
    let start = output.find(marker)? + marker.len();
    let word = output[start..].split_whitespace().next()?;
    word.starts_with(|character: char| character.is_ascii_digit())
        .then(|| word.to_string())
}

/// A runtime named in `ATTUNE_WORKER_RUNTIMES` or a hints file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeName {
    Builtin(Runtime),
    Custom(String),
}

impl RuntimeName {
    pub fn as_str(&self) -> &str {
        match self {
            RuntimeName::Builtin(runtime) => runtime.as_str(),
            RuntimeName::Custom(name) => name,
        }
    }
}

/// Why detection settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    /// `setting` is `ATTUNE_WORKER_RUNTIMES` or a config file's `worker.runtimes in <path>`.
    #[error("{setting} names unknown runtime {name:?} (known: {known})")]
    UnknownRuntime {
        setting: String,
        name: String,
        known: String,
    },
}

/// Parses `ATTUNE_WORKER_RUNTIMES` (`python, Shell`): `None` when unset or blank.
pub fn parse_runtime_list(
    value: &str,
    hints: &RuntimeHints,
) -> Result<Option<Vec<RuntimeName>>, DetectError> {
    parse_runtime_names(
        value.split(','),
        hints,
        attune_protocol::queues::ENV_WORKER_RUNTIMES,
    )
}

/// Reads runtime names (case and whitespace do not matter; blanks are skipped, repeats
/// dropped) named by `setting`: `None` when there are none.
pub fn parse_runtime_names<'a>(
    words: impl IntoIterator<Item = &'a str>,
    hints: &RuntimeHints,
    setting: &str,
) -> Result<Option<Vec<RuntimeName>>, DetectError> {
    let mut names: Vec<RuntimeName> = Vec::new();
    for word in words
        .into_iter()
        .map(str::trim)
        .filter(|word| !word.is_empty())
    {
        let lowered = word.to_ascii_lowercase();
        let name = if let Ok(runtime) = Runtime::from_str(&lowered) {
            RuntimeName::Builtin(runtime)
        } else if let Some(hint) = hints
            .runtimes
            .iter()
            .find(|hint| hint.name.trim().eq_ignore_ascii_case(&lowered))
        {
            RuntimeName::Custom(hint.name.trim().to_string())
        } else {
            let mut known: Vec<String> = Runtime::ALL
                .iter()
                .map(|runtime| runtime.to_string())
                .collect();
            known.extend(custom_hints(hints).map(|hint| hint.name.trim().to_string()));
            return Err(DetectError::UnknownRuntime {
                setting: setting.to_string(),
                name: word.to_string(),
                known: known.join(", "),
            });
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok((!names.is_empty()).then_some(names))
}

/// Hints that declare runtimes other than the built-in ones.
fn custom_hints(hints: &RuntimeHints) -> impl Iterator<Item = &RuntimeHint> {
    hints
        .runtimes
        .iter()
        .filter(|hint| Runtime::from_str(&hint.name).is_err())
}

/// How to start an entry point: `program args... <entry point>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    pub program: PathBuf,
    pub arguments: Vec<String>,
}

/// The interpreter a runtime needs is not in the image; lists what was looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpreterNotFound {
    pub looked_for: Vec<String>,
}

/// A located runtime before its version is probed.
#[derive(Debug, Clone)]
struct Located {
    name: String,
    runtime: Option<Runtime>,
    program: PathBuf,
    version_command: Option<(PathBuf, Vec<String>)>,
}

/// Looks up interpreters for detection and for running jobs.
#[derive(Debug, Clone)]
pub struct Detector {
    search_path: SearchPath,
    hints: RuntimeHints,
    probe_timeout: Duration,
}

impl Detector {
    pub fn new(search_path: SearchPath, hints: RuntimeHints) -> Self {
        Self {
            search_path,
            hints,
            probe_timeout: PROBE_TIMEOUT,
        }
    }

    pub fn search_path(&self) -> &SearchPath {
        &self.search_path
    }

    pub fn hints(&self) -> &RuntimeHints {
        &self.hints
    }

    fn hint_for(&self, runtime: Runtime) -> Option<&RuntimeHint> {
        self.hints
            .runtimes
            .iter()
            .find(|hint| Runtime::from_str(&hint.name) == Ok(runtime))
    }

    /// Finds the runtimes named (all detectable ones when `None`) and, if asked, their versions
    /// (probes run concurrently, each bounded by [`PROBE_TIMEOUT`]). Named runtimes that are not
    /// found are left out with a note on stderr.
    pub async fn detect(
        &self,
        selection: Option<&[RuntimeName]>,
        probe_versions: bool,
    ) -> Vec<DetectedRuntime> {
        let names: Vec<RuntimeName> = match selection {
            Some(names) => names.to_vec(),
            None => Runtime::ALL
                .iter()
                .filter(|runtime| **runtime != Runtime::Native)
                .map(|runtime| RuntimeName::Builtin(*runtime))
                .chain(
                    custom_hints(&self.hints)
                        .map(|hint| RuntimeName::Custom(hint.name.trim().to_string())),
                )
                .collect(),
        };
        let mut located: Vec<Located> = Vec::new();
        let mut detected_native = false;
        for name in &names {
            if *name == RuntimeName::Builtin(Runtime::Native) {
                detected_native = true;
                continue;
            }
            match self.locate(name) {
                Some(found) => located.push(found),
                None if selection.is_some() => eprintln!(
                    "attune-agent: runtime {} is declared (ATTUNE_WORKER_RUNTIMES or worker.runtimes) but no interpreter was found",
                    name.as_str()
                ),
                None => {}
            }
        }
        let probes = located.iter().map(|found| async move {
            let version = match (&found.version_command, probe_versions) {
                (_, false) => None,
                (Some((program, arguments)), true) => {
                    probe_output(program, arguments, self.probe_timeout)
                        .await
                        .and_then(|output| match found.runtime {
                            Some(runtime) => parse_version(runtime, &output),
                            None => parse_generic_version(&output),
                        })
                }
                (None, true) => None,
            };
            DetectedRuntime {
                name: found.name.clone(),
                version,
                path: found.program.display().to_string(),
            }
        });
        let mut detected = futures_util::future::join_all(probes).await;
        if detected_native {
            detected.push(DetectedRuntime {
                name: Runtime::Native.to_string(),
                version: None,
                path: String::new(),
            });
        }
        detected
    }

    fn locate(&self, name: &RuntimeName) -> Option<Located> {
        let (runtime, hint) = match name {
            RuntimeName::Builtin(runtime) => (Some(*runtime), self.hint_for(*runtime)),
            RuntimeName::Custom(custom) => (
                None,
                self.hints
                    .runtimes
                    .iter()
                    .find(|hint| hint.name.trim().eq_ignore_ascii_case(custom)),
            ),
        };
        if let Some(hint) = hint {
            let words = hint.interpreter_words();
            let program = self.search_path.find(words.first()?)?;
            let version_command = match hint.version_command_words() {
                Some(words) => self
                    .search_path
                    .find(&words[0])
                    .map(|version_program| (version_program, words[1..].to_vec())),
                None => runtime.map(|runtime| {
                    let arguments = version_arguments(runtime, &program);
                    (
                        program.clone(),
                        arguments
                            .iter()
                            .map(|argument| argument.to_string())
                            .collect(),
                    )
                }),
            };
            return Some(Located {
                name: name.as_str().to_string(),
                runtime,
                program,
                version_command,
            });
        }
        let runtime = runtime?;
        let program = runtime_binaries(runtime)
            .iter()
            .find_map(|binary| self.search_path.find(binary))?;
        let arguments = version_arguments(runtime, &program)
            .iter()
            .map(|argument| argument.to_string())
            .collect();
        Some(Located {
            name: runtime.to_string(),
            runtime: Some(runtime),
            version_command: Some((program.clone(), arguments)),
            program,
        })
    }

    /// The interpreter that runs `entry_point` for `runtime` (not for `native`, whose entry point
    /// runs itself). Shell scripts run with `sh`, or `bash` when their shebang asks for it.
    pub fn interpreter_for(
        &self,
        runtime: Runtime,
        entry_point: &Path,
    ) -> Result<Interpreter, InterpreterNotFound> {
        if let Some(hint) = self.hint_for(runtime) {
            let words = hint.interpreter_words();
            return match words
                .first()
                .and_then(|program| self.search_path.find(program))
            {
                Some(program) => Ok(Interpreter {
                    program,
                    arguments: words[1..].to_vec(),
                }),
                None => Err(InterpreterNotFound {
                    looked_for: words.into_iter().take(1).collect(),
                }),
            };
        }
        let candidates: Vec<&str> = match runtime {
            Runtime::Shell if shebang_mentions(entry_point, "bash") => vec!["bash", "sh"],
            Runtime::Shell => vec!["sh", "bash"],
            Runtime::R => vec!["Rscript"],
            other => runtime_binaries(other).to_vec(),
        };
        let arguments = match runtime {
            Runtime::Go => vec!["run".to_string()],
            _ => Vec::new(),
        };
        candidates
            .iter()
            .find_map(|binary| self.search_path.find(binary))
            .map(|program| Interpreter { program, arguments })
            .ok_or_else(|| InterpreterNotFound {
                looked_for: candidates.iter().map(|binary| binary.to_string()).collect(),
            })
    }
}

/// Whether the first line of `path` is a shebang containing `word`.
fn shebang_mentions(path: &Path, word: &str) -> bool {
    use std::io::Read;
    let mut first_bytes = [0_u8; 256];
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(length) = file.read(&mut first_bytes) else {
        return false;
    };
    let head = &first_bytes[..length];
    let first_line = head.split(|byte| *byte == b'\n').next().unwrap_or_default();
    first_line.starts_with(b"#!") && String::from_utf8_lossy(first_line).contains(word)
}

/// Runs `program arguments` with a deadline and returns stdout and stderr together.
async fn probe_output(program: &Path, arguments: &[String], timeout: Duration) -> Option<String> {
    let child = tokio::process::Command::new(program)
        .args(arguments)
        .env_clear()
        .envs(inherited_environment())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .ok()?
        .ok()?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Some(text)
}

/// One line per runtime, `name version path` (`-` for an unknown version or no path).
pub fn format_detected(detected: &[DetectedRuntime]) -> String {
    detected
        .iter()
        .map(|runtime| {
            format!(
                "{} {} {}\n",
                runtime.name,
                runtime.version.as_deref().unwrap_or("-"),
                if runtime.path.is_empty() {
                    "-"
                } else {
                    &runtime.path
                }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn versions_parse_from_each_family_format() {
        let cases: [(Runtime, &str, Option<&str>); 16] = [
            (Runtime::Python, "Python 3.11.2\n", Some("3.11.2")),
            (Runtime::Python, "Python 3.13.0rc1", Some("3.13.0rc1")),
            (Runtime::Node, "v20.11.1\n", Some("20.11.1")),
            (
                Runtime::Ruby,
                "ruby 3.3.0p0 (2023-12-25 revision 5124f9ac75) [x86_64-linux]\n",
                Some("3.3.0"),
            ),
            (Runtime::Go, "go version go1.22.1 linux/amd64\n", Some("1.22.1")),
            (
                Runtime::Java,
                "openjdk version \"17.0.9\" 2023-10-17\nOpenJDK Runtime Environment (build 17.0.9+9-Debian-1deb12u1)\n",
                Some("17.0.9"),
            ),
            (Runtime::Java, "java version \"1.8.0_391\"\n", Some("1.8.0_391")),
            (
                Runtime::Perl,
                "\nThis is perl 5, version 36, subversion 0 (v5.36.0) built for x86_64-linux-gnu-thread-multi\n",
                Some("5.36.0"),
            ),
            (Runtime::Perl, "This is perl 5, version 8, subversion 8 built for x", Some("5.8.8")),
            (Runtime::R, "Rscript (R) version 4.3.2 (2023-10-31)\n", Some("4.3.2")),
            (Runtime::R, "R version 4.2.2 Patched (2022-11-10 r83330) -- \"Innocent and Trusting\"\n", Some("4.2.2")),
            (
                Runtime::Shell,
                "GNU bash, version 5.2.15(1)-release (x86_64-pc-linux-gnu)\n",
                Some("5.2.15"),
            ),
            (
                Runtime::Shell,
                "BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) multi-call binary.\n\nUsage: sh [-/+OPTIONS]",
                Some("1.35.0"),
            ),
            (Runtime::Shell, "sh: 0: Illegal option --\n", None),
            (Runtime::Python, "", None),
            (Runtime::Node, "command not found", None),
        ];
        for (runtime, output, expected) in cases {
            assert_eq!(
                parse_version(runtime, output).as_deref(),
                expected,
                "{runtime} output {output:?}"
            );
        }
        assert_eq!(
            parse_generic_version("deno 1.40.2 (release)").as_deref(),
            Some("1.40.2")
        );
        assert_eq!(
            parse_generic_version("Lua 5.4.6  Copyright").as_deref(),
            Some("5.4.6")
        );
        assert_eq!(parse_generic_version("no numbers 42 here"), None);
    }

    fn write_script(directory: &Path, name: &str, body: &str) -> PathBuf {
        let path = directory.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn fake_image() -> tempfile::TempDir {
        let directory = tempfile::tempdir().unwrap();
        let bin = directory.path();
        write_script(
            bin,
            "bash",
            "echo 'GNU bash, version 5.2.15(1)-release (x86_64-pc-linux-gnu)'",
        );
        write_script(bin, "python3", "echo 'Python 3.11.2'");
        write_script(bin, "nodejs", "echo v20.11.1");
        write_script(
            bin,
            "ruby",
            "echo 'ruby 3.3.0p0 (2023-12-25 revision 5124f9ac75) [x86_64-linux]'",
        );
        write_script(
            bin,
            "go",
            "[ \"$1\" = version ] && echo 'go version go1.22.1 linux/amd64'",
        );
        write_script(
            bin,
            "java",
            "echo 'openjdk version \"17.0.9\" 2023-10-17' >&2",
        );
        write_script(
            bin,
            "perl",
            "printf '\\nThis is perl 5, version 36, subversion 0 (v5.36.0) built for x86_64-linux\\n'",
        );
        write_script(
            bin,
            "Rscript",
            "echo 'Rscript (R) version 4.3.2 (2023-10-31)'",
        );
        // Present but not executable: must be ignored.
        std::fs::write(bin.join("python"), "not a program").unwrap();
        directory
    }

    fn fake_detector(directories: Vec<PathBuf>) -> Detector {
        Detector::new(SearchPath::only(directories), RuntimeHints::default())
    }

    #[tokio::test]
    async fn detection_finds_fake_interpreters_with_versions() {
        let image = fake_image();
        let detector = fake_detector(vec![image.path().to_path_buf()]);
        let detected = detector.detect(None, true).await;
        let summary: Vec<(String, Option<String>, String)> = detected
            .iter()
            .map(|runtime| {
                (
                    runtime.name.clone(),
                    runtime.version.clone(),
                    Path::new(&runtime.path)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            })
            .collect();
        let expected = [
            ("shell", "5.2.15", "bash"),
            ("python", "3.11.2", "python3"),
            ("node", "20.11.1", "nodejs"),
            ("ruby", "3.3.0", "ruby"),
            ("go", "1.22.1", "go"),
            ("java", "17.0.9", "java"),
            ("perl", "5.36.0", "perl"),
            ("r", "4.3.2", "Rscript"),
        ]
        .map(|(name, version, binary)| {
            (
                name.to_string(),
                Some(version.to_string()),
                binary.to_string(),
            )
        });
        assert_eq!(summary, expected.to_vec());
        for runtime in &detected {
            assert!(
                runtime
                    .path
                    .starts_with(&image.path().display().to_string()),
                "{runtime:?}"
            );
        }

        let without_versions = detector.detect(None, false).await;
        assert_eq!(without_versions.len(), 8);
        assert!(without_versions
            .iter()
            .all(|runtime| runtime.version.is_none()));
    }

    #[tokio::test]
    async fn detection_of_an_empty_image_finds_nothing_and_path_order_wins() {
        let empty = tempfile::tempdir().unwrap();
        assert!(fake_detector(vec![empty.path().to_path_buf()])
            .detect(None, true)
            .await
            .is_empty());

        let first = tempfile::tempdir().unwrap();
        let second = fake_image();
        write_script(first.path(), "python3", "echo 'Python 3.12.1'");
        let detector = fake_detector(vec![
            first.path().to_path_buf(),
            second.path().to_path_buf(),
        ]);
        let selection = [RuntimeName::Builtin(Runtime::Python)];
        let detected = detector.detect(Some(&selection), true).await;
        assert_eq!(detected.len(), 1);
        assert_eq!(detected[0].version.as_deref(), Some("3.12.1"));
        assert_eq!(
            detected[0].path,
            first.path().join("python3").display().to_string()
        );
    }

    #[tokio::test]
    async fn a_probe_that_hangs_is_cut_off() {
        let image = tempfile::tempdir().unwrap();
        write_script(image.path(), "python3", "exec sleep 30");
        let mut detector = fake_detector(vec![image.path().to_path_buf()]);
        detector.probe_timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let detected = detector.detect(None, true).await;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(detected.len(), 1);
        assert_eq!(detected[0].version, None);
    }

    #[test]
    fn runtime_list_tolerates_case_and_whitespace_and_names_unknown_ones() {
        let hints = RuntimeHints::default();
        assert_eq!(
            parse_runtime_list(" Python ,shell,,PYTHON ", &hints).unwrap(),
            Some(vec![
                RuntimeName::Builtin(Runtime::Python),
                RuntimeName::Builtin(Runtime::Shell)
            ])
        );
        assert_eq!(parse_runtime_list("  ", &hints).unwrap(), None);
        let error = parse_runtime_list("python,rubyy", &hints).unwrap_err();
        assert_eq!(
            error.to_string(),
            "ATTUNE_WORKER_RUNTIMES names unknown runtime \"rubyy\" (known: shell, python, node, ruby, go, java, perl, r, native)"
        );
        let hints = RuntimeHints {
            source: None,
            runtimes: vec![RuntimeHint {
                name: "deno".to_string(),
                interpreter: "deno run".to_string(),
                extension: Some(".ts".to_string()),
                version_command: None,
            }],
        };
        assert_eq!(
            parse_runtime_list("Deno, native", &hints).unwrap(),
            Some(vec![
                RuntimeName::Custom("deno".to_string()),
                RuntimeName::Builtin(Runtime::Native)
            ])
        );
        let error = parse_runtime_list("lua", &hints).unwrap_err();
        assert!(error.to_string().ends_with("r, native, deno)"), "{error}");
        let error = parse_runtime_names(["python", "cobol"], &hints, "worker.runtimes in /c.yaml")
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("worker.runtimes in /c.yaml names unknown runtime \"cobol\""),
            "{error}"
        );
    }

    #[tokio::test]
    async fn hints_add_custom_runtimes_and_win_over_detection() {
        let image = fake_image();
        let custom = tempfile::tempdir().unwrap();
        let conda_python = write_script(custom.path(), "python", "echo 'Python 3.9.18'");
        write_script(
            custom.path(),
            "deno",
            "echo 'deno 1.40.2 (release, x86_64-unknown-linux-gnu)'",
        );
        let hints = RuntimeHints {
            source: None,
            runtimes: vec![
                RuntimeHint {
                    name: "python".to_string(),
                    interpreter: conda_python.display().to_string(),
                    extension: None,
                    version_command: None,
                },
                RuntimeHint {
                    name: "deno".to_string(),
                    interpreter: "deno run".to_string(),
                    extension: Some(".ts".to_string()),
                    version_command: Some("deno --version".to_string()),
                },
            ],
        };
        let detector = Detector::new(
            SearchPath::only(vec![
                image.path().to_path_buf(),
                custom.path().to_path_buf(),
            ]),
            hints,
        );
        let detected = detector.detect(None, true).await;
        let python = detected
            .iter()
            .find(|runtime| runtime.name == "python")
            .unwrap();
        assert_eq!(python.path, conda_python.display().to_string());
        assert_eq!(python.version.as_deref(), Some("3.9.18"));
        let deno = detected
            .iter()
            .find(|runtime| runtime.name == "deno")
            .unwrap();
        assert_eq!(deno.version.as_deref(), Some("1.40.2"));
        assert_eq!(deno.path, custom.path().join("deno").display().to_string());

        let interpreter = detector
            .interpreter_for(Runtime::Python, Path::new("/nonexistent/x.py"))
            .unwrap();
        assert_eq!(interpreter.program, conda_python);
    }

    #[test]
    fn interpreters_for_jobs() {
        let image = fake_image();
        write_script(image.path(), "sh", "true");
        let detector = fake_detector(vec![image.path().to_path_buf()]);
        let scripts = tempfile::tempdir().unwrap();
        let bash_script = write_script(scripts.path(), "a.sh", "echo");
        std::fs::write(&bash_script, "#!/usr/bin/env bash\necho hi\n").unwrap();
        let plain_script = write_script(scripts.path(), "b.sh", "echo");

        let bash = detector
            .interpreter_for(Runtime::Shell, &bash_script)
            .unwrap();
        assert_eq!(bash.program, image.path().join("bash"));
        let sh = detector
            .interpreter_for(Runtime::Shell, &plain_script)
            .unwrap();
        assert_eq!(sh.program, image.path().join("sh"));
        let go = detector
            .interpreter_for(Runtime::Go, &plain_script)
            .unwrap();
        assert_eq!(go.arguments, vec!["run".to_string()]);

        let empty = tempfile::tempdir().unwrap();
        let missing = fake_detector(vec![empty.path().to_path_buf()])
            .interpreter_for(Runtime::Python, &plain_script)
            .unwrap_err();
        assert_eq!(
            missing.looked_for,
            vec!["python3".to_string(), "python".to_string()]
        );
    }

    #[test]
    fn search_path_puts_path_first_then_fallbacks() {
        let search_path =
            SearchPath::from_path_variable(Some(OsStr::new("/custom/bin::relative:/usr/bin")));
        let directories = search_path.directories();
        assert_eq!(directories[0], PathBuf::from("/custom/bin"));
        assert_eq!(directories[1], PathBuf::from("/usr/bin"));
        assert_eq!(directories[2], PathBuf::from("/usr/local/bin"));
        assert_eq!(directories[3], PathBuf::from("/bin"));
        assert!(!directories.contains(&PathBuf::from("relative")));
    }

    #[test]
    fn detected_runtimes_format_one_per_line() {
        let text = format_detected(&[
            DetectedRuntime {
                name: "python".to_string(),
                version: Some("3.11.2".to_string()),
                path: "/usr/bin/python3".to_string(),
            },
            DetectedRuntime {
                name: "shell".to_string(),
                version: None,
                path: "/bin/sh".to_string(),
            },
        ]);
        assert_eq!(text, "python 3.11.2 /usr/bin/python3\nshell - /bin/sh\n");
    }
}
