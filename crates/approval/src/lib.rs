//! Human in the loop. A front that meets an action its connection holds
//! for approval asks [`Approvals::check`]: an approval already given for
//! exactly this action is consumed (once); otherwise a review is created
//! (or the pending one reused), announced by webhook, and the front waits
//! with [`Approvals::wait`] — in its own protocol — for a person's
//! decision through [`Approvals::decide`]. Every step is an audit entry.
//! Reviews live in the store, so pending ones survive a restart.

mod preview;
mod review;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use portcullis_config::ApprovalRule;
use portcullis_identity::{AuthMethod, Principal, PrincipalKind, unix_now};
use portcullis_store::{ReviewRow, Store};
use tokio::sync::Notify;

pub use preview::{Preview, Sample, SampleRow, TableChange};
pub use review::{Approval, Decider, Review, ReviewError, State, action_hash};
pub use webhook::Webhook;

/// What is being held.
pub struct Held<'a> {
    pub requester: &'a Principal,
    pub connection: &'a str,
    /// `statement`, `http`, `tool` or `session`.
    pub kind: &'a str,
    pub action: &'a str,
    pub classification: &'a str,
    pub rule: &'a ApprovalRule,
    /// The session the action belongs to, when one is open (audit link).
    pub session: Option<&'a str>,
    /// For just-in-time access: how long the grant asked for lasts.
    pub grant: Option<Duration>,
    /// For a SQL write: what it would change, found by running it and
    /// rolling back. An approval given on one preview is void when the
    /// fresh one differs beyond the rule's `preview_tolerance`.
    pub preview: Option<&'a Preview>,
}

/// A caller's ask for just-in-time access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// What the grant will last: what was asked for, at most the rule's
    /// `session` (which is also what an ask without a duration gets).
    pub duration: Duration,
    /// What was asked for, when it was more than the rule allows.
    pub cut_from: Option<Duration>,
    /// The action a reviewer sees and approves.
    pub action: String,
}

impl SessionRequest {
    pub fn new(connection: &str, rule: &ApprovalRule, asked: Option<Duration>) -> Self {
        let max = rule.session;
        let duration = asked.unwrap_or(max).min(max);
        Self {
            duration,
            cut_from: asked.filter(|a| *a > max),
            action: format!("session on {connection} for {}s", duration.as_secs()),
        }
    }

    /// What to tell a caller who asked for more than the rule allows.
    pub fn cut_notice(&self) -> Option<String> {
        self.cut_from.map(|asked| {
            format!(
                "portcullis: asked for {}s of access; the rule allows at most {}s, so that is what is asked for",
                asked.as_secs(),
                self.duration.as_secs()
            )
        })
    }

    pub fn held<'a>(
        &'a self,
        requester: &'a Principal,
        connection: &'a str,
        rule: &'a ApprovalRule,
        session: Option<&'a str>,
    ) -> Held<'a> {
        Held {
            requester,
            connection,
            kind: "session",
            action: &self.action,
            classification: "session",
            rule,
            session,
            grant: Some(self.duration),
            preview: None,
        }
    }
}

/// A requested just-in-time duration as callers write it (`30m`, `2h`,
/// `90s`): a clear error for anything else, zero included.
pub fn parse_session_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.as_secs() > 0 => Ok(d),
        Ok(_) => Err(format!(
            "\"{text}\" is not a duration of at least one second"
        )),
        Err(e) => Err(format!("\"{text}\" is not a duration like 30m or 2h ({e})")),
    }
}

/// The first answer for a held action.
#[derive(Debug)]
pub enum Check {
    /// An approval for exactly this action existed and is now used.
    Approved(Review),
    /// Waiting for people: tell the caller, then [`Approvals::wait`].
    Pending(Review),
}

/// How the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved(Review),
    Denied(Review),
    Expired(Review),
    /// Still pending when the caller's wait ran out.
    TimedOut(Review),
}

#[derive(Clone)]
pub struct Approvals {
    store: Store,
    audit: portcullis_audit::AuditLog,
    webhook: Option<Arc<Webhook>>,
    decided: Arc<Notify>,
}

/// The person an agent acts for, when its token says so.
pub fn on_behalf_of(p: &Principal) -> Option<String> {
    match &p.via {
        AuthMethod::GatewayToken { on_behalf_of, .. } => on_behalf_of.clone(),
        _ => None,
    }
}

fn to_row(r: &Review) -> ReviewRow {
    ReviewRow {
        id: r.id.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        requester: r.requester.clone(),
        on_behalf_of: r.on_behalf_of.clone(),
        connection: r.connection.clone(),
        kind: r.kind.clone(),
        action: r.action.clone(),
        action_sha256: r.action_sha256.clone(),
        classification: r.classification.clone(),
        state: r.state.as_str().into(),
        required: r.required as i64,
        approvers: serde_json::to_string(&r.approvers).unwrap_or_else(|_| "[]".into()),
        approvals: serde_json::to_string(&r.approvals).unwrap_or_else(|_| "[]".into()),
        decided_by: r.decided_by.clone(),
        reason: r.reason.clone(),
        used_at: r.used_at,
        preview: r
            .preview
            .as_ref()
            .and_then(|p| serde_json::to_string(p).ok()),
    }
}

fn from_row(r: ReviewRow) -> Review {
    Review {
        state: State::parse(&r.state).unwrap_or(State::Expired),
        approvers: serde_json::from_str(&r.approvers).unwrap_or_default(),
        approvals: serde_json::from_str(&r.approvals).unwrap_or_default(),
        required: r.required.max(1) as u32,
        id: r.id,
        created_at: r.created_at,
        expires_at: r.expires_at,
        requester: r.requester,
        on_behalf_of: r.on_behalf_of,
        connection: r.connection,
        kind: r.kind,
        action: r.action,
        action_sha256: r.action_sha256,
        classification: r.classification,
        decided_by: r.decided_by,
        reason: r.reason,
        used_at: r.used_at,
        // A preview the store cannot read is shown as missing, never
        // guessed; it binds nothing then (see `Preview::still_matches`).
        preview: r.preview.and_then(|p| serde_json::from_str(&p).ok()),
    }
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b);
    format!("rv_{}", hex::encode(b))
}

/// Run `step` to its end whatever becomes of the caller's future: a
/// store write and the audit entry that says what it did must not be
/// parted by a caller that goes away between them.
async fn detached<T: Send + 'static>(
    step: impl std::future::Future<Output = Result<T, ReviewError>> + Send + 'static,
) -> Result<T, ReviewError> {
    tokio::spawn(step).await.map_err(unavailable)?
}

fn unavailable<E: std::fmt::Display>(e: E) -> ReviewError {
    tracing::error!(error = %e, "review store failed");
    ReviewError::Unavailable
}

impl Approvals {
    pub fn new(store: Store, audit: portcullis_audit::AuditLog, webhook: Option<Webhook>) -> Self {
        Self {
            store,
            audit,
            webhook: webhook.map(Arc::new),
            decided: Arc::new(Notify::new()),
        }
    }

    /// The store reviews live in (shared with budgets).
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn audit(&self, action: &str, r: &Review, extra: serde_json::Value) {
        let mut detail = serde_json::json!({
            "review": r.id, "requester": r.requester, "on_behalf_of": r.on_behalf_of,
            "connection": r.connection, "kind": r.kind, "action_sha256": r.action_sha256,
            "classification": r.classification,
        });
        if let (Some(d), serde_json::Value::Object(x)) = (detail.as_object_mut(), extra) {
            d.extend(x);
        }
        let e = portcullis_audit::AuditEvent::Admin {
            action: action.into(),
            detail,
        };
        if let Err(err) = self.audit.append(&e).await {
            tracing::error!(error = %err, "audit append failed for a review");
        }
    }

    /// Consume an approved review; false when someone else used it first.
    async fn consume(&self, r: &mut Review, session: Option<&str>) -> Result<bool, ReviewError> {
        let now = unix_now();
        if !r.consume(now) {
            return Ok(false);
        }
        let won = self
            .store
            .update_review(&to_row(r), "approved")
            .await
            .map_err(unavailable)?;
        if won {
            self.audit("review_used", r, serde_json::json!({ "session": session }))
                .await;
            if r.kind == "session" {
                self.store
                    .grant_jit(&r.requester, &r.connection, r.expires_at.max(now), &r.id)
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(won)
    }

    /// An approval for exactly this action (consumed now), or the pending
    /// review to wait for (created and announced if there was none).
    pub async fn check(&self, h: &Held<'_>) -> Result<Check, ReviewError> {
        let who = &h.requester.subject;
        let hash = action_hash(who, h.connection, h.kind, h.action);
        let now = unix_now();
        if let Some(row) = self
            .store
            .review_for_action(who, h.connection, &hash)
            .await
            .map_err(unavailable)?
        {
            let mut r = from_row(row);
            let before = r.state;
            if r.expire_if_due(now) {
                let _ = self.store.update_review(&to_row(&r), before.as_str()).await;
                self.audit("review_expired", &r, serde_json::json!({}))
                    .await;
            } else if let Some(why) = self.differs(&r, h) {
                // What a person saw is no longer what would run: that
                // review ends, and the action is held again on the fresh
                // preview.
                self.supersede(&mut r, &why).await?;
            } else if r.state == State::Approved {
                if self.consume(&mut r, h.session).await? {
                    return Ok(Check::Approved(r));
                }
            } else if r.state == State::Pending {
                return Ok(Check::Pending(r));
            }
        }
        // A session review lasts as long as the grant it asks for.
        let life = if h.kind == "session" {
            h.grant.unwrap_or(h.rule.session).min(h.rule.session)
        } else {
            h.rule.expires
        };
        let r = Review {
            id: new_id(),
            created_at: now,
            expires_at: now + life.as_secs() as i64,
            requester: who.clone(),
            on_behalf_of: on_behalf_of(h.requester),
            connection: h.connection.to_string(),
            kind: h.kind.to_string(),
            action: h.action.to_string(),
            action_sha256: hash,
            classification: h.classification.to_string(),
            state: State::Pending,
            required: h.rule.required,
            approvers: h.rule.approvers.clone(),
            approvals: Vec::new(),
            decided_by: None,
            reason: None,
            used_at: None,
            preview: h.preview.cloned(),
        };
        let detail = serde_json::json!({
            "action": r.action, "required": r.required, "approvers": r.approvers,
            "session": h.session,
            "preview": r.preview.as_ref().map(Preview::summary),
        });
        // The review and its entry in the chain are one step, run apart
        // from the held request, which may be dropped at any await.
        let (me, held) = (self.clone(), r.clone());
        detached(async move {
            me.store
                .insert_review(&to_row(&held))
                .await
                .map_err(unavailable)?;
            me.audit("review_created", &held, detail).await;
            Ok(())
        })
        .await?;
        tracing::info!(review = %r.id, requester = %r.requester, connection = %r.connection, "action held for review");
        if let Some(w) = &self.webhook {
            let (w, r) = (w.clone(), r.clone());
            tokio::spawn(async move { w.send(&r).await });
        }
        Ok(Check::Pending(r))
    }

    /// Why the pending or approved review `r` no longer stands for `h`:
    /// the fresh preview differs from the one it was created with.
    fn differs(&self, r: &Review, h: &Held<'_>) -> Option<String> {
        if !matches!(r.state, State::Pending | State::Approved) {
            return None;
        }
        let (was, now) = (r.preview.as_ref()?, h.preview?);
        was.still_matches(now, h.rule.preview_tolerance).err()
    }

    /// End review `r` because what it would run changed since it was
    /// created (`why`); audited as `review_superseded`.
    async fn supersede(&self, r: &mut Review, why: &str) -> Result<(), ReviewError> {
        let before = r.state;
        r.state = State::Expired;
        r.reason = Some(format!("superseded: {why}"));
        if self
            .store
            .update_review(&to_row(r), before.as_str())
            .await
            .map_err(unavailable)?
        {
            self.superseded(r, why).await;
        }
        Ok(())
    }

    /// Record that approved review `r` was used up by an action whose
    /// fresh preview (`why`) no longer matched it, so the action is held
    /// again rather than run.
    pub async fn superseded(&self, r: &Review, why: &str) {
        self.audit("review_superseded", r, serde_json::json!({ "why": why }))
            .await;
    }

    /// Wait up to `timeout` for review `id` to be decided.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
        session: Option<&str>,
    ) -> Result<Outcome, ReviewError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before reading, so a decision in between is not missed.
            let notified = self.decided.notified();
            let mut r = self.get(id).await?;
            match r.state {
                State::Approved => {
                    if self.consume(&mut r, session).await? {
                        return Ok(Outcome::Approved(r));
                    }
                    continue;
                }
                State::Denied => return Ok(Outcome::Denied(r)),
                State::Expired | State::Used => return Ok(Outcome::Expired(r)),
                State::Pending => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Outcome::TimedOut(r));
            }
            // The in-process notification, or a poll for decisions made
            // elsewhere.
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// One review (expired ones are marked so).
    pub async fn get(&self, id: &str) -> Result<Review, ReviewError> {
        let row = self
            .store
            .review(id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| ReviewError::Unknown(id.chars().take(64).collect()))?;
        let mut r = from_row(row);
        let before = r.state;
        if r.expire_if_due(unix_now())
            && self
                .store
                .update_review(&to_row(&r), before.as_str())
                .await
                .map_err(unavailable)?
        {
            self.audit("review_expired", &r, serde_json::json!({}))
                .await;
        }
        Ok(r)
    }

    pub async fn list(&self, state: Option<State>) -> Result<Vec<Review>, ReviewError> {
        let rows = self
            .store
            .reviews(state.map(State::as_str))
            .await
            .map_err(unavailable)?;
        let now = unix_now();
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut r = from_row(row);
                r.expire_if_due(now);
                r
            })
            .filter(|r| state.is_none_or(|s| r.state == s))
            .collect())
    }

    /// A person's decision on review `id`.
    pub async fn decide(
        &self,
        id: &str,
        who: &Principal,
        approve: bool,
        reason: Option<String>,
    ) -> Result<Review, ReviewError> {
        let mut r = self.get(id).await?;
        let d = Decider {
            subject: &who.subject,
            human: who.kind == PrincipalKind::Human,
            groups: &who.groups,
        };
        let now = unix_now();
        if approve {
            r.approve(&d, now)?;
        } else {
            r.deny(&d, reason.clone(), now)?;
        }
        let action = if approve {
            "review_approved"
        } else {
            "review_denied"
        };
        let detail =
            serde_json::json!({"by": who.subject, "reason": reason, "state": r.state.as_str()});
        // The decision, its entry in the chain and the waiters' wake-up
        // are one step, run apart from the approver's request: dropped
        // half way (the approver's client went away), the decision landed
        // with no entry saying who made it (review of cancellation,
        // 2026-12-05).
        let me = self.clone();
        let decided = detached(async move {
            let changed = me
                .store
                .update_review(&to_row(&r), "pending")
                .await
                .map_err(unavailable)?;
            if changed {
                me.audit(action, &r, detail).await;
                me.decided.notify_waiters();
            }
            Ok((changed, r))
        })
        .await?;
        let (true, r) = decided else {
            // Someone decided in between: report the current state.
            let now_state = self.get(id).await?;
            return Err(ReviewError::NotPending {
                id: id.to_string(),
                state: now_state.state.as_str(),
            });
        };
        Ok(r)
    }

    /// Until when `principal` has just-in-time access to `connection`.
    pub async fn jit_until(
        &self,
        principal: &str,
        connection: &str,
    ) -> Result<Option<i64>, ReviewError> {
        self.store
            .jit_until(principal, connection)
            .await
            .map_err(unavailable)
    }
}

/// Statement classes from least to most powerful.
const CLASSES: &[&str] = &["read", "write", "ddl", "admin", "unknown"];

/// Whether `rule` holds a SQL statement of `class`: a class the rule
/// names, or a more powerful one. A review ran `COPY … FROM PROGRAM` and
/// `dblink_exec` (admin) unheld under `classes = ["write"]`, the README's
/// own example: holding writes holds whatever can write.
pub fn holds_statement(rule: &ApprovalRule, class: &str) -> bool {
    let rank = |c: &str| CLASSES.iter().position(|k| *k == c);
    let Some(class) = rank(class) else {
        // A class this build does not rank: held if anything is.
        return rule.mode == portcullis_config::ApprovalMode::Statements
            && !rule.classes.is_empty();
    };
    rule.mode == portcullis_config::ApprovalMode::Statements
        && rule
            .classes
            .iter()
            .any(|c| rank(c).is_some_and(|held| class >= held))
}

/// Whether `rule` holds an HTTP request with `method`.
pub fn holds_method(rule: &ApprovalRule, method: &str) -> bool {
    rule.mode == portcullis_config::ApprovalMode::Statements
        && rule.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
}

/// Whether `rule` holds MCP tool `tool` (`name` or `name:METHOD`).
pub fn holds_tool(rule: &ApprovalRule, tool: &str, method: Option<&str>) -> bool {
    rule.mode == portcullis_config::ApprovalMode::Statements
        && rule.tools.iter().any(|t| match t.split_once(':') {
            Some((name, m)) => name == tool && method.is_some_and(|x| x.eq_ignore_ascii_case(m)),
            None => t == tool,
        })
}

/// The action a reviewer sees and approves for an HTTP request: the
/// method, the caller's own path and query, and the SHA-256 of the body.
/// One text whichever way the request is sent (the proxy or the
/// `http_request` tool), so one approval fits either.
pub fn http_action(method: &str, path_and_query: &str, body: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
    format!(
        "{method} {path_and_query} body-sha256:{}",
        hex::encode(digest)
    )
}

/// A review's kind as a caller reads it.
fn kind_words(kind: &str) -> &str {
    match kind {
        "http" => "HTTP request",
        "sql" | "statement" => "statement",
        "tool" | "mcp" => "tool call",
        other => other,
    }
}

/// The words a caller is told while an action waits.
pub fn waiting_message(r: &Review) -> String {
    format!(
        "portcullis: this {} on connection \"{}\" needs approval: review {} is waiting for {} approver(s) in group(s) {}; approve with `portcullis reviews approve {}`",
        kind_words(&r.kind),
        r.connection,
        r.id,
        r.required,
        r.approvers.join(", "),
        r.id
    )
}

#[cfg(test)]
mod tests;
