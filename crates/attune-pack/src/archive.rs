//! Pack files in and out: walking a pack directory, reading an uploaded tar in memory and
//! writing the normalized, deterministic tar.
//!
//! Nothing here writes to disk. Both readers apply the same skip rules (`.git`, `target/`,
//! `__pycache__/`) and the same limits, so a directory and the archive built from it yield the
//! same files.

use crate::error::PackError;
use crate::model::{PackFile, PackLimits};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Permission bits kept from files and archive entries.
const MODE_MASK: u32 = 0o777;
/// Mode of the directory entries in a normalized archive.
const DIRECTORY_MODE: u32 = 0o755;
/// Longest chain of links followed inside an archive.
const MAX_LINK_DEPTH: usize = 16;

/// Whether a directory with this name is left out of packs (VCS data, build output, caches).
fn is_skipped_directory(name: &str) -> bool {
    matches!(name, ".git" | "target" | "__pycache__")
}

/// Whether a pack-relative path is left out: it is or lies under a skipped directory.
fn is_skipped_path(components: &[&str], is_directory: bool) -> bool {
    let Some((last, parents)) = components.split_last() else {
        return false;
    };
    parents.iter().any(|name| is_skipped_directory(name))
        || *last == ".git"
        || (is_directory && is_skipped_directory(last))
}

/// Running totals checked against [`PackLimits`].
struct Budget<'a> {
    limits: &'a PackLimits,
    files: usize,
    bytes: u64,
}

impl<'a> Budget<'a> {
    fn new(limits: &'a PackLimits) -> Self {
        Budget {
            limits,
            files: 0,
            bytes: 0,
        }
    }

    /// Accounts for one more file of `size` bytes.
    fn add_file(&mut self, size: u64) -> Result<(), PackError> {
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(PackError::TooManyFiles {
                limit: self.limits.max_files,
            });
        }
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_unpacked_bytes {
            return Err(PackError::UnpackedTooLarge {
                size: self.bytes,
                limit: self.limits.max_unpacked_bytes,
            });
        }
        Ok(())
    }
}

fn io_error(path: &Path, source: std::io::Error) -> PackError {
    PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads every file of the pack directory `root`, sorted by path.
///
/// Symlinks are followed when they point to a file inside the pack (the file is stored under
/// the link's path); links that escape the pack, dangling links and links to directories are
/// rejected, as are sockets, fifos and devices.
pub(crate) fn read_pack_dir(root: &Path, limits: &PackLimits) -> Result<Vec<PackFile>, PackError> {
    let canonical_root = fs::canonicalize(root).map_err(|source| io_error(root, source))?;
    let root_metadata = fs::metadata(&canonical_root).map_err(|source| io_error(root, source))?;
    if !root_metadata.is_dir() {
        return Err(io_error(
            root,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let mut budget = Budget::new(limits);
    let mut files = Vec::new();
    let mut pending_directories = vec![String::new()];
    while let Some(relative_directory) = pending_directories.pop() {
        let directory = canonical_root.join(&relative_directory);
        let mut entries = Vec::new();
        for entry in fs::read_dir(&directory).map_err(|source| io_error(&directory, source))? {
            let entry = entry.map_err(|source| io_error(&directory, source))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(PackError::UnsafeEntry {
                    path: format!("{relative_directory}{}", name.to_string_lossy()),
                    reason: "file name is not valid UTF-8".to_string(),
                });
            };
            entries.push(name.to_string());
        }
        entries.sort();
        for name in entries {
            let relative_path = format!("{relative_directory}{name}");
            let full_path = canonical_root.join(&relative_path);
            let metadata =
                fs::symlink_metadata(&full_path).map_err(|source| io_error(&full_path, source))?;
            let file_type = metadata.file_type();
            if file_type.is_dir() {
                if !is_skipped_directory(&name) {
                    pending_directories.push(format!("{relative_path}/"));
                }
                continue;
            }
            if name == ".git" {
                continue;
            }
            let source_path = if file_type.is_symlink() {
                resolve_directory_symlink(&canonical_root, &full_path, &relative_path)?
            } else if file_type.is_file() {
                full_path
            } else {
                return Err(PackError::UnsafeEntry {
                    path: relative_path,
                    reason: "not a regular file, directory or symlink".to_string(),
                });
            };
            let source_metadata =
                fs::metadata(&source_path).map_err(|source| io_error(&source_path, source))?;
            budget.add_file(source_metadata.len())?;
            let contents =
                fs::read(&source_path).map_err(|source| io_error(&source_path, source))?;
            files.push(PackFile {
                relative_path,
                mode: source_metadata.permissions().mode() & MODE_MASK,
                contents,
            });
        }
    }
    files.sort_by(|left, right| left.relative_path.cmp(&right.relative_path));
    Ok(files)
}

/// The file a symlink inside the pack directory points to, if it is a file inside the pack.
fn resolve_directory_symlink(
    canonical_root: &Path,
    link_path: &Path,
    relative_path: &str,
) -> Result<std::path::PathBuf, PackError> {
    let target = fs::canonicalize(link_path).map_err(|source| PackError::UnsafeEntry {
        path: relative_path.to_string(),
        reason: format!("symlink cannot be resolved: {source}"),
    })?;
    if !target.starts_with(canonical_root) {
        return Err(PackError::UnsafeEntry {
            path: relative_path.to_string(),
            reason: format!("symlink points outside the pack (to {})", target.display()),
        });
    }
    let target_metadata = fs::metadata(&target).map_err(|source| io_error(&target, source))?;
    if !target_metadata.is_file() {
        return Err(PackError::UnsafeEntry {
            path: relative_path.to_string(),
            reason: "symlink does not point to a regular file".to_string(),
        });
    }
    Ok(target)
}

/// Splits an archive path into its components, dropping `.` and empty ones.
///
/// Absolute paths and `..` are rejected.
fn archive_path_components(path: &str) -> Result<Vec<&str>, String> {
    if path.starts_with('/') {
        return Err("absolute paths are not allowed".to_string());
    }
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("paths containing \"..\" are not allowed".to_string()),
            name => components.push(name),
        }
    }
    Ok(components)
}

/// Resolves a link target against `base` (the components of the directory it is relative to);
/// `None` when the target leaves the archive root.
fn resolve_link_target(base: &[&str], target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut resolved: Vec<&str> = base.to_vec();
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                resolved.pop()?;
            }
            name => resolved.push(name),
        }
    }
    Some(resolved.join("/"))
}

/// A link entry waiting for every regular file to be read.
struct PendingLink {
    path: String,
    target: String,
}

/// Longest parser message kept in [`PackError::NotAnArchive`] (the tar parser quotes raw bytes).
const MAX_PARSE_MESSAGE_CHARS: usize = 160;

fn not_an_archive(error: std::io::Error) -> PackError {
    let message = error.to_string();
    if message.chars().count() > MAX_PARSE_MESSAGE_CHARS {
        let shortened: String = message.chars().take(MAX_PARSE_MESSAGE_CHARS).collect();
        PackError::NotAnArchive(format!("{shortened}..."))
    } else {
        PackError::NotAnArchive(message)
    }
}

/// Reads the regular files of an uncompressed tar held in memory, sorted by path.
///
/// Entries with absolute paths or `..`, device files, fifos, sparse files and links that point
/// outside the archive are rejected. Links to files inside the archive become copies of the
/// file. Directory entries are accepted and not kept.
pub(crate) fn read_archive(bytes: &[u8], limits: &PackLimits) -> Result<Vec<PackFile>, PackError> {
    let size = bytes.len() as u64;
    if size > limits.max_archive_bytes {
        return Err(PackError::TooLarge {
            size,
            limit: limits.max_archive_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(PackError::NotAnArchive("the upload is empty".to_string()));
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(PackError::NotAnArchive(
            "it is gzip-compressed; send an uncompressed tar".to_string(),
        ));
    }
    if bytes.len() < 512 {
        return Err(PackError::NotAnArchive(format!(
            "{} bytes is shorter than one tar header",
            bytes.len()
        )));
    }

    let mut budget = Budget::new(limits);
    let mut files: BTreeMap<String, PackFile> = BTreeMap::new();
    let mut directories: BTreeSet<String> = BTreeSet::new();
    let mut links: Vec<PendingLink> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();

    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().map_err(not_an_archive)? {
        let mut entry = entry.map_err(not_an_archive)?;
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            continue;
        }
        let raw_path = entry.path_bytes();
        let Ok(raw_path) = std::str::from_utf8(&raw_path).map(str::to_string) else {
            return Err(PackError::UnsafeEntry {
                path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                reason: "path is not valid UTF-8".to_string(),
            });
        };
        let components =
            archive_path_components(&raw_path).map_err(|reason| PackError::UnsafeEntry {
                path: raw_path.clone(),
                reason,
            })?;
        let path = components.join("/");
        if is_skipped_path(&components, entry_type.is_dir()) {
            continue;
        }
        if path.is_empty() {
            if entry_type.is_dir() {
                continue;
            }
            return Err(PackError::UnsafeEntry {
                path: raw_path,
                reason: "entry has an empty path".to_string(),
            });
        }
        if !seen.insert(path.clone()) {
            return Err(PackError::UnsafeEntry {
                path,
                reason: "duplicate entry".to_string(),
            });
        }
        let unsafe_entry = |reason: &str| PackError::UnsafeEntry {
            path: path.clone(),
            reason: reason.to_string(),
        };
        if entry_type.is_dir() {
            directories.insert(path);
        } else if entry_type.is_file() || entry_type.is_contiguous() {
            budget.add_file(entry.size())?;
            let mode = entry.header().mode().map_err(not_an_archive)? & MODE_MASK;
            // The header's size may lie: never reserve more than the upload itself holds.
            let mut contents = Vec::with_capacity(entry.size().min(size) as usize);
            entry.read_to_end(&mut contents).map_err(not_an_archive)?;
            files.insert(
                path.clone(),
                PackFile {
                    relative_path: path,
                    mode,
                    contents,
                },
            );
        } else if entry_type.is_symlink() || entry_type.is_hard_link() {
            let Some(link_name) = entry.link_name_bytes() else {
                return Err(unsafe_entry("link has no target"));
            };
            let Ok(link_name) = std::str::from_utf8(&link_name).map(str::to_string) else {
                return Err(unsafe_entry("link target is not valid UTF-8"));
            };
            // Symlink targets are relative to the link's directory, hard link targets to the
            // archive root.
            let base: &[&str] = if entry_type.is_symlink() {
                &components[..components.len() - 1]
            } else {
                &[]
            };
            let Some(target) = resolve_link_target(base, &link_name) else {
                return Err(PackError::UnsafeEntry {
                    path,
                    reason: format!("link points outside the pack (to {link_name:?})"),
                });
            };
            links.push(PendingLink { path, target });
        } else if entry_type.is_character_special() || entry_type.is_block_special() {
            return Err(unsafe_entry("device files are not allowed"));
        } else if entry_type.is_fifo() {
            return Err(unsafe_entry("fifos are not allowed"));
        } else if entry_type.is_gnu_sparse() {
            return Err(unsafe_entry("sparse files are not supported"));
        } else {
            return Err(PackError::UnsafeEntry {
                path,
                reason: format!("unsupported entry type {:?}", entry_type.as_byte() as char),
            });
        }
    }

    let link_targets: BTreeMap<String, String> = links
        .iter()
        .map(|link| (link.path.clone(), link.target.clone()))
        .collect();
    for link in &links {
        let mut target = link.target.clone();
        let mut depth = 0;
        while let Some(next) = link_targets.get(&target) {
            depth += 1;
            if depth > MAX_LINK_DEPTH {
                return Err(PackError::UnsafeEntry {
                    path: link.path.clone(),
                    reason: "too many levels of links".to_string(),
                });
            }
            target = next.clone();
        }
        let Some(file) = files.get(&target) else {
            let reason = if directories.contains(&target) {
                format!("links to directories are not supported (to {target:?})")
            } else {
                format!("link target {target:?} is not a file in the archive")
            };
            return Err(PackError::UnsafeEntry {
                path: link.path.clone(),
                reason,
            });
        };
        let copy = PackFile {
            relative_path: link.path.clone(),
            mode: file.mode,
            contents: file.contents.clone(),
        };
        budget.add_file(copy.contents.len() as u64)?;
        files.insert(link.path.clone(), copy);
    }
    Ok(files.into_values().collect())
}

/// Writes the normalized tar of `files`: sorted paths under `prefix`, a directory entry
/// (mode 0755) for every directory, modes kept, owner 0:0, mtime 0.
///
/// The result depends only on the files' paths, modes and contents.
pub(crate) fn write_archive(files: &[PackFile], prefix: &str) -> Result<Vec<u8>, PackError> {
    let prefix = prefix.trim_matches('/');
    let join = |relative: &str| {
        if prefix.is_empty() {
            relative.to_string()
        } else if relative.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}/{relative}")
        }
    };

    // Every entry keyed by its full path; a directory sorts before its contents.
    let mut entries: BTreeMap<String, Option<&PackFile>> = BTreeMap::new();
    if !prefix.is_empty() {
        entries.insert(prefix.to_string(), None);
    }
    for file in files {
        let mut parent = file.relative_path.as_str();
        while let Some((directory, _)) = parent.rsplit_once('/') {
            entries.insert(join(directory), None);
            parent = directory;
        }
        entries.insert(join(&file.relative_path), Some(file));
    }

    let mut builder = tar::Builder::new(Vec::new());
    for (path, file) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let result = match file {
            Some(file) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(file.mode & MODE_MASK);
                header.set_size(file.contents.len() as u64);
                builder.append_data(&mut header, &path, file.contents.as_slice())
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(DIRECTORY_MODE);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())
            }
        };
        result.map_err(|error| PackError::UnsafeEntry {
            path: path.clone(),
            reason: format!("cannot be written to a tar archive: {error}"),
        })?;
    }
    builder
        .into_inner()
        .map_err(|error| PackError::UnsafeEntry {
            path: prefix.to_string(),
            reason: format!("finish tar archive: {error}"),
        })
}
