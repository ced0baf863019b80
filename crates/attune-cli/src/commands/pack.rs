//! `attune pack register` and `attune pack list`.

use super::{write_json, Context, EXIT_SUCCESS};
use crate::client::error_message;
use crate::format::{format_table, format_timestamp};
use anyhow::{anyhow, Context as _};
use attune_protocol::api::List;
use std::io::Write;
use std::path::Path;

/// Validates the pack directory locally, uploads its archive and prints a summary.
pub(super) async fn register(
    context: &mut Context<'_>,
    dir: &Path,
    force: bool,
) -> anyhow::Result<u8> {
    let pack = attune_pack::load_pack_dir(dir)
        .map_err(|error| anyhow!("invalid pack {}: {error}", dir.display()))?;
    let archive = pack
        .to_archive()
        .with_context(|| format!("build the archive of pack {}", dir.display()))?;
    let archive_size = archive.len();
    let view = match context.client.register_pack(archive, force).await {
        Ok(view) => view,
        Err(error) => {
            let message = error_message(&error);
            if error.status() == Some(409) && !message.contains("--force") {
                return Err(anyhow!("{message} (use --force to replace it)"));
            }
            return Err(error.into());
        }
    };
    let output = &mut context.terminal.stdout;
    let version = if view.version.is_empty() {
        String::new()
    } else {
        format!(" {}", view.version)
    };
    writeln!(
        output,
        "registered pack {}{version} ({} files, {archive_size} bytes, sha256 {})",
        view.pack_ref,
        pack.files.len(),
        &pack.sha256[..12.min(pack.sha256.len())]
    )?;
    if view.actions.is_empty() {
        writeln!(output, "no actions")?;
    } else {
        let rows: Vec<Vec<String>> = view
            .actions
            .iter()
            .map(|action_ref| {
                let local = pack.action(action_ref);
                vec![
                    action_ref.clone(),
                    local
                        .map(|action| action.runner_type.clone())
                        .unwrap_or_default(),
                    local
                        .and_then(|action| action.container.as_ref())
                        .map(|container| container.image.clone())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        write!(
            output,
            "{}",
            format_table(&["ACTION", "RUNNER", "IMAGE"], &rows)
        )?;
    }
    Ok(EXIT_SUCCESS)
}

/// Lists registered packs.
pub(super) async fn list(context: &mut Context<'_>, json: bool) -> anyhow::Result<u8> {
    let packs = context.client.list_packs().await?;
    let output = &mut context.terminal.stdout;
    if json {
        write_json(output, &List { items: packs })?;
        return Ok(EXIT_SUCCESS);
    }
    if packs.is_empty() {
        writeln!(output, "no packs registered")?;
        return Ok(EXIT_SUCCESS);
    }
    let rows: Vec<Vec<String>> = packs
        .iter()
        .map(|pack| {
            vec![
                pack.pack_ref.clone(),
                pack.version.clone(),
                pack.actions.len().to_string(),
                format_timestamp(&pack.registered_at),
                pack.label.clone(),
            ]
        })
        .collect();
    write!(
        output,
        "{}",
        format_table(&["REF", "VERSION", "ACTIONS", "REGISTERED", "LABEL"], &rows)
    )?;
    Ok(EXIT_SUCCESS)
}
