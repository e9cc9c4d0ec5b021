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

pub use registry::{
    AGENT_STREAMS, AgentInfo, AgentRegistry, DEFAULT_STREAMS_PER_CALLER, StreamPermit, Tunnel,
    TunnelStream,
};
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
/// Whose session this is, as an opaque tag: the agent hands an idle
/// target session back only to the same owner through the same gateway;
/// absent, it never keeps the session.
pub const HDR_PG_OWNER: &str = "portcullis-pg-owner";
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
    /// `read-only` or `read-write`, as the agent's own config says. Absent
    /// from agents older than this field (their sessions still get the
    /// gateway's mode, the stricter one winning on the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
}

/// What the gateway's config lets one agent serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub name: String,
    /// `http` or `postgres`.
    pub protocol: String,
    /// `read-only` or `read-write`.
    pub access: String,
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
    /// The caller holds its share of the agent's streams already.
    #[error(
        "agent {agent:?}: this caller already has {held} sessions or requests open through it (limits.max_agent_streams_per_caller); end one and retry"
    )]
    Busy { agent: String, held: usize },
    /// How many other callers hold is not told (a review: a refusal
    /// must not report everyone's load).
    #[error("agent {agent:?} is serving as many sessions and requests as it can; retry later")]
    Full { agent: String },
}

/// Answer of the agent for an operation that failed on its side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteError {
    pub error: String,
    pub message: String,
}

/// Whether `hello` announces only what the gateway allows this agent to
/// serve, in the mode the gateway has for it; `Err` names the first
/// connection that is not. Two configs that disagree about a connection's
/// mode are a mistake somewhere: the link is refused rather than one side
/// guessed right.
pub fn check_announced(hello: &Hello, allowed: &[Assignment]) -> Result<(), String> {
    // Logged and shown: short and printable (a review forged a line of the
    // gateway's log with a newline in an agent's version).
    let v = &hello.version;
    if v.len() > 64 || !v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err("the agent's version is not a short printable string".into());
    }
    for a in &hello.connections {
        let Some(assigned) = allowed
            .iter()
            .find(|x| x.name == a.name && x.protocol == a.protocol)
        else {
            return Err(format!(
                "connection {:?} ({}) is not assigned to this agent on the gateway",
                a.name, a.protocol
            ));
        };
        if let Some(access) = &a.access
            && *access != assigned.access
        {
            return Err(format!(
                "connection {:?}: the agent serves it {access}, the gateway's config says {}; make them agree",
                a.name, assigned.access
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
                    access: None,
                })
                .collect(),
        }
    }

    fn assigned(name: &str, protocol: &str, access: &str) -> Assignment {
        Assignment {
            name: name.into(),
            protocol: protocol.into(),
            access: access.into(),
        }
    }

    #[test]
    fn an_agent_that_disagrees_about_the_mode_is_refused() {
        let allowed = vec![assigned("db", "postgres", "read-only")];
        let mut h = hello(&[("db", "postgres")]);
        // An agent that does not say (older) is accepted: the gateway's
        // mode still reaches it with each session.
        assert!(check_announced(&h, &allowed).is_ok());
        h.connections[0].access = Some("read-only".into());
        assert!(check_announced(&h, &allowed).is_ok());
        h.connections[0].access = Some("read-write".into());
        let e = check_announced(&h, &allowed).unwrap_err();
        assert!(e.contains("read-write") && e.contains("read-only"), "{e}");
    }

    #[test]
    fn announcements_must_match_the_gateways_assignment() {
        let allowed = vec![
            assigned("api", "http", "read-write"),
            assigned("db", "postgres", "read-write"),
        ];
        assert!(check_announced(&hello(&[("api", "http")]), &allowed).is_ok());
        assert!(check_announced(&hello(&[]), &allowed).is_ok());
        let e = check_announced(&hello(&[("billing", "http")]), &allowed).unwrap_err();
        assert!(e.contains("billing"));
        // Same name, other protocol: refused too.
        assert!(check_announced(&hello(&[("db", "http")]), &allowed).is_err());
    }
}
