//! What an action's container may be and use: its limits (memory, CPUs, processes, read-only
//! root, added capabilities) converted for HostConfig, and the operator's allow-lists of images
//! and capabilities.
//!
//! Quantities are parsed with `attune_pack`'s functions, so a limit that registers is a limit
//! the controller applies. The API checks the image allow-list when an execution is submitted;
//! the controller checks everything again before it creates a container (defence in depth: an
//! action registered before the allow-list changed must not slip through).

use attune_protocol::api::ContainerSpec;
use serde_json::Value;
use std::collections::BTreeSet;

/// Why an action's container settings cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    #[error("resources: {0}")]
    Resources(String),
    #[error("resources.cpus {cpus} is more than the {host_cpus} CPUs of the docker host")]
    TooManyCpus { cpus: f64, host_cpus: f64 },
    #[error("cap_add: {0}")]
    Capability(String),
    #[error("workdir {workdir:?} is refused: {reason}")]
    Workdir { workdir: String, reason: String },
    #[error("image {image} is not allowed (docker.allowed_images: {allowed})")]
    ImageNotAllowed { image: String, allowed: String },
    #[error("capability {capability} is not allowed (docker.allowed_capabilities: {allowed})")]
    CapabilityNotAllowed { capability: String, allowed: String },
}

impl LimitError {
    /// True for refusals by the operator's allow-lists (as opposed to invalid settings).
    pub fn is_policy(&self) -> bool {
        matches!(
            self,
            LimitError::ImageNotAllowed { .. } | LimitError::CapabilityNotAllowed { .. }
        )
    }
}

/// An action's container limits, ready for HostConfig; `None` leaves the server's default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerLimits {
    pub memory_bytes: Option<i64>,
    /// Billionths of a CPU (`HostConfig.NanoCpus`).
    pub nano_cpus: Option<i64>,
    pub pids: Option<i64>,
    /// Read-only root filesystem (the agent works in a tmpfs).
    pub read_only: bool,
    /// Capabilities added back after dropping all, without `CAP_` (`NET_BIND_SERVICE`).
    pub cap_add: Vec<String>,
}

/// Checks and converts an action's container settings. `host_cpus` (when known and above 0)
/// bounds `resources.cpus`.
pub fn container_limits(
    spec: &ContainerSpec,
    host_cpus: Option<f64>,
) -> Result<ContainerLimits, LimitError> {
    if let Some(workdir) = &spec.workdir {
        check_workdir(workdir)?;
    }
    let resources = match &spec.resources {
        Some(resources) => {
            if let (Some(cpus), Some(host_cpus)) =
                (resources.cpus, host_cpus.filter(|host| *host > 0.0))
            {
                if cpus > host_cpus {
                    return Err(LimitError::TooManyCpus { cpus, host_cpus });
                }
            }
            attune_pack::ResourceLimits::from_spec(resources).map_err(LimitError::Resources)?
        }
        None => attune_pack::ResourceLimits::default(),
    };
    let cap_add = spec
        .cap_add
        .iter()
        .map(|capability| attune_pack::normalize_capability(capability))
        .collect::<Result<Vec<_>, _>>()
        .map_err(LimitError::Capability)?;
    Ok(ContainerLimits {
        memory_bytes: resources.memory_bytes,
        nano_cpus: resources.nano_cpus,
        pids: resources.pids,
        read_only: spec.read_only,
        cap_add,
    })
}

/// Refuses a working directory that is relative or under `/proc` (CVE-2024-21626).
pub fn check_workdir(workdir: &str) -> Result<(), LimitError> {
    attune_pack::validate_workdir(workdir).map_err(|reason| LimitError::Workdir {
        workdir: workdir.to_string(),
        reason,
    })
}

/// Parses `docker.default_memory`: a quantity (`512Mi`), or empty / `none` for no limit.
pub fn parse_default_memory(text: &str) -> Result<Option<i64>, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let spec = attune_protocol::api::ResourceSpec {
        memory: Some(trimmed.to_string()),
        ..Default::default()
    };
    attune_pack::ResourceLimits::from_spec(&spec).map(|limits| limits.memory_bytes)
}

/// The operator's allow-lists: which images actions may run in and which capabilities they
/// may add back. An empty image list allows every image; an empty capability list allows none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionPolicy {
    allowed_images: Vec<String>,
    allowed_capabilities: BTreeSet<String>,
    default_image: Option<String>,
}

impl ExecutionPolicy {
    /// Builds the policy; capability names are normalized (an invalid one is an error).
    pub fn new(
        allowed_images: &[String],
        allowed_capabilities: &[String],
        default_image: Option<String>,
    ) -> Result<Self, String> {
        let allowed_capabilities = allowed_capabilities
            .iter()
            .map(|capability| capability.trim())
            .filter(|capability| !capability.is_empty())
            .map(attune_pack::normalize_capability)
            .collect::<Result<BTreeSet<_>, _>>()?;
        Ok(ExecutionPolicy {
            allowed_images: allowed_images
                .iter()
                .map(|pattern| pattern.trim().to_string())
                .filter(|pattern| !pattern.is_empty())
                .collect(),
            allowed_capabilities,
            default_image,
        })
    }

    /// Whether `image` matches the allow-list (`*` any run of characters, `?` one).
    /// An image without tag or digest is also tried as `image:latest`.
    pub fn check_image(&self, image: &str) -> Result<(), LimitError> {
        if self.allowed_images.is_empty() {
            return Ok(());
        }
        let wanted = ImageParts::of(image);
        let allowed = self.allowed_images.iter().any(|pattern| {
            let pattern = pattern.trim();
            pattern == "*" || ImageParts::of(pattern).matches(&wanted)
        });
        if allowed {
            Ok(())
        } else {
            Err(LimitError::ImageNotAllowed {
                image: image.to_string(),
                allowed: self.allowed_images.join(", "),
            })
        }
    }

    /// Whether every (normalized) capability is on the allow-list.
    pub fn check_capabilities(&self, capabilities: &[String]) -> Result<(), LimitError> {
        match capabilities
            .iter()
            .find(|capability| !self.allowed_capabilities.contains(*capability))
        {
            None => Ok(()),
            Some(capability) => Err(LimitError::CapabilityNotAllowed {
                capability: capability.clone(),
                allowed: if self.allowed_capabilities.is_empty() {
                    "none".to_string()
                } else {
                    self.allowed_capabilities
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
        }
    }

    /// The image an action would run in: its own (`container` as stored), else
    /// `docker.default_image`.
    pub fn image_of(&self, container: Option<&Value>) -> Option<String> {
        container
            .and_then(|container| container.get("image"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| self.default_image.clone())
    }

    /// The submit-time check: the action's image (or the default image) is allowed.
    pub fn check_action_image(&self, container: Option<&Value>) -> Result<(), LimitError> {
        match self.image_of(container) {
            Some(image) => self.check_image(&image),
            // No image at all fails later with its own clear error.
            None => Ok(()),
        }
    }
}

/// Glob matching with `*` (any run, also empty) and `?` (one character).
/// An image reference split the way the engine reads it: registry host, repository path and
/// `:tag` or `@digest`, with Docker Hub's forms normalised (`busybox` is
/// `docker.io/library/busybox:latest`). Allow-list patterns are split the same way and matched
/// part by part, so a wildcard in a tag never matches a registry host or a path
/// (`busybox:*` does not allow `busybox:5000/evil:1`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageParts {
    registry: String,
    path: String,
    /// `:tag` or `@digest`.
    reference: String,
}

impl ImageParts {
    fn of(text: &str) -> ImageParts {
        let text = text.trim();
        let registry = attune_docker::registry_of(text);
        let remainder = match text.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                rest
            }
            _ => text,
        };
        let (name, reference) = match remainder.split_once('@') {
            Some((name, digest)) => (name, format!("@{digest}")),
            None => {
                let last_slash = remainder.rfind('/').map_or(0, |index| index + 1);
                match remainder[last_slash..].rfind(':') {
                    Some(colon) => {
                        let colon = last_slash + colon;
                        (&remainder[..colon], remainder[colon..].to_string())
                    }
                    None => (remainder, ":latest".to_string()),
                }
            }
        };
        let path = if registry == attune_docker::DOCKER_HUB_REGISTRY && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_string()
        };
        ImageParts {
            registry,
            path,
            reference,
        }
    }

    /// Whether this pattern's parts match an image's, each on its own.
    fn matches(&self, image: &ImageParts) -> bool {
        wildcard_match(&self.registry, &image.registry)
            && wildcard_match(&self.path, &image.path)
            && wildcard_match(&self.reference, &image.reference)
    }
}

pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut pattern_index, mut text_index) = (0, 0);
    // Where the last `*` was, and how much of the text it has swallowed so far.
    let mut last_star: Option<(usize, usize)> = None;
    while text_index < text.len() {
        if pattern_index < pattern.len()
            && (pattern[pattern_index] == '?' || pattern[pattern_index] == text[text_index])
        {
            pattern_index += 1;
            text_index += 1;
        } else if pattern_index < pattern.len() && pattern[pattern_index] == '*' {
            last_star = Some((pattern_index, text_index));
            pattern_index += 1;
        } else if let Some((star, swallowed_until)) = last_star {
            pattern_index = star + 1;
            text_index = swallowed_until + 1;
            last_star = Some((star, swallowed_until + 1));
        } else {
            return false;
        }
    }
    pattern[pattern_index..]
        .iter()
        .all(|character| *character == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_protocol::api::ResourceSpec;
    use serde_json::json;

    fn spec_with(resources: ResourceSpec) -> ContainerSpec {
        ContainerSpec {
            image: "busybox:1.36".into(),
            resources: Some(resources),
            ..Default::default()
        }
    }

    #[test]
    fn resources_convert_for_host_config() {
        let spec = ContainerSpec {
            read_only: true,
            cap_add: vec!["CAP_NET_BIND_SERVICE".into()],
            ..spec_with(ResourceSpec {
                memory: Some("256Mi".into()),
                cpus: Some(0.5),
                pids: Some(128),
            })
        };
        let limits = container_limits(&spec, Some(2.0)).unwrap();
        assert_eq!(
            limits,
            ContainerLimits {
                memory_bytes: Some(256 << 20),
                nano_cpus: Some(500_000_000),
                pids: Some(128),
                read_only: true,
                cap_add: vec!["NET_BIND_SERVICE".into()],
            }
        );
        let plain = container_limits(&ContainerSpec::default(), None).unwrap();
        assert_eq!(plain, ContainerLimits::default());
        let decimal = container_limits(
            &spec_with(ResourceSpec {
                memory: Some("512M".into()),
                ..Default::default()
            }),
            None,
        )
        .unwrap();
        assert_eq!(decimal.memory_bytes, Some(512_000_000));
    }

    #[test]
    fn bad_limits_are_named() {
        let too_many = spec_with(ResourceSpec {
            cpus: Some(3.0),
            ..Default::default()
        });
        let error = container_limits(&too_many, Some(2.0))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "resources.cpus 3 is more than the 2 CPUs of the docker host"
        );
        let memory = spec_with(ResourceSpec {
            memory: Some("lots".into()),
            ..Default::default()
        });
        let error = container_limits(&memory, None).unwrap_err().to_string();
        assert!(
            error.starts_with("resources: memory") && error.contains("lots"),
            "{error}"
        );
        let pids = spec_with(ResourceSpec {
            pids: Some(8),
            ..Default::default()
        });
        let error = container_limits(&pids, None).unwrap_err().to_string();
        assert!(
            error.contains("pids must be between 16 and 32768"),
            "{error}"
        );
        let zero_cpus = spec_with(ResourceSpec {
            cpus: Some(0.0),
            ..Default::default()
        });
        assert!(container_limits(&zero_cpus, Some(2.0)).is_err());
        let capability = ContainerSpec {
            cap_add: vec!["NOT_A_CAP".into()],
            ..Default::default()
        };
        let error = container_limits(&capability, None).unwrap_err().to_string();
        assert!(
            error.starts_with("cap_add:") && error.contains("NOT_A_CAP"),
            "{error}"
        );
    }

    #[test]
    fn workdirs_under_proc_are_refused() {
        for workdir in ["/proc/self/cwd", "/tmp/../proc/1", "relative"] {
            let spec = ContainerSpec {
                workdir: Some(workdir.into()),
                ..Default::default()
            };
            let error = container_limits(&spec, None).unwrap_err();
            assert!(
                matches!(error, LimitError::Workdir { .. }),
                "{workdir}: {error}"
            );
        }
        let fine = ContainerSpec {
            workdir: Some("/work".into()),
            ..Default::default()
        };
        assert!(container_limits(&fine, None).is_ok());
    }

    #[test]
    fn default_memory_setting() {
        assert_eq!(parse_default_memory("512Mi"), Ok(Some(512 << 20)));
        assert_eq!(parse_default_memory(""), Ok(None));
        assert_eq!(parse_default_memory("none"), Ok(None));
        assert!(parse_default_memory("1Ki").is_err());
        assert!(parse_default_memory("512m").is_err());
    }

    #[test]
    fn wildcards_match_like_shell_globs() {
        assert!(wildcard_match("busybox:*", "busybox:1.36"));
        assert!(wildcard_match("python:3.11-*", "python:3.11-slim"));
        assert!(!wildcard_match("python:3.11-*", "python:3.12-slim"));
        assert!(wildcard_match("*", "anything/at:all"));
        assert!(wildcard_match(
            "attune-test/*",
            "attune-test/noshell:latest"
        ));
        assert!(wildcard_match("busybox:1.3?", "busybox:1.36"));
        assert!(!wildcard_match("busybox:1.3?", "busybox:1.360"));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXbYY"));
        assert!(wildcard_match("", ""));
        assert!(!wildcard_match("", "x"));
    }

    #[test]
    fn image_allow_list_names_the_image_and_the_list() {
        let open = ExecutionPolicy::default();
        assert!(open.check_image("anything:1").is_ok());
        let policy = ExecutionPolicy::new(
            &["busybox:*".into(), "python:3.11-*".into(), "alpine".into()],
            &[],
            None,
        )
        .unwrap();
        assert!(policy.check_image("busybox:1.36").is_ok());
        assert!(policy.check_image("python:3.11-slim").is_ok());
        assert!(
            policy.check_image("busybox").is_ok(),
            "busybox means busybox:latest"
        );
        assert!(policy.check_image("alpine").is_ok());
        let error = policy.check_image("ruby:3.3").unwrap_err();
        assert!(error.is_policy());
        assert_eq!(
            error.to_string(),
            "image ruby:3.3 is not allowed (docker.allowed_images: busybox:*, python:3.11-*, alpine)"
        );
        let with_default =
            ExecutionPolicy::new(&["busybox:*".into()], &[], Some("ruby:3.3".into())).unwrap();
        assert!(with_default
            .check_action_image(Some(&json!({"image": "busybox:1.36"})))
            .is_ok());
        assert!(with_default.check_action_image(None).is_err());
    }

    #[test]
    fn capabilities_must_be_on_the_allow_list() {
        let none = ExecutionPolicy::default();
        let error = none
            .check_capabilities(&["NET_ADMIN".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "capability NET_ADMIN is not allowed (docker.allowed_capabilities: none)"
        );
        let some = ExecutionPolicy::new(&[], &["CAP_NET_BIND_SERVICE".into()], None).unwrap();
        assert!(some
            .check_capabilities(&["NET_BIND_SERVICE".into()])
            .is_ok());
        assert!(some.check_capabilities(&["SYS_ADMIN".into()]).is_err());
        assert!(some.check_capabilities(&[]).is_ok());
        assert!(ExecutionPolicy::new(&[], &["not a cap".into()], None).is_err());
    }

    /// Generated patterns and images against a plain recursive matcher, thousands of cases.
    #[test]
    fn allow_list_corpus() {
        let allowed = [
            ("busybox:*", "busybox:1.36"),
            ("busybox:*", "docker.io/library/busybox:1.36"),
            ("busybox:*", "index.docker.io/library/busybox:1.36"),
            ("docker.io/library/busybox:1.36", "busybox:1.36"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("busybox", "busybox:latest"),
            ("busybox:*", "busybox"),
            ("python:3.11-*", "python:3.11-slim"),
            (
                "registry.local:5000/team/*:*",
                "registry.local:5000/team/app:2",
            ),
            ("*.example.com/app:*", "eu.example.com/app:1"),
            ("attune-test/*:*", "attune-test/noshell:latest"),
            ("*", "anything.example/at/all:1"),
        ];
        for (pattern, image) in allowed {
            let policy = ExecutionPolicy::new(&[pattern.to_string()], &[], None).unwrap();
            assert!(
                policy.check_image(image).is_ok(),
                "{pattern} must allow {image}"
            );
        }
        let refused = [
            // A wildcard in the tag never matches a registry host or a path.
            ("busybox:*", "busybox:5000/evil:1"),
            ("busybox:*", "evil.example.com/busybox:1"),
            ("busybox:*", "evil.example.com/library/busybox:1"),
            ("busybox:*", "library/busybox/evil:1"),
            ("busybox:*", "busyboxevil:1"),
            ("busybox:1.36", "busybox:1.37"),
            ("busybox", "busybox:1.36"),
            (
                "registry.local:5000/team/*:*",
                "registry.local:5000.evil.com/team/app:1",
            ),
            ("registry.local:5000/team/*:*", "registry.local/team/app:1"),
            ("attune-test/*:*", "docker.io/evil/noshell:latest"),
        ];
        for (pattern, image) in refused {
            let policy = ExecutionPolicy::new(&[pattern.to_string()], &[], None).unwrap();
            assert!(
                policy.check_image(image).is_err(),
                "{pattern} must refuse {image}"
            );
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use proptest::test_runner::Config;

        /// Glob matching written the obvious way (exponential, fine for short inputs).
        fn reference_match(pattern: &[char], text: &[char]) -> bool {
            match pattern.split_first() {
                None => text.is_empty(),
                Some(('*', rest)) => {
                    (0..=text.len()).any(|skipped| reference_match(rest, &text[skipped..]))
                }
                Some((expected, rest)) => match text.split_first() {
                    Some((found, text_rest)) => {
                        (*expected == '?' || expected == found) && reference_match(rest, text_rest)
                    }
                    None => false,
                },
            }
        }

        fn matches(pattern: &str, text: &str) -> bool {
            let pattern: Vec<char> = pattern.chars().collect();
            let text: Vec<char> = text.chars().collect();
            reference_match(&pattern, &text)
        }

        /// Pattern characters: a small alphabet (so that matches happen) and wildcards.
        fn pattern() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    4 => prop::sample::select(vec!['a', 'b', ':', '/', '.', '1']),
                    2 => Just('*'),
                    1 => Just('?'),
                    1 => any::<char>(),
                ],
                0..10,
            )
            .prop_map(|characters| characters.into_iter().collect())
        }

        /// Image names as they reach the check: no wildcard characters (a reference has
        /// none; validate_image_reference refuses them).
        fn image() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    6 => prop::sample::select(vec!['a', 'b', ':', '/', '.', '1', '@']),
                    1 => any::<char>().prop_filter("no wildcard", |c| *c != '*' && *c != '?'),
                ],
                0..14,
            )
            .prop_map(|characters| characters.into_iter().collect())
        }

        fn config() -> Config {
            Config {
                cases: 5_000,
                failure_persistence: None,
                ..Config::default()
            }
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn wildcard_match_agrees_with_the_plain_matcher(pattern in pattern(), text in image()) {
                prop_assert_eq!(
                    wildcard_match(&pattern, &text),
                    matches(&pattern, &text),
                    "pattern {:?} text {:?}", pattern, text
                );
            }

            #[test]
            fn wildcard_match_never_panics(pattern in ".{0,40}", text in ".{0,40}") {
                let _ = wildcard_match(&pattern, &text);
            }

            /// Any patterns and image: an answer, never a panic; a refusal names the image
            /// and the list; an empty list allows everything. (Which images a pattern allows
            /// is pinned by the corpus in `allow_list_corpus`.)
            #[test]
            fn check_image_answers_and_refusals_name_image_and_list(
                patterns in prop::collection::vec(pattern(), 0..4),
                image in image(),
            ) {
                let policy = ExecutionPolicy::new(&patterns, &[], None).unwrap();
                let listed: Vec<&str> = patterns
                    .iter()
                    .map(|pattern| pattern.trim())
                    .filter(|pattern| !pattern.is_empty())
                    .collect();
                match policy.check_image(&image) {
                    Ok(()) => {}
                    Err(error) => {
                        prop_assert!(!listed.is_empty(), "an empty list refused {:?}", image);
                        prop_assert!(error.is_policy());
                        let shown = error.to_string();
                        prop_assert!(shown.contains(&image), "{}", shown);
                        prop_assert!(shown.contains(&listed.join(", ")), "{}", shown);
                    }
                }
            }

            /// Listing an image, or its repository with `:*`, allows it.
            #[test]
            fn a_listed_image_is_allowed(
                repository in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
                tag in "[a-z0-9._-]{1,8}",
            ) {
                let image = format!("{repository}:{tag}");
                let exact = ExecutionPolicy::new(std::slice::from_ref(&image), &[], None).unwrap();
                prop_assert!(exact.check_image(&image).is_ok());
                let any_tag = ExecutionPolicy::new(&[format!("{repository}:*")], &[], None).unwrap();
                prop_assert!(any_tag.check_image(&image).is_ok());
                prop_assert!(any_tag.check_image(&repository).is_ok(), "as :latest");
            }
        }
    }
}
