//! Property tests of the CLI's `key=value` parameter parser: any argument gives an answer or
//! a clear error, never a panic; the name is everything before the first `=` (trimmed); a
//! value that is JSON comes back as that JSON, any other value as the exact string.

use attune_cli::parameters::{collect_parameters, parse_parameter};
use proptest::prelude::*;
use serde_json::Value;

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn any_argument_parses_or_is_refused_clearly(argument in "\\PC{0,64}") {
        match parse_parameter(&argument) {
            Ok((key, _)) => {
                let (raw_key, _) = argument.split_once('=').expect("an accepted argument has =");
                prop_assert_eq!(key.as_str(), raw_key.trim());
                prop_assert!(!key.is_empty());
            }
            Err(error) => {
                prop_assert!(
                    error.contains("must be written key=value") || error.contains("empty name"),
                    "unclear error: {}", error
                );
            }
        }
    }

    #[test]
    fn a_value_is_its_json_or_its_exact_text(key in "[a-z_][a-z0-9_]{0,12}", value in "\\PC{0,48}") {
        let (parsed_key, parsed) = parse_parameter(&format!("{key}={value}")).unwrap();
        prop_assert_eq!(parsed_key, key);
        match serde_json::from_str::<Value>(&value) {
            Ok(json) => prop_assert_eq!(parsed, json),
            Err(_) => prop_assert_eq!(parsed, Value::String(value)),
        }
    }

    #[test]
    fn a_name_given_twice_is_refused(key in "[a-z]{1,8}", first in any::<i64>(), second in any::<i64>()) {
        let parameters = vec![
            parse_parameter(&format!("{key}={first}")).unwrap(),
            parse_parameter(&format!("{key}={second}")).unwrap(),
        ];
        let error = collect_parameters(parameters).unwrap_err();
        prop_assert!(error.contains("more than once"), "{}", error);
    }
}
