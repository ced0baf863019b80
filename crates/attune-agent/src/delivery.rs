//! Parameter delivery: environment variables, stdin or a file, encoded as dotenv, JSON or YAML.
//!
//! Secret parameters never go into the environment: with `env` delivery every parameter is also
//! written to a JSON file (`ATTUNE_PARAMETER_FILE`, mode 0600) whenever the job has secrets, and
//! the environment gets only the non-secret ones.

use attune_protocol::{Job, ParameterDelivery, ParameterFormat};
use serde_json::{Map, Value};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Prefix of the environment variable of each parameter.
pub const ACTION_ENV_PREFIX: &str = "ATTUNE_ACTION_";
/// Environment variable naming the parameter file.
pub const ENV_PARAMETER_FILE: &str = "ATTUNE_PARAMETER_FILE";
/// Environment variable naming the delivery (`env`, `stdin`, `file`).
pub const ENV_PARAMETER_DELIVERY: &str = "ATTUNE_PARAMETER_DELIVERY";
/// Environment variable naming the format of the parameter file or stdin.
pub const ENV_PARAMETER_FORMAT: &str = "ATTUNE_PARAMETER_FORMAT";

/// Parameters could not be encoded or delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("encode parameters as {format}: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
    #[error("write parameter file {path}: {source}")]
    WriteFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "parameter {name} cannot be delivered in the environment: its value contains a NUL byte"
    )]
    NulInEnvironment { name: String },
}

/// What the process gets: extra environment, bytes for stdin, and the parameter file if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreparedParameters {
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    pub parameter_file: Option<PathBuf>,
}

/// `ATTUNE_ACTION_<NAME>`: the name uppercased, every other character than A-Z and 0-9 as `_`.
pub fn action_env_name(parameter_name: &str) -> String {
    let mangled: String = parameter_name
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() {
                character.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{ACTION_ENV_PREFIX}{mangled}")
}

/// The lowercase name of a format, as in `ATTUNE_PARAMETER_FORMAT`.
pub fn format_name(format: ParameterFormat) -> &'static str {
    match format {
        ParameterFormat::Dotenv => "dotenv",
        ParameterFormat::Json => "json",
        ParameterFormat::Yaml => "yaml",
    }
}

/// The lowercase name of a delivery, as in `ATTUNE_PARAMETER_DELIVERY`.
pub fn delivery_name(delivery: ParameterDelivery) -> &'static str {
    match delivery {
        ParameterDelivery::Env => "env",
        ParameterDelivery::Stdin => "stdin",
        ParameterDelivery::File => "file",
    }
}

/// A parameter value as text: strings raw, everything else as JSON.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A dotenv key a shell can `source`: letters, digits and `_`, not starting with a digit.
fn dotenv_key(parameter_name: &str) -> String {
    let mut key: String = parameter_name
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() {
                character
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() || key.starts_with(|character: char| character.is_ascii_digit()) {
        key.insert(0, '_');
    }
    key
}

/// Encodes all parameters in `format` (always ending with a newline).
pub fn encode(
    parameters: &Map<String, Value>,
    format: ParameterFormat,
) -> Result<String, DeliveryError> {
    match format {
        ParameterFormat::Json => serde_json::to_string(parameters)
            .map(|text| text + "\n")
            .map_err(|error| DeliveryError::Encode {
                format: "json",
                message: error.to_string(),
            }),
        ParameterFormat::Yaml => {
            if parameters.is_empty() {
                return Ok("{}\n".to_string());
            }
            serde_norway::to_string(parameters).map_err(|error| DeliveryError::Encode {
                format: "yaml",
                message: error.to_string(),
            })
        }
        ParameterFormat::Dotenv => Ok(parameters
            .iter()
            .map(|(name, value)| {
                let quoted = value_text(value).replace('\'', "'\"'\"'");
                format!("{}='{}'\n", dotenv_key(name), quoted)
            })
            .collect()),
    }
}

/// Writes `contents` to a new file readable only by its owner.
fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), DeliveryError> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().map_err(|source| DeliveryError::WriteFile {
        path: path.to_path_buf(),
        source,
    })
}

fn file_name(format: ParameterFormat) -> &'static str {
    match format {
        ParameterFormat::Dotenv => "parameters.env",
        ParameterFormat::Json => "parameters.json",
        ParameterFormat::Yaml => "parameters.yaml",
    }
}

/// Prepares the job's parameters for its process, writing any parameter file into `work_dir`.
pub fn prepare(job: &Job, work_dir: &Path) -> Result<PreparedParameters, DeliveryError> {
    let mut prepared = PreparedParameters::default();
    let mut format = job.parameter_format;
    match job.parameter_delivery {
        ParameterDelivery::Env => {
            for (name, value) in &job.parameters {
                if job.secret_parameters.iter().any(|secret| secret == name) {
                    continue;
                }
                let text = value_text(value);
                if text.contains('\0') {
                    return Err(DeliveryError::NulInEnvironment { name: name.clone() });
                }
                prepared.env.push((action_env_name(name), text));
            }
            let has_secrets = job
                .secret_parameters
                .iter()
                .any(|secret| job.parameters.contains_key(secret));
            // The secrets file is JSON whatever the job's format says.
            format = ParameterFormat::Json;
            if has_secrets {
                let path = work_dir.join(file_name(format));
                write_private_file(&path, encode(&job.parameters, format)?.as_bytes())?;
                prepared.parameter_file = Some(path);
            }
        }
        ParameterDelivery::Stdin => {
            prepared.stdin = Some(encode(&job.parameters, format)?.into_bytes());
        }
        ParameterDelivery::File => {
            let path = work_dir.join(file_name(format));
            write_private_file(&path, encode(&job.parameters, format)?.as_bytes())?;
            prepared.parameter_file = Some(path);
        }
    }
    if let Some(path) = &prepared.parameter_file {
        prepared
            .env
            .push((ENV_PARAMETER_FILE.to_string(), path.display().to_string()));
    }
    prepared.env.push((
        ENV_PARAMETER_DELIVERY.to_string(),
        delivery_name(job.parameter_delivery).to_string(),
    ));
    prepared.env.push((
        ENV_PARAMETER_FORMAT.to_string(),
        format_name(format).to_string(),
    ));
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_protocol::{Runtime, PROTOCOL_VERSION};
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn job(delivery: ParameterDelivery, format: ParameterFormat) -> Job {
        let parameters = json!({
            "name": "O'Brien",
            "count": 3,
            "enabled": true,
            "tags": ["a", "b"],
            "nothing": null,
            "api-token": "s3cret-value",
        });
        Job {
            protocol_version: PROTOCOL_VERSION,
            execution_id: 7,
            action_ref: "hello.greet".to_string(),
            pack_ref: "hello".to_string(),
            runtime: Runtime::Shell,
            pack_dir: "/opt/attune/packs/hello".to_string(),
            entry_point: "actions/greet.sh".to_string(),
            parameters: parameters.as_object().unwrap().clone(),
            secret_parameters: vec!["api-token".to_string()],
            parameter_delivery: delivery,
            parameter_format: format,
            timeout_seconds: 10,
            kill_grace_seconds: 1,
            env: Default::default(),
            output_limit_bytes: 1024,
            stream_logs: true,
            pack_sha256: None,
        }
    }

    fn env_value<'a>(prepared: &'a PreparedParameters, name: &str) -> Option<&'a str> {
        prepared
            .env
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn env_names_are_uppercased_and_mangled() {
        assert_eq!(action_env_name("name"), "ATTUNE_ACTION_NAME");
        assert_eq!(action_env_name("api-token"), "ATTUNE_ACTION_API_TOKEN");
        assert_eq!(action_env_name("my.param 2"), "ATTUNE_ACTION_MY_PARAM_2");
        assert_eq!(action_env_name("café"), "ATTUNE_ACTION_CAF_");
    }

    #[test]
    fn env_delivery_keeps_secrets_out_of_the_environment() {
        let work_dir = tempfile::tempdir().unwrap();
        let prepared = prepare(
            &job(ParameterDelivery::Env, ParameterFormat::Dotenv),
            work_dir.path(),
        )
        .unwrap();
        assert_eq!(env_value(&prepared, "ATTUNE_ACTION_NAME"), Some("O'Brien"));
        assert_eq!(env_value(&prepared, "ATTUNE_ACTION_COUNT"), Some("3"));
        assert_eq!(env_value(&prepared, "ATTUNE_ACTION_ENABLED"), Some("true"));
        assert_eq!(
            env_value(&prepared, "ATTUNE_ACTION_TAGS"),
            Some("[\"a\",\"b\"]")
        );
        assert_eq!(env_value(&prepared, "ATTUNE_ACTION_NOTHING"), Some("null"));
        assert_eq!(env_value(&prepared, "ATTUNE_ACTION_API_TOKEN"), None);
        for (name, value) in &prepared.env {
            assert!(!value.contains("s3cret"), "secret leaked into env {name}");
        }
        assert_eq!(env_value(&prepared, ENV_PARAMETER_DELIVERY), Some("env"));
        assert_eq!(env_value(&prepared, ENV_PARAMETER_FORMAT), Some("json"));
        assert_eq!(prepared.stdin, None);

        let file = prepared.parameter_file.clone().expect("secrets file");
        assert_eq!(
            env_value(&prepared, ENV_PARAMETER_FILE),
            Some(file.to_str().unwrap())
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(written["api-token"], "s3cret-value");
        assert_eq!(written["count"], 3);
    }

    #[test]
    fn env_delivery_without_secrets_writes_no_file() {
        let work_dir = tempfile::tempdir().unwrap();
        let mut job = job(ParameterDelivery::Env, ParameterFormat::Json);
        job.secret_parameters.clear();
        let prepared = prepare(&job, work_dir.path()).unwrap();
        assert_eq!(prepared.parameter_file, None);
        assert_eq!(
            env_value(&prepared, "ATTUNE_ACTION_API_TOKEN"),
            Some("s3cret-value")
        );
        assert_eq!(std::fs::read_dir(work_dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn stdin_delivery_in_each_format() {
        let work_dir = tempfile::tempdir().unwrap();
        let prepared = prepare(
            &job(ParameterDelivery::Stdin, ParameterFormat::Json),
            work_dir.path(),
        )
        .unwrap();
        let stdin = prepared.stdin.clone().unwrap();
        let decoded: Value = serde_json::from_slice(&stdin).unwrap();
        assert_eq!(decoded["name"], "O'Brien");
        assert_eq!(decoded["tags"], json!(["a", "b"]));
        assert_eq!(env_value(&prepared, ENV_PARAMETER_DELIVERY), Some("stdin"));
        assert_eq!(env_value(&prepared, ENV_PARAMETER_FORMAT), Some("json"));
        assert_eq!(env_value(&prepared, "ATTUNE_ACTION_NAME"), None);
        assert_eq!(prepared.parameter_file, None);

        let prepared = prepare(
            &job(ParameterDelivery::Stdin, ParameterFormat::Yaml),
            work_dir.path(),
        )
        .unwrap();
        let decoded: Value = serde_norway::from_slice(&prepared.stdin.unwrap()).unwrap();
        assert_eq!(decoded["count"], 3);
        assert_eq!(decoded["api-token"], "s3cret-value");
        assert_eq!(decoded["nothing"], Value::Null);

        let prepared = prepare(
            &job(ParameterDelivery::Stdin, ParameterFormat::Dotenv),
            work_dir.path(),
        )
        .unwrap();
        let text = String::from_utf8(prepared.stdin.unwrap()).unwrap();
        assert!(text.contains("name='O'\"'\"'Brien'\n"), "{text}");
        assert!(text.contains("count='3'\n"), "{text}");
        assert!(text.contains("tags='[\"a\",\"b\"]'\n"), "{text}");
        assert!(text.contains("api_token='s3cret-value'\n"), "{text}");
    }

    #[test]
    fn file_delivery_writes_a_private_file_in_the_format() {
        let work_dir = tempfile::tempdir().unwrap();
        for (format, file) in [
            (ParameterFormat::Json, "parameters.json"),
            (ParameterFormat::Yaml, "parameters.yaml"),
            (ParameterFormat::Dotenv, "parameters.env"),
        ] {
            let prepared = prepare(&job(ParameterDelivery::File, format), work_dir.path()).unwrap();
            let path = work_dir.path().join(file);
            assert_eq!(prepared.parameter_file.as_deref(), Some(path.as_path()));
            assert_eq!(
                env_value(&prepared, ENV_PARAMETER_FILE),
                Some(path.to_str().unwrap())
            );
            assert_eq!(
                env_value(&prepared, ENV_PARAMETER_FORMAT),
                Some(format_name(format))
            );
            assert_eq!(env_value(&prepared, ENV_PARAMETER_DELIVERY), Some("file"));
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("s3cret-value"), "{format:?}: {text}");
            assert_eq!(prepared.stdin, None);
        }
    }

    #[test]
    fn dotenv_survives_a_shell_round_trip() {
        let work_dir = tempfile::tempdir().unwrap();
        let prepared = prepare(
            &job(ParameterDelivery::File, ParameterFormat::Dotenv),
            work_dir.path(),
        )
        .unwrap();
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(". \"$1\"; printf '%s|%s|%s' \"$name\" \"$count\" \"$tags\"")
            .arg("sh")
            .arg(prepared.parameter_file.unwrap())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "O'Brien|3|[\"a\",\"b\"]"
        );
    }

    #[test]
    fn unwritable_work_dir_is_a_clear_error() {
        let error = prepare(
            &job(ParameterDelivery::File, ParameterFormat::Json),
            Path::new("/nonexistent/attune-exec-7"),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "write parameter file /nonexistent/attune-exec-7/parameters.json: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn empty_parameters_encode_to_empty_documents() {
        let empty = Map::new();
        assert_eq!(encode(&empty, ParameterFormat::Json).unwrap(), "{}\n");
        assert_eq!(encode(&empty, ParameterFormat::Yaml).unwrap(), "{}\n");
        assert_eq!(encode(&empty, ParameterFormat::Dotenv).unwrap(), "");
    }
}
