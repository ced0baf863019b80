//! An action's `isolation:` and `pool:` settings: parsing the pool map (with `idle_timeout` as
//! a duration such as `5m`), its ranges, and how isolation, pool and container fit together.

use crate::error::PackError;
use attune_protocol::api::{Isolation, PoolSpec};
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;

/// Largest `pool.max`.
pub const MAX_POOL_SIZE: u32 = 256;
/// Shortest `pool.idle_timeout`, in seconds.
pub const MIN_IDLE_TIMEOUT_SECONDS: u64 = 1;
/// Longest `pool.idle_timeout`, in seconds: one day.
pub const MAX_IDLE_TIMEOUT_SECONDS: u64 = 86_400;

/// `pool:` as written; keys left out take [`PoolSpec::default`]'s values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolManifest {
    min_idle: Option<u32>,
    max: Option<u32>,
    #[serde(
        default,
        alias = "idle_timeout_seconds",
        deserialize_with = "deserialize_idle_timeout"
    )]
    idle_timeout: Option<u64>,
    max_uses: Option<u32>,
}

/// A checked `pool:` section. Range errors are raised while the YAML is read, so they carry
/// the line of the `pool:` map.
#[derive(Debug)]
pub(crate) struct PoolSettings(pub PoolSpec);

impl<'de> Deserialize<'de> for PoolSettings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PoolVisitor)
    }
}

struct PoolVisitor;

impl<'de> Visitor<'de> for PoolVisitor {
    type Value = PoolSettings;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a map with min_idle, max, idle_timeout, max_uses")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PoolSettings, A::Error> {
        let manifest = PoolManifest::deserialize(MapAccessDeserializer::new(map))?;
        check_pool(manifest)
            .map(PoolSettings)
            .map_err(de::Error::custom)
    }
}

/// Fills in defaults and checks the ranges of a pool.
fn check_pool(manifest: PoolManifest) -> Result<PoolSpec, String> {
    let defaults = PoolSpec::default();
    let spec = PoolSpec {
        min_idle: manifest.min_idle.unwrap_or(defaults.min_idle),
        max: manifest.max.unwrap_or(defaults.max),
        idle_timeout_seconds: manifest
            .idle_timeout
            .unwrap_or(defaults.idle_timeout_seconds),
        max_uses: manifest.max_uses.unwrap_or(defaults.max_uses),
    };
    if !(1..=MAX_POOL_SIZE).contains(&spec.max) {
        return Err(format!(
            "max must be between 1 and {MAX_POOL_SIZE}, found {}",
            spec.max
        ));
    }
    if spec.min_idle > spec.max {
        return Err(format!(
            "min_idle {} is more than max {}",
            spec.min_idle, spec.max
        ));
    }
    if spec.max_uses == 0 {
        return Err("max_uses must be at least 1, found 0".to_string());
    }
    Ok(spec)
}

/// Reads `idle_timeout` inside the scalar's own deserialization, so errors name
/// `pool.idle_timeout` and its line.
fn deserialize_idle_timeout<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    deserializer.deserialize_any(IdleTimeoutVisitor)
}

struct IdleTimeoutVisitor;

impl<'de> Visitor<'de> for IdleTimeoutVisitor {
    type Value = Option<u64>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter
            .write_str("a duration such as \"30s\", \"5m\" or \"1h\", or a whole number of seconds")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Option<u64>, E> {
        check_idle_timeout(seconds, &seconds.to_string())
            .map(Some)
            .map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Option<u64>, E> {
        Err(E::custom(not_a_duration(&seconds.to_string(), "")))
    }

    fn visit_f64<E: de::Error>(self, seconds: f64) -> Result<Option<u64>, E> {
        Err(E::custom(not_a_duration(&seconds.to_string(), "")))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Option<u64>, E> {
        parse_idle_timeout(text).map(Some).map_err(E::custom)
    }
}

fn not_a_duration(shown: &str, detail: &str) -> String {
    format!(
        "{shown} is not a duration such as \"30s\", \"5m\" or \"1h\", or a whole number of seconds{detail}"
    )
}

/// `idle_timeout` written as a string: a whole number of seconds or a duration such as `30s`,
/// `5m`, `1h30m` (without spaces), between 1s and 24h.
fn parse_idle_timeout(text: &str) -> Result<u64, String> {
    let shown = format!("{text:?}");
    let trimmed = text.trim();
    let seconds = if let Ok(seconds) = trimmed.parse::<u64>() {
        seconds
    } else if trimmed.chars().any(char::is_whitespace) {
        return Err(not_a_duration(&shown, " (write it without spaces)"));
    } else {
        let duration = humantime::parse_duration(trimmed)
            .map_err(|error| not_a_duration(&shown, &format!(": {error}")))?;
        if duration.subsec_nanos() != 0 {
            return Err(format!("{shown} is not a whole number of seconds"));
        }
        duration.as_secs()
    };
    check_idle_timeout(seconds, &shown)
}

fn check_idle_timeout(seconds: u64, shown: &str) -> Result<u64, String> {
    if !(MIN_IDLE_TIMEOUT_SECONDS..=MAX_IDLE_TIMEOUT_SECONDS).contains(&seconds) {
        return Err(format!("must be between 1s and 24h, found {shown}"));
    }
    Ok(seconds)
}

/// Combines `isolation:`, `pool:` and whether the action names a container: `pool:` alone
/// makes the action pooled, `pool:` with per-execution isolation is refused, and a pooled
/// action needs a container image.
pub(crate) fn resolve_isolation(
    file: &str,
    isolation: Option<Isolation>,
    pool: Option<PoolSpec>,
    has_container: bool,
) -> Result<(Option<Isolation>, Option<PoolSpec>), PackError> {
    let invalid = |field: &str, reason: &str| PackError::InvalidField {
        file: file.to_string(),
        field: field.to_string(),
        reason: reason.to_string(),
    };
    match (isolation, &pool) {
        (Some(Isolation::PerExecution), Some(_)) => Err(invalid(
            "isolation",
            "is per-execution, but pool settings need isolation: pooled",
        )),
        (Some(Isolation::Pooled), _) if !has_container => Err(invalid(
            "isolation",
            "pooled isolation needs a container image (container: <image>)",
        )),
        (None, Some(_)) if !has_container => Err(invalid(
            "pool",
            "pool settings make the action pooled, which needs a container image (container: <image>)",
        )),
        (None, Some(_)) => Ok((Some(Isolation::Pooled), pool)),
        _ => Ok((isolation, pool)),
    }
}
