//! Builds the uncompressed tar archives the controller uploads into containers (put_archive).
//!
//! Paths are relative to the upload destination (the controller uploads to `/`), so the agent
//! lands at `opt/attune/bin/attune-agent` and pack files under `opt/attune/packs/<pack_ref>/`.
//! Every entry has an explicit mode and owner and an mtime of 0, parent directories come before
//! their children (mode 0755, owned by root unless added explicitly), and paths that could
//! escape the destination (absolute, `..`) are refused. The output is never compressed: the
//! engine once decompressed uploads with tools taken from the container itself.

use std::collections::HashMap;
use tar::{EntryType, Header};

/// Mode for directories and executables; readable by any user the image runs as.
pub const DIRECTORY_MODE: u32 = 0o755;
/// Mode for executables (the agent binary, action scripts).
pub const EXECUTABLE_MODE: u32 = 0o755;
/// Mode for ordinary files.
pub const FILE_MODE: u32 = 0o644;

const BLOCK_SIZE: usize = 512;
const HEADER_NAME_LENGTH: usize = 100;

/// Why an entry cannot go into an injection archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive path is empty")]
    EmptyPath,
    #[error("archive path {path} is absolute")]
    AbsolutePath { path: String },
    #[error("archive path {path} contains a `..` component")]
    ParentComponent { path: String },
    #[error("archive path {path} contains a nul byte")]
    NulByte { path: String },
    #[error("archive path {path}: mode {mode:o} has bits outside 0o7777")]
    InvalidMode { path: String, mode: u32 },
    #[error("archive path {path} is already a {existing}")]
    Conflict {
        path: String,
        existing: &'static str,
    },
    #[error("archive path {path} is added twice")]
    DuplicateFile { path: String },
}

#[derive(Debug, Clone)]
enum EntryKind {
    Directory,
    File(Vec<u8>),
}

#[derive(Debug, Clone)]
struct ArchiveEntry {
    path: String,
    kind: EntryKind,
    mode: u32,
    uid: u64,
    gid: u64,
}

/// Collects files and directories, then renders them as one uncompressed tar archive.
#[derive(Debug, Clone, Default)]
pub struct InjectionArchive {
    entries: Vec<ArchiveEntry>,
    index_by_path: HashMap<String, usize>,
}

impl InjectionArchive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file owned by root (uid 0, gid 0).
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, ArchiveError> {
        self.add_file_owned_by(path, mode, 0, 0, bytes)
    }

    /// Adds a file with an explicit owner; missing parent directories are added first.
    pub fn add_file_owned_by(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, ArchiveError> {
        let path = normalize_path(path)?;
        check_mode(&path, mode)?;
        if let Some(&index) = self.index_by_path.get(&path) {
            return Err(match self.entries[index].kind {
                EntryKind::File(_) => ArchiveError::DuplicateFile { path },
                EntryKind::Directory => ArchiveError::Conflict {
                    path,
                    existing: "directory",
                },
            });
        }
        self.ensure_parents(&path)?;
        self.push(ArchiveEntry {
            path,
            kind: EntryKind::File(bytes.into()),
            mode,
            uid,
            gid,
        });
        Ok(self)
    }

    /// Adds a directory owned by root; adding it again (or after it was implied by a file
    /// beneath it) updates its mode.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, ArchiveError> {
        self.add_dir_owned_by(path, mode, 0, 0)
    }

    /// Adds a directory with an explicit owner.
    pub fn add_dir_owned_by(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Result<&mut Self, ArchiveError> {
        let path = normalize_path(path)?;
        check_mode(&path, mode)?;
        if let Some(&index) = self.index_by_path.get(&path) {
            let entry = &mut self.entries[index];
            if let EntryKind::File(_) = entry.kind {
                return Err(ArchiveError::Conflict {
                    path,
                    existing: "file",
                });
            }
            entry.mode = mode;
            entry.uid = uid;
            entry.gid = gid;
            return Ok(self);
        }
        self.ensure_parents(&path)?;
        self.push(ArchiveEntry {
            path,
            kind: EntryKind::Directory,
            mode,
            uid,
            gid,
        });
        Ok(self)
    }

    /// Number of entries (files and directories, implied parents included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Renders the archive: GNU headers, mtime 0, entries in insertion order (parents first).
    pub fn finish(self) -> Vec<u8> {
        let content_size: usize = self
            .entries
            .iter()
            .map(|entry| match &entry.kind {
                EntryKind::File(bytes) => padded_len(bytes.len()) + 2 * BLOCK_SIZE,
                EntryKind::Directory => 2 * BLOCK_SIZE,
            })
            .sum();
        let mut output = Vec::with_capacity(content_size + 2 * BLOCK_SIZE);
        for entry in &self.entries {
            write_entry(&mut output, entry);
        }
        // Two zero blocks end a tar archive.
        output.resize(output.len() + 2 * BLOCK_SIZE, 0);
        output
    }

    fn ensure_parents(&mut self, path: &str) -> Result<(), ArchiveError> {
        let mut parent_end = 0;
        while let Some(offset) = path[parent_end..].find('/') {
            let parent = &path[..parent_end + offset];
            parent_end += offset + 1;
            match self.index_by_path.get(parent) {
                Some(&index) => {
                    if let EntryKind::File(_) = self.entries[index].kind {
                        return Err(ArchiveError::Conflict {
                            path: parent.to_string(),
                            existing: "file",
                        });
                    }
                }
                None => self.push(ArchiveEntry {
                    path: parent.to_string(),
                    kind: EntryKind::Directory,
                    mode: DIRECTORY_MODE,
                    uid: 0,
                    gid: 0,
                }),
            }
        }
        Ok(())
    }

    fn push(&mut self, entry: ArchiveEntry) {
        self.index_by_path
            .insert(entry.path.clone(), self.entries.len());
        self.entries.push(entry);
    }
}

/// Turns `a//b/./c` into `a/b/c`; refuses absolute paths, `..` and nul bytes.
fn normalize_path(path: &str) -> Result<String, ArchiveError> {
    if path.starts_with('/') {
        return Err(ArchiveError::AbsolutePath {
            path: path.to_string(),
        });
    }
    if path.contains('\0') {
        return Err(ArchiveError::NulByte {
            path: path.escape_debug().to_string(),
        });
    }
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(ArchiveError::ParentComponent {
                    path: path.to_string(),
                })
            }
            other => components.push(other),
        }
    }
    if components.is_empty() {
        return Err(ArchiveError::EmptyPath);
    }
    Ok(components.join("/"))
}

fn check_mode(path: &str, mode: u32) -> Result<(), ArchiveError> {
    if mode & !0o7777 != 0 {
        return Err(ArchiveError::InvalidMode {
            path: path.to_string(),
            mode,
        });
    }
    Ok(())
}

fn padded_len(length: usize) -> usize {
    length.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

fn append_padded(output: &mut Vec<u8>, data: &[u8]) {
    output.extend_from_slice(data);
    output.resize(output.len() + (padded_len(data.len()) - data.len()), 0);
}

fn write_entry(output: &mut Vec<u8>, entry: &ArchiveEntry) {
    let (entry_type, data): (EntryType, &[u8]) = match &entry.kind {
        EntryKind::Directory => (EntryType::Directory, &[]),
        EntryKind::File(bytes) => (EntryType::Regular, bytes),
    };
    let mut name = entry.path.clone().into_bytes();
    if matches!(entry.kind, EntryKind::Directory) {
        name.push(b'/');
    }
    if name.len() > HEADER_NAME_LENGTH {
        // GNU long name: a `././@LongLink` entry carrying the full, nul-terminated path.
        let mut long_name = name.clone();
        long_name.push(0);
        let mut long_header = Header::new_gnu();
        set_name(&mut long_header, b"././@LongLink");
        long_header.set_entry_type(EntryType::GNULongName);
        long_header.set_mode(0o644);
        long_header.set_uid(0);
        long_header.set_gid(0);
        long_header.set_mtime(0);
        long_header.set_size(long_name.len() as u64);
        long_header.set_cksum();
        output.extend_from_slice(long_header.as_bytes());
        append_padded(output, &long_name);
    }
    let mut header = Header::new_gnu();
    set_name(&mut header, &name[..name.len().min(HEADER_NAME_LENGTH)]);
    header.set_entry_type(entry_type);
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    output.extend_from_slice(header.as_bytes());
    append_padded(output, data);
}

fn set_name(header: &mut Header, name: &[u8]) {
    let field = &mut header.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[derive(Debug, PartialEq, Eq)]
    struct ReadEntry {
        path: String,
        directory: bool,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        bytes: Vec<u8>,
    }

    fn read_back(tar_bytes: &[u8]) -> Vec<ReadEntry> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .expect("read archive entries")
            .map(|entry| {
                let mut entry = entry.expect("read archive entry");
                let path = entry
                    .path()
                    .expect("entry path")
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string();
                let header = entry.header().clone();
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).expect("read entry data");
                ReadEntry {
                    path,
                    directory: header.entry_type().is_dir(),
                    mode: header.mode().expect("mode"),
                    uid: header.uid().expect("uid"),
                    gid: header.gid().expect("gid"),
                    mtime: header.mtime().expect("mtime"),
                    bytes,
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_files_with_modes_owners_and_parents_first() {
        let mut archive = InjectionArchive::new();
        archive
            .add_file(
                "opt/attune/bin/attune-agent",
                EXECUTABLE_MODE,
                b"\x7fELF agent".to_vec(),
            )
            .unwrap()
            .add_file_owned_by(
                "opt/attune/packs/core/actions/echo.sh",
                FILE_MODE,
                65534,
                65533,
                "echo hello\n",
            )
            .unwrap();
        let entries = read_back(&archive.finish());
        let summary: Vec<(&str, bool, u32)> = entries
            .iter()
            .map(|entry| (entry.path.as_str(), entry.directory, entry.mode))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("opt", true, 0o755),
                ("opt/attune", true, 0o755),
                ("opt/attune/bin", true, 0o755),
                ("opt/attune/bin/attune-agent", false, 0o755),
                ("opt/attune/packs", true, 0o755),
                ("opt/attune/packs/core", true, 0o755),
                ("opt/attune/packs/core/actions", true, 0o755),
                ("opt/attune/packs/core/actions/echo.sh", false, 0o644),
            ]
        );
        let agent = &entries[3];
        assert_eq!(agent.bytes, b"\x7fELF agent");
        assert_eq!((agent.uid, agent.gid, agent.mtime), (0, 0, 0));
        let script = &entries[7];
        assert_eq!(script.bytes, b"echo hello\n");
        assert_eq!((script.uid, script.gid), (65534, 65533));
        assert!(entries
            .iter()
            .filter(|entry| entry.directory)
            .all(|entry| entry.uid == 0 && entry.gid == 0 && entry.mtime == 0));
    }

    #[test]
    fn output_is_an_uncompressed_tar_of_whole_blocks() {
        let mut archive = InjectionArchive::new();
        archive
            .add_file("a.txt", FILE_MODE, vec![b'x'; 513])
            .unwrap();
        let bytes = archive.finish();
        // header + two data blocks + two end blocks
        assert_eq!(bytes.len(), 5 * BLOCK_SIZE);
        assert_ne!(&bytes[..2], &[0x1f, 0x8b], "must not be gzip");
        assert_eq!(&bytes[257..263], b"ustar ", "gnu magic");
        assert!(bytes[3 * BLOCK_SIZE..].iter().all(|byte| *byte == 0));
    }

    #[test]
    fn explicit_directory_mode_and_owner_win_over_implied_parent() {
        let mut archive = InjectionArchive::new();
        archive
            .add_file("work/out/result.json", FILE_MODE, "{}")
            .unwrap();
        archive.add_dir_owned_by("work", 0o700, 1000, 1000).unwrap();
        archive.add_dir("empty/dir", 0o750).unwrap();
        let entries = read_back(&archive.finish());
        let work = entries.iter().find(|entry| entry.path == "work").unwrap();
        assert_eq!((work.mode, work.uid, work.gid), (0o700, 1000, 1000));
        assert_eq!(entries[0].path, "work", "parent stays before its children");
        let empty = entries
            .iter()
            .find(|entry| entry.path == "empty/dir")
            .unwrap();
        assert!(empty.directory);
        assert_eq!(empty.mode, 0o750);
        assert!(entries
            .iter()
            .any(|entry| entry.path == "empty" && entry.directory));
    }

    #[test]
    fn long_paths_survive_the_round_trip() {
        let long_path = format!("opt/attune/packs/{}/actions/run.py", "p".repeat(150));
        let mut archive = InjectionArchive::new();
        archive
            .add_file(&long_path, FILE_MODE, "print('hi')")
            .unwrap();
        let entries = read_back(&archive.finish());
        let file = entries.last().unwrap();
        assert_eq!(file.path, long_path);
        assert_eq!(file.bytes, b"print('hi')");
        let long_dir = long_path.rsplit_once("/run.py").unwrap().0;
        assert!(entries
            .iter()
            .any(|entry| entry.path == long_dir && entry.directory));
    }

    #[test]
    fn normalizes_redundant_separators_and_dot_components() {
        let mut archive = InjectionArchive::new();
        archive.add_file("./a//b/./c", FILE_MODE, "x").unwrap();
        let paths: Vec<String> = read_back(&archive.finish())
            .into_iter()
            .map(|entry| entry.path)
            .collect();
        assert_eq!(paths, vec!["a", "a/b", "a/b/c"]);
    }

    #[test]
    fn rejects_paths_that_could_escape_the_destination() {
        let mut archive = InjectionArchive::new();
        assert_eq!(
            archive.add_file("/etc/passwd", FILE_MODE, "x").unwrap_err(),
            ArchiveError::AbsolutePath {
                path: "/etc/passwd".into()
            }
        );
        assert_eq!(
            archive
                .add_file("opt/../etc/x", FILE_MODE, "x")
                .unwrap_err(),
            ArchiveError::ParentComponent {
                path: "opt/../etc/x".into()
            }
        );
        assert_eq!(
            archive.add_dir("..", DIRECTORY_MODE).unwrap_err(),
            ArchiveError::ParentComponent { path: "..".into() }
        );
        assert_eq!(
            archive.add_file("", FILE_MODE, "x").unwrap_err(),
            ArchiveError::EmptyPath
        );
        assert_eq!(
            archive.add_dir("./", DIRECTORY_MODE).unwrap_err(),
            ArchiveError::EmptyPath
        );
        assert!(matches!(
            archive.add_file("a\0b", FILE_MODE, "x").unwrap_err(),
            ArchiveError::NulByte { .. }
        ));
        assert!(archive.is_empty(), "rejected paths add nothing");
    }

    #[test]
    fn rejects_conflicts_duplicates_and_bad_modes() {
        let mut archive = InjectionArchive::new();
        archive.add_file("a/b", FILE_MODE, "x").unwrap();
        assert_eq!(
            archive.add_file("a/b", FILE_MODE, "y").unwrap_err(),
            ArchiveError::DuplicateFile { path: "a/b".into() }
        );
        assert_eq!(
            archive.add_file("a/b/c", FILE_MODE, "y").unwrap_err(),
            ArchiveError::Conflict {
                path: "a/b".into(),
                existing: "file"
            }
        );
        assert_eq!(
            archive.add_dir("a/b", DIRECTORY_MODE).unwrap_err(),
            ArchiveError::Conflict {
                path: "a/b".into(),
                existing: "file"
            }
        );
        assert_eq!(
            archive.add_file("a", FILE_MODE, "y").unwrap_err(),
            ArchiveError::Conflict {
                path: "a".into(),
                existing: "directory"
            }
        );
        assert_eq!(
            archive.add_file("c", 0o100644, "y").unwrap_err(),
            ArchiveError::InvalidMode {
                path: "c".into(),
                mode: 0o100644
            }
        );
        assert_eq!(archive.len(), 2);
    }

    #[test]
    fn conflict_error_message_names_the_path() {
        let error = ArchiveError::Conflict {
            path: "a/b".into(),
            existing: "file",
        };
        assert_eq!(error.to_string(), "archive path a/b is already a file");
    }
}
