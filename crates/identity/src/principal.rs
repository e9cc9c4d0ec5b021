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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
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
    /// `fingerprint` is the SHA-256 of the certificate, in hex. Valid
    /// until `expires_at` (its `notAfter`, Unix seconds): a session it
    /// opened ends then, as an OIDC token's does.
    ClientCertificate {
        fingerprint: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
    },
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

    /// When the credential runs out by itself (nobody revokes it), and
    /// what to tell the caller then.
    pub fn expiry(&self) -> Option<(i64, &'static str)> {
        match self {
            Self::Oidc { expires_at, .. } => {
                expires_at.map(|e| (e, "the identity provider's token expired"))
            }
            Self::ClientCertificate { expires_at, .. } => {
                expires_at.map(|e| (e, "the client certificate expired"))
            }
            Self::GatewayToken { .. } => None,
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

impl Principal {
    /// Who answers for what this principal spends or holds: the person a
    /// delegated token acts for, else the principal itself. Anything a
    /// person could multiply by minting agents (budgets, open streams)
    /// is counted against this.
    pub fn accountable(&self) -> &str {
        match &self.via {
            AuthMethod::GatewayToken {
                on_behalf_of: Some(person),
                ..
            } => person,
            _ => &self.subject,
        }
    }
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

/// Whose names an identity provider's tokens carry (`namespace` of an
/// `[[oidc]]` issuer). Two providers that both name people `user:alice`
/// are one person to every grant, approval and budget, so a provider that
/// is not trusted to name the same people as the others gets its own
/// namespace: its names and groups are written `NS/NAME`. No other
/// source can produce a `/` in a principal ([`validate_subject`] refuses
/// it), so a namespaced name cannot be claimed from outside its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// Names as the provider gives them (`user:alice`), shared with every
    /// other bare source. A group that begins with one of `reserved`
    /// (another provider's namespace) and `/` is refused: it would be that
    /// provider's group.
    Bare { reserved: Vec<String> },
    /// `user:NS/alice`, `agent:NS/ci`, group `NS/admins`.
    Own(String),
}

impl Default for Namespace {
    fn default() -> Self {
        Self::Bare {
            reserved: Vec::new(),
        }
    }
}

impl Namespace {
    /// A provider's `namespace` as written in config: unset or `""` is
    /// bare, anything else must be a valid namespace.
    pub fn from_config(written: Option<&str>) -> Result<Self, String> {
        match written {
            None | Some("") => Ok(Self::default()),
            Some(ns) => validate_namespace(ns).map(|()| Self::Own(ns.to_string())),
        }
    }

    /// The namespace's name, when the provider has one.
    pub fn own(&self) -> Option<&str> {
        match self {
            Self::Own(ns) => Some(ns),
            Self::Bare { .. } => None,
        }
    }

    /// `kind:name` under this namespace. `name` must already have passed
    /// [`validate_subject`] as `kind:name`, so it holds no `/`.
    pub fn subject(&self, kind: &str, name: &str) -> String {
        match self {
            Self::Bare { .. } => format!("{kind}:{name}"),
            Self::Own(ns) => format!("{kind}:{ns}/{name}"),
        }
    }

    /// A group as the provider names it, under this namespace; `None` if
    /// a bare provider names a group in another provider's namespace.
    pub fn group(&self, group: &str) -> Option<String> {
        match self {
            Self::Own(ns) => Some(format!("{ns}/{group}")),
            Self::Bare { reserved } => {
                let taken = reserved.iter().any(|ns| {
                    group
                        .strip_prefix(ns.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
                });
                (!taken).then(|| group.to_string())
            }
        }
    }
}

/// Check a namespace's name: lowercase letters, digits, `-` and `_`, at
/// most 32 characters.
pub fn validate_namespace(ns: &str) -> Result<(), String> {
    let ok = !ns.is_empty()
        && ns.len() <= 32
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid namespace {ns:?}: lowercase letters, digits, - and _, at most 32 characters"
        ))
    }
}

/// Check a principal written in config, on a command line or in a form:
/// what [`validate_subject`] accepts, or the same with a namespace before
/// the name (`user:corp/alice`) or before the person an agent acts for
/// (`agent:claude@corp/alice`).
pub fn validate_principal(subject: &str) -> Result<(), String> {
    let Some((kind, name)) = subject.split_once(':') else {
        return validate_subject(subject);
    };
    let Some((before, rest)) = name.split_once('/') else {
        return validate_subject(subject);
    };
    // The namespace is what lies between the last `@` (a delegation) or
    // the kind's `:` and the `/`.
    // Only an agent acts for a person, and it has a name.
    let (agent, ns) = match before.rsplit_once('@') {
        Some((agent, ns)) if kind == "agent" && !agent.is_empty() => (Some(agent), ns),
        Some(_) => {
            return Err(format!(
                "invalid principal {subject:?}: only agent:NAME@NAMESPACE/PERSON holds both `@` and `/`"
            ));
        }
        None => (None, before),
    };
    let plain = match agent {
        Some(agent) => format!("{kind}:{agent}@{rest}"),
        None => format!("{kind}:{rest}"),
    };
    match (validate_namespace(ns), validate_subject(&plain)) {
        (Ok(()), Ok(())) if !rest.contains('/') => Ok(()),
        _ => Err(format!(
            "invalid principal {subject:?}: expected KIND:NAME such as agent:ci or user:alice, \
             or KIND:NAMESPACE/NAME for an identity provider with a namespace (user:corp/alice)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_principals_are_validated() {
        for good in [
            "user:corp/alice",
            "user:corp/alice@example.com",
            "agent:corp/ci",
            "agent:claude@corp/alice",
            "user:alice",
        ] {
            assert!(validate_principal(good).is_ok(), "{good}");
        }
        for bad in [
            "user:/alice",
            "user:corp/",
            "user:Corp/alice",
            "user:corp/a/b",
            "user:co rp/alice",
            "agent:cl aude@corp/alice",
            // Forms no source produces (a review): `@` before a namespace
            // belongs to an agent acting for a person.
            "user:claude@corp/alice",
            "agent:@corp/alice",
            "corp/alice",
        ] {
            assert!(validate_principal(bad).is_err(), "{bad}");
        }
        // What a source may name never holds a namespace.
        assert!(validate_subject("user:corp/alice").is_err());
    }

    #[test]
    fn a_bare_source_cannot_name_a_namespaced_group() {
        let bare = Namespace::Bare {
            reserved: vec!["corp".into()],
        };
        assert_eq!(bare.group("corp/admins"), None);
        assert_eq!(bare.group("corp-admins").as_deref(), Some("corp-admins"));
        assert_eq!(bare.group("corporate/x").as_deref(), Some("corporate/x"));
        assert_eq!(bare.group("/corp/x").as_deref(), Some("/corp/x"));
        let own = Namespace::Own("corp".into());
        assert_eq!(own.group("admins").as_deref(), Some("corp/admins"));
        assert_eq!(own.subject("user", "alice"), "user:corp/alice");
        assert_eq!(bare.subject("user", "alice"), "user:alice");
    }

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
