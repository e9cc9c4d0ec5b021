//! Holding an action for a person: the same rule, the same review and the
//! same outcomes whichever front the action came through. A front decides
//! *what* is held (a statement's class, a method, a tool) and how to tell
//! its caller; the gate does the asking and the waiting.

use std::time::Duration;

use portcullis_approval::{Approvals, Check, Held, Outcome, Review, ReviewError, SessionRequest};
use portcullis_config::{ApprovalMode, ApprovalRule};
use portcullis_identity::{Principal, unix_now};

/// One admitted caller's approval rule on one connection.
#[derive(Clone)]
pub struct Gate {
    approvals: Approvals,
    pub rule: ApprovalRule,
    principal: Principal,
    connection: String,
    /// The audited session held actions belong to, once one is open.
    session: Option<String>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("connection", &self.connection)
            .field("mode", &self.rule.mode)
            .finish_non_exhaustive()
    }
}

/// What is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// `statement`, `http`, `tool` or `session`.
    pub kind: &'a str,
    /// The exact action a reviewer approves.
    pub action: &'a str,
    /// Statement class, HTTP method, tool name…
    pub classification: &'a str,
    /// For just-in-time access: how long the grant lasts.
    pub grant: Option<Duration>,
    /// For a SQL write: what it would change (see
    /// [`portcullis_approval::Preview`]).
    pub preview: Option<&'a portcullis_approval::Preview>,
}

/// Why a held action may not go on.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("approval cannot be checked now ({0})")]
    Unavailable(#[from] ReviewError),
    #[error(
        "review {} was denied by {}{}",
        .0.id,
        .0.decided_by.as_deref().unwrap_or("an approver"),
        .0.reason.as_deref().map(|x| format!(": {x}")).unwrap_or_default()
    )]
    Denied(Box<Review>),
    #[error("review {} expired before it was approved", .0.id)]
    Expired(Box<Review>),
    /// Still pending when the rule's wait ran out; it stays open, so the
    /// identical action passes once approved.
    #[error("review {} was not decided within {}s", .review.id, .waited.as_secs())]
    TimedOut {
        review: Box<Review>,
        waited: Duration,
    },
}

impl HoldError {
    /// The review this is about, if there is one.
    pub fn review(&self) -> Option<&Review> {
        match self {
            HoldError::Unavailable(_) => None,
            HoldError::Denied(r) | HoldError::Expired(r) => Some(r),
            HoldError::TimedOut { review, .. } => Some(review),
        }
    }
}

impl Gate {
    pub(crate) fn new(
        approvals: Approvals,
        rule: ApprovalRule,
        principal: &Principal,
        connection: &str,
    ) -> Self {
        Self {
            approvals,
            rule,
            principal: principal.clone(),
            connection: connection.to_owned(),
            session: None,
        }
    }

    /// Link held actions to the audited session `id`.
    pub fn in_session(mut self, id: &str) -> Self {
        self.session = Some(id.to_owned());
        self
    }

    pub fn mode(&self) -> ApprovalMode {
        self.rule.mode
    }

    /// Whether the rule holds requests by their method.
    pub fn holds_methods(&self) -> bool {
        self.rule.mode == ApprovalMode::Statements && !self.rule.methods.is_empty()
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn connection(&self) -> &str {
        &self.connection
    }

    /// The end (Unix seconds) of a live just-in-time grant, if there is one.
    pub async fn live_grant(&self) -> Option<i64> {
        let until = self
            .approvals
            .jit_until(&self.principal.subject, &self.connection)
            .await
            .ok()
            .flatten()?;
        (until > unix_now()).then_some(until)
    }

    /// A just-in-time ask for this connection (`asked`: the duration the
    /// caller asked for, capped by the rule).
    pub fn session_request(&self, asked: Option<Duration>) -> SessionRequest {
        SessionRequest::new(&self.connection, &self.rule, asked)
    }

    /// The first answer: approved if an approval for exactly this action
    /// was waiting (and is now used), else the review that waits for
    /// people (tell the caller, then [`Self::wait`]).
    pub async fn check(&self, ask: &Ask<'_>) -> Result<Check, HoldError> {
        let held = Held {
            requester: &self.principal,
            connection: &self.connection,
            kind: ask.kind,
            action: ask.action,
            classification: ask.classification,
            rule: &self.rule,
            session: self.session.as_deref(),
            grant: ask.grant,
            preview: ask.preview,
        };
        let check = self.approvals.check(&held).await?;
        if let Check::Pending(r) = &check {
            tracing::info!(target: "portcullis::access", principal = %self.principal.subject, connection = %self.connection, review = %r.id, kind = ask.kind, "held for review");
        }
        Ok(check)
    }

    /// Wait (up to the rule's `wait`) for `review` to be approved.
    pub async fn wait(&self, review: &Review) -> Result<Review, HoldError> {
        let waited = self.rule.wait;
        match self
            .approvals
            .wait(&review.id, waited, self.session.as_deref())
            .await?
        {
            Outcome::Approved(r) => Ok(r),
            Outcome::Denied(r) => Err(HoldError::Denied(Box::new(r))),
            Outcome::Expired(r) => Err(HoldError::Expired(Box::new(r))),
            Outcome::TimedOut(r) => Err(HoldError::TimedOut {
                review: Box::new(r),
                waited,
            }),
        }
    }

    /// Record that approved review `r` was used up by an action whose
    /// fresh preview no longer matched it (`why`): it is held again.
    pub async fn superseded(&self, r: &Review, why: &str) {
        tracing::info!(target: "portcullis::access", principal = %self.principal.subject, connection = %self.connection, review = %r.id, why, "approved action changed since its preview; held again");
        self.approvals.superseded(r, why).await;
    }

    /// Ask approvers to lift the budget limit `e` names for this session;
    /// on a yes it no longer applies to it. `None` when there is nothing
    /// to lift (the store was unavailable) or no session to lift it for.
    pub async fn lift_budget(
        &self,
        budget: &crate::Budget,
        e: &crate::BudgetError,
    ) -> Option<Result<(), HoldError>> {
        let action = budget.lift_action(e, self.session.as_deref()?)?;
        let ask = Ask {
            kind: "budget",
            action: &action,
            classification: "budget",
            grant: None,
            preview: None,
        };
        let outcome = self.hold(&ask).await;
        if outcome.is_ok() {
            budget.lift(e);
        }
        Some(outcome)
    }

    /// [`Self::check`] then, if it must, [`Self::wait`], for fronts that
    /// cannot tell their caller anything in between.
    pub async fn hold(&self, ask: &Ask<'_>) -> Result<(), HoldError> {
        match self.check(ask).await? {
            Check::Approved(_) => Ok(()),
            Check::Pending(review) => self.wait(&review).await.map(drop),
        }
    }

    /// Just-in-time access for a front that cannot say how long it wants
    /// (HTTP without the header, a tool call): a live grant, or a
    /// person's yes now.
    pub async fn hold_session(&self, asked: Option<Duration>) -> Result<(), HoldError> {
        if self.live_grant().await.is_some() {
            return Ok(());
        }
        let ask = self.session_request(asked);
        self.hold(&Ask {
            kind: "session",
            action: &ask.action,
            classification: "session",
            grant: Some(ask.duration),
            preview: None,
        })
        .await
    }
}
