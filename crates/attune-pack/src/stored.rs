//! Reading a pack's stored archive (the normalized tar [`crate::Pack::to_archive`] writes and
//! the server keeps) back into its directories and files, for delivery into containers. This
//! crate is the only reader of pack archives.

use std::io::Read;
use std::sync::Arc;

/// One directory or file of a stored pack, relative to the pack's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub path: String,
    /// `None` for a directory.
    pub contents: Option<Arc<Vec<u8>>>,
    /// 0755 for directories and executable files, 0644 for other files.
    pub mode: u32,
}

/// Why a stored archive could not be read.
#[derive(Debug, thiserror::Error)]
#[error("read stored pack archive: {0}")]
pub struct StoredArchiveError(String);

/// The entries of a stored pack archive, in archive order.
pub fn read_stored_archive(bytes: &[u8]) -> Result<Vec<StoredEntry>, StoredArchiveError> {
    let failed = |error: std::io::Error| StoredArchiveError(error.to_string());
    let mut reader = tar::Archive::new(bytes);
    let mut entries = Vec::new();
    for entry in reader.entries().map_err(failed)? {
        let mut entry = entry.map_err(failed)?;
        let path = entry
            .path()
            .map_err(failed)?
            .to_string_lossy()
            .trim_end_matches('/')
            .trim_start_matches("./")
            .to_string();
        if path.is_empty() || path == "." {
            continue;
        }
        let executable = entry.header().mode().map_err(failed)? & 0o111 != 0;
        if entry.header().entry_type().is_dir() {
            entries.push(StoredEntry {
                path,
                contents: None,
                mode: 0o755,
            });
        } else if entry.header().entry_type().is_file() {
            let mut contents = Vec::new();
            entry
                .read_to_end(&mut contents)
                .map_err(|error| StoredArchiveError(format!("{path}: {error}")))?;
            entries.push(StoredEntry {
                path,
                contents: Some(Arc::new(contents)),
                mode: if executable { 0o755 } else { 0o644 },
            });
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_archive_reads_back_with_directories_and_modes() {
        let pack_dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/packs/hello");
        let pack = crate::load_pack_dir(&pack_dir).expect("hello loads");
        let entries = read_stored_archive(&pack.to_archive().unwrap()).unwrap();
        let greet = entries
            .iter()
            .find(|entry| entry.path == "actions/greet.sh")
            .expect("greet.sh");
        assert_eq!(greet.mode, 0o755);
        assert!(greet
            .contents
            .as_ref()
            .is_some_and(|bytes| !bytes.is_empty()));
        let manifest = entries
            .iter()
            .find(|entry| entry.path == "pack.yaml")
            .unwrap();
        assert_eq!(manifest.mode, 0o644);
        assert!(entries
            .iter()
            .any(|entry| entry.path == "actions" && entry.contents.is_none()));
    }

    #[test]
    fn bytes_that_are_not_a_tar_are_an_error() {
        let error = read_stored_archive(&[1u8; 700]).unwrap_err();
        assert!(
            error.to_string().starts_with("read stored pack archive"),
            "{error}"
        );
    }
}
