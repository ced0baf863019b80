//! `attune pool list` and `attune container list`.

use super::{write_json, Context, EXIT_SUCCESS};
use crate::format::format_table;
use attune_protocol::api::{ContainerView, List, PoolView};
use std::io::Write;

pub(super) async fn list_pools(context: &mut Context<'_>, json: bool) -> anyhow::Result<u8> {
    let items = context.client.list_pools().await?;
    if json {
        write_json(&mut context.terminal.stdout, &List { items })?;
    } else {
        write!(context.terminal.stdout, "{}", pools_table(&items))?;
    }
    Ok(EXIT_SUCCESS)
}

pub(super) async fn list_containers(context: &mut Context<'_>, json: bool) -> anyhow::Result<u8> {
    let items = context.client.list_containers().await?;
    if json {
        write_json(&mut context.terminal.stdout, &List { items })?;
    } else {
        write!(context.terminal.stdout, "{}", containers_table(&items))?;
    }
    Ok(EXIT_SUCCESS)
}

fn pools_table(pools: &[PoolView]) -> String {
    if pools.is_empty() {
        return "no warm pools\n".to_string();
    }
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|pool| {
            vec![
                pool.controller_id.clone(),
                pool.key.clone(),
                pool.image.clone(),
                pool.ready.to_string(),
                pool.busy.to_string(),
                pool.starting.to_string(),
                pool.total_created.to_string(),
                pool.retired.to_string(),
                format!("{}..{}", pool.min_idle, pool.max),
            ]
        })
        .collect();
    format_table(
        &[
            "CONTROLLER",
            "POOL",
            "IMAGE",
            "READY",
            "BUSY",
            "STARTING",
            "CREATED",
            "RETIRED",
            "SIZE",
        ],
        &rows,
    )
}

fn containers_table(containers: &[ContainerView]) -> String {
    if containers.is_empty() {
        return "no managed containers\n".to_string();
    }
    let rows: Vec<Vec<String>> = containers
        .iter()
        .map(|container| {
            vec![
                container.controller_id.clone(),
                container.container_id.chars().take(12).collect(),
                container.state.clone(),
                container.pool.clone().unwrap_or_else(|| "-".into()),
                container
                    .execution_id
                    .map(|id| id.to_string())
                    .unwrap_or_else(|| "-".into()),
                container.image.clone(),
                container.uses.to_string(),
            ]
        })
        .collect();
    format_table(
        &[
            "CONTROLLER",
            "CONTAINER",
            "STATE",
            "POOL",
            "EXECUTION",
            "IMAGE",
            "USES",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_render_as_a_table() {
        let pools = vec![PoolView {
            controller_id: "controller-a".into(),
            key: "hello-0a1b2c3d4e5f".into(),
            pack: "hello".into(),
            image: "busybox:1.36".into(),
            image_id: "sha256:abc".into(),
            agent_sha256: "def".into(),
            resource_class: "default".into(),
            ready: 2,
            busy: 1,
            starting: 0,
            total_created: 3,
            retired: 0,
            min_idle: 2,
            max: 8,
        }];
        let table = pools_table(&pools);
        assert!(table.starts_with("CONTROLLER"), "{table}");
        assert!(table.contains("controller-a"), "{table}");
        assert!(table.contains("hello-0a1b2c3d4e5f"), "{table}");
        assert!(table.contains("2..8"), "{table}");
        assert_eq!(pools_table(&[]), "no warm pools\n");
    }

    #[test]
    fn containers_render_with_dashes_for_missing_fields() {
        let containers = vec![ContainerView {
            controller_id: "controller-a".into(),
            container_id: "0123456789abcdef".into(),
            state: "idle".into(),
            pool: Some("hello-0a1b".into()),
            execution_id: None,
            agent_id: Some("pool-1".into()),
            image: "busybox:1.36".into(),
            uses: 4,
        }];
        let table = containers_table(&containers);
        assert!(table.contains("idle"), "{table}");
        assert!(table.contains(" - "), "{table}");
        assert_eq!(containers_table(&[]), "no managed containers\n");
    }
}
