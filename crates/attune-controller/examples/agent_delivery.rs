//! Measures the two ways the agent reaches a container against a baseline, on the local engine.
//!
//! For each of N rounds and each path, one container is created, prepared, started and waited
//! for; its entrypoint is `attune-agent --version`, so a round only counts when the agent really
//! ran. Paths: `baseline` (busybox's own `true`, nothing delivered), `put-archive` (the agent
//! copied in with put_archive before start), `volume` (the shared agent volume mounted
//! read-only; filled once before the rounds, and that fill is timed on its own).
//!
//! usage: cargo run -p attune-controller --example agent_delivery -- [--iterations N]
//!        [--agent PATH] [--image IMAGE]
//! Prints a Markdown table of medians and 90th percentiles, in milliseconds.

use anyhow::{bail, Context};
use attune_controller::delivery::{agent_volume_name, VolumeContent, VolumeFiller};
use attune_controller::execution::AgentBinary;
use attune_docker::archive::{InjectionArchive, EXECUTABLE_MODE};
use attune_docker::bollard_engine::BollardEngine;
use attune_docker::{ContainerCreateSpec, DockerOps};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const AGENT_PATH: &str = "/opt/attune/bin/attune-agent";

struct Options {
    iterations: usize,
    agent: PathBuf,
    image: String,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        iterations: 20,
        agent: PathBuf::from("agent-dist/attune-agent-x86_64"),
        image: "busybox:1.36".to_string(),
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let mut value = |name: &str| {
            arguments
                .next()
                .with_context(|| format!("{name} needs a value"))
        };
        match argument.as_str() {
            "--iterations" => {
                options.iterations = value("--iterations")?
                    .parse()
                    .context("--iterations must be a whole number")?
            }
            "--agent" => options.agent = PathBuf::from(value("--agent")?),
            "--image" => options.image = value("--image")?,
            other => bail!("unknown argument {other} (known: --iterations, --agent, --image)"),
        }
    }
    if options.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    Ok(options)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Baseline,
    PutArchive,
    Volume,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Baseline => "baseline (no agent)",
            Path::PutArchive => "put-archive",
            Path::Volume => "volume",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Path::Baseline => "baseline",
            Path::PutArchive => "put-archive",
            Path::Volume => "volume",
        }
    }
}

/// Milliseconds of one round: create to ready-to-start, and create to exit.
struct Round {
    prepared: Duration,
    total: Duration,
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("attune.test".to_string(), "true".to_string()),
        ("attune.bench".to_string(), "agent-delivery".to_string()),
    ])
}

async fn one_round(
    engine: &BollardEngine,
    path: Path,
    image: &str,
    agent: &AgentBinary,
    volume: &str,
    round: usize,
) -> anyhow::Result<Round> {
    let name = format!(
        "attune-bench-delivery-{}-{}-{round}",
        std::process::id(),
        path.slug()
    );
    let (entrypoint, binds) = match path {
        Path::Baseline => (vec!["true".to_string()], Vec::new()),
        Path::PutArchive => (
            vec![AGENT_PATH.to_string(), "--version".to_string()],
            Vec::new(),
        ),
        Path::Volume => (
            vec![AGENT_PATH.to_string(), "--version".to_string()],
            vec![format!("{volume}:/opt/attune/bin:ro")],
        ),
    };
    let spec = ContainerCreateSpec {
        name,
        image: image.to_string(),
        entrypoint,
        labels: labels(),
        network_mode: Some("none".to_string()),
        init: true,
        cap_drop: vec!["ALL".to_string()],
        security_opt: vec!["no-new-privileges".to_string()],
        binds,
        ..Default::default()
    };
    let started = Instant::now();
    let container_id = engine.create_container(&spec).await?;
    let measured = async {
        if path == Path::PutArchive {
            let mut archive = InjectionArchive::new();
            archive.add_file(
                AGENT_PATH.trim_start_matches('/'),
                EXECUTABLE_MODE,
                agent.bytes.as_slice(),
            )?;
            engine
                .upload_archive(&container_id, "/", archive.finish())
                .await?;
        }
        let prepared = started.elapsed();
        engine.start_container(&container_id).await?;
        let exit_code = engine.wait_container(&container_id).await?;
        let total = started.elapsed();
        if exit_code != 0 {
            let logs = engine.container_logs(&container_id, 10).await?;
            bail!("{} round exited {exit_code}: {logs}", path.name());
        }
        Ok(Round { prepared, total })
    }
    .await;
    engine.remove_container(&container_id).await?;
    measured
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

fn summary(values: impl Iterator<Item = Duration>) -> (f64, f64) {
    let mut milliseconds: Vec<f64> = values.map(|value| value.as_secs_f64() * 1000.0).collect();
    milliseconds.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&milliseconds, 0.5),
        percentile(&milliseconds, 0.9),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let agent = AgentBinary::load(&options.agent)?;
    let engine = BollardEngine::connect(None).await?;
    let docker: Arc<dyn DockerOps> = Arc::new(engine.clone());
    if docker.inspect_image(&options.image).await?.is_none() {
        bail!(
            "image {} is not present locally (scripts/build-images.sh)",
            options.image
        );
    }
    let info = docker.engine_info().await?;

    let volume = agent_volume_name(&agent.sha256);
    let content = |volume: &str| VolumeContent {
        volume: volume.to_string(),
        labels: BTreeMap::from([
            ("attune.managed".to_string(), "true".to_string()),
            ("attune.agent-sha256".to_string(), agent.sha256.clone()),
        ]),
        identity_label: "attune.agent-sha256",
        digest: agent.sha256.clone(),
        directories: Vec::new(),
        files: vec![(
            "attune-agent".to_string(),
            EXECUTABLE_MODE,
            agent.bytes.clone(),
        )],
    };
    // The one-time fill, timed on a throwaway volume (the real one may serve a running server).
    let throwaway = format!("attune-bench-fill-{}", std::process::id());
    let filling = Instant::now();
    VolumeFiller::new(docker.clone(), "bench")
        .ensure(&content(&throwaway), &options.image)
        .await?;
    let fill = filling.elapsed();
    docker.remove_volume(&throwaway).await?;
    VolumeFiller::new(docker.clone(), "bench")
        .ensure(&content(&volume), &options.image)
        .await?;
    let checking = Instant::now();
    VolumeFiller::new(docker.clone(), "bench")
        .ensure(&content(&volume), &options.image)
        .await?;
    let check = checking.elapsed();

    let paths = [Path::Baseline, Path::PutArchive, Path::Volume];
    let mut rounds: Vec<Vec<Round>> = paths.iter().map(|_| Vec::new()).collect();
    // One warm-up round per path, then the paths interleaved so drift hits all alike.
    for (index, path) in paths.iter().enumerate() {
        one_round(
            &engine,
            *path,
            &options.image,
            &agent,
            &volume,
            usize::MAX - index,
        )
        .await?;
    }
    for round in 0..options.iterations {
        for (index, path) in paths.iter().enumerate() {
            rounds[index]
                .push(one_round(&engine, *path, &options.image, &agent, &volume, round).await?);
        }
    }

    println!(
        "engine {} (api {}), {} CPUs; image {}; agent {} bytes; {} rounds per path\n",
        info.server_version,
        info.api_version,
        info.cpus,
        options.image,
        agent.bytes.len(),
        options.iterations
    );
    println!("| path | create→ready median | p90 | create→exit median | p90 |");
    println!("|---|---:|---:|---:|---:|");
    for (index, path) in paths.iter().enumerate() {
        let (prepared_median, prepared_p90) =
            summary(rounds[index].iter().map(|round| round.prepared));
        let (total_median, total_p90) = summary(rounds[index].iter().map(|round| round.total));
        println!(
            "| {} | {prepared_median:.1} ms | {prepared_p90:.1} ms | {total_median:.1} ms | {total_p90:.1} ms |",
            path.name()
        );
    }
    println!(
        "\nvolume fill, once per agent version and host: {:.1} ms; check of a filled volume by a new process: {:.1} ms",
        fill.as_secs_f64() * 1000.0,
        check.as_secs_f64() * 1000.0
    );
    Ok(())
}
