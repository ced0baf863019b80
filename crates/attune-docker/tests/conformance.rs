//! One conformance suite, run against both the recording fake and the real engine: the fake
//! that the controller's logic tests trust must answer the cases the controller relies on the
//! way Docker 20.10 does (absent things read as `None`, removals are idempotent, duplicate
//! names and unknown images are refused with the right kind, labels filter lists, kills of
//! stopped containers are tolerated, exit codes come back from waits, volumes keep labels,
//! uploads into a read-only root fail). The real engine needs `busybox:1.36`
//! (scripts/build-images.sh); every container and volume is labelled `attune.test=true` and
//! removed by its case.

use attune_docker::bollard_engine::BollardEngine;
use attune_docker::fake::RecordingDocker;
use attune_docker::{ContainerCreateSpec, DockerError, DockerOps};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const IMAGE: &str = "busybox:1.36";
const DEADLINE: Duration = Duration::from_secs(60);

/// An engine under test and how to script what the real one does by itself.
struct Engine {
    ops: Arc<dyn DockerOps>,
    fake: Option<Arc<RecordingDocker>>,
}

impl Engine {
    fn fake() -> Engine {
        let fake = Arc::new(RecordingDocker::new());
        fake.add_image(IMAGE, "amd64");
        Engine {
            ops: fake.clone(),
            fake: Some(fake),
        }
    }

    async fn real() -> Engine {
        let engine = BollardEngine::connect(None)
            .await
            .expect("connect to the docker engine (run scripts/setup-host.sh)");
        let ops: Arc<dyn DockerOps> = Arc::new(engine);
        assert!(
            ops.inspect_image(IMAGE).await.unwrap().is_some(),
            "{IMAGE} is missing: run scripts/build-images.sh"
        );
        Engine { ops, fake: None }
    }

    /// The fake exits when told to; the real container's command decides by itself.
    fn script_exit(&self, name: &str, code: i64) {
        if let Some(fake) = &self.fake {
            fake.set_exit(name, code);
        }
    }
}

fn unique(case: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("attune-conformance-{case}-{}-{nanos}", std::process::id())
}

fn labels(case: &str) -> BTreeMap<String, String> {
    [("attune.test", "true"), ("attune.conformance", case)]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn spec(name: &str, case: &str, cmd: &[&str]) -> ContainerCreateSpec {
    ContainerCreateSpec {
        name: name.to_string(),
        image: IMAGE.to_string(),
        cmd: cmd.iter().map(|part| part.to_string()).collect(),
        labels: labels(case),
        network_mode: Some("none".to_string()),
        ..Default::default()
    }
}

mod cases {
    use super::*;

    pub async fn absent_things_read_as_none(engine: &Engine) {
        let docker = &engine.ops;
        assert!(docker
            .inspect_image("attune-conformance/absent:1")
            .await
            .unwrap()
            .is_none());
        assert!(docker
            .inspect_container(&unique("absent"))
            .await
            .unwrap()
            .is_none());
        assert!(docker
            .inspect_volume(&unique("absent"))
            .await
            .unwrap()
            .is_none());
    }

    pub async fn removing_what_is_gone_is_not_an_error(engine: &Engine) {
        let docker = &engine.ops;
        docker.remove_container(&unique("gone")).await.unwrap();
        docker.remove_volume(&unique("gone")).await.unwrap();
        docker
            .kill_container(&unique("gone"), "SIGKILL")
            .await
            .unwrap();
    }

    pub async fn an_unknown_image_and_a_taken_name_are_refused(engine: &Engine) {
        let docker = &engine.ops;
        let case = "refused";
        let mut missing = spec(&unique(case), case, &["true"]);
        missing.image = "attune-conformance/absent:1".to_string();
        match docker.create_container(&missing).await {
            Err(DockerError::NotFound(_)) => {}
            other => panic!("an unknown image is NotFound, got {other:?}"),
        }
        let name = unique(case);
        let id = docker
            .create_container(&spec(&name, case, &["true"]))
            .await
            .unwrap();
        match docker.create_container(&spec(&name, case, &["true"])).await {
            Err(DockerError::Rejected { reason, .. }) => {
                assert!(reason.contains("already in use"), "{reason}")
            }
            other => panic!("a taken name is Rejected, got {other:?}"),
        }
        docker.remove_container(&id).await.unwrap();
    }

    pub async fn a_created_container_is_listed_by_its_labels(engine: &Engine) {
        let docker = &engine.ops;
        let case = &unique("listed");
        let id = docker
            .create_container(&spec(&unique("listed"), case, &["true"]))
            .await
            .unwrap();
        let state = docker.inspect_container(&id).await.unwrap().unwrap();
        assert!(!state.running);
        assert_eq!(state.status, "created");
        assert_eq!(state.labels.get("attune.conformance"), Some(case));
        let listed = docker
            .list_containers(&[("attune.conformance", case)])
            .await
            .unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].id, id);
        let other = docker
            .list_containers(&[("attune.conformance", "someone-else")])
            .await
            .unwrap();
        assert!(other.iter().all(|container| container.id != id));
        docker.remove_container(&id).await.unwrap();
        assert!(docker.inspect_container(&id).await.unwrap().is_none());
    }

    pub async fn a_wait_returns_the_exit_code(engine: &Engine) {
        let docker = &engine.ops;
        let case = "exit";
        let name = unique(case);
        let id = docker
            .create_container(&spec(&name, case, &["sh", "-c", "exit 3"]))
            .await
            .unwrap();
        engine.script_exit(&name, 3);
        docker.start_container(&id).await.unwrap();
        let code = tokio::time::timeout(DEADLINE, docker.wait_container(&id))
            .await
            .expect("the container exits")
            .unwrap();
        assert_eq!(code, 3);
        let state = docker.inspect_container(&id).await.unwrap().unwrap();
        assert!(!state.running);
        assert_eq!(state.exit_code, Some(3));
        docker.remove_container(&id).await.unwrap();
    }

    pub async fn a_kill_ends_a_running_container_and_a_second_kill_is_tolerated(engine: &Engine) {
        let docker = &engine.ops;
        let case = "kill";
        let id = docker
            .create_container(&spec(&unique(case), case, &["sleep", "60"]))
            .await
            .unwrap();
        docker.start_container(&id).await.unwrap();
        assert!(
            docker
                .inspect_container(&id)
                .await
                .unwrap()
                .unwrap()
                .running
        );
        docker.kill_container(&id, "SIGKILL").await.unwrap();
        let code = tokio::time::timeout(DEADLINE, docker.wait_container(&id))
            .await
            .expect("the container exits")
            .unwrap();
        assert_eq!(code, 137);
        docker.kill_container(&id, "SIGKILL").await.unwrap();
        docker.remove_container(&id).await.unwrap();
    }

    pub async fn a_volume_keeps_its_labels_and_creating_it_again_is_idempotent(engine: &Engine) {
        let docker = &engine.ops;
        let name = unique("volume");
        let created = docker
            .create_volume(&name, &labels("volume"))
            .await
            .unwrap();
        assert_eq!(created.name, name);
        let again = docker
            .create_volume(&name, &labels("volume"))
            .await
            .unwrap();
        assert_eq!(again.name, name);
        let inspected = docker.inspect_volume(&name).await.unwrap().unwrap();
        assert_eq!(inspected.labels, labels("volume"));
        docker.remove_volume(&name).await.unwrap();
        assert!(docker.inspect_volume(&name).await.unwrap().is_none());
    }

    pub async fn an_upload_into_a_read_only_root_is_refused(engine: &Engine) {
        let docker = &engine.ops;
        let case = "read-only";
        let mut read_only = spec(&unique(case), case, &["true"]);
        read_only.read_only_rootfs = true;
        let id = docker.create_container(&read_only).await.unwrap();
        let mut archive = attune_docker::archive::InjectionArchive::new();
        archive
            .add_file("opt/attune/x", attune_docker::archive::FILE_MODE, "x")
            .unwrap();
        let refused = docker.upload_archive(&id, "/", archive.finish()).await;
        assert!(refused.is_err(), "upload into a read-only root must fail");
        docker.remove_container(&id).await.unwrap();
    }
}

/// Each case as a test against the fake and another against the real engine.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod fake_engine {
            $(
                #[tokio::test]
                async fn $case() {
                    super::cases::$case(&super::Engine::fake()).await;
                }
            )*
        }
        mod real_engine {
            $(
                #[tokio::test]
                async fn $case() {
                    super::cases::$case(&super::Engine::real().await).await;
                }
            )*
        }
    };
}

conformance!(
    absent_things_read_as_none,
    removing_what_is_gone_is_not_an_error,
    an_unknown_image_and_a_taken_name_are_refused,
    a_created_container_is_listed_by_its_labels,
    a_wait_returns_the_exit_code,
    a_kill_ends_a_running_container_and_a_second_kill_is_tolerated,
    a_volume_keeps_its_labels_and_creating_it_again_is_idempotent,
    an_upload_into_a_read_only_root_is_refused,
);
