//! A worker's pack files by archive digest ([`attune_protocol::Job::pack_sha256`]): it owns the
//! cache `<workdir base>/attune-packs/<digest>/` and decides where a job's `pack_dir` is.
//!
//! In order: a mounted packs directory (`<packs dir>/<pack_ref>/`, used when its
//! [`PACK_DIGEST_FILE`] holds the digest), the cache entry (complete when its own
//! [`PACK_DIGEST_FILE`], written last, holds the digest), or a download of the stored archive
//! from the API. A download is checked against the digest before anything is written (a
//! tampered archive is refused and leaves nothing), unpacked into a temporary directory next
//! to the cache entry (relative paths only, regular files and directories only, modes 0755
//! for executables and directories and 0644 otherwise) and renamed into place. Concurrent jobs
//! for one digest download it once. At most [`DIGESTS_KEPT`] digests are kept, the most
//! recently used ones; a digest a running job holds (a [`PackLease`]) is never removed.

use crate::api::{ApiClient, ApiError};
use attune_protocol::signing::to_hex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The file in a pack directory that names the digest of the archive its files came from.
pub const PACK_DIGEST_FILE: &str = attune_protocol::worker::PACK_DIGEST_FILE;
/// The cache's directory under the work directory base.
pub const CACHE_DIR_NAME: &str = "attune-packs";
/// How many digests the cache keeps.
pub const DIGESTS_KEPT: usize = 8;
/// Prefix of the directories a download is unpacked into before it is renamed into place.
const TEMPORARY_PREFIX: &str = ".unpack-";
/// Prefix of an evicted entry between its rename and its removal.
const EVICTED_PREFIX: &str = ".evicted-";

/// What went wrong getting one pack's files.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("the pack ref is not a plain name (letters, digits, '.', '_', '-')")]
    InvalidRef,
    #[error("the digest is not a sha256 (64 hex digits)")]
    InvalidDigest,
    #[error("download the archive: {0}")]
    Download(#[source] ApiError),
    #[error("the downloaded archive does not match its digest: expected sha256 {expected}, got {actual}; refused, not unpacked")]
    Mismatch { expected: String, actual: String },
    #[error("unpack the archive: {0}")]
    Unpack(String),
    #[error("pack cache {path}: {reason}")]
    Cache { path: String, reason: String },
}

/// A failure to provide a job's pack files, naming the pack and the digest.
#[derive(Debug, thiserror::Error)]
#[error("pack files of {pack_ref} (archive sha256 {digest}): {error}")]
pub struct PackFilesError {
    pub pack_ref: String,
    pub digest: String,
    #[source]
    pub error: PackError,
}

/// Which digests are in use and when each was last used (in this process).
#[derive(Debug, Default)]
struct Usage {
    in_use: HashMap<String, usize>,
    last_used: HashMap<String, u64>,
    clock: u64,
    /// One lock per digest being fetched: a second job for it waits for the first.
    fetching: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// A job's hold on its pack files: the directory stays until the lease is dropped.
#[derive(Debug)]
pub struct PackLease {
    dir: PathBuf,
    /// The cache entry held, `None` for a mounted directory.
    cached: Option<(String, Arc<Mutex<Usage>>)>,
}

impl PackLease {
    /// The pack's files: the job's `pack_dir`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PackLease {
    fn drop(&mut self) {
        if let Some((digest, usage)) = self.cached.take() {
            let mut usage = lock(&usage);
            if let Some(count) = usage.in_use.get_mut(&digest) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    usage.in_use.remove(&digest);
                }
            }
        }
    }
}

/// The worker's pack files: mounted ones, the cache, and the API to fill it from.
#[derive(Debug)]
pub struct PackStore {
    mounted: PathBuf,
    cache: PathBuf,
    api: ApiClient,
    kept: usize,
    usage: Arc<Mutex<Usage>>,
}

fn lock(usage: &Mutex<Usage>) -> MutexGuard<'_, Usage> {
    // The bookkeeping stays consistent at every step, so a panic elsewhere leaves it usable.
    usage
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PackStore {
    /// Packs mounted under `mounted` (`<mounted>/<pack_ref>/`), a cache in `cache`, downloads
    /// from `api`. Leftovers of an earlier run's interrupted downloads are removed.
    pub fn new(mounted: PathBuf, cache: PathBuf, api: ApiClient) -> Self {
        remove_leftovers(&cache);
        Self {
            mounted,
            cache,
            api,
            kept: DIGESTS_KEPT,
            usage: Arc::default(),
        }
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// The files of `pack_ref` whose archive has sha256 `digest` (hex), downloaded when
    /// neither the mounted packs nor the cache have them.
    pub async fn lease(&self, pack_ref: &str, digest: &str) -> Result<PackLease, PackFilesError> {
        let failed = |error: PackError| PackFilesError {
            pack_ref: pack_ref.to_string(),
            digest: digest.to_string(),
            error,
        };
        if !is_plain_name(pack_ref) {
            return Err(failed(PackError::InvalidRef));
        }
        if digest.len() != 64 || !digest.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(failed(PackError::InvalidDigest));
        }
        let digest = digest.to_ascii_lowercase();

        let mounted = self.mounted.join(pack_ref);
        if holds_digest(&mounted, &digest) {
            return Ok(PackLease {
                dir: mounted,
                cached: None,
            });
        }

        // Held before the cache is looked at, so eviction cannot take the entry meanwhile.
        let lease = self.hold(&digest);
        if holds_digest(lease.dir(), &digest) {
            return Ok(lease);
        }
        let fetch_lock = {
            let mut usage = lock(&self.usage);
            Arc::clone(usage.fetching.entry(digest.clone()).or_default())
        };
        let fetched = {
            let _fetching = fetch_lock.lock().await;
            if holds_digest(lease.dir(), &digest) {
                Ok(())
            } else {
                self.fetch(pack_ref, &digest).await
            }
        };
        {
            let mut usage = lock(&self.usage);
            // Only the map and this task hold the lock: nobody else waits for this digest.
            if Arc::strong_count(&fetch_lock) == 2 {
                usage.fetching.remove(&digest);
            }
        }
        fetched.map_err(failed)?;
        Ok(lease)
    }

    /// Marks `digest` in use and just used.
    fn hold(&self, digest: &str) -> PackLease {
        let mut usage = lock(&self.usage);
        *usage.in_use.entry(digest.to_string()).or_default() += 1;
        usage.clock += 1;
        let now = usage.clock;
        usage.last_used.insert(digest.to_string(), now);
        PackLease {
            dir: self.cache.join(digest),
            cached: Some((digest.to_string(), Arc::clone(&self.usage))),
        }
    }

    /// Downloads, checks, unpacks and installs one digest, then trims the cache.
    async fn fetch(&self, pack_ref: &str, digest: &str) -> Result<(), PackError> {
        let archive = self
            .api
            .pack_archive(pack_ref, digest)
            .await
            .map_err(PackError::Download)?;
        let actual = to_hex(&Sha256::digest(&archive));
        if actual != digest {
            return Err(PackError::Mismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        let cache = self.cache.clone();
        let installing = digest.to_string();
        let installed =
            tokio::task::spawn_blocking(move || install(&cache, &installing, &archive)).await;
        match installed {
            Ok(result) => result?,
            Err(error) => {
                return Err(PackError::Unpack(format!(
                    "the unpacking thread failed: {error}"
                )))
            }
        }
        let cache = self.cache.clone();
        let usage = Arc::clone(&self.usage);
        let kept = self.kept;
        let _ = tokio::task::spawn_blocking(move || evict(&cache, &usage, kept)).await;
        Ok(())
    }
}

/// A name that is one plain path component.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "._-".contains(character))
}

/// Whether `dir` has a [`PACK_DIGEST_FILE`] holding `digest`.
fn holds_digest(dir: &Path, digest: &str) -> bool {
    std::fs::read_to_string(dir.join(PACK_DIGEST_FILE))
        .is_ok_and(|content| content.trim().eq_ignore_ascii_case(digest))
}

fn cache_error(path: &Path, error: impl std::fmt::Display) -> PackError {
    PackError::Cache {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// Unpacks `archive` into a fresh directory in `cache`, writes the digest file last, and
/// renames the directory to `<cache>/<digest>`.
fn install(cache: &Path, digest: &str, archive: &[u8]) -> Result<(), PackError> {
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(cache)
        .map_err(|error| cache_error(cache, error))?;
    let temporary = cache.join(format!(
        "{TEMPORARY_PREFIX}{digest}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&temporary)
        .map_err(|error| cache_error(&temporary, error))?;
    let result = unpack(archive, &temporary)
        .and_then(|()| {
            write_file(
                &temporary.join(PACK_DIGEST_FILE),
                format!("{digest}\n").as_bytes(),
                0o644,
            )
            .map_err(|error| cache_error(&temporary, error))
        })
        .and_then(|()| {
            let entry = cache.join(digest);
            // An entry without the digest file is incomplete: replaced.
            if entry.exists() {
                std::fs::remove_dir_all(&entry).map_err(|error| cache_error(&entry, error))?;
            }
            std::fs::rename(&temporary, &entry).map_err(|error| cache_error(&entry, error))
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temporary);
    }
    result
}

/// Writes the entries of a stored pack archive under `root`: directories and regular files
/// only, each at a relative path without `..`.
pub fn unpack(archive: &[u8], root: &Path) -> Result<(), PackError> {
    let failed = |error: std::io::Error| PackError::Unpack(error.to_string());
    let mut reader = tar::Archive::new(archive);
    for entry in reader.entries().map_err(failed)? {
        let mut entry = entry.map_err(failed)?;
        let raw_path = entry.path().map_err(failed)?.into_owned();
        let shown = raw_path.display().to_string();
        let relative = relative_path(&raw_path)
            .map_err(|reason| PackError::Unpack(format!("entry {shown:?}: {reason}; refused")))?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let refused = |what: &str| PackError::Unpack(format!("entry {shown:?} is {what}; refused"));
        if kind.is_symlink() {
            return Err(refused("a symbolic link"));
        }
        if kind.is_hard_link() {
            return Err(refused("a hard link"));
        }
        let unpack_error = |error: std::io::Error| PackError::Unpack(format!("{shown}: {error}"));
        if kind.is_dir() {
            if relative.as_os_str().is_empty() {
                continue;
            }
            let target = root.join(&relative);
            make_directories(&target).map_err(unpack_error)?;
        } else if kind.is_file() || kind.is_contiguous() {
            if relative.as_os_str().is_empty() {
                return Err(refused("a file at the pack's root"));
            }
            let target = root.join(&relative);
            if let Some(parent) = target.parent() {
                make_directories(parent).map_err(unpack_error)?;
            }
            let executable = entry.header().mode().map_err(unpack_error)? & 0o111 != 0;
            let mode = if executable { 0o755 } else { 0o644 };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&target)
                .map_err(unpack_error)?;
            std::io::copy(&mut entry, &mut file).map_err(unpack_error)?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(unpack_error)?;
        } else {
            return Err(refused(&format!(
                "a {kind:?} entry, not a regular file or a directory"
            )));
        }
    }
    Ok(())
}

/// `path` as a relative path of plain components (`./` parts dropped).
fn relative_path(path: &Path) -> Result<PathBuf, &'static str> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("its path goes up with '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("its path is absolute"),
        }
    }
    Ok(relative)
}

/// Creates `dir` and its missing parents with mode 0755 (an existing one gets 0755 too).
fn make_directories(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Whether a cache entry's name is a digest.
fn is_digest_name(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// Removes every digest of `cache` but the `kept` most recently used ones and those in use.
/// Recency is this process's use order, then (for entries of an earlier run) the time the
/// digest file was written.
fn evict(cache: &Path, usage: &Mutex<Usage>, kept: usize) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    let mut digests: Vec<(Option<u64>, std::time::SystemTime, String)> = Vec::new();
    let usage_now = lock(usage);
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_digest_name(&name) {
            continue;
        }
        let written = std::fs::metadata(entry.path().join(PACK_DIGEST_FILE))
            .and_then(|metadata| metadata.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        digests.push((usage_now.last_used.get(&name).copied(), written, name));
    }
    digests.sort_by(|left, right| right.cmp(left));
    let mut usage_now = usage_now;
    let mut victims = Vec::new();
    for (_, _, digest) in digests.into_iter().skip(kept) {
        if usage_now.in_use.contains_key(&digest) {
            continue;
        }
        // Renamed while the bookkeeping is locked, so no job takes it meanwhile; removed after.
        let doomed = cache.join(format!("{EVICTED_PREFIX}{digest}"));
        match std::fs::rename(cache.join(&digest), &doomed) {
            Ok(()) => {
                usage_now.last_used.remove(&digest);
                victims.push(doomed);
            }
            Err(error) => eprintln!(
                "attune-agent: evict pack files {digest} from {}: {error}",
                cache.display()
            ),
        }
    }
    drop(usage_now);
    for doomed in victims {
        if let Err(error) = std::fs::remove_dir_all(&doomed) {
            eprintln!("attune-agent: remove {}: {error}", doomed.display());
        }
    }
}

/// Removes the temporary and evicted directories an earlier run left in `cache`.
fn remove_leftovers(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with(TEMPORARY_PREFIX) || name.starts_with(EVICTED_PREFIX) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_and_plain() {
        assert_eq!(
            relative_path(Path::new("./actions/run.sh")).unwrap(),
            PathBuf::from("actions/run.sh")
        );
        assert_eq!(relative_path(Path::new("./")).unwrap(), PathBuf::new());
        assert!(relative_path(Path::new("../escape")).is_err());
        assert!(relative_path(Path::new("a/../../b")).is_err());
        assert!(relative_path(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn pack_refs_are_one_plain_component() {
        assert!(is_plain_name("core"));
        assert!(is_plain_name("my_pack-2.x"));
        for bad in ["", ".", "..", "a/b", "a b", "../x"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}
