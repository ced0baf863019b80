//! Image resolution for the controller: pull policy, a short-lived cache of local image
//! inspections (the warm path must not pay an engine round trip per execution), and one pull at
//! a time per image — concurrent executions needing the same missing image share its pull.

use attune_docker::{DockerError, DockerOps, ImageInfo, RegistryAuth};
use attune_protocol::api::{ContainerSpec, PullPolicy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Why an image could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image {image} is not present locally and its pull_policy is never")]
    AbsentNeverPull { image: String },
    #[error("image {image} is not present locally and could not be pulled: {reason}")]
    PullFailed { image: String, reason: String },
    #[error("inspect image {image}: {reason}")]
    Inspect { image: String, reason: String },
}

/// Resolves images by pull policy, caching inspections and sharing pulls.
pub struct ImageResolver {
    docker: Arc<dyn DockerOps>,
    cache_ttl: Duration,
    cache: Mutex<HashMap<String, (ImageInfo, Instant)>>,
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Credentials by registry, handed to the pull of an image from that registry.
    registry_auth: RegistryAuth,
}

impl ImageResolver {
    pub fn new(docker: Arc<dyn DockerOps>, cache_ttl: Duration) -> ImageResolver {
        ImageResolver {
            docker,
            cache_ttl,
            cache: Mutex::default(),
            pulls: Mutex::default(),
            registry_auth: RegistryAuth::default(),
        }
    }

    /// Pulls with these credentials (chosen by each image's registry).
    pub fn with_registry_auth(mut self, registry_auth: RegistryAuth) -> ImageResolver {
        self.registry_auth = registry_auth;
        self
    }

    /// The local image for `spec`, pulled first when its policy says so.
    pub async fn resolve(&self, spec: &ContainerSpec) -> Result<ImageInfo, ImageError> {
        let image = spec.image.as_str();
        if spec.pull_policy != PullPolicy::Always {
            if let Some(info) = self.cached(image) {
                return Ok(info);
            }
            if let Some(info) = self.inspect(image).await? {
                return Ok(info);
            }
            if spec.pull_policy == PullPolicy::Never {
                return Err(ImageError::AbsentNeverPull {
                    image: image.to_string(),
                });
            }
        }
        self.pull_once(image, spec.pull_policy).await
    }

    fn cached(&self, image: &str) -> Option<ImageInfo> {
        let cache = self.cache.lock().expect("image cache lock");
        cache
            .get(image)
            .filter(|(_, at)| at.elapsed() < self.cache_ttl)
            .map(|(info, _)| info.clone())
    }

    async fn inspect(&self, image: &str) -> Result<Option<ImageInfo>, ImageError> {
        let info = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|error| ImageError::Inspect {
                image: image.to_string(),
                reason: error.to_string(),
            })?;
        if let Some(info) = &info {
            self.cache
                .lock()
                .expect("image cache lock")
                .insert(image.to_string(), (info.clone(), Instant::now()));
        }
        Ok(info)
    }

    /// Pulls under a per-image lock; a waiter that finds the image present after the lock
    /// (someone else pulled it) does not pull again unless the policy is `always`.
    async fn pull_once(&self, image: &str, policy: PullPolicy) -> Result<ImageInfo, ImageError> {
        let lock = self
            .pulls
            .lock()
            .expect("pull registry lock")
            .entry(image.to_string())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        // Whoever held the lock may have pulled it; `always` pulls regardless.
        if policy != PullPolicy::Always {
            if let Some(info) = self.inspect(image).await? {
                return Ok(info);
            }
        }
        let credentials = self.registry_auth.credentials_for(image);
        tracing::info!(
            image,
            registry_user = credentials.map(|credentials| credentials.username.as_str()),
            "pulling image"
        );
        self.docker
            .pull_image(image, credentials)
            .await
            .map_err(|error| ImageError::PullFailed {
                image: image.to_string(),
                reason: match error {
                    DockerError::PullFailed { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?;
        self.inspect(image)
            .await?
            .ok_or_else(|| ImageError::PullFailed {
                image: image.to_string(),
                reason: "the image is missing after its pull".to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_docker::fake::{DockerCall, RecordingDocker};

    fn spec(image: &str, pull_policy: PullPolicy) -> ContainerSpec {
        ContainerSpec {
            image: image.to_string(),
            pull_policy,
            ..Default::default()
        }
    }

    fn pulls(docker: &RecordingDocker) -> usize {
        docker
            .calls()
            .iter()
            .filter(|call| matches!(call, DockerCall::PullImage(_)))
            .count()
    }

    #[tokio::test]
    async fn inspections_are_cached() {
        let docker = RecordingDocker::new();
        docker.add_image("busybox:1.36", "amd64");
        let resolver = ImageResolver::new(Arc::new(docker.clone()), Duration::from_secs(60));
        for _ in 0..3 {
            resolver
                .resolve(&spec("busybox:1.36", PullPolicy::IfNotPresent))
                .await
                .unwrap();
        }
        let inspections = docker
            .calls()
            .iter()
            .filter(|call| matches!(call, DockerCall::InspectImage(_)))
            .count();
        assert_eq!(inspections, 1);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_pull() {
        let docker = RecordingDocker::new();
        docker.add_pullable_image("python:3.11-slim", "amd64");
        let resolver = Arc::new(ImageResolver::new(
            Arc::new(docker.clone()),
            Duration::from_secs(60),
        ));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let resolver = resolver.clone();
            tasks.push(tokio::spawn(async move {
                resolver
                    .resolve(&spec("python:3.11-slim", PullPolicy::IfNotPresent))
                    .await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(pulls(&docker), 1);
    }

    #[tokio::test]
    async fn policies_give_clear_errors() {
        let docker = RecordingDocker::new();
        let resolver = ImageResolver::new(Arc::new(docker.clone()), Duration::from_secs(60));
        let never = resolver
            .resolve(&spec("missing:1", PullPolicy::Never))
            .await
            .unwrap_err();
        assert_eq!(
            never.to_string(),
            "image missing:1 is not present locally and its pull_policy is never"
        );
        assert_eq!(pulls(&docker), 0);
        let failed = resolver
            .resolve(&spec("missing:1", PullPolicy::IfNotPresent))
            .await
            .unwrap_err();
        assert!(failed
            .to_string()
            .starts_with("image missing:1 is not present locally and could not be pulled: "));
    }

    #[tokio::test]
    async fn always_pulls_even_when_present() {
        let docker = RecordingDocker::new();
        docker.add_image("busybox:1.36", "amd64");
        docker.add_pullable_image("busybox:1.36", "amd64");
        let resolver = ImageResolver::new(Arc::new(docker.clone()), Duration::from_secs(60));
        resolver
            .resolve(&spec("busybox:1.36", PullPolicy::Always))
            .await
            .unwrap();
        assert_eq!(pulls(&docker), 1);
    }
}
