//! Where the CLI keeps its API token: `attune login` checks a token against the server and
//! writes it to `$ATTUNE_CONFIG_DIR/token` (else `$XDG_CONFIG_HOME/attune/token`, else
//! `~/.config/attune/token`) with mode 0600; every command sends `ATTUNE_API_TOKEN` when set,
//! else that file's token. A token file others can read is refused, not used.

use anyhow::{bail, Context};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The token file's path.
pub fn token_path() -> anyhow::Result<PathBuf> {
    if let Some(directory) = std::env::var_os("ATTUNE_CONFIG_DIR").filter(|value| !value.is_empty())
    {
        return Ok(PathBuf::from(directory).join("token"));
    }
    if let Some(directory) = std::env::var_os("XDG_CONFIG_HOME").filter(|value| !value.is_empty()) {
        return Ok(PathBuf::from(directory).join("attune/token"));
    }
    let home = std::env::var_os("HOME")
        .filter(|value| !value.is_empty())
        .context("no HOME, XDG_CONFIG_HOME or ATTUNE_CONFIG_DIR to keep the API token in")?;
    Ok(PathBuf::from(home).join(".config/attune/token"))
}

/// Reads a token file: the first line, trimmed; refuses a file group or others may read.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("read token file {}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "token file {} is readable by others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(token)
}

/// The token to send: `explicit` (ATTUNE_API_TOKEN), else the saved one, else none.
pub fn resolve_token(explicit: Option<&str>) -> anyhow::Result<Option<String>> {
    if let Some(token) = explicit.map(str::trim).filter(|token| !token.is_empty()) {
        return Ok(Some(token.to_string()));
    }
    let path = token_path()?;
    if !path.exists() {
        return Ok(None);
    }
    read_token_file(&path).map(Some)
}

/// Saves `token` to the token file with mode 0600 (replacing an older one).
pub fn save_token(token: &str) -> anyhow::Result<PathBuf> {
    let path = token_path()?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let pending = path.with_extension("pending");
    let _ = std::fs::remove_file(&pending);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&pending)
        .with_context(|| format!("write {}", pending.display()))?;
    writeln!(file, "{token}").with_context(|| format!("write {}", pending.display()))?;
    std::fs::rename(&pending, &path).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token");
        std::fs::write(&path, "attune_abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_token_file(&path).unwrap_err().to_string();
        assert!(error.contains("readable by others (mode 644)"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "attune_abc");
    }
}
