//! How an agent proves which agent sent an event, and how it gets the secrets that let it.
//!
//! The controller gives each agent its own event key: HMAC-SHA256 of the controller's secret
//! (kept in Postgres) and the agent id ([`agent_event_key`]), so any incarnation of the
//! controller can check any of its agents without storing per-agent keys. The key travels with
//! the broker URL as one JSON line ([`AgentSecrets`]) on the container's stdin, never in its
//! environment (`/proc/1/environ` of the container's init is readable by the action), and the
//! agent makes itself non-dumpable once it has read it. Each event the agent publishes carries
//! [`SIGNATURE_HEADER`]: the hex HMAC-SHA256 of the message body under its event key
//! ([`sign`]); the controller drops an event whose signature does not match the key of the
//! agent the event names ([`verify`]).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// AMQP header of an event: the hex HMAC-SHA256 of the body under the sender's event key.
pub const SIGNATURE_HEADER: &str = "x-attune-signature";

/// Environment variable telling the agent to read [`AgentSecrets`] from stdin (value `stdin`).
pub const ENV_AGENT_SECRETS: &str = "ATTUNE_AGENT_SECRETS";

/// What the controller writes, as one JSON line, on an agent container's stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSecrets {
    /// The AMQP URL with the agent's broker credentials.
    pub mq_url: String,
    /// The agent's event key, hex.
    pub event_key: String,
    /// CA certificates (PEM) the agent trusts for an `amqps://` URL, besides the bundled
    /// public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mq_ca_pem: Option<String>,
}

/// A 32-byte key.
pub type Key = [u8; 32];

/// The event key of `agent_id` under a controller's secret.
pub fn agent_event_key(controller_secret: &[u8], agent_id: &str) -> Key {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(controller_secret).expect("HMAC takes a key of any length");
    mac.update(b"attune agent event key\0");
    mac.update(agent_id.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The signature of an event body under `key` (hex, for [`SIGNATURE_HEADER`]).
pub fn sign(key: &Key, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    to_hex(&mac.finalize().into_bytes())
}

/// Whether `signature` (hex) is the signature of `body` under `key`, compared in constant time.
pub fn verify(key: &Key, body: &[u8], signature: &str) -> bool {
    let Some(bytes) = from_hex(signature) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The bytes of a hex text; `None` when it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// A key from its hex text; `None` unless it is 64 hex digits.
pub fn key_from_hex(text: &str) -> Option<Key> {
    from_hex(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_body_and_key_only() {
        let key = agent_event_key(b"controller secret", "exec-1-abc");
        let other = agent_event_key(b"controller secret", "exec-2-def");
        assert_ne!(key, other, "each agent has its own key");
        assert_ne!(key, agent_event_key(b"another controller", "exec-1-abc"));
        let body = br#"{"type":"finished","execution_id":1}"#;
        let signature = sign(&key, body);
        assert_eq!(signature.len(), 64);
        assert!(verify(&key, body, &signature));
        assert!(!verify(&other, body, &signature), "another agent's key");
        assert!(!verify(
            &key,
            br#"{"type":"finished","execution_id":2}"#,
            &signature
        ));
        assert!(!verify(&key, body, "not hex"));
        assert!(!verify(&key, body, ""));
        assert_eq!(key_from_hex(&to_hex(&key)), Some(key));
        assert_eq!(key_from_hex("abcd"), None);
    }
}
