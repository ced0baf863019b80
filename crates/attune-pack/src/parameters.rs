//! Action parameters: turning an action's `parameters` into a JSON Schema, checking given
//! parameters against it (defaults first), and masking secrets.

use crate::model::ActionDefinition;
use jsonschema::error::ValidationErrorKind;
use jsonschema::ValidationError;
use serde_json::{json, Map, Value};

/// What secret parameter values are replaced with wherever they are shown.
pub const REDACTED: &str = "********";

/// Keywords that may sit at the top of an object JSON Schema; a `parameters` map made only of
/// these (with `properties` a map) is read as a JSON Schema rather than a flat parameter map.
const SCHEMA_KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "$comment",
    "definitions",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "unevaluatedProperties",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "examples",
    "default",
];

/// Keywords whose string value references another schema.
const REFERENCE_KEYWORDS: &[&str] = &["$ref", "$dynamicRef", "$recursiveRef"];

/// One failing parameter: its top-level name (empty when the failure concerns the whole set)
/// and a readable reason that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterFailure {
    pub field: String,
    pub message: String,
}

/// Why given parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParameterError {
    /// One or more parameters are missing, unknown or do not match the schema.
    #[error("{}", join_failures(.0))]
    Invalid(Vec<ParameterFailure>),
    /// The action's schema itself cannot be compiled.
    #[error("the parameter schema of action {action_ref} is invalid: {reason}")]
    InvalidSchema { action_ref: String, reason: String },
}

impl ParameterError {
    /// Every failing field with its message (empty for [`ParameterError::InvalidSchema`]).
    pub fn failures(&self) -> &[ParameterFailure] {
        match self {
            ParameterError::Invalid(failures) => failures,
            ParameterError::InvalidSchema { .. } => &[],
        }
    }
}

fn join_failures(failures: &[ParameterFailure]) -> String {
    failures
        .iter()
        .map(|failure| failure.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The normalized `parameters` of an action.
#[derive(Debug)]
pub(crate) struct NormalizedParameters {
    pub schema: Value,
    pub secret_parameters: Vec<String>,
}

/// Turns an action's `parameters` (absent, a JSON Schema object, or a StackStorm-style flat map
/// `name → {type, default, enum, required: true, secret: true, description}`) into a checked
/// JSON Schema object. The error is the reason, without the file name.
pub(crate) fn normalize_parameters(
    parameters: Option<&Value>,
) -> Result<NormalizedParameters, String> {
    let schema = match parameters {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(Value::Object(map)) if is_json_schema(map) => normalize_json_schema(map)?,
        Some(Value::Object(map)) => convert_flat_parameters(map)?,
        Some(_) => {
            return Err(
                "must be a JSON Schema object or a map of parameter names to definitions"
                    .to_string(),
            )
        }
    };
    reject_remote_references(&schema, "")?;
    let secret_parameters = secret_parameter_names(&schema);
    let validator = compile(&schema)?;
    check_defaults(&schema, &validator)?;
    Ok(NormalizedParameters {
        schema,
        secret_parameters,
    })
}

fn is_json_schema(map: &Map<String, Value>) -> bool {
    if matches!(map.get("type"), Some(Value::String(_) | Value::Array(_))) {
        return true;
    }
    if map.contains_key("$schema") {
        return true;
    }
    matches!(map.get("properties"), Some(Value::Object(_)))
        && !matches!(map.get("required"), Some(Value::Object(_)))
        && map
            .keys()
            .all(|key| SCHEMA_KEYWORDS.contains(&key.as_str()))
}

/// Checks the top-level type and moves StackStorm-style `required: true` on top-level
/// properties into the schema's `required` list.
fn normalize_json_schema(map: &Map<String, Value>) -> Result<Value, String> {
    let mut schema = map.clone();
    match schema.get("type") {
        None => {
            schema.insert("type".to_string(), json!("object"));
        }
        Some(Value::String(kind)) if kind == "object" => {}
        Some(other) => {
            return Err(format!(
                "the schema's type must be \"object\" (parameters are named), found {other}"
            ))
        }
    }
    let mut required_names = Vec::new();
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        for (name, property) in properties.iter_mut() {
            if let Value::Object(property) = property {
                match property.get("required") {
                    Some(Value::Bool(true)) => {
                        property.remove("required");
                        required_names.push(name.clone());
                    }
                    Some(Value::Bool(false)) => {
                        property.remove("required");
                    }
                    _ => {}
                }
            }
        }
    }
    if !required_names.is_empty() {
        let required = schema
            .entry("required")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(required) = required else {
            return Err("required must be a list of parameter names".to_string());
        };
        for name in required_names {
            if !required.contains(&Value::String(name.clone())) {
                required.push(Value::String(name));
            }
        }
    }
    Ok(Value::Object(schema))
}

fn convert_flat_parameters(map: &Map<String, Value>) -> Result<Value, String> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, definition) in map {
        let Value::Object(definition) = definition else {
            return Err(format!(
                "parameter {name:?}: definition must be a map (type, default, enum, required, secret, description)"
            ));
        };
        let mut property = definition.clone();
        match property.remove("required") {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => required.push(Value::String(name.clone())),
            Some(other) => {
                return Err(format!(
                    "parameter {name:?}: required must be true or false, found {other}"
                ))
            }
        }
        properties.insert(name.clone(), Value::Object(property));
    }
    let mut schema = Map::new();
    schema.insert("type".to_string(), json!("object"));
    schema.insert("properties".to_string(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".to_string(), Value::Array(required));
    }
    Ok(Value::Object(schema))
}

/// Refuses `$ref`s that leave the schema: parameter schemas must be self-contained.
fn reject_remote_references(value: &Value, pointer: &str) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if REFERENCE_KEYWORDS.contains(&key.as_str()) {
                    if let Value::String(reference) = child {
                        if !reference.starts_with('#') {
                            return Err(format!(
                                "{key} {reference:?} at {pointer}/{key} is not allowed: only local references (\"#/...\") are supported, remote schemas are never fetched"
                            ));
                        }
                    }
                }
                reject_remote_references(child, &format!("{pointer}/{key}"))?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                reject_remote_references(item, &format!("{pointer}/{index}"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .offline()
        .build(schema)
        .map_err(|error| {
            let location = error.instance_path().as_str();
            if location.is_empty() {
                format!("not a valid JSON Schema: {error}")
            } else {
                format!("not a valid JSON Schema: at {location}: {error}")
            }
        })
}

/// Checks that every top-level `default` is itself a valid value for its parameter.
fn check_defaults(schema: &Value, validator: &jsonschema::Validator) -> Result<(), String> {
    let default_map = top_level_defaults(schema);
    let defaults = Value::Object(default_map.clone());
    for error in validator.iter_errors(&defaults) {
        if let Some(field) = top_level_field(&error) {
            if default_map.contains_key(&field) {
                return Err(format!(
                    "the default of parameter {field:?} is invalid: {error}"
                ));
            }
        }
    }
    Ok(())
}

fn top_level_defaults(schema: &Value) -> Map<String, Value> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .filter_map(|(name, property)| {
                    property
                        .get("default")
                        .map(|default| (name.clone(), default.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn top_level_field(error: &ValidationError<'_>) -> Option<String> {
    error
        .instance_path()
        .segments()
        .next()
        .map(|segment| segment.to_string())
}

/// The top-level properties of `schema` marked `secret: true`, sorted.
pub fn secret_parameter_names(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .filter(|(_, property)| property.get("secret") == Some(&Value::Bool(true)))
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// A schema to show: the `default` (and `examples`) of every property marked secret replaced
/// by [`REDACTED`], so reading an action never tells its secret default.
pub fn redact_secret_defaults(schema: &Value) -> Value {
    let mut shown = schema.clone();
    if let Some(properties) = shown.get_mut("properties").and_then(Value::as_object_mut) {
        for property in properties.values_mut() {
            if property.get("secret") != Some(&Value::Bool(true)) {
                continue;
            }
            if let Some(property) = property.as_object_mut() {
                for key in ["default", "examples", "const"] {
                    if property.contains_key(key) {
                        property.insert(key.to_string(), Value::String(REDACTED.to_string()));
                    }
                }
            }
        }
    }
    shown
}

/// Replaces the values of the secret parameters with [`REDACTED`].
pub fn redact_secrets(
    parameters: &Map<String, Value>,
    secret_names: &[String],
) -> Map<String, Value> {
    parameters
        .iter()
        .map(|(name, value)| {
            if secret_names.contains(name) {
                (name.clone(), Value::String(REDACTED.to_string()))
            } else {
                (name.clone(), value.clone())
            }
        })
        .collect()
}

/// A compiled parameter schema: applies defaults and validates given parameters.
pub struct ParameterValidator {
    schema: Value,
    secret_parameters: Vec<String>,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for ParameterValidator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ParameterValidator")
            .field("schema", &self.schema)
            .field("secret_parameters", &self.secret_parameters)
            .finish_non_exhaustive()
    }
}

impl ParameterValidator {
    /// Compiles the schema of a loaded action.
    pub fn new(action: &ActionDefinition) -> Result<Self, ParameterError> {
        Self::from_schema(&action.action_ref, &action.parameters_schema)
    }

    /// Compiles a stored schema (e.g. an `ActionView`'s `parameters`); secrets are the
    /// properties marked `secret: true`.
    pub fn from_schema(action_ref: &str, schema: &Value) -> Result<Self, ParameterError> {
        let invalid_schema = |reason: String| ParameterError::InvalidSchema {
            action_ref: action_ref.to_string(),
            reason,
        };
        reject_remote_references(schema, "").map_err(invalid_schema)?;
        let validator = compile(schema).map_err(invalid_schema)?;
        Ok(ParameterValidator {
            schema: schema.clone(),
            secret_parameters: secret_parameter_names(schema),
            validator,
        })
    }

    /// Names of the parameters marked secret.
    pub fn secret_parameters(&self) -> &[String] {
        &self.secret_parameters
    }

    /// Fills in defaults of missing top-level parameters, then validates; returns the complete
    /// parameters or every failure, each naming its parameter.
    pub fn validate(
        &self,
        given: Map<String, Value>,
    ) -> Result<Map<String, Value>, ParameterError> {
        let mut parameters = given;
        for (name, default) in top_level_defaults(&self.schema) {
            parameters.entry(name).or_insert(default);
        }
        let instance = Value::Object(parameters.clone());
        let failures: Vec<ParameterFailure> = self
            .validator
            .iter_errors(&instance)
            .flat_map(|error| self.describe(&error))
            .collect();
        if failures.is_empty() {
            Ok(parameters)
        } else {
            Err(ParameterError::Invalid(failures))
        }
    }

    fn known_names(&self) -> String {
        self.schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|properties| {
                properties
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    }

    /// Readable failures for one validation error.
    fn describe(&self, error: &ValidationError<'_>) -> Vec<ParameterFailure> {
        let instance_path = error.instance_path();
        let field = top_level_field(error);
        match (error.kind(), &field) {
            (ValidationErrorKind::Required { property }, None) => {
                let name = property
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| property.to_string());
                vec![ParameterFailure {
                    message: format!("parameter {name:?} is required"),
                    field: name,
                }]
            }
            (ValidationErrorKind::AdditionalProperties { unexpected }, None) => unexpected
                .iter()
                .map(|name| ParameterFailure {
                    field: name.clone(),
                    message: format!(
                        "parameter {name:?} is not accepted by this action (known: {})",
                        self.known_names()
                    ),
                })
                .collect(),
            (_, None) => vec![ParameterFailure {
                field: String::new(),
                message: format!("parameters: {error}"),
            }],
            (kind, Some(field)) => {
                let detail = if self.secret_parameters.contains(field) {
                    error.masked_with(REDACTED).to_string()
                } else if let ValidationErrorKind::Enum { options } = kind {
                    format!(
                        "{} is not one of {}",
                        error.instance(),
                        format_list(options)
                    )
                } else {
                    error.to_string()
                };
                let location = if instance_path.segments().count() > 1 {
                    format!(" (at {instance_path})")
                } else {
                    String::new()
                };
                vec![ParameterFailure {
                    field: field.clone(),
                    message: format!("parameter {field:?}{location}: {detail}"),
                }]
            }
        }
    }
}

/// `["!", ".", "?"]`: a JSON list with spaces after the commas.
fn format_list(options: &Value) -> String {
    match options {
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// Applies defaults and validates `given` against the action's parameter schema.
pub fn validate_parameters(
    action: &ActionDefinition,
    given: Map<String, Value>,
) -> Result<Map<String, Value>, ParameterError> {
    ParameterValidator::new(action)?.validate(given)
}
