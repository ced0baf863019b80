//! The runtime registry (`runtimes`): the templates the migration seeds (`core.<family>`), the
//! runtimes packs define in `runtimes/*.yaml` (replaced whenever their pack is registered), and
//! those workers report at enrollment that no record covers (`detected.<name>`,
//! `auto_detected`).
//!
//! Whether a record covers a reported runtime: for the interpreter families of
//! [`attune_protocol::Runtime`], a record whose name or one of whose aliases parses as the same
//! family does (`python3` is covered by `core.python`; `Node.js` covers `nodejs`); for any
//! other name, a record with that name or alias (ASCII case ignored) does. `native` is never
//! recorded: it has no interpreter to describe.
//!
//! Writers take `SHARE ROW EXCLUSIVE` on the table (it conflicts with itself), so an enrollment
//! that looks for a cover and a pack registration that adds one never interleave.

use crate::{Store, StoreError};
use attune_pack::{Pack, RuntimeDefinition};
use attune_protocol::api::{RuntimeEnvironment, RuntimeView};
use attune_protocol::{DetectedRuntime, Runtime};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use std::str::FromStr;

/// The ref prefix of runtimes recorded from workers' reports.
pub const DETECTED_PREFIX: &str = "detected";

/// A runtime as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeRow {
    pub runtime_ref: String,
    pub name: String,
    pub pack_ref: Option<String>,
    pub description: String,
    pub aliases: Vec<String>,
    pub interpreters: Vec<String>,
    pub file_extension: Option<String>,
    pub version_command: Option<String>,
    pub version_regex: Option<String>,
    pub environment: Option<RuntimeEnvironment>,
    pub auto_detected: bool,
    pub created_at: DateTime<Utc>,
}

impl RuntimeRow {
    /// The API view of this runtime.
    pub fn view(&self) -> RuntimeView {
        RuntimeView {
            runtime_ref: self.runtime_ref.clone(),
            name: self.name.clone(),
            pack_ref: self.pack_ref.clone(),
            description: self.description.clone(),
            aliases: self.aliases.clone(),
            interpreters: self.interpreters.clone(),
            file_extension: self.file_extension.clone(),
            version_command: self.version_command.clone(),
            version_regex: self.version_regex.clone(),
            environment: self.environment.clone(),
            auto_detected: self.auto_detected,
            created_at: self.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }
    }

    /// Whether this record covers a runtime a worker reports as `reported` (module docs).
    pub fn covers(&self, reported: &str) -> bool {
        let mut names =
            std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str));
        match Runtime::from_str(reported) {
            Ok(family) => names.any(|name| Runtime::from_str(name) == Ok(family)),
            Err(_) => names.any(|name| name.trim().eq_ignore_ascii_case(reported.trim())),
        }
    }
}

type RuntimeTuple = (
    String,
    String,
    Option<String>,
    String,
    Vec<String>,
    Vec<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Value>,
    bool,
    DateTime<Utc>,
);

const RUNTIME_COLUMNS: &str = "ref, name, pack_ref, description, aliases, interpreters, \
    file_extension, version_command, version_regex, environment, auto_detected, created_at";

fn decode_runtime(row: RuntimeTuple) -> Result<RuntimeRow, StoreError> {
    let environment = row
        .9
        .map(serde_json::from_value::<RuntimeEnvironment>)
        .transpose()
        .map_err(|error| {
            StoreError::Corrupt(format!("runtime {}: stored environment: {error}", row.0))
        })?;
    Ok(RuntimeRow {
        runtime_ref: row.0,
        name: row.1,
        pack_ref: row.2,
        description: row.3,
        aliases: row.4,
        interpreters: row.5,
        file_extension: row.6,
        version_command: row.7,
        version_regex: row.8,
        environment,
        auto_detected: row.10,
        created_at: row.11,
    })
}

async fn lock_runtimes(transaction: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("LOCK TABLE runtimes IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

async fn all_runtimes(
    transaction: &mut Transaction<'_, Postgres>,
) -> Result<Vec<RuntimeRow>, StoreError> {
    let rows: Vec<RuntimeTuple> = sqlx::query_as(&format!(
        "SELECT {RUNTIME_COLUMNS} FROM runtimes ORDER BY ref"
    ))
    .fetch_all(&mut **transaction)
    .await?;
    rows.into_iter().map(decode_runtime).collect()
}

/// Replaces the runtimes of `pack` with those of its `runtimes/*.yaml` files, inside the
/// pack's registration (`Store::register_pack`). A pack runtime takes over a template or a
/// detected record of the same ref, and detected records its runtimes now cover are removed.
pub(crate) async fn replace_pack_runtimes(
    transaction: &mut Transaction<'_, Postgres>,
    pack: &Pack,
) -> Result<(), StoreError> {
    lock_runtimes(transaction).await?;
    sqlx::query("DELETE FROM runtimes WHERE pack_ref = $1")
        .bind(&pack.pack_ref)
        .execute(&mut **transaction)
        .await?;
    for runtime in &pack.runtimes {
        insert_pack_runtime(transaction, &pack.pack_ref, runtime).await?;
    }
    let covered: Vec<String> = pack
        .runtimes
        .iter()
        .flat_map(|runtime| std::iter::once(&runtime.name).chain(&runtime.aliases))
        .map(|name| name.to_ascii_lowercase())
        .collect();
    if !covered.is_empty() {
        sqlx::query(
            "DELETE FROM runtimes WHERE auto_detected AND pack_ref IS NULL
               AND lower(name) = ANY($1)",
        )
        .bind(&covered)
        .execute(&mut **transaction)
        .await?;
    }
    Ok(())
}

async fn insert_pack_runtime(
    transaction: &mut Transaction<'_, Postgres>,
    pack_ref: &str,
    runtime: &RuntimeDefinition,
) -> Result<(), StoreError> {
    let environment = runtime
        .environment
        .as_ref()
        .map(|environment| serde_json::to_value(environment).expect("environments serialize"));
    let stored: Option<String> = sqlx::query_scalar(
        "INSERT INTO runtimes (ref, name, pack_ref, description, aliases, interpreters,
             file_extension, version_command, version_regex, environment, auto_detected)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, FALSE)
         ON CONFLICT (ref) DO UPDATE SET name = EXCLUDED.name, pack_ref = EXCLUDED.pack_ref,
             description = EXCLUDED.description, aliases = EXCLUDED.aliases,
             interpreters = EXCLUDED.interpreters, file_extension = EXCLUDED.file_extension,
             version_command = EXCLUDED.version_command, version_regex = EXCLUDED.version_regex,
             environment = EXCLUDED.environment, auto_detected = FALSE, created_at = now()
         WHERE runtimes.pack_ref IS NULL
         RETURNING ref",
    )
    .bind(&runtime.runtime_ref)
    .bind(&runtime.name)
    .bind(pack_ref)
    .bind(&runtime.description)
    .bind(&runtime.aliases)
    .bind(&runtime.interpreters)
    .bind(&runtime.file_extension)
    .bind(&runtime.version_command)
    .bind(&runtime.version_regex)
    .bind(environment)
    .fetch_optional(&mut **transaction)
    .await?;
    if stored.is_none() {
        return Err(StoreError::Conflict(format!(
            "runtime {} ({}) already belongs to another pack",
            runtime.runtime_ref, runtime.metadata_file
        )));
    }
    Ok(())
}

impl Store {
    /// Every runtime of the registry, by ref.
    pub async fn list_runtimes(&self) -> Result<Vec<RuntimeRow>, StoreError> {
        let rows: Vec<RuntimeTuple> = sqlx::query_as(&format!(
            "SELECT {RUNTIME_COLUMNS} FROM runtimes ORDER BY ref"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(decode_runtime).collect()
    }

    /// Records, `auto_detected`, each runtime a worker reported that no record covers (module
    /// docs), as `detected.<name>` with the interpreter's file name. Idempotent: a runtime
    /// recorded once covers itself after. Returns the refs it added.
    pub async fn record_detected_runtimes(
        &self,
        reported: &[DetectedRuntime],
    ) -> Result<Vec<String>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        lock_runtimes(&mut transaction).await?;
        let mut known = all_runtimes(&mut transaction).await?;
        let mut added = Vec::new();
        for runtime in reported {
            let name = runtime.name.trim();
            if name.is_empty()
                || Runtime::from_str(name) == Ok(Runtime::Native)
                || known.iter().any(|row| row.covers(name))
            {
                continue;
            }
            let runtime_ref = format!("{DETECTED_PREFIX}.{}", name.to_ascii_lowercase());
            let interpreter = std::path::Path::new(&runtime.path)
                .file_name()
                .map(|file_name| file_name.to_string_lossy().into_owned());
            let description = match (&runtime.version, runtime.path.is_empty()) {
                (Some(version), false) => {
                    format!(
                        "reported by a worker: version {version} at {}",
                        runtime.path
                    )
                }
                (None, false) => format!("reported by a worker at {}", runtime.path),
                (Some(version), true) => format!("reported by a worker: version {version}"),
                (None, true) => "reported by a worker".to_string(),
            };
            let row: Option<RuntimeTuple> = sqlx::query_as(&format!(
                "INSERT INTO runtimes (ref, name, description, interpreters, auto_detected)
                 VALUES ($1, $2, $3, $4, TRUE)
                 ON CONFLICT (ref) DO NOTHING
                 RETURNING {RUNTIME_COLUMNS}"
            ))
            .bind(&runtime_ref)
            .bind(name)
            .bind(&description)
            .bind(interpreter.into_iter().collect::<Vec<_>>())
            .fetch_optional(&mut *transaction)
            .await?;
            if let Some(row) = row {
                known.push(decode_runtime(row)?);
                added.push(runtime_ref);
            }
        }
        transaction.commit().await?;
        if !added.is_empty() {
            tracing::info!(runtimes = ?added, "recorded runtimes a worker reported that no record covered");
        }
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, aliases: &[&str]) -> RuntimeRow {
        RuntimeRow {
            runtime_ref: format!("x.{name}"),
            name: name.to_string(),
            pack_ref: None,
            description: String::new(),
            aliases: aliases.iter().map(|alias| alias.to_string()).collect(),
            interpreters: Vec::new(),
            file_extension: None,
            version_command: None,
            version_regex: None,
            environment: None,
            auto_detected: false,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn families_are_matched_by_alias_and_other_names_exactly() {
        assert!(row("python", &[]).covers("python3"));
        assert!(row("Python", &[]).covers("python"));
        assert!(row("Node.js", &[]).covers("nodejs"));
        assert!(row("JavaScript", &["node"]).covers("node"));
        assert!(!row("python", &[]).covers("ruby"));
        assert!(row("Deno", &[]).covers("deno"));
        assert!(row("TypeScript", &["deno"]).covers("deno"));
        assert!(!row("deno", &[]).covers("deno2"));
        assert!(!row("python", &[]).covers("deno"));
    }
}
