//! `runtime_version:` constraints of actions for long-lived workers (upstream's field): a
//! semver requirement such as `>=3.11,<4` or `3.12`, checked when the pack loads and matched
//! against the version a worker detected for the runtime (`3.11.4`, `v20.11.1`, `3.12.0rc1`,
//! `1.22`: the leading numbers, missing parts as 0).

/// Parses a `runtime_version:` constraint, naming what is wrong.
pub fn parse_constraint(text: &str) -> Result<semver::VersionReq, String> {
    semver::VersionReq::parse(text.trim()).map_err(|error| {
        format!("{text:?} is not a version constraint such as \">=3.11,<4\": {error}")
    })
}

/// The version a worker reported, read leniently; `None` when it has no leading number.
pub fn parse_detected(text: &str) -> Option<semver::Version> {
    let text = text.trim().trim_start_matches(['v', 'V']);
    let mut parts = [0u64; 3];
    let mut count = 0;
    for part in text.split('.').take(3) {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            break;
        }
        parts[count] = digits.parse().ok()?;
        count += 1;
        if digits.len() != part.len() {
            break;
        }
    }
    (count > 0).then(|| semver::Version::new(parts[0], parts[1], parts[2]))
}

/// Whether a detected version satisfies a constraint (an unknown version never does).
pub fn satisfies(constraint: &str, detected: Option<&str>) -> bool {
    match (
        parse_constraint(constraint),
        detected.and_then(parse_detected),
    ) {
        (Ok(requirement), Some(version)) => requirement.matches(&version),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detected_versions_are_read_leniently() {
        assert_eq!(
            parse_detected("3.11.4"),
            Some(semver::Version::new(3, 11, 4))
        );
        assert_eq!(
            parse_detected("v20.11.1"),
            Some(semver::Version::new(20, 11, 1))
        );
        assert_eq!(
            parse_detected("3.12.0rc1"),
            Some(semver::Version::new(3, 12, 0))
        );
        assert_eq!(parse_detected("1.22"), Some(semver::Version::new(1, 22, 0)));
        assert_eq!(parse_detected("unknown"), None);
    }

    #[test]
    fn constraints_match_as_upstream_writes_them() {
        assert!(satisfies(">=3.11,<4", Some("3.11.4")));
        assert!(satisfies(">=3.11, <4", Some("3.12.1")));
        assert!(!satisfies(">=3.11,<4", Some("3.10.9")));
        assert!(!satisfies(">=3.11,<4", Some("4.0.0")));
        assert!(
            !satisfies(">=3.11", None),
            "an unknown version never satisfies"
        );
        assert!(parse_constraint("three").unwrap_err().contains("\"three\""));
    }
}
