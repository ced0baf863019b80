//! Parameter schemas (JSON Schema and flat maps), validation with defaults, failure messages
//! naming each field, and secret redaction.

mod common;

use attune_pack::{
    load_pack_dir, redact_secrets, secret_parameter_names, validate_parameters, ActionDefinition,
    PackError, ParameterError, ParameterValidator,
};
use common::pack_with_action;
use serde_json::{json, Map, Value};

fn parameters(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("expected an object, got {other}"),
    }
}

fn hello_action(action_ref: &str) -> ActionDefinition {
    let pack = load_pack_dir(common::hello_pack_dir()).expect("load examples/packs/hello");
    pack.action(action_ref).expect("action exists").clone()
}

/// Loads a demo action whose `parameters:` section is `parameters_yaml` (indented by two).
fn load_action_with_parameters(parameters_yaml: &str) -> Result<ActionDefinition, PackError> {
    let directory = pack_with_action(&format!(
        "ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\nparameters:\n{parameters_yaml}"
    ));
    load_pack_dir(directory.path()).map(|pack| pack.actions[0].clone())
}

#[test]
fn defaults_are_applied() {
    let greet = hello_action("hello.greet");
    let result = validate_parameters(&greet, parameters(json!({"name": "Ada"}))).expect("valid");
    assert_eq!(
        Value::Object(result),
        json!({"name": "Ada", "punctuation": "!"})
    );

    let result = validate_parameters(&greet, Map::new()).expect("defaults satisfy required");
    assert_eq!(
        Value::Object(result),
        json!({"name": "World", "punctuation": "!"})
    );
}

#[test]
fn enum_failure_names_the_field() {
    let greet = hello_action("hello.greet");
    let error = validate_parameters(&greet, parameters(json!({"punctuation": "?!"})))
        .expect_err("not in the enum");
    assert_eq!(
        error.to_string(),
        r#"parameter "punctuation": "?!" is not one of ["!", ".", "?"]"#
    );
    assert_eq!(error.failures().len(), 1);
    assert_eq!(error.failures()[0].field, "punctuation");
}

#[test]
fn every_failure_is_listed() {
    let stats = hello_action("hello.stats");
    let error = validate_parameters(&stats, parameters(json!({"api_token": 5})))
        .expect_err("text missing and token not a string");
    let mut fields: Vec<&str> = error.failures().iter().map(|f| f.field.as_str()).collect();
    fields.sort();
    assert_eq!(fields, ["api_token", "text"]);
    let messages: Vec<&str> = error
        .failures()
        .iter()
        .map(|f| f.message.as_str())
        .collect();
    assert!(
        messages.contains(&r#"parameter "text" is required"#),
        "{messages:?}"
    );

    let error =
        validate_parameters(&stats, parameters(json!({"text": ""}))).expect_err("text too short");
    assert_eq!(
        error.to_string(),
        r#"parameter "text": "" is shorter than 1 character"#
    );
}

#[test]
fn secret_values_never_appear_in_failures() {
    let action = load_action_with_parameters(
        "  type: object\n  properties:\n    password:\n      type: string\n      secret: true\n      minLength: 12\n",
    )
    .expect("load action");
    assert_eq!(action.secret_parameters, ["password"]);
    let error = validate_parameters(&action, parameters(json!({"password": "hunter2"})))
        .expect_err("too short");
    let message = error.to_string();
    assert!(
        message.starts_with(r#"parameter "password": "#),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("********"), "{message}");
}

#[test]
fn unknown_parameters_are_refused_when_the_schema_is_closed() {
    let action = load_action_with_parameters(
        "  type: object\n  additionalProperties: false\n  properties:\n    count:\n      type: integer\n",
    )
    .expect("load action");
    let error = validate_parameters(&action, parameters(json!({"count": 3, "colour": "red"})))
        .expect_err("unknown parameter");
    assert_eq!(error.failures()[0].field, "colour");
    assert_eq!(
        error.to_string(),
        r#"parameter "colour" is not accepted by this action (known: count)"#
    );
    let error =
        validate_parameters(&action, parameters(json!({"count": "3"}))).expect_err("wrong type");
    assert_eq!(
        error.to_string(),
        r#"parameter "count": "3" is not of type "integer""#
    );
}

#[test]
fn nested_failures_name_the_top_level_field_and_path() {
    let action = load_action_with_parameters(
        "  type: object\n  properties:\n    flags:\n      type: array\n      items:\n        type: integer\n",
    )
    .expect("load action");
    let error = validate_parameters(&action, parameters(json!({"flags": [1, "two"]})))
        .expect_err("bad item");
    assert_eq!(error.failures()[0].field, "flags");
    assert_eq!(
        error.to_string(),
        r#"parameter "flags" (at /flags/1): "two" is not of type "integer""#
    );
}

#[test]
fn flat_parameter_maps_become_json_schema() {
    let action = load_action_with_parameters(
        "  name:\n    type: string\n    required: true\n    description: who\n  token:\n    type: string\n    secret: true\n  count:\n    type: integer\n    default: 2\n    enum: [1, 2, 3]\n",
    )
    .expect("load action");
    assert_eq!(
        action.parameters_schema,
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "who"},
                "token": {"type": "string", "secret": true},
                "count": {"type": "integer", "default": 2, "enum": [1, 2, 3]}
            },
            "required": ["name"]
        })
    );
    assert_eq!(action.secret_parameters, ["token"]);
    let result = validate_parameters(&action, parameters(json!({"name": "x"}))).expect("valid");
    assert_eq!(result.get("count"), Some(&json!(2)));
    let error = validate_parameters(&action, Map::new()).expect_err("name required");
    assert_eq!(error.to_string(), r#"parameter "name" is required"#);
}

#[test]
fn required_true_inside_json_schema_properties_is_moved() {
    let action = load_action_with_parameters(
        "  type: object\n  properties:\n    host:\n      type: string\n      required: true\n",
    )
    .expect("load action");
    assert_eq!(action.parameters_schema["required"], json!(["host"]));
    assert_eq!(
        action.parameters_schema["properties"]["host"],
        json!({"type": "string"})
    );
}

#[test]
fn invalid_schemas_are_rejected_at_load_time() {
    let cases = [
        (
            "  type: object\n  properties:\n    x:\n      $ref: \"https://example.com/schema.json\"\n",
            "remote schemas are never fetched",
        ),
        ("  type: string\n", "the schema's type must be \"object\""),
        ("  type: object\n  properties:\n    x:\n      type: 5\n", "not a valid JSON Schema: at /properties/x/type: "),
        (
            "  type: object\n  properties:\n    x:\n      type: integer\n      default: many\n",
            "the default of parameter \"x\" is invalid",
        ),
        ("  x: 3\n", "parameter \"x\": definition must be a map"),
        ("  x:\n    type: string\n    required: yes-please\n", "required must be true or false"),
        ("  - a\n  - b\n", "must be a JSON Schema object or a map"),
    ];
    for (parameters_yaml, reason) in cases {
        let error = load_action_with_parameters(parameters_yaml).expect_err(reason);
        assert!(
            matches!(error, PackError::InvalidParameterSchema { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("actions/echo.yaml: parameters: "),
            "{message}"
        );
        assert!(message.contains(reason), "{message}");
    }
}

#[test]
fn local_references_are_allowed() {
    let action = load_action_with_parameters(
        "  type: object\n  $defs:\n    port:\n      type: integer\n      maximum: 65535\n  properties:\n    port:\n      $ref: \"#/$defs/port\"\n",
    )
    .expect("load action");
    let error =
        validate_parameters(&action, parameters(json!({"port": 70000}))).expect_err("port too big");
    assert_eq!(error.failures()[0].field, "port");
}

#[test]
fn stored_schemas_compile_and_remote_refs_are_refused() {
    let validator = ParameterValidator::from_schema(
        "demo.x",
        &json!({"type": "object", "properties": {"key": {"type": "string", "secret": true}}}),
    )
    .expect("compile");
    assert_eq!(validator.secret_parameters(), ["key"]);
    assert!(validator.validate(parameters(json!({"key": "v"}))).is_ok());

    let error = ParameterValidator::from_schema("demo.x", &json!({"$ref": "http://example.com/s"}))
        .expect_err("remote ref");
    assert!(
        matches!(error, ParameterError::InvalidSchema { .. }),
        "{error:?}"
    );
    assert!(error.failures().is_empty());
    assert!(
        error
            .to_string()
            .starts_with("the parameter schema of action demo.x is invalid: $ref"),
        "{error}"
    );
}

#[test]
fn secrets_are_redacted() {
    let given = parameters(json!({"text": "hello", "api_token": "s3cr3t", "other": 1}));
    let redacted = redact_secrets(&given, &["api_token".to_string(), "absent".to_string()]);
    assert_eq!(
        Value::Object(redacted),
        json!({"text": "hello", "api_token": "********", "other": 1})
    );
    let stats = hello_action("hello.stats");
    assert_eq!(
        secret_parameter_names(&stats.parameters_schema),
        ["api_token"]
    );
}
