//! The events the audit log records. Typed, so that every entry of a kind
//! carries the same fields; never a secret.

use serde::Serialize;

/// What happened in an [`AuditEvent::OAuth`] entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthAction {
    ClientRegistered,
    ClientRevoked,
    /// A person allowed a client to act for them.
    Consented,
    /// A person declined.
    Declined,
    TokenIssued,
    TokenRefreshed,
    /// A spent code or refresh token came back: the grant is revoked.
    ReuseDetected,
    /// A code or refresh token was spent but refused (a wrong PKCE
    /// verifier, another redirect URI or resource): the sign of a secret
    /// in the wrong hands, so evidence, not just a log line.
    GrantRefused,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    /// Written before the first byte reaches the target.
    SessionStart {
        session: String,
        principal: String,
        principal_kind: String,
        auth: serde_json::Value,
        connection: String,
        protocol: String,
        peer: String,
        tls: serde_json::Value,
        rule: String,
        /// The agent the session went through, for agent-served connections.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    SessionEnd {
        session: String,
        duration_ms: u64,
        bytes_from_caller: u64,
        bytes_to_caller: u64,
        requests: u64,
        outcome: String,
        error: Option<String>,
        recording_digest: Option<String>,
    },
    Refusal {
        principal: Option<String>,
        connection: Option<String>,
        protocol: String,
        peer: String,
        reason: String,
    },
    /// More refusals of callers with no identity, from one address for
    /// one reason, after the first was written whole (a flood of them
    /// once filled the store): how many in the `seconds` before.
    RefusalsRepeated {
        protocol: String,
        peer: String,
        reason: String,
        count: u64,
        seconds: u64,
    },
    /// Something the caller sent inside an open session and the gateway
    /// refused: evidence of what was tried. The statement itself is in
    /// the session's recording; its digest binds the two.
    StatementRefused {
        session: String,
        principal: String,
        connection: String,
        rule: String,
        /// The class the gateway gave it (`write`, `unknown`, ...).
        class: String,
        /// SHA-256 of the statement as the caller sent it.
        statement_sha256: String,
        code: String,
        reason: String,
    },
    Admin {
        action: String,
        detail: serde_json::Value,
    },
    /// The gateway as an OAuth authorization server: a client registered
    /// or revoked, a person's consent, a token issued or refreshed, a
    /// spent secret presented again (and the grant revoked for it).
    #[serde(rename = "oauth")]
    OAuth {
        action: OAuthAction,
        client_id: String,
        /// The principal the client acts as (`agent:CLIENT@person`).
        #[serde(skip_serializing_if = "Option::is_none")]
        principal: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        on_behalf_of: Option<String>,
        /// The access token issued (its public id).
        #[serde(skip_serializing_if = "Option::is_none")]
        token_id: Option<String>,
        /// The grant (one person's consent to one client) it belongs to.
        #[serde(skip_serializing_if = "Option::is_none")]
        family: Option<String>,
        /// The resource the token is bound to.
        #[serde(skip_serializing_if = "Option::is_none")]
        resource: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The store could not take entries from `since_ms` to `until_ms`:
    /// sessions were refused meanwhile (`unanswered` appends failed or
    /// timed out). Written by the first write that lands afterwards.
    AuditOutage {
        since_ms: i64,
        until_ms: i64,
        reason: String,
        unanswered: u64,
    },
    /// The store ends at `store_ends_at` but a signed checkpoint names
    /// entry `signed_up_to`: entries in between were lost. The chain goes
    /// on after the checkpoint, so no sequence number is used twice.
    AuditGap {
        store_ends_at: i64,
        signed_up_to: i64,
    },
}
