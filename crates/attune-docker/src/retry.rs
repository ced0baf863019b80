//! Bounded retries of the engine operations that a transient error may fail (pull, create,
//! start, put_archive, remove): a decorator over any [`DockerOps`], with exponential backoff
//! from backon (a maintained crate, chosen over hand-written loops). Only transient errors are
//! retried — the engine unreachable or a 5xx that is not about a missing image or an entrypoint
//! that cannot run; client errors (404, 409, 400) fail at once.
//!
//! A create whose response was lost may have happened: when a retried create meets "name
//! already in use", the container of that name is the one the first attempt made, so its id is
//! returned.

use crate::{
    ContainerCreateSpec, ContainerEvent, ContainerState, ContainerSummary, DockerError, DockerOps,
    EngineInfo, ImageInfo, RegistryCredentials, StartFailure, VolumeInfo,
};
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use futures_util::stream::BoxStream;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

impl DockerError {
    /// Whether trying the same operation again may succeed: the engine could not be reached,
    /// or it answered 5xx about something else than a missing image or an entrypoint that
    /// cannot run.
    pub fn is_transient(&self) -> bool {
        match self {
            DockerError::Unavailable(_) => true,
            DockerError::Rejected { reason, .. } => {
                let server_error = reason
                    .rsplit_once("(http ")
                    .and_then(|(_, status)| status.trim_end_matches(')').parse::<u16>().ok())
                    .is_some_and(|status| status >= 500);
                server_error
                    && StartFailure::of_text(reason) == StartFailure::Other
                    && !reason.contains("No such image")
            }
            DockerError::NotFound(_) | DockerError::PullFailed { .. } => false,
        }
    }
}

/// How often and how long to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: usize,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 retries, 100 ms doubling up to 2 s (at most ~3.1 s of waiting).
    fn default() -> Self {
        RetryPolicy {
            retries: 4,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.retries)
            .with_jitter()
    }
}

/// Any engine, with transient failures of mutating operations retried.
pub struct RetryingDocker {
    inner: Arc<dyn DockerOps>,
    policy: RetryPolicy,
}

impl RetryingDocker {
    pub fn new(inner: Arc<dyn DockerOps>, policy: RetryPolicy) -> RetryingDocker {
        RetryingDocker { inner, policy }
    }
}

fn log_retry(operation: &'static str) -> impl Fn(&DockerError, Duration) {
    move |error, delay| tracing::warn!(operation, %error, retry_in_ms = delay.as_millis() as u64, "transient docker error; retrying")
}

#[async_trait]
impl DockerOps for RetryingDocker {
    async fn ping(&self) -> Result<(), DockerError> {
        self.inner.ping().await
    }

    async fn engine_info(&self) -> Result<EngineInfo, DockerError> {
        self.inner.engine_info().await
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, DockerError> {
        self.inner.inspect_image(image).await
    }

    async fn pull_image(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), DockerError> {
        (|| self.inner.pull_image(image, credentials))
            .retry(self.policy.backoff())
            .when(DockerError::is_transient)
            .notify(log_retry("pull image"))
            .await
    }

    async fn create_container(&self, spec: &ContainerCreateSpec) -> Result<String, DockerError> {
        let failed_transiently = AtomicBool::new(false);
        let attempt = || async {
            match self.inner.create_container(spec).await {
                Err(DockerError::Rejected { reason, .. })
                    if reason.contains("already in use")
                        && failed_transiently.load(Ordering::SeqCst) =>
                {
                    // The earlier attempt made it; only its response was lost.
                    match self.inner.inspect_container(&spec.name).await? {
                        Some(existing) => Ok(existing.id),
                        None => Err(DockerError::Unavailable(format!(
                            "create container {}: the name is taken but no container has it",
                            spec.name
                        ))),
                    }
                }
                Err(error) => {
                    if error.is_transient() {
                        failed_transiently.store(true, Ordering::SeqCst);
                    }
                    Err(error)
                }
                Ok(id) => Ok(id),
            }
        };
        attempt
            .retry(self.policy.backoff())
            .when(DockerError::is_transient)
            .notify(log_retry("create container"))
            .await
    }

    async fn upload_archive(
        &self,
        container_id: &str,
        dest_dir: &str,
        tar: Vec<u8>,
    ) -> Result<(), DockerError> {
        (|| {
            self.inner
                .upload_archive(container_id, dest_dir, tar.clone())
        })
        .retry(self.policy.backoff())
        .when(DockerError::is_transient)
        .notify(log_retry("upload archive"))
        .await
    }

    async fn start_container(&self, container_id: &str) -> Result<(), DockerError> {
        (|| self.inner.start_container(container_id))
            .retry(self.policy.backoff())
            .when(DockerError::is_transient)
            .notify(log_retry("start container"))
            .await
    }

    /// Retried like a start: a transient error comes from the attach or the start, before the
    /// container runs (an error writing its stdin once it runs is a refusal, never retried).
    async fn start_container_with_input(
        &self,
        container_id: &str,
        input: &[u8],
    ) -> Result<(), DockerError> {
        (|| self.inner.start_container_with_input(container_id, input))
            .retry(self.policy.backoff())
            .when(DockerError::is_transient)
            .notify(log_retry("start container"))
            .await
    }

    async fn inspect_container(
        &self,
        container_id: &str,
    ) -> Result<Option<ContainerState>, DockerError> {
        self.inner.inspect_container(container_id).await
    }

    async fn wait_container(&self, container_id: &str) -> Result<i64, DockerError> {
        self.inner.wait_container(container_id).await
    }

    async fn kill_container(&self, container_id: &str, signal: &str) -> Result<(), DockerError> {
        self.inner.kill_container(container_id, signal).await
    }

    async fn remove_container(&self, container_id: &str) -> Result<(), DockerError> {
        (|| self.inner.remove_container(container_id))
            .retry(self.policy.backoff())
            .when(DockerError::is_transient)
            .notify(log_retry("remove container"))
            .await
    }

    async fn list_containers(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        self.inner.list_containers(labels).await
    }

    async fn container_logs(&self, container_id: &str, tail: usize) -> Result<String, DockerError> {
        self.inner.container_logs(container_id, tail).await
    }

    async fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<VolumeInfo, DockerError> {
        self.inner.create_volume(name, labels).await
    }

    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>, DockerError> {
        self.inner.inspect_volume(name).await
    }

    async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        self.inner.remove_volume(name).await
    }

    async fn read_file(
        &self,
        container_id: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, DockerError> {
        self.inner.read_file(container_id, path).await
    }

    fn container_events(
        &self,
        labels: &[(&str, &str)],
    ) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        self.inner.container_events(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{DockerCall, Operation, RecordingDocker};

    fn spec(name: &str) -> ContainerCreateSpec {
        ContainerCreateSpec {
            name: name.to_string(),
            image: "busybox:1.36".to_string(),
            ..Default::default()
        }
    }

    fn retrying() -> (Arc<RecordingDocker>, RetryingDocker) {
        let fake = Arc::new(RecordingDocker::new());
        fake.add_image("busybox:1.36", "amd64");
        let retrying = RetryingDocker::new(fake.clone(), RetryPolicy::default());
        (fake, retrying)
    }

    fn creates(fake: &RecordingDocker) -> usize {
        fake.calls()
            .iter()
            .filter(|call| matches!(call, DockerCall::CreateContainer(_)))
            .count()
    }

    fn server_error() -> DockerError {
        DockerError::Rejected {
            operation: "start container c".into(),
            reason: "driver failed programming external connectivity (http 500)".into(),
        }
    }

    #[test]
    fn only_unreachable_engines_and_other_server_errors_are_transient() {
        assert!(DockerError::Unavailable("connection reset".into()).is_transient());
        assert!(server_error().is_transient());
        let exec_format = DockerError::Rejected {
            operation: "start".into(),
            reason: "OCI runtime create failed: exec format error (http 500)".into(),
        };
        assert!(!exec_format.is_transient());
        let no_image = DockerError::Rejected {
            operation: "create".into(),
            reason: "No such image: x (http 500)".into(),
        };
        assert!(!no_image.is_transient());
        let conflict = DockerError::Rejected {
            operation: "create".into(),
            reason: "name already in use (http 409)".into(),
        };
        assert!(!conflict.is_transient());
        assert!(!DockerError::NotFound("no such image".into()).is_transient());
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_until_the_operation_succeeds() {
        let (fake, retrying) = retrying();
        fake.fail_next(Operation::Start, server_error());
        fake.fail_next(Operation::Start, DockerError::Unavailable("reset".into()));
        let id = retrying.create_container(&spec("a")).await.unwrap();
        retrying.start_container(&id).await.unwrap();
        let starts = fake
            .calls()
            .iter()
            .filter(|call| matches!(call, DockerCall::Start(_)))
            .count();
        assert_eq!(starts, 3, "two failures, then the start that worked");
        assert!(fake.container(&id).unwrap().status == "running");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_error_fails_at_once() {
        let (fake, retrying) = retrying();
        let mut missing = spec("b");
        missing.image = "absent:1".to_string();
        let error = retrying.create_container(&missing).await.unwrap_err();
        assert!(matches!(error, DockerError::NotFound(_)), "{error:?}");
        assert_eq!(creates(&fake), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let (fake, retrying) = retrying();
        for _ in 0..10 {
            fake.fail_next(
                Operation::CreateContainer,
                DockerError::Unavailable("down".into()),
            );
        }
        let error = retrying.create_container(&spec("c")).await.unwrap_err();
        assert!(matches!(error, DockerError::Unavailable(_)));
        assert_eq!(creates(&fake), 5, "the first attempt and four retries");
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_whose_response_was_lost_returns_the_container_it_made() {
        let (fake, retrying) = retrying();
        // The first attempt's container exists, but its response never came back.
        let made = fake.create_container(&spec("d")).await.unwrap();
        fake.fail_next(
            Operation::CreateContainer,
            DockerError::Unavailable("reset".into()),
        );
        let id = retrying.create_container(&spec("d")).await.unwrap();
        assert_eq!(id, made);
        // Without an earlier transient failure a taken name stays an error.
        let error = retrying.create_container(&spec("d")).await.unwrap_err();
        assert!(matches!(error, DockerError::Rejected { .. }), "{error:?}");
    }
}
