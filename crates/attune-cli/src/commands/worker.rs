//! `attune worker list` and `attune worker get NAME`.

use super::{write_json, Context, EXIT_SUCCESS};
use crate::format::format_table;
use attune_protocol::api::List;
use attune_protocol::worker::WorkerView;
use std::io::Write;

pub(super) async fn list(context: &mut Context<'_>, json: bool) -> anyhow::Result<u8> {
    let items = context.client.list_workers().await?;
    if json {
        write_json(&mut context.terminal.stdout, &List { items })?;
    } else {
        write!(context.terminal.stdout, "{}", workers_table(&items))?;
    }
    Ok(EXIT_SUCCESS)
}

pub(super) async fn get(context: &mut Context<'_>, name: &str, json: bool) -> anyhow::Result<u8> {
    let worker = context.client.get_worker(name).await?;
    if json {
        write_json(&mut context.terminal.stdout, &worker)?;
    } else {
        write!(context.terminal.stdout, "{}", worker_text(&worker))?;
    }
    Ok(EXIT_SUCCESS)
}

/// `python 3.12.1, shell`.
fn runtimes(worker: &WorkerView) -> String {
    worker
        .runtimes
        .iter()
        .map(|runtime| match &runtime.version {
            Some(version) => format!("{} {version}", runtime.name),
            None => runtime.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn labels(worker: &WorkerView) -> String {
    worker
        .labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn workers_table(workers: &[WorkerView]) -> String {
    if workers.is_empty() {
        return "no workers\n".to_string();
    }
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|worker| {
            vec![
                worker.name.clone(),
                worker.status.to_string(),
                runtimes(worker),
                labels(worker),
                format!("{}/{}", worker.running, worker.concurrency),
                worker.last_heartbeat.clone(),
                worker.agent_version.clone(),
            ]
        })
        .collect();
    format_table(
        &[
            "NAME",
            "STATUS",
            "RUNTIMES",
            "LABELS",
            "RUNNING",
            "LAST HEARTBEAT",
            "AGENT",
        ],
        &rows,
    )
}

fn worker_text(worker: &WorkerView) -> String {
    let mut text = String::new();
    let mut line = |name: &str, value: &str| text.push_str(&format!("{name:<15} {value}\n"));
    line("name:", &worker.name);
    line("status:", worker.status.as_str());
    line("agent id:", &worker.agent_id);
    line("runtimes:", &runtimes(worker));
    line("labels:", &labels(worker));
    line(
        "running:",
        &format!("{} of {}", worker.running, worker.concurrency),
    );
    line("last heartbeat:", &worker.last_heartbeat);
    line("registered:", &worker.registered_at);
    line(
        "agent:",
        &format!("{} sha256 {}", worker.agent_version, worker.agent_sha256),
    );
    if let Some(image) = &worker.image {
        line("image:", image);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_protocol::worker::WorkerStatus;
    use attune_protocol::DetectedRuntime;

    #[test]
    fn workers_show_their_runtimes_labels_and_load() {
        let worker = WorkerView {
            name: "py-1".into(),
            agent_id: "worker-py-1-abcd".into(),
            status: WorkerStatus::Online,
            runtimes: vec![DetectedRuntime {
                name: "python".into(),
                version: Some("3.12.1".into()),
                path: "/usr/local/bin/python3".into(),
            }],
            labels: [("zone".to_string(), "eu".to_string())].into(),
            running: 1,
            concurrency: 4,
            last_heartbeat: "2026-12-02T03:00:00Z".into(),
            registered_at: "2026-12-02T02:00:00Z".into(),
            agent_version: "0.1.0".into(),
            agent_sha256: "ab".into(),
            image: None,
        };
        let table = workers_table(std::slice::from_ref(&worker));
        assert!(table.contains("py-1"), "{table}");
        assert!(table.contains("python 3.12.1"), "{table}");
        assert!(table.contains("zone=eu"), "{table}");
        assert!(table.contains("1/4"), "{table}");
        let text = worker_text(&worker);
        assert!(text.contains("running:        1 of 4"), "{text}");
        assert_eq!(workers_table(&[]), "no workers\n");
    }
}
