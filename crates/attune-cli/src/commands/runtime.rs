//! `attune runtime list`: the runtime registry.

use super::{write_json, Context, EXIT_SUCCESS};
use crate::format::format_table;
use attune_protocol::api::{List, RuntimeView};
use std::io::Write;

pub(super) async fn list(context: &mut Context<'_>, json: bool) -> anyhow::Result<u8> {
    let items = context.client.list_runtimes().await?;
    if json {
        write_json(&mut context.terminal.stdout, &List { items })?;
    } else {
        write!(context.terminal.stdout, "{}", runtimes_table(&items))?;
    }
    Ok(EXIT_SUCCESS)
}

/// `template`, `pack <ref>` or `detected`.
fn source(runtime: &RuntimeView) -> String {
    match (&runtime.pack_ref, runtime.auto_detected) {
        (Some(pack_ref), _) => format!("pack {pack_ref}"),
        (None, true) => "detected".to_string(),
        (None, false) => "template".to_string(),
    }
}

/// `virtualenv (requirements.txt)`, or `-` when it installs nothing.
fn environment(runtime: &RuntimeView) -> String {
    match &runtime.environment {
        Some(environment) => match &environment.manifest_file {
            Some(manifest) => format!("{} ({manifest})", environment.kind),
            None => environment.kind.to_string(),
        },
        None => "-".to_string(),
    }
}

fn or_dash(value: Option<&str>) -> String {
    value
        .filter(|value| !value.is_empty())
        .unwrap_or("-")
        .to_string()
}

fn runtimes_table(runtimes: &[RuntimeView]) -> String {
    if runtimes.is_empty() {
        return "no runtimes\n".to_string();
    }
    let rows: Vec<Vec<String>> = runtimes
        .iter()
        .map(|runtime| {
            vec![
                runtime.runtime_ref.clone(),
                runtime.name.clone(),
                source(runtime),
                or_dash(Some(&runtime.interpreters.join(","))),
                or_dash(runtime.file_extension.as_deref()),
                or_dash(runtime.version_command.as_deref()),
                environment(runtime),
            ]
        })
        .collect();
    format_table(
        &[
            "REF",
            "NAME",
            "SOURCE",
            "INTERPRETERS",
            "EXTENSION",
            "VERSION COMMAND",
            "ENVIRONMENT",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_protocol::api::{RuntimeEnvironment, RuntimeEnvironmentKind};

    fn runtime(runtime_ref: &str, name: &str) -> RuntimeView {
        RuntimeView {
            runtime_ref: runtime_ref.into(),
            name: name.into(),
            pack_ref: None,
            description: String::new(),
            aliases: Vec::new(),
            interpreters: Vec::new(),
            file_extension: None,
            version_command: None,
            version_regex: None,
            environment: None,
            auto_detected: false,
            created_at: "2026-12-02T03:00:00Z".into(),
        }
    }

    #[test]
    fn runtimes_show_their_source_interpreters_and_environment() {
        let mut python = runtime("core.python", "python");
        python.interpreters = vec!["python3".into(), "python".into()];
        python.file_extension = Some(".py".into());
        python.version_command = Some("python3 --version".into());
        python.environment = Some(RuntimeEnvironment {
            kind: RuntimeEnvironmentKind::Virtualenv,
            manifest_file: Some("requirements.txt".into()),
            create_command: Vec::new(),
            install_command: Vec::new(),
            interpreter_path: None,
            env_vars: Default::default(),
        });
        let mut lua = runtime("tools.lua", "lua");
        lua.pack_ref = Some("tools".into());
        let mut deno = runtime("detected.deno", "deno");
        deno.auto_detected = true;
        deno.interpreters = vec!["deno".into()];

        let table = runtimes_table(&[python, lua, deno]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("REF"), "{table}");
        assert!(lines[1].contains("template"), "{table}");
        assert!(lines[1].contains("python3,python"), "{table}");
        assert!(lines[1].contains("python3 --version"), "{table}");
        assert!(
            lines[1].contains("virtualenv (requirements.txt)"),
            "{table}"
        );
        assert!(lines[2].contains("pack tools"), "{table}");
        assert!(lines[3].contains("detected"), "{table}");
        assert!(lines[3].ends_with('-'), "no environment: {table}");
        assert_eq!(runtimes_table(&[]), "no runtimes\n");
    }
}
