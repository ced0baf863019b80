//! `key=value` execution parameters from the command line.

use serde_json::{Map, Value};

/// Parses one `key=value` argument. The value is JSON when it parses as JSON (`count=3` → 3,
/// `flags=[1,2]` → a list, `on=true` → true) and a string otherwise (`name=Ada` → "Ada").
/// To pass a string that looks like JSON, quote it as JSON: `version='"1.0"'`.
pub fn parse_parameter(argument: &str) -> Result<(String, Value), String> {
    let Some((key, raw_value)) = argument.split_once('=') else {
        return Err(format!(
            "parameter {argument:?} must be written key=value (e.g. name=Ada or count=3)"
        ));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("parameter {argument:?} has an empty name"));
    }
    let value = serde_json::from_str::<Value>(raw_value)
        .unwrap_or_else(|_| Value::String(raw_value.to_string()));
    Ok((key.to_string(), value))
}

/// Collects parsed parameters into a map, refusing a name given twice.
pub fn collect_parameters(parameters: Vec<(String, Value)>) -> Result<Map<String, Value>, String> {
    let mut map = Map::new();
    for (key, value) in parameters {
        if map.contains_key(&key) {
            return Err(format!("parameter {key:?} is given more than once"));
        }
        map.insert(key, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn value_of(argument: &str) -> Value {
        parse_parameter(argument).expect("valid parameter").1
    }

    #[test]
    fn values_are_json_when_they_parse_as_json() {
        assert_eq!(value_of("count=3"), json!(3));
        assert_eq!(value_of("ratio=0.5"), json!(0.5));
        assert_eq!(value_of("flags=[1,2]"), json!([1, 2]));
        assert_eq!(value_of("options={\"a\":1}"), json!({"a": 1}));
        assert_eq!(value_of("enabled=true"), json!(true));
        assert_eq!(value_of("nothing=null"), Value::Null);
        assert_eq!(value_of("quoted=\"1.0\""), json!("1.0"));
    }

    #[test]
    fn other_values_are_strings() {
        assert_eq!(value_of("name=Ada"), json!("Ada"));
        assert_eq!(value_of("name=Ada Lovelace"), json!("Ada Lovelace"));
        assert_eq!(value_of("zip=01234"), json!("01234"));
        assert_eq!(value_of("empty="), json!(""));
        assert_eq!(value_of("expression=a=b"), json!("a=b"));
        assert_eq!(value_of("broken=[1,"), json!("[1,"));
    }

    #[test]
    fn keys_are_required() {
        assert_eq!(parse_parameter("name=Ada").expect("valid").0, "name");
        assert!(parse_parameter("no-equals-sign")
            .expect_err("missing =")
            .contains("must be written key=value"));
        assert!(parse_parameter("=3")
            .expect_err("empty key")
            .contains("has an empty name"));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let parameters = vec![
            ("name".to_string(), json!("a")),
            ("name".to_string(), json!("b")),
        ];
        assert_eq!(
            collect_parameters(parameters).expect_err("duplicate"),
            "parameter \"name\" is given more than once"
        );
        let parameters = vec![("a".to_string(), json!(1)), ("b".to_string(), json!(2))];
        assert_eq!(
            Value::Object(collect_parameters(parameters).expect("distinct")),
            json!({"a": 1, "b": 2})
        );
    }
}
