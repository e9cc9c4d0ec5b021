//! Authenticate → authorise: who is calling, and may they use the
//! connection they name through this front. Every refusal is audited here,
//! so no front can forget to leave the evidence.

use std::sync::Arc;

use portcullis_config::Protocol;
use portcullis_identity::{AuthError, Credential, Principal, Resource};
use portcullis_policy::{Decision, DenyReason};
use portcullis_tls::HandshakeRecord;

use crate::FrontContext;
use crate::gate::Gate;
use crate::session::{OpenSession, Opening, SessionError};

/// Where an admission attempt comes from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The caller's address, as the audit log shows it.
    pub peer: String,
    /// The front the caller came through (recorded as the session's and
    /// the refusal's protocol).
    pub front: Protocol,
    /// The TLS handshake (none when the front has none of its own, such
    /// as a tool call). Kept as it is and written out only when a session
    /// opens: a refusal or a request on an open session does not pay for
    /// it.
    pub tls: Option<Arc<HandshakeRecord>>,
}

/// Why a caller was not admitted. Each front says it on its own wire
/// (SQLSTATE, HTTP status, JSON-RPC or tool error).
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    #[error("no connection named {0:?}")]
    UnknownConnection(String),
    #[error("connection {connection:?} speaks {speaks}, not {wanted}")]
    WrongProtocol {
        connection: String,
        speaks: Protocol,
        wanted: Protocol,
    },
    #[error(transparent)]
    Forbidden(DenyReason),
}

/// A caller who may use a connection.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub principal: Principal,
    pub connection: String,
    /// The grant that allowed it.
    pub rule: String,
    pub origin: Origin,
    /// Holds actions for a person's approval, when the connection has an
    /// approval rule.
    pub gate: Option<Gate>,
}

impl FrontContext {
    /// Who `credential`, presented at `at`, names. A refusal is audited
    /// against the connection the caller asked for (when it said).
    pub async fn authenticate(
        &self,
        credential: Credential<'_>,
        at: Resource<'_>,
        connection: Option<&str>,
        origin: &Origin,
    ) -> Result<Principal, AdmitError> {
        match self.auth.authenticate(credential, at).await {
            Ok(p) => Ok(p),
            Err(e) => {
                // The name is the caller's: bounded in the evidence (a
                // review stored 8 KB names, thousands a second).
                let shown = connection.map(bounded);
                let whole = self
                    .refuse(None, shown.as_deref(), origin, &e.to_string())
                    .await;
                if whole && e != AuthError::Unavailable {
                    tracing::info!(peer = %origin.peer, front = %origin.front, reason = %e, "caller not authenticated");
                }
                Err(AdmitError::Unauthenticated(e))
            }
        }
    }

    /// Whether `principal` may use `connection`, which must speak
    /// `wanted` (the protocol the front or tool relays).
    pub async fn authorize(
        &self,
        principal: Principal,
        connection: &str,
        wanted: Protocol,
        origin: &Origin,
    ) -> Result<Admitted, AdmitError> {
        let refused = match self.decide(&principal, connection, wanted) {
            Ok(rule) => {
                let gate = self
                    .connections
                    .get(connection)
                    .and_then(|c| c.approval.clone())
                    .map(|rule| Gate::new(self.approvals.clone(), rule, &principal, connection));
                return Ok(Admitted {
                    principal,
                    connection: connection.to_owned(),
                    rule,
                    origin: origin.clone(),
                    gate,
                });
            }
            Err(e) => e,
        };
        let reason = match &refused {
            AdmitError::UnknownConnection(_) => "unknown connection".to_owned(),
            other => other.to_string(),
        };
        // The name is the caller's: bounded in the log and the evidence.
        let shown = bounded(connection);
        tracing::info!(peer = %origin.peer, principal = %principal.subject, connection = %shown, front = %origin.front, %reason, "caller refused");
        self.refuse(Some(&principal.subject), Some(&shown), origin, &reason)
            .await;
        Err(refused)
    }

    /// [`Self::authenticate`], then [`Self::authorize`] (for fronts where
    /// no audience-bound token is accepted).
    pub async fn admit(
        &self,
        credential: Credential<'_>,
        connection: &str,
        wanted: Protocol,
        origin: &Origin,
    ) -> Result<Admitted, AdmitError> {
        let principal = self
            .authenticate(credential, Resource::Other, Some(connection), origin)
            .await?;
        self.authorize(principal, connection, wanted, origin).await
    }

    /// The pure half of [`Self::authorize`]: the grant's name, or why
    /// not (also how a reload asks a live session again).
    pub fn decide(
        &self,
        principal: &Principal,
        connection: &str,
        wanted: Protocol,
    ) -> Result<String, AdmitError> {
        // The grant first: a caller no grant reaches a name with is told
        // only that, whether a connection has that name or not, and not
        // what it speaks (a review told names and protocols of ungranted
        // connections from an unknown one's 404 and a wrong protocol's
        // message).
        let rule = match self.policy.decide(principal, connection) {
            Decision::Allow { rule, .. } => rule,
            Decision::Deny { mut reason } => {
                // A name the caller chose: bounded in the message.
                match &mut reason {
                    DenyReason::NoGrant { connection, .. }
                    | DenyReason::Delegation { connection, .. } => {
                        *connection = bounded(connection)
                    }
                }
                return Err(AdmitError::Forbidden(reason));
            }
        };
        let Some(entry) = self.connections.get(connection) else {
            return Err(AdmitError::UnknownConnection(bounded(connection)));
        };
        if entry.protocol != wanted {
            return Err(AdmitError::WrongProtocol {
                connection: connection.to_owned(),
                speaks: entry.protocol,
                wanted,
            });
        }
        Ok(rule)
    }

    /// Evidence of a refusal before any session opened (see
    /// [`Sessions::refusal`]): whether it was written whole.
    pub async fn refuse(
        &self,
        principal: Option<&str>,
        connection: Option<&str>,
        origin: &Origin,
        reason: &str,
    ) -> bool {
        // Boxed, as every rarely taken await on the request path: an
        // async fn's future holds the largest future it awaits, and every
        // caller's future holds it again ([`crate::cold`]).
        crate::cold(self.sessions.refusal(
            principal.map(str::to_owned),
            connection.map(str::to_owned),
            origin.front,
            origin.peer.clone(),
            reason.to_owned(),
        ))
        .await
    }

    /// Open the admitted caller's session: durable before the first
    /// byte goes to the target (no entry, no session). `agent` is the
    /// agent the target is reached through, if any.
    ///
    /// Apart from [`Self::authorize`] because fronts open at different
    /// moments: PostgreSQL at once, HTTP once the request passed its
    /// checks (and then reused for the connection), a tool call once its
    /// arguments are read and approved.
    pub async fn open(
        &self,
        admitted: &Admitted,
        agent: Option<String>,
    ) -> Result<OpenSession, SessionError> {
        let opened = crate::cold(self.sessions.open(admitted.opening(agent))).await;
        if let Err(e) = &opened {
            tracing::error!(error = %e, connection = %admitted.connection, "audit or recording unavailable; session refused");
        }
        opened
    }
}

/// A caller-chosen connection name as messages, logs and audit entries
/// show it: bounded, control characters escaped (a review forged a line
/// of the text log with a name holding a newline).
pub(crate) fn bounded(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().take(128) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Admitted {
    /// What the audit entry that opens this caller's session says.
    pub fn opening(&self, agent: Option<String>) -> Opening {
        let p = &self.principal;
        Opening {
            principal: p.subject.clone(),
            principal_kind: format!("{:?}", p.kind).to_ascii_lowercase(),
            auth: serde_json::to_value(&p.via).unwrap_or_default(),
            connection: self.connection.clone(),
            protocol: self.origin.front,
            peer: self.origin.peer.clone(),
            tls: self
                .origin
                .tls
                .as_deref()
                .map_or(serde_json::Value::Null, |r| {
                    serde_json::to_value(r).unwrap_or_default()
                }),
            rule: self.rule.clone(),
            agent,
        }
    }
}
