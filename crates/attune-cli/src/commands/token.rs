//! `attune token create|list|revoke` and `attune login`.

use super::{write_json, Context, EXIT_SUCCESS};
use crate::format::format_table;
use attune_protocol::api::{List, Role, TokenView};
use std::io::{Read, Write};
use std::path::Path;

pub(super) async fn create(
    context: &mut Context<'_>,
    name: &str,
    role: Role,
    json: bool,
) -> anyhow::Result<u8> {
    let created = context.client.create_token(name, role).await?;
    if json {
        write_json(&mut context.terminal.stdout, &created)?;
    } else {
        writeln!(context.terminal.stdout, "{}", created.token)?;
        writeln!(
            context.terminal.stderr,
            "token {} ({}, {}) created; it is shown only this once",
            created.view.id, created.view.name, created.view.role
        )?;
    }
    Ok(EXIT_SUCCESS)
}

pub(super) async fn list(context: &mut Context<'_>, json: bool) -> anyhow::Result<u8> {
    let items = context.client.list_tokens().await?;
    if json {
        write_json(&mut context.terminal.stdout, &List { items })?;
    } else {
        write!(context.terminal.stdout, "{}", tokens_table(&items))?;
    }
    Ok(EXIT_SUCCESS)
}

pub(super) async fn revoke(context: &mut Context<'_>, id: i64) -> anyhow::Result<u8> {
    let revoked = context.client.revoke_token(id).await?;
    writeln!(
        context.terminal.stdout,
        "token {} ({}) revoked",
        revoked.id, revoked.name
    )?;
    Ok(EXIT_SUCCESS)
}

/// Checks the token (from `token_file`, else stdin) with the server, then saves it.
pub(super) async fn login(
    api_url: &str,
    token_file: Option<&Path>,
    context: &mut Context<'_>,
) -> anyhow::Result<u8> {
    let token = match token_file {
        Some(path) => crate::credentials::read_token_file(path)?,
        None => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text.lines().next().unwrap_or_default().trim().to_string()
        }
    };
    anyhow::ensure!(
        !token.is_empty(),
        "no token given (on stdin or with --token-file)"
    );
    let client = attune_client::ApiClient::with_token(api_url, &token)?;
    let me = client.whoami().await?;
    let path = crate::credentials::save_token(&token)?;
    context.client = client;
    writeln!(
        context.terminal.stdout,
        "logged in to {api_url} as {} ({}); token saved in {}",
        me.name,
        me.role,
        path.display()
    )?;
    Ok(EXIT_SUCCESS)
}

fn tokens_table(tokens: &[TokenView]) -> String {
    if tokens.is_empty() {
        return "no tokens\n".to_string();
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|token| {
            vec![
                token.id.to_string(),
                token.name.clone(),
                token.role.to_string(),
                token.created_at.clone(),
                token.revoked_at.clone().unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    format_table(&["ID", "NAME", "ROLE", "CREATED", "REVOKED"], &rows)
}
