//! The agent's secrets (broker URL, its CA, and event key), read once from stdin and then out of reach
//! of the actions it runs: they are never in its environment, and the agent makes itself
//! non-dumpable, so a process of the action (same user, or root without CAP_SYS_PTRACE) can
//! open neither `/proc/<agent>/environ` nor `/proc/<agent>/mem`.

use attune_protocol::signing::{key_from_hex, AgentSecrets};
use std::io::BufRead;
use std::time::Duration;

/// How long the controller may take to write the secrets after starting the container.
const READ_LIMIT: Duration = Duration::from_secs(30);

/// Why the secrets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("read the agent's secrets from stdin: {0}")]
    Read(String),
    #[error("the agent's secrets on stdin are not valid: {0}")]
    Invalid(String),
}

/// What the controller's line gives the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The broker URL, with the agent's own account.
    pub mq_url: String,
    /// CA certificates (PEM) for an `amqps://` URL.
    pub mq_ca_pem: Option<String>,
    /// The key it signs its events with.
    pub event_key: attune_protocol::signing::Key,
}

/// Reads one JSON line of [`AgentSecrets`] from stdin (within 30 s): the broker URL (and its
/// CA), and the event key.
pub fn read_from_stdin() -> Result<Received, SecretsError> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line).map(|_| line);
        let _ = sender.send(read);
    });
    let line = match receiver.recv_timeout(READ_LIMIT) {
        Ok(Ok(line)) => line,
        Ok(Err(error)) => return Err(SecretsError::Read(error.to_string())),
        Err(_) => {
            return Err(SecretsError::Read(format!(
                "nothing arrived within {}s",
                READ_LIMIT.as_secs()
            )))
        }
    };
    parse(&line)
}

fn parse(line: &str) -> Result<Received, SecretsError> {
    if line.trim().is_empty() {
        return Err(SecretsError::Read(
            "stdin was closed before the secrets came".into(),
        ));
    }
    // The error names what is wrong, never the text (it holds the secrets).
    let secrets: AgentSecrets = serde_json::from_str(line.trim()).map_err(|error| {
        SecretsError::Invalid(format!(
            "not the expected JSON (line {}, column {})",
            error.line(),
            error.column()
        ))
    })?;
    let key = key_from_hex(&secrets.event_key)
        .ok_or_else(|| SecretsError::Invalid("event_key is not 64 hex digits".into()))?;
    if secrets.mq_url.trim().is_empty() {
        return Err(SecretsError::Invalid("mq_url is empty".into()));
    }
    Ok(Received {
        mq_url: secrets.mq_url,
        mq_ca_pem: secrets.mq_ca_pem,
        event_key: key,
    })
}

/// Makes this process non-dumpable: its `/proc/<pid>/environ`, `mem` and `fd` become
/// inaccessible to other processes without CAP_SYS_PTRACE, including the action's.
pub fn become_undumpable() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes a flag of this process.
    let result = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secrets_line_is_checked_without_echoing_it() {
        let key = "ab".repeat(32);
        let line =
            format!(r#"{{"mq_url": "amqp://agent:pw@127.0.0.1/%2f", "event_key": "{key}"}}"#);
        let received = parse(&line).unwrap();
        assert_eq!(received.mq_url, "amqp://agent:pw@127.0.0.1/%2f");
        assert_eq!(received.event_key, [0xab; 32]);
        assert_eq!(received.mq_ca_pem, None);
        let with_ca = format!(
            r#"{{"mq_url": "amqps://a:b@h/%2f", "event_key": "{key}", "mq_ca_pem": "-----BEGIN CERTIFICATE-----"}}"#
        );
        assert_eq!(
            parse(&with_ca).unwrap().mq_ca_pem.as_deref(),
            Some("-----BEGIN CERTIFICATE-----")
        );
        let error = parse(r#"{"mq_url": "amqp://agent:pw@x", "event_key": "12"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("64 hex digits") && !error.contains("pw"),
            "{error}"
        );
        let error = parse("amqp://agent:pw@x").unwrap_err().to_string();
        assert!(!error.contains("pw"), "{error}");
        assert!(parse("").unwrap_err().to_string().contains("closed"));
    }
}
