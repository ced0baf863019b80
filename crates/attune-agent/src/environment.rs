//! Lazy runtime environments: a pack's Python virtualenv (from `requirements.txt`) or its
//! `node_modules` (from `package.json`), built on the pack's first execution and reused after.
//!
//! Environments live in a cache directory that may outlive the container (a named volume
//! mounted by the controller), one directory per key: `<cache>/<runtime>-<sha256>/`, where the
//! hash covers the dependency files, the image and the interpreter ([`environment_key`]). A
//! `.ready` file, written last, marks a complete build. The builder holds an exclusive `flock`
//! on `<cache>/<runtime>-<sha256>.lock`, so concurrent first executions, in this agent or in
//! other containers sharing the volume, build once; the others wait and reuse the result. A
//! failed or interrupted build removes its directory, so the next execution tries again.

use crate::detect::SearchPath;
use crate::process::{clean_up_group, terminate_group};
use crate::runner::{wait_for_stop, StopReceiver, StopRequest};
use attune_protocol::Runtime;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// The file that marks a complete environment.
pub const READY_MARKER: &str = ".ready";
/// Default limit on building one environment (and on waiting for another agent's build).
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// How often a waiting execution retries the build lock.
const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Grace between SIGTERM and SIGKILL for an installer that is stopped.
const INSTALLER_KILL_GRACE: Duration = Duration::from_secs(2);
/// How long installer output may keep flowing after the installer exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Installer output kept for the report (the end of it: errors come last).
const KEPT_OUTPUT_BYTES: usize = 64 * 1024;
/// Installer output quoted in the error message.
const ERROR_TAIL_LINES: usize = 15;
const ERROR_TAIL_BYTES: usize = 2000;

/// A runtime whose packs may carry dependencies to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvironmentKind {
    /// `requirements.txt` → `python3 -m venv` + `pip install -r`.
    Python,
    /// `package.json` (+ `package-lock.json`, `npm-shrinkwrap.json`) → `npm install`.
    Node,
}

impl EnvironmentKind {
    /// The kind of environment `runtime` uses, if any.
    pub fn for_runtime(runtime: Runtime) -> Option<Self> {
        match runtime {
            Runtime::Python => Some(EnvironmentKind::Python),
            Runtime::Node => Some(EnvironmentKind::Node),
            _ => None,
        }
    }

    /// The runtime name, as used in directory names and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EnvironmentKind::Python => "python",
            EnvironmentKind::Node => "node",
        }
    }

    /// The file whose presence in the pack's root asks for an environment.
    pub fn dependency_file(self) -> &'static str {
        match self {
            EnvironmentKind::Python => "requirements.txt",
            EnvironmentKind::Node => "package.json",
        }
    }

    /// Files that are part of the environment's definition when present.
    fn optional_files(self) -> &'static [&'static str] {
        match self {
            EnvironmentKind::Python => &[],
            EnvironmentKind::Node => &["package-lock.json", "npm-shrinkwrap.json"],
        }
    }
}

/// One dependency file of a pack, as read from its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyFile {
    pub name: &'static str,
    pub contents: Vec<u8>,
}

/// Reads the dependency files of the pack in `pack_dir`; `None` when it has none for `kind`.
pub fn read_dependency_files(
    kind: EnvironmentKind,
    pack_dir: &Path,
) -> Result<Option<Vec<DependencyFile>>, String> {
    let read = |name: &'static str| -> Result<Option<DependencyFile>, String> {
        let path = pack_dir.join(name);
        match std::fs::read(&path) {
            Ok(contents) => Ok(Some(DependencyFile { name, contents })),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(format!("read {}: {error}", path.display())),
        }
    };
    let Some(main_file) = read(kind.dependency_file())? else {
        return Ok(None);
    };
    let mut files = vec![main_file];
    for name in kind.optional_files() {
        files.extend(read(name)?);
    }
    Ok(Some(files))
}

/// The directory name of an environment: `<runtime>-<hex sha256>` over a versioned,
/// length-prefixed encoding of the runtime, the image identity, the interpreter path and every
/// dependency file's name and contents. Any change to one of them gives a new environment.
pub fn environment_key(
    kind: EnvironmentKind,
    files: &[DependencyFile],
    image_identity: &str,
    interpreter: &Path,
) -> String {
    fn field(hasher: &mut Sha256, bytes: &[u8]) {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    }
    let mut hasher = Sha256::new();
    field(&mut hasher, b"attune-environment-1");
    field(&mut hasher, kind.as_str().as_bytes());
    field(&mut hasher, image_identity.as_bytes());
    field(&mut hasher, interpreter.as_os_str().as_encoded_bytes());
    for file in files {
        field(&mut hasher, file.name.as_bytes());
        field(&mut hasher, &file.contents);
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{}-{digest}", kind.as_str())
}

/// Where environments are kept and how long building one may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentCache {
    pub root: PathBuf,
    /// The image id (or name) that environments are keyed by; empty when unknown.
    pub image_identity: String,
    pub build_timeout: Duration,
}

/// What an execution needs an environment for.
#[derive(Debug, Clone)]
pub struct EnvironmentRequest<'a> {
    pub kind: EnvironmentKind,
    pub pack_ref: &'a str,
    pub pack_dir: &'a Path,
    /// The runtime's interpreter (a venv is made from it).
    pub interpreter: &'a Path,
    /// Where `npm` is looked up.
    pub search_path: &'a SearchPath,
    /// The dependency files, from [`read_dependency_files`].
    pub files: &'a [DependencyFile],
    /// Environment of the installer processes (the container's plus the job's).
    pub process_environment: &'a [(OsString, OsString)],
}

/// A complete environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyEnvironment {
    pub kind: EnvironmentKind,
    pub directory: PathBuf,
    /// True when this call built it, false when it was already there.
    pub built: bool,
}

impl ReadyEnvironment {
    /// The program that runs the entry point: the venv's python; `None` keeps the interpreter.
    pub fn program(&self) -> Option<PathBuf> {
        match self.kind {
            EnvironmentKind::Python => Some(self.directory.join("bin/python")),
            EnvironmentKind::Node => None,
        }
    }

    /// Variables for the action's process, given its `PATH` and `NODE_PATH` without the
    /// environment: python gets `VIRTUAL_ENV` and the venv's `bin` first in `PATH`; node gets
    /// `NODE_PATH=<dir>/node_modules` and `node_modules/.bin` first in `PATH`.
    pub fn variables(
        &self,
        path: Option<&OsStr>,
        node_path: Option<&OsStr>,
    ) -> Vec<(&'static str, OsString)> {
        let prepend = |first: PathBuf, rest: Option<&OsStr>| -> OsString {
            let mut value = first.into_os_string();
            if let Some(rest) = rest.filter(|rest| !rest.is_empty()) {
                value.push(":");
                value.push(rest);
            }
            value
        };
        match self.kind {
            EnvironmentKind::Python => vec![
                ("VIRTUAL_ENV", self.directory.clone().into_os_string()),
                ("PATH", prepend(self.directory.join("bin"), path)),
            ],
            EnvironmentKind::Node => vec![
                (
                    "NODE_PATH",
                    prepend(self.directory.join("node_modules"), node_path),
                ),
                (
                    "PATH",
                    prepend(self.directory.join("node_modules/.bin"), path),
                ),
            ],
        }
    }
}

/// Why an execution's environment is not available.
#[derive(Debug, thiserror::Error)]
pub enum EnvironmentError {
    /// The build failed; the partial environment was removed. `installer_output` is the end of
    /// what the installer printed (stdout and stderr together), empty when none ran.
    #[error("build {kind} environment for pack {pack_ref}: {reason}")]
    Build {
        kind: &'static str,
        pack_ref: String,
        reason: String,
        installer_output: String,
    },
    /// The execution was canceled or abandoned while its environment was being built.
    #[error("stopped while the environment was being built")]
    Stopped(StopRequest),
}

/// Why one build step did not complete.
enum StepFailure {
    Failed {
        reason: String,
        installer_output: String,
    },
    Stopped(StopRequest),
}

impl StepFailure {
    fn plain(reason: String) -> Self {
        StepFailure::Failed {
            reason,
            installer_output: String::new(),
        }
    }
}

/// An exclusive `flock` on a lock file, released when dropped (also when the process dies).
struct BuildLock {
    _file: std::fs::File,
}

enum LockAttempt {
    Acquired(BuildLock),
    Busy,
}

fn try_lock(path: &Path) -> std::io::Result<LockAttempt> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    loop {
        // SAFETY: flock only operates on the descriptor, which `file` keeps open.
        let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if result == 0 {
            return Ok(LockAttempt::Acquired(BuildLock { _file: file }));
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(LockAttempt::Busy),
            _ => return Err(error),
        }
    }
}

impl EnvironmentCache {
    /// The directory of the environment `request` needs (whether or not it exists yet).
    pub fn directory_for(&self, request: &EnvironmentRequest<'_>) -> PathBuf {
        self.root.join(environment_key(
            request.kind,
            request.files,
            &self.image_identity,
            request.interpreter,
        ))
    }

    /// Returns the environment `request` needs, building it first when it is not there yet.
    /// A stop request ends a wait or a build (the installer's process group is killed).
    pub async fn prepare(
        &self,
        request: &EnvironmentRequest<'_>,
        stop: &mut StopReceiver,
    ) -> Result<ReadyEnvironment, EnvironmentError> {
        let directory = self.directory_for(request);
        let ready = |built| ReadyEnvironment {
            kind: request.kind,
            directory: directory.clone(),
            built,
        };
        if directory.join(READY_MARKER).is_file() {
            return Ok(ready(false));
        }
        let into_error = |failure: StepFailure| match failure {
            StepFailure::Stopped(request) => EnvironmentError::Stopped(request),
            StepFailure::Failed {
                reason,
                installer_output,
            } => EnvironmentError::Build {
                kind: request.kind.as_str(),
                pack_ref: request.pack_ref.to_string(),
                reason,
                installer_output,
            },
        };
        let deadline = Instant::now() + self.build_timeout;
        let _lock = self
            .lock(&directory, deadline, stop)
            .await
            .map_err(into_error)?;
        if directory.join(READY_MARKER).is_file() {
            return Ok(ready(false));
        }
        let started = Instant::now();
        match self.build(request, &directory, deadline, stop).await {
            Ok(()) => {
                eprintln!(
                    "attune-agent: built {} environment {} for pack {} in {} ms",
                    request.kind.as_str(),
                    directory.display(),
                    request.pack_ref,
                    started.elapsed().as_millis()
                );
                Ok(ready(true))
            }
            Err(failure) => {
                remove_directory(&directory).await;
                Err(into_error(failure))
            }
        }
    }

    /// Takes the environment's build lock, waiting (until `deadline`) while another holds it.
    async fn lock(
        &self,
        directory: &Path,
        deadline: Instant,
        stop: &mut StopReceiver,
    ) -> Result<BuildLock, StepFailure> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|error| {
                StepFailure::plain(format!(
                    "create environment cache {}: {error}",
                    self.root.display()
                ))
            })?;
        let mut lock_path = directory.as_os_str().to_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        loop {
            match try_lock(&lock_path) {
                Ok(LockAttempt::Acquired(lock)) => return Ok(lock),
                Ok(LockAttempt::Busy) => {}
                Err(error) => {
                    return Err(StepFailure::plain(format!(
                        "lock {}: {error}",
                        lock_path.display()
                    )))
                }
            }
            if Instant::now() >= deadline {
                return Err(StepFailure::plain(format!(
                    "another build of this environment still holds {} after {}s",
                    lock_path.display(),
                    self.build_timeout.as_secs()
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep(LOCK_POLL_INTERVAL) => {}
                request = wait_for_stop(stop) => return Err(StepFailure::Stopped(request)),
            }
        }
    }

    /// Builds into `directory` (removing what an interrupted build left) and marks it ready.
    async fn build(
        &self,
        request: &EnvironmentRequest<'_>,
        directory: &Path,
        deadline: Instant,
        stop: &mut StopReceiver,
    ) -> Result<(), StepFailure> {
        if tokio::fs::symlink_metadata(directory).await.is_ok() {
            tokio::fs::remove_dir_all(directory)
                .await
                .map_err(|error| {
                    StepFailure::plain(format!(
                        "remove incomplete environment {}: {error}",
                        directory.display()
                    ))
                })?;
        }
        let mut environment = request.process_environment.to_vec();
        match request.kind {
            EnvironmentKind::Python => {
                set_default(
                    &mut environment,
                    "PIP_CACHE_DIR",
                    self.root.join(".pip-cache"),
                );
                let mut create = tokio::process::Command::new(request.interpreter);
                create
                    .args(["-m", "venv"])
                    .arg(directory)
                    .current_dir(request.pack_dir);
                run_installer(
                    "create virtualenv",
                    &mut create,
                    &environment,
                    deadline,
                    stop,
                )
                .await?;
                let mut install = tokio::process::Command::new(directory.join("bin/python"));
                install
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--disable-pip-version-check",
                        "--no-input",
                        "-r",
                    ])
                    .arg(
                        request
                            .pack_dir
                            .join(EnvironmentKind::Python.dependency_file()),
                    )
                    .current_dir(request.pack_dir);
                run_installer("pip install", &mut install, &environment, deadline, stop).await?;
            }
            EnvironmentKind::Node => {
                let npm = request.search_path.find("npm").ok_or_else(|| {
                    StepFailure::plain(format!(
                        "npm not found (looked in {})",
                        request
                            .search_path
                            .directories()
                            .iter()
                            .map(|directory| directory.display().to_string())
                            .collect::<Vec<_>>()
                            .join(":")
                    ))
                })?;
                write_node_project(request, directory).map_err(StepFailure::plain)?;
                set_default(
                    &mut environment,
                    "npm_config_cache",
                    self.root.join(".npm-cache"),
                );
                let mut install = tokio::process::Command::new(npm);
                install
                    .args([
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--no-update-notifier",
                        "--omit=dev",
                        "--install-links",
                    ])
                    .current_dir(directory);
                run_installer("npm install", &mut install, &environment, deadline, stop).await?;
            }
        }
        write_ready_marker(request, &self.image_identity, directory).map_err(|error| {
            StepFailure::plain(format!(
                "write {}: {error}",
                directory.join(READY_MARKER).display()
            ))
        })
    }
}

/// Sets `name` to `value` unless the environment already has it.
fn set_default(environment: &mut Vec<(OsString, OsString)>, name: &str, value: PathBuf) {
    if !environment.iter().any(|(existing, _)| existing == name) {
        environment.push((name.into(), value.into_os_string()));
    }
}

/// Copies the pack's `package.json` into the environment with relative `file:` dependencies made
/// absolute (they point into the pack), and its lock files as they are.
fn write_node_project(request: &EnvironmentRequest<'_>, directory: &Path) -> Result<(), String> {
    std::fs::create_dir_all(directory)
        .map_err(|error| format!("create {}: {error}", directory.display()))?;
    for file in request.files {
        let contents = if file.name == EnvironmentKind::Node.dependency_file() {
            absolute_file_dependencies(&file.contents, request.pack_dir)
                .map_err(|error| format!("parse {} of the pack: {error}", file.name))?
        } else {
            file.contents.clone()
        };
        let path = directory.join(file.name);
        std::fs::write(&path, contents)
            .map_err(|error| format!("write {}: {error}", path.display()))?;
    }
    Ok(())
}

/// Rewrites `file:<relative path>` dependency specs of a `package.json` against `pack_dir`.
pub fn absolute_file_dependencies(
    package_json: &[u8],
    pack_dir: &Path,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut package: Value = serde_json::from_slice(package_json)?;
    for section in [
        "dependencies",
        "optionalDependencies",
        "devDependencies",
        "peerDependencies",
    ] {
        let Some(dependencies) = package.get_mut(section).and_then(Value::as_object_mut) else {
            continue;
        };
        for spec in dependencies.values_mut() {
            let Some(path) = spec.as_str().and_then(|text| text.strip_prefix("file:")) else {
                continue;
            };
            if Path::new(path).is_absolute() {
                continue;
            }
            *spec = Value::String(format!("file:{}", pack_dir.join(path).display()));
        }
    }
    let mut bytes = serde_json::to_vec_pretty(&package)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes `.ready` (what the environment was built from) through a temporary name, so its
/// presence always means a complete build.
fn write_ready_marker(
    request: &EnvironmentRequest<'_>,
    image_identity: &str,
    directory: &Path,
) -> std::io::Result<()> {
    let description = serde_json::json!({
        "runtime": request.kind.as_str(),
        "pack": request.pack_ref,
        "image": image_identity,
        "interpreter": request.interpreter.display().to_string(),
        "files": request.files.iter().map(|file| file.name).collect::<Vec<_>>(),
    });
    let temporary = directory.join(format!("{READY_MARKER}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(description.to_string().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&temporary, directory.join(READY_MARKER))
}

async fn remove_directory(directory: &Path) {
    if let Err(error) = tokio::fs::remove_dir_all(directory).await {
        if error.kind() != std::io::ErrorKind::NotFound {
            eprintln!(
                "attune-agent: remove failed environment {}: {error}",
                directory.display()
            );
        }
    }
}

/// The end of a stream of output: at most [`KEPT_OUTPUT_BYTES`], counting what was dropped.
#[derive(Debug, Default)]
struct OutputTail {
    bytes: Vec<u8>,
    dropped: u64,
}

impl OutputTail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > 2 * KEPT_OUTPUT_BYTES {
            let excess = self.bytes.len() - KEPT_OUTPUT_BYTES;
            self.bytes.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    fn text(&self) -> String {
        let excess = self.bytes.len().saturating_sub(KEPT_OUTPUT_BYTES);
        let dropped = self.dropped + excess as u64;
        let text = String::from_utf8_lossy(&self.bytes[excess..]);
        if dropped == 0 {
            text.into_owned()
        } else {
            format!("[attune: first {dropped} bytes of installer output dropped]\n{text}")
        }
    }
}

/// The last lines of `output`, for an error message.
pub fn output_tail(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect();
    let mut tail = lines[lines.len().saturating_sub(ERROR_TAIL_LINES)..].join("\n");
    if tail.len() > ERROR_TAIL_BYTES {
        let mut start = tail.len() - ERROR_TAIL_BYTES;
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        tail = format!("...{}", &tail[start..]);
    }
    tail
}

async fn read_into<R: AsyncRead + Unpin>(mut reader: R, tail: Arc<Mutex<OutputTail>>) {
    let mut buffer = vec![0_u8; 8 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(length) => {
                if let Ok(mut tail) = tail.lock() {
                    tail.push(&buffer[..length]);
                }
            }
        }
    }
}

/// Runs one installer step in its own process group with `environment`, keeping the end of its
/// output; fails on a non-zero exit, on `deadline` and on a stop request.
async fn run_installer(
    step: &str,
    command: &mut tokio::process::Command,
    environment: &[(OsString, OsString)],
    deadline: Instant,
    stop: &mut StopReceiver,
) -> Result<(), StepFailure> {
    command
        .env_clear()
        .envs(environment.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let program = command.as_std().get_program().to_os_string();
    let mut child = command.spawn().map_err(|error| {
        StepFailure::plain(format!("{step}: start {}: {error}", program.display()))
    })?;
    let process_group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .unwrap_or(0);
    let tail = Arc::new(Mutex::new(OutputTail::default()));
    let mut readers = tokio::task::JoinSet::new();
    if let Some(stdout) = child.stdout.take() {
        readers.spawn(read_into(stdout, Arc::clone(&tail)));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.spawn(read_into(stderr, Arc::clone(&tail)));
    }

    enum Ending {
        Exited(std::io::Result<std::process::ExitStatus>),
        TimedOut,
        Stopped(StopRequest),
    }
    let ending = tokio::select! {
        status = child.wait() => Ending::Exited(status),
        _ = tokio::time::sleep_until(deadline) => Ending::TimedOut,
        request = wait_for_stop(stop) => Ending::Stopped(request),
    };
    match ending {
        Ending::Exited(_) => clean_up_group(process_group, INSTALLER_KILL_GRACE).await,
        Ending::TimedOut | Ending::Stopped(_) => {
            let _ = terminate_group(&mut child, process_group, INSTALLER_KILL_GRACE).await;
        }
    }
    let drained = tokio::time::timeout(OUTPUT_DRAIN, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        readers.abort_all();
    }
    let output = tail.lock().map(|tail| tail.text()).unwrap_or_default();
    let reason = match ending {
        Ending::Stopped(request) => return Err(StepFailure::Stopped(request)),
        Ending::Exited(Ok(status)) if status.success() => return Ok(()),
        Ending::Exited(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => format!("{step} exited with code {code}"),
                (None, Some(signal)) => format!("{step} killed by signal {signal}"),
                (None, None) => format!("{step} ended without a code or signal"),
            }
        }
        Ending::Exited(Err(error)) => format!("{step}: wait for {}: {error}", program.display()),
        Ending::TimedOut => format!("{step} did not finish before the build deadline"),
    };
    let tail_text = output_tail(&output);
    Err(StepFailure::Failed {
        reason: if tail_text.is_empty() {
            reason
        } else {
            format!("{reason}:\n{tail_text}")
        },
        installer_output: output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(contents: &str) -> Vec<DependencyFile> {
        vec![DependencyFile {
            name: "requirements.txt",
            contents: contents.as_bytes().to_vec(),
        }]
    }

    #[test]
    fn keys_change_with_files_image_interpreter_and_runtime() {
        let python = Path::new("/usr/bin/python3");
        let base = environment_key(
            EnvironmentKind::Python,
            &files("requests==2.31\n"),
            "sha256:aaa",
            python,
        );
        assert!(base.starts_with("python-"), "{base}");
        assert_eq!(base.len(), "python-".len() + 64);
        assert_eq!(
            base,
            environment_key(
                EnvironmentKind::Python,
                &files("requests==2.31\n"),
                "sha256:aaa",
                python
            ),
            "the same inputs give the same key"
        );
        let variants = [
            environment_key(
                EnvironmentKind::Python,
                &files("requests==2.32\n"),
                "sha256:aaa",
                python,
            ),
            environment_key(
                EnvironmentKind::Python,
                &files("requests==2.31\n"),
                "sha256:bbb",
                python,
            ),
            environment_key(
                EnvironmentKind::Python,
                &files("requests==2.31\n"),
                "sha256:aaa",
                Path::new("/usr/local/bin/python3"),
            ),
            environment_key(
                EnvironmentKind::Node,
                &files("requests==2.31\n"),
                "sha256:aaa",
                python,
            ),
        ];
        for variant in &variants {
            assert_ne!(&base, variant);
        }
        // Field boundaries are encoded: moving bytes between fields changes the key.
        assert_ne!(
            environment_key(EnvironmentKind::Python, &files("b"), "a", python),
            environment_key(EnvironmentKind::Python, &files(""), "ab", python)
        );
    }

    #[test]
    fn node_lock_files_are_part_of_the_key() {
        let pack = tempfile::tempdir().unwrap();
        assert_eq!(
            read_dependency_files(EnvironmentKind::Node, pack.path()).unwrap(),
            None
        );
        std::fs::write(pack.path().join("package-lock.json"), "{}").unwrap();
        assert_eq!(
            read_dependency_files(EnvironmentKind::Node, pack.path()).unwrap(),
            None,
            "a lock file alone asks for nothing"
        );
        std::fs::write(pack.path().join("package.json"), "{\"name\": \"p\"}").unwrap();
        let with_lock = read_dependency_files(EnvironmentKind::Node, pack.path())
            .unwrap()
            .unwrap();
        let names: Vec<&str> = with_lock.iter().map(|file| file.name).collect();
        assert_eq!(names, ["package.json", "package-lock.json"]);
        let node = Path::new("/usr/bin/node");
        let key_with_lock = environment_key(EnvironmentKind::Node, &with_lock, "", node);
        std::fs::write(pack.path().join("package-lock.json"), "{\"v\": 2}").unwrap();
        let changed = read_dependency_files(EnvironmentKind::Node, pack.path())
            .unwrap()
            .unwrap();
        assert_ne!(
            key_with_lock,
            environment_key(EnvironmentKind::Node, &changed, "", node)
        );
    }

    #[test]
    fn only_python_and_node_have_environments() {
        assert_eq!(
            EnvironmentKind::for_runtime(Runtime::Python),
            Some(EnvironmentKind::Python)
        );
        assert_eq!(
            EnvironmentKind::for_runtime(Runtime::Node),
            Some(EnvironmentKind::Node)
        );
        assert_eq!(EnvironmentKind::for_runtime(Runtime::Shell), None);
        assert_eq!(EnvironmentKind::for_runtime(Runtime::Ruby), None);
    }

    #[test]
    fn relative_file_dependencies_point_into_the_pack() {
        let rewritten = absolute_file_dependencies(
            br#"{"name": "p", "dependencies": {"local": "file:./vendor/local", "abs": "file:/x", "left-pad": "^1.3.0"}, "devDependencies": {"t": "file:../t.tgz"}}"#,
            Path::new("/opt/attune/packs/p"),
        )
        .unwrap();
        let value: Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(
            value["dependencies"]["local"],
            "file:/opt/attune/packs/p/./vendor/local"
        );
        assert_eq!(value["dependencies"]["abs"], "file:/x");
        assert_eq!(value["dependencies"]["left-pad"], "^1.3.0");
        assert_eq!(
            value["devDependencies"]["t"],
            "file:/opt/attune/packs/p/../t.tgz"
        );
        assert!(absolute_file_dependencies(b"not json", Path::new("/p")).is_err());
    }

    #[test]
    fn environment_variables_put_the_environment_first() {
        let python = ReadyEnvironment {
            kind: EnvironmentKind::Python,
            directory: PathBuf::from("/envs/python-1"),
            built: false,
        };
        assert_eq!(
            python.program(),
            Some(PathBuf::from("/envs/python-1/bin/python"))
        );
        assert_eq!(
            python.variables(Some(OsStr::new("/usr/bin:/bin")), None),
            vec![
                ("VIRTUAL_ENV", OsString::from("/envs/python-1")),
                ("PATH", OsString::from("/envs/python-1/bin:/usr/bin:/bin")),
            ]
        );
        let node = ReadyEnvironment {
            kind: EnvironmentKind::Node,
            directory: PathBuf::from("/envs/node-1"),
            built: true,
        };
        assert_eq!(node.program(), None);
        assert_eq!(
            node.variables(None, Some(OsStr::new("/lib/node"))),
            vec![
                (
                    "NODE_PATH",
                    OsString::from("/envs/node-1/node_modules:/lib/node")
                ),
                ("PATH", OsString::from("/envs/node-1/node_modules/.bin")),
            ]
        );
    }

    #[test]
    fn output_tails_keep_the_last_lines_and_bytes() {
        let output: String = (1..=40).map(|line| format!("line {line}\n\n")).collect();
        let tail = output_tail(&output);
        assert!(tail.starts_with("line 26\nline 27"), "{tail}");
        assert!(tail.ends_with("line 40"), "{tail}");
        let long = format!("{}é\n", "x".repeat(5000));
        let tail = output_tail(&long);
        assert!(tail.starts_with("..."));
        assert!(tail.len() <= ERROR_TAIL_BYTES + 3);

        let mut kept = OutputTail::default();
        kept.push(&vec![b'a'; KEPT_OUTPUT_BYTES]);
        kept.push(&vec![b'b'; KEPT_OUTPUT_BYTES + 10]);
        kept.push(b"end");
        let text = kept.text();
        assert!(
            text.starts_with(&format!(
                "[attune: first {} bytes of installer output dropped]\n",
                KEPT_OUTPUT_BYTES + 13
            )),
            "{}",
            &text[..80]
        );
        assert!(text.ends_with("bbbend"));
    }
}
