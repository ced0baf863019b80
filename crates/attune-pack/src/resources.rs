//! Container resource limits and capabilities: memory quantities (`256Mi`, `1G`), CPU and
//! process limits with their accepted ranges, and Linux capability names. The pack loader checks
//! `container:` with these, and the server's controller converts the stored values with the same
//! functions, so a limit that loads is a limit Docker accepts.

use attune_protocol::api::ResourceSpec;

/// Smallest memory limit: Docker refuses anything below 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// Largest memory limit: 1 TiB.
pub const MAX_MEMORY_BYTES: u64 = 1024 * 1024 * 1024 * 1024;
/// Smallest CPU share: the kernel's smallest CFS quota (1 ms per 100 ms period).
pub const MIN_CPUS: f64 = 0.01;
/// Largest CPU count.
pub const MAX_CPUS: f64 = 1024.0;
/// Smallest process limit.
pub const MIN_PIDS: i64 = 16;
/// Largest process limit.
pub const MAX_PIDS: i64 = 32_768;

/// Every Linux capability name without its `CAP_` prefix, in kernel order (capabilities(7)).
pub const LINUX_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Units of a memory quantity and their size in bytes: binary (`Ki`..`Ti`) and decimal
/// (`k`, `M`, `G`, `T`), as Kubernetes writes them.
const MEMORY_UNITS: [(&str, u64); 8] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

/// Parses a memory quantity into bytes: a whole number with an optional unit, `Ki`, `Mi`, `Gi`,
/// `Ti` (powers of 1024) or `k`, `M`, `G`, `T` (powers of 1000); no unit means bytes
/// (`268435456`). Only the syntax is checked; [`ResourceLimits::from_spec`] also checks the range.
pub fn parse_memory_quantity(text: &str) -> Result<u64, String> {
    let quantity = text.trim();
    let digits_end = quantity
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (digits, unit) = quantity.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a quantity such as 256Mi, 1Gi, 512M, 100k or a whole number of bytes"
        ));
    }
    let multiplier = if unit.is_empty() {
        1
    } else {
        MEMORY_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, bytes)| *bytes)
            .ok_or_else(|| {
                format!(
                    "{text:?} has an unknown unit {unit:?} (use Ki, Mi, Gi, Ti, k, M, G, T, or none for bytes)"
                )
            })?
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Resource limits ready for Docker's HostConfig; `None` leaves the server's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceLimits {
    /// `HostConfig.Memory` (and `MemorySwap`) in bytes.
    pub memory_bytes: Option<i64>,
    /// `HostConfig.NanoCpus`: billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// `HostConfig.PidsLimit`.
    pub pids: Option<i64>,
}

impl ResourceLimits {
    /// Checks an action's `resources:` and converts it: memory between 6 MiB and 1 TiB, cpus
    /// between 0.01 and 1024, pids between 16 and 32768.
    pub fn from_spec(spec: &ResourceSpec) -> Result<ResourceLimits, String> {
        let memory_bytes = spec
            .memory
            .as_deref()
            .map(|memory| {
                let bytes =
                    parse_memory_quantity(memory).map_err(|reason| format!("memory {reason}"))?;
                check_memory_bytes(memory, bytes)
            })
            .transpose()?;
        let nano_cpus = spec.cpus.map(cpus_to_nano_cpus).transpose()?;
        let pids = spec.pids.map(check_pids).transpose()?;
        Ok(ResourceLimits {
            memory_bytes,
            nano_cpus,
            pids,
        })
    }
}

fn check_memory_bytes(memory: &str, bytes: u64) -> Result<i64, String> {
    if bytes < MIN_MEMORY_BYTES {
        return Err(format!(
            "memory {memory:?} ({bytes} bytes) is below Docker's minimum of 6Mi ({MIN_MEMORY_BYTES} bytes)"
        ));
    }
    if bytes > MAX_MEMORY_BYTES {
        return Err(format!(
            "memory {memory:?} ({bytes} bytes) is above the maximum of 1Ti ({MAX_MEMORY_BYTES} bytes)"
        ));
    }
    i64::try_from(bytes).map_err(|_| format!("memory {memory:?} is too large"))
}

fn cpus_to_nano_cpus(cpus: f64) -> Result<i64, String> {
    // NaN fails the range check too.
    if !(MIN_CPUS..=MAX_CPUS).contains(&cpus) {
        return Err(format!(
            "cpus must be between {MIN_CPUS} and {MAX_CPUS}, found {cpus}"
        ));
    }
    Ok((cpus * 1e9).round() as i64)
}

fn check_pids(pids: i64) -> Result<i64, String> {
    if !(MIN_PIDS..=MAX_PIDS).contains(&pids) {
        return Err(format!(
            "pids must be between {MIN_PIDS} and {MAX_PIDS}, found {pids}"
        ));
    }
    Ok(pids)
}

/// Checks a capability name and returns it without its `CAP_` prefix: `CAP_NET_ADMIN` and
/// `NET_ADMIN` both give `NET_ADMIN`. Names are upper-case and must be Linux capabilities.
pub fn normalize_capability(capability: &str) -> Result<String, String> {
    let trimmed = capability.trim();
    if trimmed.bytes().any(|byte| byte.is_ascii_lowercase()) {
        return Err(format!(
            "capability {capability:?} must be upper-case, like {:?}",
            trimmed.to_ascii_uppercase()
        ));
    }
    let name = trimmed.strip_prefix("CAP_").unwrap_or(trimmed);
    if !LINUX_CAPABILITIES.contains(&name) {
        return Err(format!(
            "capability {capability:?} is not a Linux capability (see capabilities(7), e.g. NET_BIND_SERVICE, NET_ADMIN, SYS_PTRACE)"
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units_have_their_sizes() {
        assert_eq!(parse_memory_quantity("256Mi"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_memory_quantity("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory_quantity("1Ti"), Ok(1 << 40));
        assert_eq!(parse_memory_quantity("100Ki"), Ok(102_400));
        assert_eq!(parse_memory_quantity("100k"), Ok(100_000));
        assert_eq!(parse_memory_quantity("512M"), Ok(512_000_000));
        assert_eq!(parse_memory_quantity("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory_quantity("2T"), Ok(2_000_000_000_000));
        assert_eq!(parse_memory_quantity(" 268435456 "), Ok(268_435_456));
    }

    #[test]
    fn malformed_memory_quantities_are_explained() {
        assert_eq!(
            parse_memory_quantity("lots"),
            Err("\"lots\" is not a quantity such as 256Mi, 1Gi, 512M, 100k or a whole number of bytes".to_string())
        );
        assert_eq!(
            parse_memory_quantity("512m"),
            Err("\"512m\" has an unknown unit \"m\" (use Ki, Mi, Gi, Ti, k, M, G, T, or none for bytes)".to_string())
        );
        for text in ["", "-1Gi", "1.5Gi", "Mi", "1 Gi", "1GiB"] {
            assert!(parse_memory_quantity(text).is_err(), "{text:?}");
        }
        assert_eq!(
            parse_memory_quantity("99999999999999999999"),
            Err("\"99999999999999999999\" is too large".to_string())
        );
        assert_eq!(
            parse_memory_quantity("20000000Ti"),
            Err("\"20000000Ti\" is too large".to_string())
        );
    }

    #[test]
    fn limits_convert_and_check_ranges() {
        let spec = ResourceSpec {
            memory: Some("6Mi".to_string()),
            cpus: Some(0.5),
            pids: Some(16),
        };
        assert_eq!(
            ResourceLimits::from_spec(&spec),
            Ok(ResourceLimits {
                memory_bytes: Some(6 * 1024 * 1024),
                nano_cpus: Some(500_000_000),
                pids: Some(16),
            })
        );
        assert_eq!(
            ResourceLimits::from_spec(&ResourceSpec::default()),
            Ok(ResourceLimits::default())
        );
        let limits = ResourceLimits::from_spec(&ResourceSpec {
            memory: Some("1Ti".to_string()),
            cpus: Some(1024.0),
            pids: Some(32_768),
        })
        .expect("upper bounds are accepted");
        assert_eq!(limits.memory_bytes, Some(1 << 40));
        assert_eq!(limits.nano_cpus, Some(1_024_000_000_000));
        assert_eq!(limits.pids, Some(32_768));
        assert_eq!(
            ResourceLimits::from_spec(&ResourceSpec {
                cpus: Some(0.01),
                ..ResourceSpec::default()
            })
            .map(|limits| limits.nano_cpus),
            Ok(Some(10_000_000))
        );

        for (spec, message) in [
            (
                ResourceSpec {
                    memory: Some("1025Gi".to_string()),
                    ..ResourceSpec::default()
                },
                "memory \"1025Gi\" (1100585369600 bytes) is above the maximum of 1Ti (1099511627776 bytes)",
            ),
            (
                ResourceSpec {
                    memory: Some("6291455".to_string()),
                    ..ResourceSpec::default()
                },
                "memory \"6291455\" (6291455 bytes) is below Docker's minimum of 6Mi (6291456 bytes)",
            ),
            (
                ResourceSpec {
                    memory: Some("x".to_string()),
                    ..ResourceSpec::default()
                },
                "memory \"x\" is not a quantity such as 256Mi, 1Gi, 512M, 100k or a whole number of bytes",
            ),
            (
                ResourceSpec {
                    cpus: Some(0.005),
                    ..ResourceSpec::default()
                },
                "cpus must be between 0.01 and 1024, found 0.005",
            ),
            (
                ResourceSpec {
                    cpus: Some(1024.5),
                    ..ResourceSpec::default()
                },
                "cpus must be between 0.01 and 1024, found 1024.5",
            ),
            (
                ResourceSpec {
                    cpus: Some(f64::NAN),
                    ..ResourceSpec::default()
                },
                "cpus must be between 0.01 and 1024, found NaN",
            ),
            (
                ResourceSpec {
                    pids: Some(32_769),
                    ..ResourceSpec::default()
                },
                "pids must be between 16 and 32768, found 32769",
            ),
            (
                ResourceSpec {
                    pids: Some(-1),
                    ..ResourceSpec::default()
                },
                "pids must be between 16 and 32768, found -1",
            ),
        ] {
            assert_eq!(ResourceLimits::from_spec(&spec), Err(message.to_string()));
        }
    }

    #[test]
    fn capabilities_are_normalized_and_checked() {
        assert_eq!(
            normalize_capability("NET_ADMIN"),
            Ok("NET_ADMIN".to_string())
        );
        assert_eq!(
            normalize_capability("CAP_NET_BIND_SERVICE"),
            Ok("NET_BIND_SERVICE".to_string())
        );
        assert_eq!(
            normalize_capability("CAP_CHECKPOINT_RESTORE"),
            Ok("CHECKPOINT_RESTORE".to_string())
        );
        assert_eq!(
            normalize_capability("net_admin"),
            Err("capability \"net_admin\" must be upper-case, like \"NET_ADMIN\"".to_string())
        );
        for name in ["ALL", "CAP_", "", "NET_FOO", "CAP_CAP_CHOWN"] {
            let error = normalize_capability(name).expect_err(name);
            assert!(error.ends_with("is not a Linux capability (see capabilities(7), e.g. NET_BIND_SERVICE, NET_ADMIN, SYS_PTRACE)"), "{error}");
        }
        let mut sorted = LINUX_CAPABILITIES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), LINUX_CAPABILITIES.len());
    }
}
