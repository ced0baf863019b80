//! Agent identity: each agent this controller starts gets its own event key, derived from the
//! controller's secret (stored in Postgres, the same for every incarnation of the controller)
//! and the agent id, and receives it with the broker URL on its stdin — never in its
//! environment, which the action could read from `/proc/1/environ`. Events that do not carry
//! their agent's signature are dropped by the events consumer (attune-broker), and an event is
//! applied only to an execution placed on the agent that signed it (attune-store).

use attune_protocol::signing::{agent_event_key, to_hex, AgentSecrets, Key};
use std::sync::Arc;

/// The controller's secret for its agents' event keys.
#[derive(Clone)]
pub struct AgentSecret(Arc<Vec<u8>>);

impl std::fmt::Debug for AgentSecret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("AgentSecret(***)")
    }
}

impl Default for AgentSecret {
    /// A fresh random secret (a controller that stores its own replaces it with that).
    fn default() -> Self {
        AgentSecret::random()
    }
}

impl AgentSecret {
    /// 32 random bytes from the operating system.
    pub fn random() -> AgentSecret {
        let mut bytes = vec![0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source");
        AgentSecret(Arc::new(bytes))
    }

    /// The secret as stored.
    pub fn from_bytes(bytes: Vec<u8>) -> AgentSecret {
        AgentSecret(Arc::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The event key of one agent.
    pub fn event_key(&self, agent_id: &str) -> Key {
        agent_event_key(&self.0, agent_id)
    }

    /// The line written on the stdin of `agent_id`'s container: its broker URL (with its own
    /// account), the broker's CA when there is one, and its event key.
    pub fn stdin_line(&self, mq_url: &str, mq_ca_pem: Option<&str>, agent_id: &str) -> Vec<u8> {
        let secrets = AgentSecrets {
            mq_url: mq_url.to_string(),
            event_key: to_hex(&self.event_key(agent_id)),
            mq_ca_pem: mq_ca_pem.map(str::to_string),
        };
        let mut line = serde_json::to_vec(&secrets).expect("secrets always serialize");
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_agent_gets_its_own_key_and_the_secret_is_never_printed() {
        let secret = AgentSecret::from_bytes(vec![7; 32]);
        assert_ne!(secret.event_key("a"), secret.event_key("b"));
        assert_eq!(format!("{secret:?}"), "AgentSecret(***)");
        let line = secret.stdin_line("amqp://u:p@127.0.0.1/%2f", None, "a");
        assert_eq!(line.last(), Some(&b'\n'));
        let parsed: AgentSecrets = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed.event_key, to_hex(&secret.event_key("a")));
    }
}
