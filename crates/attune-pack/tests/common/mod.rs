//! Helpers shared by the pack tests: temporary pack directories and hand-made tar archives.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The example pack shipped in the repository.
pub fn hello_pack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packs/hello")
}

pub const PACK_YAML: &str = "ref: demo\nlabel: Demo\ndescription: A test pack\nversion: 1.2.3\n";

pub const ACTION_YAML: &str = "\
ref: demo.echo
runner_type: shell
entry_point: echo.sh
parameters:
  type: object
  properties:
    word:
      type: string
      default: hi
";

/// Writes `files` (path, contents, mode) under a new temporary directory.
pub fn pack_dir(files: &[(&str, &str, u32)]) -> tempfile::TempDir {
    let directory = tempfile::tempdir().expect("create temporary directory");
    for (path, contents, mode) in files {
        let full_path = directory.path().join(path);
        fs::create_dir_all(full_path.parent().expect("file has a parent"))
            .expect("create parent directory");
        fs::write(&full_path, contents).expect("write pack file");
        fs::set_permissions(&full_path, fs::Permissions::from_mode(*mode)).expect("set file mode");
    }
    directory
}

/// A valid pack with one action whose file is `action_yaml`.
pub fn pack_with_action(action_yaml: &str) -> tempfile::TempDir {
    pack_dir(&[
        ("pack.yaml", PACK_YAML, 0o644),
        ("actions/echo.yaml", action_yaml, 0o644),
        ("actions/echo.sh", "#!/bin/sh\necho hi\n", 0o755),
    ])
}

/// One entry of a hand-made archive.
pub enum RawEntry<'a> {
    File(&'a str, &'a [u8], u32),
    Directory(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str),
    Fifo(&'a str),
}

/// Builds a tar whose entry names are written verbatim (absolute paths and `..` included),
/// which the tar crate's safe API refuses to write.
pub fn raw_archive(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let (name, data): (&str, &[u8]) = match entry {
            RawEntry::File(name, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                (name, data)
            }
            RawEntry::Directory(name) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                (name, &[])
            }
            RawEntry::Symlink(name, target) | RawEntry::HardLink(name, target) => {
                header.set_entry_type(if matches!(entry, RawEntry::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                header.set_mode(0o777);
                let link = &mut header.as_old_mut().linkname;
                link[..target.len()].copy_from_slice(target.as_bytes());
                (name, &[])
            }
            RawEntry::CharDevice(name) => {
                header.set_entry_type(tar::EntryType::Char);
                header.set_mode(0o644);
                (name, &[])
            }
            RawEntry::Fifo(name) => {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_mode(0o644);
                (name, &[])
            }
        };
        header.set_size(data.len() as u64);
        let name_field = &mut header.as_old_mut().name;
        name_field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, data).expect("append raw entry");
    }
    builder.into_inner().expect("finish raw archive")
}

/// The standard valid demo pack as raw archive entries, plus `extra`.
pub fn demo_archive_with(extra: Vec<RawEntry<'_>>) -> Vec<u8> {
    let mut entries = vec![
        RawEntry::File("pack.yaml", PACK_YAML.as_bytes(), 0o644),
        RawEntry::Directory("actions/"),
        RawEntry::File("actions/echo.yaml", ACTION_YAML.as_bytes(), 0o644),
        RawEntry::File("actions/echo.sh", b"#!/bin/sh\necho hi\n", 0o755),
    ];
    entries.extend(extra);
    raw_archive(&entries)
}
