//! `attune action list` and `attune action get`.

use super::{write_json, Context, EXIT_SUCCESS};
use crate::format::{format_table, truncate};
use attune_protocol::api::{ActionView, List};
use serde_json::Value;
use std::io::Write;

/// Longest description shown in tables.
const MAX_DESCRIPTION_CHARS: usize = 60;

/// Lists registered actions.
pub(super) async fn list(context: &mut Context<'_>, json: bool) -> anyhow::Result<u8> {
    let actions = context.client.list_actions().await?;
    let output = &mut context.terminal.stdout;
    if json {
        write_json(output, &List { items: actions })?;
        return Ok(EXIT_SUCCESS);
    }
    if actions.is_empty() {
        writeln!(output, "no actions registered")?;
        return Ok(EXIT_SUCCESS);
    }
    let rows: Vec<Vec<String>> = actions
        .iter()
        .map(|action| {
            vec![
                action.action_ref.clone(),
                action.runner_type.clone(),
                action
                    .container
                    .as_ref()
                    .map(|container| container.image.clone())
                    .unwrap_or_else(|| "-".to_string()),
                format!("{}s", action.timeout),
                truncate(&action.description, MAX_DESCRIPTION_CHARS),
            ]
        })
        .collect();
    write!(
        output,
        "{}",
        format_table(&["REF", "RUNNER", "IMAGE", "TIMEOUT", "DESCRIPTION"], &rows)
    )?;
    Ok(EXIT_SUCCESS)
}

/// Shows one action and its parameters.
pub(super) async fn get(
    context: &mut Context<'_>,
    action_ref: &str,
    json: bool,
) -> anyhow::Result<u8> {
    let action = context.client.get_action(action_ref).await?;
    let output = &mut context.terminal.stdout;
    if json {
        write_json(output, &action)?;
    } else {
        output.write_all(describe_action(&action).as_bytes())?;
    }
    Ok(EXIT_SUCCESS)
}

/// The text form of an action: its fields, then a table of its parameters.
pub fn describe_action(action: &ActionView) -> String {
    let mut lines = vec![
        ("ref", action.action_ref.clone()),
        ("pack", action.pack.clone()),
        ("label", action.label.clone()),
        ("description", action.description.clone()),
        ("runner_type", action.runner_type.clone()),
        ("entry_point", action.entry_point.clone()),
        ("timeout", format!("{}s", action.timeout)),
        (
            "parameters",
            format!(
                "delivered by {}, formatted as {}",
                enum_name(&action.parameter_delivery),
                enum_name(&action.parameter_format)
            ),
        ),
    ];
    if let Some(container) = &action.container {
        lines.push((
            "image",
            format!(
                "{} (pull {})",
                container.image,
                enum_name(&container.pull_policy)
            ),
        ));
        if let Some(user) = &container.user {
            lines.push(("user", user.clone()));
        }
        if let Some(workdir) = &container.workdir {
            lines.push(("workdir", workdir.clone()));
        }
        if let Some(resources) = &container.resources {
            let limits: Vec<String> = [
                resources
                    .memory
                    .as_ref()
                    .map(|memory| format!("memory {memory}")),
                resources.cpus.map(|cpus| format!("cpus {cpus}")),
                resources.pids.map(|pids| format!("pids {pids}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            lines.push(("resources", limits.join(", ")));
        }
        if container.read_only {
            lines.push(("read_only", "yes".to_string()));
        }
        if !container.cap_add.is_empty() {
            lines.push(("cap_add", container.cap_add.join(", ")));
        }
        for (name, value) in &container.env {
            lines.push(("env", format!("{name}={value}")));
        }
    }
    if let Some(isolation) = &action.isolation {
        lines.push(("isolation", enum_name(isolation)));
    }
    if let Some(pool) = &action.pool {
        lines.push((
            "pool",
            format!(
                "min_idle {}, max {}, idle_timeout {}, max_uses {}",
                pool.min_idle,
                pool.max,
                format_seconds(pool.idle_timeout_seconds),
                pool.max_uses
            ),
        ));
    }
    if action.idempotent {
        lines.push(("idempotent", "yes".to_string()));
    }
    let mut text = String::new();
    for (name, value) in lines {
        if !value.is_empty() {
            text.push_str(&format!("{:<13}{value}\n", format!("{name}:")));
        }
    }
    let rows = parameter_rows(&action.parameters);
    if rows.is_empty() {
        text.push_str("\nno parameters\n");
    } else {
        text.push('\n');
        text.push_str(&format_table(
            &["PARAMETER", "TYPE", "REQUIRED", "DEFAULT", "DESCRIPTION"],
            &rows,
        ));
    }
    text
}

/// Whole seconds as the pack format writes them: `45s`, `5m`, `1h30m`.
fn format_seconds(total_seconds: u64) -> String {
    let (hours, minutes, seconds) = (
        total_seconds / 3_600,
        total_seconds % 3_600 / 60,
        total_seconds % 60,
    );
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 || text.is_empty() {
        text.push_str(&format!("{seconds}s"));
    }
    text
}

/// The serde name of a unit enum value (`if-not-present`, `stdin`).
fn enum_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn parameter_rows(schema: &Value) -> Vec<Vec<String>> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    properties
        .iter()
        .map(|(name, property)| {
            let secret = property.get("secret") == Some(&Value::Bool(true));
            let kind = match property.get("type") {
                Some(Value::String(kind)) => kind.clone(),
                Some(other) => other.to_string(),
                None => "any".to_string(),
            };
            let kind = if secret {
                format!("{kind} (secret)")
            } else {
                kind
            };
            let default = match property.get("default") {
                None => String::new(),
                Some(_) if secret => attune_pack::REDACTED.to_string(),
                Some(value) => value.to_string(),
            };
            let description = property
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            vec![
                name.clone(),
                kind,
                if required.contains(&name.as_str()) {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
                default,
                truncate(description, MAX_DESCRIPTION_CHARS),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_protocol::api::{ContainerSpec, Isolation, PoolSpec, ResourceSpec};
    use attune_protocol::{ParameterDelivery, ParameterFormat};
    use serde_json::json;

    #[test]
    fn action_text_lists_fields_and_parameters() {
        let action = ActionView {
            action_ref: "hello.stats".to_string(),
            pack: "hello".to_string(),
            label: "Word statistics".to_string(),
            description: String::new(),
            runner_type: "python".to_string(),
            entry_point: "stats.py".to_string(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "text": {"type": "string", "description": "what to count"},
                    "api_token": {"type": "string", "secret": true, "default": "abc"}
                },
                "required": ["text"]
            }),
            parameter_delivery: ParameterDelivery::Stdin,
            parameter_format: ParameterFormat::Json,
            timeout: 60,
            container: Some(ContainerSpec {
                image: "python:3.11-slim".to_string(),
                ..ContainerSpec::default()
            }),
            isolation: None,
            pool: None,
            idempotent: false,
        };
        assert_eq!(
            describe_action(&action),
            "\
ref:         hello.stats
pack:        hello
label:       Word statistics
runner_type: python
entry_point: stats.py
timeout:     60s
parameters:  delivered by stdin, formatted as json
image:       python:3.11-slim (pull if-not-present)

PARAMETER  TYPE             REQUIRED  DEFAULT   DESCRIPTION
api_token  string (secret)  no        ********
text       string           yes                 what to count
"
        );
    }

    #[test]
    fn action_text_shows_isolation_pool_and_container_limits() {
        let action = ActionView {
            action_ref: "hello.quick".to_string(),
            pack: "hello".to_string(),
            label: String::new(),
            description: String::new(),
            runner_type: "shell".to_string(),
            entry_point: "quick.sh".to_string(),
            parameters: json!({"type": "object", "properties": {}}),
            parameter_delivery: ParameterDelivery::Env,
            parameter_format: ParameterFormat::Dotenv,
            timeout: 10,
            container: Some(ContainerSpec {
                image: "busybox:1.36".to_string(),
                resources: Some(ResourceSpec {
                    memory: Some("256Mi".to_string()),
                    cpus: Some(0.5),
                    pids: Some(64),
                }),
                read_only: true,
                cap_add: vec!["NET_BIND_SERVICE".to_string(), "CHOWN".to_string()],
                ..ContainerSpec::default()
            }),
            isolation: Some(Isolation::Pooled),
            pool: Some(PoolSpec {
                min_idle: 1,
                max: 4,
                idle_timeout_seconds: 300,
                max_uses: 50,
            }),
            idempotent: true,
        };
        assert_eq!(
            describe_action(&action),
            "\
ref:         hello.quick
pack:        hello
runner_type: shell
entry_point: quick.sh
timeout:     10s
parameters:  delivered by env, formatted as dotenv
image:       busybox:1.36 (pull if-not-present)
resources:   memory 256Mi, cpus 0.5, pids 64
read_only:   yes
cap_add:     NET_BIND_SERVICE, CHOWN
isolation:   pooled
pool:        min_idle 1, max 4, idle_timeout 5m, max_uses 50
idempotent:  yes

no parameters
"
        );

        let partial = ActionView {
            container: Some(ContainerSpec {
                image: "busybox:1.36".to_string(),
                resources: Some(ResourceSpec {
                    pids: Some(32),
                    ..ResourceSpec::default()
                }),
                ..ContainerSpec::default()
            }),
            isolation: Some(Isolation::PerExecution),
            pool: None,
            idempotent: false,
            ..action
        };
        let text = describe_action(&partial);
        assert!(text.contains("\nresources:   pids 32\n"), "{text}");
        assert!(text.contains("\nisolation:   per-execution\n"), "{text}");
        for absent in ["read_only:", "cap_add:", "pool:", "idempotent:"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
    }

    #[test]
    fn seconds_are_written_like_pack_durations() {
        assert_eq!(format_seconds(0), "0s");
        assert_eq!(format_seconds(45), "45s");
        assert_eq!(format_seconds(300), "5m");
        assert_eq!(format_seconds(5_400), "1h30m");
        assert_eq!(format_seconds(86_400), "24h");
        assert_eq!(format_seconds(3_661), "1h1m1s");
    }
}
