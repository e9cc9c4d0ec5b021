use serde::Serialize;

/// Whether a principal is a person or a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    Human,
    Agent,
}

impl PrincipalKind {
    /// Subjects are written `agent:NAME` or `user:NAME`; anything that is
    /// not explicitly an agent is treated as a human.
    pub fn of_subject(subject: &str) -> Self {
        if subject.starts_with("agent:") {
            Self::Agent
        } else {
            Self::Human
        }
    }
}

/// How the principal proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum AuthMethod {
    /// A gateway-issued `pcl_` token; `token_id` is its public id.
    GatewayToken {
        token_id: String,
        /// A person who minted the token for this agent: both identities
        /// appear wherever the principal is recorded.
        #[serde(skip_serializing_if = "Option::is_none")]
        on_behalf_of: Option<String>,
        /// An OAuth access token's resource (see [`Resource::key`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audience: Option<String>,
    },
    /// A JWT from a configured OpenID provider, valid until `expires_at`
    /// (its `exp`, Unix seconds): a session it opened ends then.
    Oidc {
        issuer: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
    },
    /// A client certificate verified during the TLS handshake;
    /// `fingerprint` is the SHA-256 of the certificate, in hex.
    ClientCertificate { fingerprint: String },
}

impl AuthMethod {
    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::GatewayToken { .. } => "token",
            Self::Oidc { .. } => "oidc",
            Self::ClientCertificate { .. } => "mtls",
        }
    }
}

/// Where a credential is presented. A token bound to one resource (an
/// OAuth access token, RFC 8707) is accepted there and nowhere else, so
/// every front names where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// The gateway's own MCP endpoint (`/mcp`), or a connection of type
    /// `mcp` by name.
    Mcp(Option<&'a str>),
    /// The web console's session (its cookie, at the gateway's API).
    Console,
    /// Anything else: the HTTP and PostgreSQL fronts, the API, the admin
    /// listener. No audience-bound token is accepted here.
    Other,
}

impl Resource<'_> {
    /// The audience a token bound to this resource carries: `mcp` or
    /// `mcp/<connection>`; `None` for [`Resource::Other`].
    pub fn key(&self) -> Option<String> {
        match self {
            Self::Mcp(None) => Some("mcp".into()),
            Self::Mcp(Some(c)) => Some(format!("mcp/{c}")),
            Self::Console => Some("console".into()),
            Self::Other => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub subject: String,
    pub kind: PrincipalKind,
    pub groups: Vec<String>,
    pub via: AuthMethod,
}

/// Whether an agent's name has the form only the gateway gives: an agent
/// acting for a person (`agent:NAME@person`, [`delegated_subject`]). No
/// identity source outside the gateway may produce it.
pub fn is_delegated(agent: &str) -> bool {
    agent.contains('@')
}

/// The principal of a token `person` minted for `agent`: the agent
/// namespaced under the person (`agent:claude` by `user:alice` is
/// `agent:claude@alice`), so that grants, audit entries and approvals
/// never confuse it with the agent itself. Already namespaced: as is.
pub fn delegated_subject(agent: &str, person: &str) -> String {
    if is_delegated(agent) {
        return agent.to_string();
    }
    let name = person.strip_prefix("user:").unwrap_or(person);
    format!("{agent}@{name}")
}

/// Check a principal name given on a command line or in config:
/// `kind:name`, printable ASCII, no spaces.
pub fn validate_subject(subject: &str) -> Result<(), String> {
    let ok_chars = subject
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    match subject.split_once(':') {
        Some((kind, name))
            if !kind.is_empty() && !name.is_empty() && ok_chars && subject.len() <= 128 =>
        {
            Ok(())
        }
        _ => Err(format!(
            "invalid principal {subject:?}: expected KIND:NAME such as agent:ci or user:alice \
             (letters, digits, - _ . : @; at most 128 characters)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_follows_prefix() {
        assert_eq!(PrincipalKind::of_subject("agent:ci"), PrincipalKind::Agent);
        assert_eq!(
            PrincipalKind::of_subject("user:alice"),
            PrincipalKind::Human
        );
    }

    #[test]
    fn subjects_are_validated() {
        assert!(validate_subject("agent:quickstart").is_ok());
        assert!(validate_subject("user:alice@example.com").is_ok());
        for bad in ["", "alice", ":x", "agent:", "agent:has space", "agent:ü"] {
            assert!(validate_subject(bad).is_err(), "{bad}");
        }
    }
}
