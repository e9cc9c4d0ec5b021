//! The one admission path. Every protocol front (HTTP proxy, PostgreSQL,
//! the MCP endpoint and the MCP proxy) turns its caller's credential and
//! the connection it names into an [`Admitted`] through the same steps, in
//! the same order, with the same evidence:
//!
//! ```text
//!  credential ──authenticate──▶ Principal ──authorize──▶ Admitted ──open──▶ OpenSession
//!                  │                          │    (connection exists,      │  (audit entry
//!                  ▼                          ▼     speaks the front's       ▼   durable, recording
//!               refusal                    refusal  protocol, a grant        started: else
//!             (audited)                  (audited)  allows; approval gate)   no session)
//! ```
//!
//! A front only adds what its protocol needs: how the credential arrives
//! (password message, `Authorization`, client certificate), how a refusal
//! is said on its wire (SQLSTATE, HTTP status, JSON-RPC error), and what it
//! inspects once the session is open. What the steps decide lives here,
//! once, built from the config by [`FrontContext::new`] and shared (as in
//! warpgate's `Services`) by every front.

mod admit;
mod gate;
mod live;
mod session;

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_config::{ApprovalRule, Config, Protocol};
use portcullis_identity::{Authenticator, Principal};
use portcullis_policy::Policy;

pub use admit::{AdmitError, Admitted, Origin};
pub use gate::{Ask, Gate, HoldError};
pub use live::{Liveness, Watch};
pub use session::{Closing, OpenSession, Opening, Outcome, Refused, SessionError, Sessions};

/// One configured connection, as admission sees it.
#[derive(Debug, Clone)]
struct ConnectionEntry {
    protocol: Protocol,
    approval: Option<ApprovalRule>,
}

/// What every front shares, built once per gateway.
pub struct FrontContext {
    pub policy: Policy,
    pub auth: Authenticator,
    pub masks: Arc<portcullis_mask::RuleSet>,
    pub mask_metrics: portcullis_mask::MaskMetrics,
    pub sessions: Sessions,
    pub approvals: portcullis_approval::Approvals,
    /// Live sessions by credential, ended when it is revoked.
    pub live: Arc<Liveness>,
    /// Every connection by name: its protocol and approval rule.
    connections: HashMap<String, ConnectionEntry>,
}

impl FrontContext {
    pub fn new(
        cfg: &Config,
        auth: Authenticator,
        masks: Arc<portcullis_mask::RuleSet>,
        mask_metrics: portcullis_mask::MaskMetrics,
        sessions: Sessions,
        approvals: portcullis_approval::Approvals,
    ) -> Self {
        let connections = cfg
            .connections
            .iter()
            .map(|c| {
                let entry = ConnectionEntry {
                    protocol: c.target.protocol(),
                    approval: c.approval.clone(),
                };
                (c.name.clone(), entry)
            })
            .collect();
        Self {
            policy: Policy::new(cfg.grants.clone()),
            auth,
            masks,
            mask_metrics,
            sessions,
            approvals,
            live: Arc::default(),
            connections,
        }
    }

    /// The masking rule that applies to `principal` on `connection`.
    pub fn mask_rule(
        &self,
        connection: &str,
        principal: &Principal,
    ) -> Option<&Arc<portcullis_mask::Rule>> {
        self.masks.select(connection, &principal.groups)
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
