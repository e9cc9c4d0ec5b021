//! The agent link. An agent in the target's network dials out to the
//! gateway's agent listener (TLS, client certificate from the internal
//! CA, ALPN [`ALPN`]); on that one connection the roles of HTTP/2 are
//! reversed: the agent is the HTTP/2 *server*, the gateway the *client*,
//! and every caller session is one stream the gateway opens:
//!
//! - HTTP requests are relayed as HTTP requests (`portcullis-link-op: http`);
//! - a PostgreSQL session is an extended CONNECT (RFC 8441) whose upgraded
//!   stream carries the wire protocol after authentication;
//! - control requests: `hello` (what the agent serves), `ping`
//!   (heartbeat), `refused` (why the gateway drops the link), `pg-cancel`.
//!
//! Why HTTP/2 (hyper, already in the tree) rather than yamux or QUIC:
//! per-stream flow control (a stalled reader fills only its own window),
//! PING keep-alives and GOAWAY come with it; yamux would need a hand-made
//! driver and keep-alive, and QUIC's UDP is often blocked on egress.

mod kill;
mod registry;
mod serve;

pub use registry::{AgentInfo, AgentRegistry, TunnelStream};
pub use serve::{LINK_WINDOW, LinkEnd, STREAM_WINDOW, run_link};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use serde::{Deserialize, Serialize};

/// ALPN of the agent listener.
pub const ALPN: &[u8] = b"portcullis-agent/1";
/// What a link request is for.
pub const HDR_OP: &str = "portcullis-link-op";
/// The connection a session is for.
pub const HDR_CONNECTION: &str = "portcullis-connection";
/// A PostgreSQL caller's startup parameters (JSON list of pairs).
pub const HDR_PG_PARAMS: &str = "portcullis-pg-params";
/// The access mode the gateway enforces for a PostgreSQL session
/// (`read-only` or `read-write`): the agent enforces it on the target too.
pub const HDR_PG_ACCESS: &str = "portcullis-pg-access";
pub const HDR_PG_PID: &str = "portcullis-pg-pid";
pub const HDR_PG_SECRET: &str = "portcullis-pg-secret";
/// Set by the agent on an answer that is its own error (JSON
/// [`RemoteError`]), not the target's response.
pub const HDR_LINK_ERROR: &str = "portcullis-link-error";
/// The extended-CONNECT protocol of PostgreSQL sessions.
pub const PG_PROTOCOL: &str = "portcullis-postgres";

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// The agent's answer to `hello`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub version: String,
    pub connections: Vec<Announced>,
}

/// A connection an agent serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Announced {
    pub name: String,
    /// `http` or `postgres`.
    pub protocol: String,
}

/// Why a link operation failed. Messages name the agent, never secrets.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("agent {agent:?} is not connected")]
    NotConnected { agent: String },
    #[error("agent {agent:?}: the link failed: {reason}")]
    Link { agent: String, reason: String },
    #[error("agent {agent:?}: {message}")]
    Remote { agent: String, message: String },
}

/// Answer of the agent for an operation that failed on its side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteError {
    pub error: String,
    pub message: String,
}

/// Whether `hello` announces only what the gateway allows this agent to
/// serve; `Err` names the first connection that is not.
pub fn check_announced(hello: &Hello, allowed: &[(String, String)]) -> Result<(), String> {
    for a in &hello.connections {
        let ok = allowed
            .iter()
            .any(|(name, protocol)| *name == a.name && *protocol == a.protocol);
        if !ok {
            return Err(format!(
                "connection {:?} ({}) is not assigned to this agent on the gateway",
                a.name, a.protocol
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(c: &[(&str, &str)]) -> Hello {
        Hello {
            version: "x".into(),
            connections: c
                .iter()
                .map(|(n, p)| Announced {
                    name: n.to_string(),
                    protocol: p.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn announcements_must_match_the_gateways_assignment() {
        let allowed = vec![
            ("api".to_string(), "http".to_string()),
            ("db".to_string(), "postgres".to_string()),
        ];
        assert!(check_announced(&hello(&[("api", "http")]), &allowed).is_ok());
        assert!(check_announced(&hello(&[]), &allowed).is_ok());
        let e = check_announced(&hello(&[("billing", "http")]), &allowed).unwrap_err();
        assert!(e.contains("billing"));
        // Same name, other protocol: refused too.
        assert!(check_announced(&hello(&[("db", "http")]), &allowed).is_err());
    }
}
