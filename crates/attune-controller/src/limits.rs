//! What an action's container may be and use: its limits (memory, CPUs, processes, read-only
//! root, added capabilities) converted for HostConfig, the operator's allow-lists of images
//! and capabilities, the operator's ceilings on resources (`docker.max_memory`,
//! `docker.max_cpus`, `docker.max_pids`) and the bound on each container's log files.
//!
//! Quantities are parsed with `attune_pack`'s functions, so a limit that registers is a limit
//! the controller applies. The API checks the allow-lists and ceilings when an execution is
//! submitted; the controller checks everything again before it creates a container (defence in
//! depth: an action registered before the allow-list or a ceiling changed must not slip
//! through).

use attune_docker::LogConfig;
use attune_protocol::api::{ContainerSpec, ResourceSpec};
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
    /// An action asks for more than an operator's ceiling (`docker.max_memory`, ...).
    #[error("action {action} asks for {asked} {resource}; the operator's limit docker.{setting} is {limit}")]
    OverCeiling {
        action: String,
        /// `memory`, `cpus`, `pids`.
        resource: &'static str,
        /// What the action asks for, as its pack writes it (`1Ti`).
        asked: String,
        /// The setting's name in `[docker]`: `max_memory`, `max_cpus`, `max_pids`.
        setting: &'static str,
        /// The ceiling, as the operator wrote it (`8Gi`).
        limit: String,
    },
}

impl LimitError {
    /// True for refusals by the operator's allow-lists (as opposed to invalid settings).
    pub fn is_policy(&self) -> bool {
        matches!(
            self,
            LimitError::ImageNotAllowed { .. }
                | LimitError::CapabilityNotAllowed { .. }
                | LimitError::OverCeiling { .. }
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

/// Default of `docker.log_max_size`: a container's log file is rotated at 10 MB.
pub const DEFAULT_LOG_MAX_SIZE: &str = "10m";
/// `max-file` of every container's log: the file being written and one rotated file.
pub const LOG_MAX_FILES: u32 = 2;

/// Checks `docker.log_max_size` and gives it in the engine's syntax: a whole number with an
/// optional unit `k`, `m` or `g` (either case; powers of 1024, as the json-file driver reads
/// them), at least `1k`.
pub fn parse_log_max_size(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => 0,
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier));
    match bytes {
        Some(bytes) if bytes >= 1 << 10 => Ok(trimmed.to_ascii_lowercase()),
        Some(_) => Err(format!("{text:?} is below the minimum of 1k")),
        None => Err(format!(
            "{text:?} is not a size such as 10m, 512k or 1g (a whole number with k, m or g)"
        )),
    }
}

/// The operator's ceilings on what an action's `resources:` may ask for (`docker.max_memory`,
/// `docker.max_cpus`, `docker.max_pids`). `None` is no ceiling beyond the pack format's own
/// ranges (and, for CPUs, the docker host's count, which the controller checks). Exactly a
/// ceiling is allowed; anything above it is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceCeilings {
    /// Bytes, and the setting as the operator wrote it.
    max_memory: Option<(i64, String)>,
    /// Billionths of a CPU, and the setting as written.
    max_cpus: Option<(i64, String)>,
    max_pids: Option<i64>,
}

impl ResourceCeilings {
    /// Checks and builds the ceilings: `max_memory` is a quantity (`8Gi`) or empty / `none`,
    /// `max_cpus` and `max_pids` lie in the pack format's ranges. An error names the setting.
    pub fn new(
        max_memory: &str,
        max_cpus: Option<f64>,
        max_pids: Option<i64>,
    ) -> Result<ResourceCeilings, (&'static str, String)> {
        let max_memory = parse_default_memory(max_memory)
            .map_err(|reason| ("docker.max_memory", reason))?
            .map(|bytes| (bytes, max_memory.trim().to_string()));
        let max_cpus = max_cpus
            .map(|cpus| {
                let spec = ResourceSpec {
                    cpus: Some(cpus),
                    ..Default::default()
                };
                attune_pack::ResourceLimits::from_spec(&spec)
                    .map(|limits| (limits.nano_cpus.unwrap_or_default(), cpus.to_string()))
            })
            .transpose()
            .map_err(|reason| ("docker.max_cpus", reason))?;
        let max_pids = max_pids
            .map(|pids| {
                let spec = ResourceSpec {
                    pids: Some(pids),
                    ..Default::default()
                };
                attune_pack::ResourceLimits::from_spec(&spec)
                    .map(|limits| limits.pids.unwrap_or_default())
            })
            .transpose()
            .map_err(|reason| ("docker.max_pids", reason))?;
        Ok(ResourceCeilings {
            max_memory,
            max_cpus,
            max_pids,
        })
    }

    /// `docker.max_memory` in bytes.
    pub fn max_memory_bytes(&self) -> Option<i64> {
        self.max_memory.as_ref().map(|(bytes, _)| *bytes)
    }

    /// `docker.max_pids`.
    pub fn max_pids(&self) -> Option<i64> {
        self.max_pids
    }

    /// Whether `resources` stays within every ceiling. A value that does not parse is not
    /// judged here: [`container_limits`] names it.
    pub fn check(&self, action_ref: &str, resources: &ResourceSpec) -> Result<(), LimitError> {
        let over = |resource, asked: String, setting, limit: &str| LimitError::OverCeiling {
            action: action_ref.to_string(),
            resource,
            asked,
            setting,
            limit: limit.to_string(),
        };
        if let (Some(memory), Some((max_bytes, max_text))) = (&resources.memory, &self.max_memory) {
            if let Ok(bytes) = attune_pack::parse_memory_quantity(memory) {
                if bytes > *max_bytes as u64 {
                    return Err(over(
                        "memory",
                        memory.trim().to_string(),
                        "max_memory",
                        max_text,
                    ));
                }
            }
        }
        if let (Some(cpus), Some((max_nano_cpus, max_text))) = (resources.cpus, &self.max_cpus) {
            if cpus.is_finite() && (cpus * 1e9).round() > *max_nano_cpus as f64 {
                return Err(over("cpus", cpus.to_string(), "max_cpus", max_text));
            }
        }
        if let (Some(pids), Some(max_pids)) = (resources.pids, self.max_pids) {
            if pids > max_pids {
                return Err(over(
                    "pids",
                    pids.to_string(),
                    "max_pids",
                    &max_pids.to_string(),
                ));
            }
        }
        Ok(())
    }
}

/// The operator's policy: which images actions may run in and which capabilities they may add
/// back (an empty image list allows every image; an empty capability list allows none), the
/// ceilings on their resources, and the bound on every container's log files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionPolicy {
    allowed_images: Vec<String>,
    allowed_capabilities: BTreeSet<String>,
    default_image: Option<String>,
    ceilings: ResourceCeilings,
    /// `docker.log_max_size` in the engine's syntax; empty means [`DEFAULT_LOG_MAX_SIZE`].
    log_max_size: String,
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
            ceilings: ResourceCeilings::default(),
            log_max_size: String::new(),
        })
    }

    /// The same policy with the operator's resource ceilings.
    pub fn with_ceilings(mut self, ceilings: ResourceCeilings) -> Self {
        self.ceilings = ceilings;
        self
    }

    /// The same policy with `docker.log_max_size` (checked by [`parse_log_max_size`]).
    pub fn with_log_max_size(mut self, max_size: &str) -> Result<Self, String> {
        self.log_max_size = parse_log_max_size(max_size)?;
        Ok(self)
    }

    /// The log driver of every container the controller creates: json-file, rotated at
    /// `docker.log_max_size`, [`LOG_MAX_FILES`] files kept.
    pub fn log_config(&self) -> LogConfig {
        let max_size = if self.log_max_size.is_empty() {
            DEFAULT_LOG_MAX_SIZE
        } else {
            &self.log_max_size
        };
        LogConfig::bounded_json_file(max_size, LOG_MAX_FILES)
    }

    /// Whether an action's `resources:` stays within the operator's ceilings.
    pub fn check_ceilings(&self, action_ref: &str, spec: &ContainerSpec) -> Result<(), LimitError> {
        match &spec.resources {
            Some(resources) => self.ceilings.check(action_ref, resources),
            None => Ok(()),
        }
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

    /// The submit-time check of resources and capabilities: the action's stored container
    /// settings stay within the ceilings and add back only allowed capabilities. Settings that
    /// do not parse are left to the controller, which names them.
    pub fn check_action_limits(
        &self,
        action_ref: &str,
        container: Option<&Value>,
    ) -> Result<(), LimitError> {
        let Some(spec) = container
            .and_then(|container| serde_json::from_value::<ContainerSpec>(container.clone()).ok())
        else {
            return Ok(());
        };
        self.check_ceilings(action_ref, &spec)?;
        let capabilities: Vec<String> = spec
            .cap_add
            .iter()
            .filter_map(|capability| attune_pack::normalize_capability(capability).ok())
            .collect();
        self.check_capabilities(&capabilities)
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
        // A `*` of the pattern is always a wildcard, even where the text holds a `*` too.
        if pattern_index < pattern.len() && pattern[pattern_index] == '*' {
            last_star = Some((pattern_index, text_index));
            pattern_index += 1;
        } else if pattern_index < pattern.len()
            && (pattern[pattern_index] == '?' || pattern[pattern_index] == text[text_index])
        {
            pattern_index += 1;
            text_index += 1;
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

    fn resources(memory: Option<&str>, cpus: Option<f64>, pids: Option<i64>) -> ResourceSpec {
        ResourceSpec {
            memory: memory.map(str::to_string),
            cpus,
            pids,
        }
    }

    fn ceilings() -> ResourceCeilings {
        ResourceCeilings::new("8Gi", Some(2.0), Some(4096)).unwrap()
    }

    #[test]
    fn ceilings_allow_exactly_the_limit_and_refuse_one_over() {
        let ceilings = ceilings();
        for memory in [
            "8Gi",
            "8192Mi",
            "8388608Ki",
            "8589934592",
            "8G",
            "512Mi",
            "6Mi",
        ] {
            assert!(
                ceilings
                    .check("heavy.job", &resources(Some(memory), None, None))
                    .is_ok(),
                "{memory} is within 8Gi"
            );
        }
        for memory in ["8589934593", "8193Mi", "9G", "9Gi", "1Ti"] {
            let error = ceilings
                .check("heavy.job", &resources(Some(memory), None, None))
                .unwrap_err();
            assert!(error.is_policy(), "{error}");
            assert_eq!(
                error.to_string(),
                format!("action heavy.job asks for {memory} memory; the operator's limit docker.max_memory is 8Gi")
            );
        }
        assert!(ceilings
            .check("heavy.job", &resources(None, None, Some(4096)))
            .is_ok());
        assert_eq!(
            ceilings
                .check("heavy.job", &resources(None, None, Some(4097)))
                .unwrap_err()
                .to_string(),
            "action heavy.job asks for 4097 pids; the operator's limit docker.max_pids is 4096"
        );
        for cpus in [2.0, 1.999_999_999, 0.01, 2.000_000_000_1] {
            assert!(
                ceilings
                    .check("heavy.job", &resources(None, Some(cpus), None))
                    .is_ok(),
                "{cpus} CPUs (the same NanoCpus as 2 or fewer)"
            );
        }
        assert_eq!(
            ceilings
                .check("heavy.job", &resources(None, Some(2.01), None))
                .unwrap_err()
                .to_string(),
            "action heavy.job asks for 2.01 cpus; the operator's limit docker.max_cpus is 2"
        );
        // Every resource at once: each within its ceiling.
        assert!(ceilings
            .check("heavy.job", &resources(Some("8Gi"), Some(2.0), Some(4096)))
            .is_ok());
        // Values that do not parse are named by container_limits, not refused as over a
        // ceiling.
        assert!(ceilings
            .check("heavy.job", &resources(Some("lots"), Some(f64::NAN), None))
            .is_ok());
        // No ceilings: only the pack format's ranges.
        assert!(ResourceCeilings::default()
            .check(
                "heavy.job",
                &resources(Some("1Ti"), Some(1024.0), Some(32768))
            )
            .is_ok());
        let unlimited_memory = ResourceCeilings::new("none", None, None).unwrap();
        assert_eq!(unlimited_memory, ResourceCeilings::default());
    }

    #[test]
    fn bad_ceilings_name_their_setting() {
        for (max_memory, max_cpus, max_pids, setting) in [
            ("8gi", None, None, "docker.max_memory"),
            ("1Ki", None, None, "docker.max_memory"),
            ("2Ti", None, None, "docker.max_memory"),
            ("8Gi", Some(0.0), None, "docker.max_cpus"),
            ("8Gi", Some(f64::NAN), None, "docker.max_cpus"),
            ("8Gi", None, Some(8), "docker.max_pids"),
            ("8Gi", None, Some(40_000), "docker.max_pids"),
        ] {
            let (named, reason) =
                ResourceCeilings::new(max_memory, max_cpus, max_pids).unwrap_err();
            assert_eq!(
                named, setting,
                "{max_memory} {max_cpus:?} {max_pids:?}: {reason}"
            );
        }
        let ceilings = ceilings();
        assert_eq!(ceilings.max_memory_bytes(), Some(8 << 30));
        assert_eq!(ceilings.max_pids(), Some(4096));
    }

    #[test]
    fn submit_time_limits_cover_ceilings_and_capabilities() {
        let policy = ExecutionPolicy::new(&[], &["NET_BIND_SERVICE".into()], None)
            .unwrap()
            .with_ceilings(ceilings());
        let refused = |container: Value| {
            policy
                .check_action_limits("limits.job", Some(&container))
                .unwrap_err()
        };
        let memory = refused(json!({"image": "busybox:1.36", "resources": {"memory": "1Ti"}}));
        assert!(matches!(
            memory,
            LimitError::OverCeiling {
                resource: "memory",
                ..
            }
        ));
        assert!(
            memory.to_string().contains("docker.max_memory is 8Gi"),
            "{memory}"
        );
        let pids = refused(json!({"image": "busybox:1.36", "resources": {"pids": 32768}}));
        assert!(matches!(
            pids,
            LimitError::OverCeiling {
                resource: "pids",
                ..
            }
        ));
        let capability = refused(json!({"image": "busybox:1.36", "cap_add": ["CAP_NET_ADMIN"]}));
        assert_eq!(
            capability.to_string(),
            "capability NET_ADMIN is not allowed (docker.allowed_capabilities: NET_BIND_SERVICE)"
        );
        for allowed in [
            json!({"image": "busybox:1.36"}),
            json!({"image": "busybox:1.36", "cap_add": ["CAP_NET_BIND_SERVICE"]}),
            json!({"image": "busybox:1.36", "resources": {"memory": "8Gi", "cpus": 2, "pids": 4096}}),
            // Not container settings at all: the controller names what is wrong.
            json!({"resources": "lots"}),
        ] {
            assert!(
                policy
                    .check_action_limits("limits.job", Some(&allowed))
                    .is_ok(),
                "{allowed}"
            );
        }
        assert!(policy.check_action_limits("limits.job", None).is_ok());
        // Without a capability list, no capability may be added.
        let strict = ExecutionPolicy::default();
        assert!(strict
            .check_action_limits(
                "limits.job",
                Some(&json!({"image": "busybox:1.36", "cap_add": ["NET_BIND_SERVICE"]}))
            )
            .is_err());
    }

    #[test]
    fn log_bound_setting_and_driver() {
        assert_eq!(parse_log_max_size("10m").as_deref(), Ok("10m"));
        assert_eq!(parse_log_max_size(" 10M ").as_deref(), Ok("10m"));
        assert_eq!(parse_log_max_size("1g").as_deref(), Ok("1g"));
        assert_eq!(parse_log_max_size("1k").as_deref(), Ok("1k"));
        assert_eq!(parse_log_max_size("1024").as_deref(), Ok("1024"));
        assert!(parse_log_max_size("1023")
            .unwrap_err()
            .contains("below the minimum of 1k"));
        for bad in [
            "",
            "10mb",
            "1.5m",
            "-1m",
            "m",
            "10t",
            "99999999999999999999g",
        ] {
            assert!(parse_log_max_size(bad).is_err(), "{bad:?}");
        }
        let expected = |max_size: &str| LogConfig {
            driver: "json-file".into(),
            options: [
                ("max-size".to_string(), max_size.to_string()),
                ("max-file".to_string(), "2".to_string()),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(ExecutionPolicy::default().log_config(), expected("10m"));
        let policy = ExecutionPolicy::default().with_log_max_size("3M").unwrap();
        assert_eq!(policy.log_config(), expected("3m"));
        assert!(ExecutionPolicy::default()
            .with_log_max_size("3 MB")
            .is_err());
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

        #[test]
        fn a_star_in_the_text_is_just_a_character() {
            assert!(wildcard_match("*a", "*ba"));
            assert!(wildcard_match("a*", "a*"));
            assert!(!wildcard_match("a?", "a"));
        }

        /// Any text, wildcard characters included (a `*` in the text is just a character).
        fn any_text() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    4 => prop::sample::select(vec!['a', 'b', ':', '/', '.', '1']),
                    2 => Just('*'),
                    1 => Just('?'),
                ],
                0..12,
            )
            .prop_map(|characters| characters.into_iter().collect())
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn wildcard_match_agrees_with_the_plain_matcher_on_any_text(pattern in pattern(), text in any_text()) {
                prop_assert_eq!(
                    wildcard_match(&pattern, &text),
                    matches(&pattern, &text),
                    "pattern {:?} text {:?}", pattern, text
                );
            }

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

            /// Any memory ceiling and request in bytes or MiB: allowed exactly when the
            /// request is at most the ceiling.
            #[test]
            fn memory_within_the_ceiling_is_allowed_and_above_refused(
                ceiling_mib in 6u64..=(1 << 20),
                asked_bytes in (6u64 << 20)..=(1u64 << 40),
            ) {
                let ceilings =
                    ResourceCeilings::new(&format!("{ceiling_mib}Mi"), None, None).unwrap();
                let ceiling_bytes = ceiling_mib << 20;
                for asked in [asked_bytes, ceiling_bytes, ceiling_bytes + 1, ceiling_bytes - 1] {
                    let spec = ResourceSpec { memory: Some(asked.to_string()), ..Default::default() };
                    prop_assert_eq!(
                        ceilings.check("a.b", &spec).is_ok(),
                        asked <= ceiling_bytes,
                        "{} bytes against {}Mi", asked, ceiling_mib
                    );
                }
                let asked_mib = asked_bytes >> 20;
                let spec = ResourceSpec { memory: Some(format!("{asked_mib}Mi")), ..Default::default() };
                prop_assert_eq!(ceilings.check("a.b", &spec).is_ok(), asked_mib <= ceiling_mib);
            }

            /// Any pids ceiling and request: allowed exactly when at most the ceiling.
            #[test]
            fn pids_within_the_ceiling_are_allowed_and_above_refused(
                ceiling in 16i64..=32768,
                asked in 16i64..=32768,
            ) {
                let ceilings = ResourceCeilings::new("none", None, Some(ceiling)).unwrap();
                let spec = ResourceSpec { pids: Some(asked), ..Default::default() };
                prop_assert_eq!(ceilings.check("a.b", &spec).is_ok(), asked <= ceiling);
                let at = ResourceSpec { pids: Some(ceiling), ..Default::default() };
                prop_assert!(ceilings.check("a.b", &at).is_ok());
                let one_over = ResourceSpec { pids: Some(ceiling + 1), ..Default::default() };
                prop_assert!(ceilings.check("a.b", &one_over).is_err());
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
