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
mod budget;
mod gate;
mod live;
mod session;
pub mod unidentified;

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_config::{ApprovalRule, Config, Protocol};
use portcullis_identity::{Authenticator, Principal};
use portcullis_policy::Policy;

pub use admit::{AdmitError, Admitted, Origin};
pub use budget::{Budget, BudgetError, Budgets};
pub use gate::{Ask, Gate, HoldError};
pub use live::{At, Ended, LiveSession, Liveness, Registration, SESSION_KEY, Watch};
pub use session::{Closing, OpenSession, Opening, Outcome, Refused, SessionError, Sessions};

/// `f` on the heap, for an await the request path rarely takes (a
/// refusal's audit entry, a session's opening, an approval, a budget).
/// An async fn's future is as large as the largest future it awaits, and
/// its caller's holds it again, whether or not the branch runs: the HTTP
/// request's future was 17.8 KB, now 2.7 KB (docs/performance.md,
/// 2026-12-06 session 8: memory per request in flight; no CPU change
/// beyond the spread). A boxed await costs an allocation only when it
/// runs.
pub fn cold<F: std::future::Future>(f: F) -> std::pin::Pin<Box<F>> {
    Box::pin(f)
}

/// The target of the trace spans the fronts make (a session, a request,
/// a statement, a refusal), exported over OTLP when the binary is asked
/// to; at DEBUG so that they cost next to nothing otherwise.
pub const TRACE_TARGET: &str = "portcullis::trace";

/// One configured connection, as admission sees it.
#[derive(Debug, Clone)]
struct ConnectionEntry {
    protocol: Protocol,
    approval: Option<ApprovalRule>,
    /// The agent that serves it, when an agent does.
    agent: Option<String>,
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
    /// Grants' budgets: what each session may still take.
    pub budgets: Budgets,
    /// Every connection by name: its protocol and approval rule.
    connections: HashMap<String, ConnectionEntry>,
    /// Which config this is: 0 at start, one more at each reload.
    pub generation: u64,
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
                    agent: match &c.target {
                        portcullis_config::Target::Agent(a) => Some(a.agent.clone()),
                        _ => None,
                    },
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
            budgets: Budgets::new(approvals.store().clone()),
            approvals,
            live: Arc::default(),
            connections,
            generation: 0,
        }
    }

    /// Whether this is still the config in force: work admitted under a
    /// replaced one (a request held, a body still arriving) must not go
    /// on under rules that no longer exist.
    pub fn is_current(&self) -> bool {
        self.generation >= self.live.generation()
    }

    /// The context a reloaded config gives: its grants, connections and
    /// masking rules; the same authentication, sessions, approvals and
    /// live-session registry as `self` (state that outlives a reload).
    /// The budget of an admitted session, when its grant has one. An
    /// agent acting for a person spends the person's budget: a delegated
    /// token reaches no more than its person, and a review found that a
    /// person minting agents (any number of names) took the budget once
    /// per agent.
    pub fn budget(&self, admitted: &Admitted) -> Option<Budget> {
        let grant = self
            .policy
            .grants()
            .iter()
            .find(|g| g.name == admitted.rule)?;
        self.budgets
            .session(admitted.principal.accountable(), grant)
    }

    /// Whether the grant admitting `admitted` limits requests of some
    /// method (so the method a request asks the target to see matters).
    pub fn limits_methods(&self, admitted: &Admitted) -> bool {
        use portcullis_policy::budget::Measure;
        self.policy
            .grants()
            .iter()
            .find(|g| g.name == admitted.rule)
            .is_some_and(|g| {
                g.budgets
                    .iter()
                    .any(|l| l.measure == Measure::Requests && l.only.is_some())
            })
    }

    /// A connection's approval rule, if it has one.
    pub fn approval_of(&self, connection: &str) -> Option<&ApprovalRule> {
        self.connections.get(connection)?.approval.as_ref()
    }

    /// The agent that serves `connection`, when an agent does.
    pub fn agent_of(&self, connection: &str) -> Option<&str> {
        self.connections.get(connection)?.agent.as_deref()
    }

    /// Every masking rule that names `connection`, in the order tried.
    pub fn masking_of<'a>(
        &'a self,
        connection: &'a str,
    ) -> impl Iterator<Item = &'a portcullis_mask::Rule> {
        self.masks.for_connection(connection)
    }

    /// Every connection's name and protocol, sorted by name.
    pub fn connections(&self) -> Vec<(&str, Protocol)> {
        let mut all: Vec<_> = self
            .connections
            .iter()
            .map(|(n, e)| (n.as_str(), e.protocol))
            .collect();
        all.sort();
        all
    }

    pub fn reloaded(&self, cfg: &Config, masks: Arc<portcullis_mask::RuleSet>) -> Self {
        Self::new(
            cfg,
            self.auth.clone(),
            masks,
            self.mask_metrics.clone(),
            self.sessions.clone(),
            self.approvals.clone(),
        )
        .following(self)
    }

    /// The next generation after `previous`, sharing its live registry.
    fn following(mut self, previous: &Self) -> Self {
        self.live = previous.live.clone();
        // One refusal counter across reloads (the metric stays registered).
        self.budgets = previous.budgets.clone();
        self.generation = previous.generation + 1;
        self
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

/// A value that a reload replaces while readers keep the one they took.
///
/// A read lock around an `Arc`: a reader holds the lock only to clone the
/// `Arc` (no await under it), and a reload writes once, so contention is
/// nil; this spares a dependency for the few lines `arc-swap` would save.
pub struct Current<T>(std::sync::RwLock<Arc<T>>);

impl<T> Current<T> {
    pub fn new(value: T) -> Self {
        Self(std::sync::RwLock::new(Arc::new(value)))
    }

    /// The value now.
    pub fn load(&self) -> Arc<T> {
        // Poisoned only by a panic in `store`, which cannot panic while
        // holding it; the Arc inside is whole either way.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the value; readers that took the old one keep it.
    pub fn store(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
