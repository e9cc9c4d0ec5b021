//! The statement rules of one session: what a message carries is proven
//! (Query, Parse, FunctionCall), the read-only rule applied, and what the
//! connection's approval rule holds waits for a person. Asking and waiting
//! are the shared [`portcullis_front::Gate`]'s; what is held, and what the
//! caller is told meanwhile (notices), is PostgreSQL's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_approval::Check;
use portcullis_config::ApprovalMode;
use portcullis_front::{Ask, HoldError};
use tokio::io::AsyncWrite;

use crate::classify::{Analysis, Class};
use crate::frame::{Message, tag};
use crate::held::{HeldError, HeldStatements};
use crate::inspect::{self, Refusal};
use crate::messages::{self, sqlstate};
use crate::relay::{SessionCtx, send};
use crate::upstream::PgUpstream;

/// A statement's proven class, and (for a fast-path call) the function's
/// name as the target knows it.
pub(crate) struct Checked {
    pub class: Class,
    pub name: String,
}

/// Prepared statements whose proof rested on the catalog (function calls,
/// or the absence of code PostgreSQL runs on its own): re-proven at each
/// Bind, since a function proven stable at Parse, or a view it reads, may
/// have been replaced since (by a reviewed DDL, or by someone else on the
/// target), and a Bind runs whatever they are now.
#[derive(Default)]
pub(crate) struct Prepared {
    proofs: HashMap<String, Proven>,
    /// Each declared cursor's proof, by name: its query runs at each
    /// FETCH, so it is proven again there (a re-review's cursor ran a
    /// function replaced after its DECLARE).
    cursors: HashMap<String, Proven>,
    /// Each portal a Bind of a tracked statement made: a portal executed
    /// with a row limit runs its query again at each later Execute, as a
    /// cursor does at FETCH. `true` while only the Bind's proof has been
    /// used (its first Execute needs no other).
    portals: HashMap<String, (Proven, bool)>,
}

/// What a Parse was proven to be.
struct Proven {
    analysis: Arc<Analysis>,
    class: Class,
}

/// Prepared statements with function calls tracked per session at most;
/// past it a Parse is refused (fail closed), as held statements are.
const MAX_PREPARED: usize = 4096;

impl Prepared {
    fn remember(
        &mut self,
        name: &str,
        analysis: Arc<Analysis>,
        class: Class,
    ) -> Result<(), Refusal> {
        // Kept when its proof rests on the catalog: on calls, or on no
        // code PostgreSQL runs on its own being there (a review replaced
        // a view a driver's prepared statement read with one over
        // `nextval`, and 38 Binds ran unheld).
        if !analysis.needs_proof() && !crate::catalog::reaches_hidden(&analysis) {
            self.proofs.remove(name);
            return Ok(());
        }
        if self.proofs.len() >= MAX_PREPARED && !self.proofs.contains_key(name) {
            return Err(Refusal {
                code: sqlstate::PROGRAM_LIMIT,
                message: format!(
                    "portcullis: more than {MAX_PREPARED} prepared statements whose proof rests on the catalog; close some first"
                ),
            });
        }
        let proven = Proven { analysis, class };
        self.proofs.insert(name.to_owned(), proven);
        Ok(())
    }

    fn get(&self, name: &str) -> Option<(Arc<Analysis>, Class)> {
        self.proofs.get(name).map(|p| (p.analysis.clone(), p.class))
    }

    fn forget(&mut self, name: &str) {
        self.proofs.remove(name);
    }

    /// Remember the cursors `analysis` declares, with its proof; past
    /// [`MAX_PREPARED`] a DECLARE is refused (fail closed), as a Parse is.
    fn declare(&mut self, analysis: &Arc<Analysis>, class: Class) -> Result<(), Refusal> {
        for name in &analysis.cursors.declared {
            if self.cursors.len() >= MAX_PREPARED && !self.cursors.contains_key(name) {
                return Err(Refusal {
                    code: sqlstate::PROGRAM_LIMIT,
                    message: format!(
                        "portcullis: more than {MAX_PREPARED} cursors declared in this session; close some first"
                    ),
                });
            }
            let proven = Proven {
                analysis: analysis.clone(),
                class,
            };
            self.cursors.insert(name.clone(), proven);
        }
        Ok(())
    }

    fn cursor(&self, name: &str) -> Option<(Arc<Analysis>, Class)> {
        self.cursors
            .get(name)
            .map(|p| (p.analysis.clone(), p.class))
    }

    /// Note that `portal` runs `analysis`, proven `class` at its Bind;
    /// past [`MAX_PREPARED`] portals a Bind is refused (fail closed).
    fn bound(
        &mut self,
        portal: &str,
        analysis: Arc<Analysis>,
        class: Class,
    ) -> Result<(), Refusal> {
        if self.portals.len() >= MAX_PREPARED && !self.portals.contains_key(portal) {
            return Err(Refusal {
                code: sqlstate::PROGRAM_LIMIT,
                message: format!(
                    "portcullis: more than {MAX_PREPARED} portals bound in this session; close some first"
                ),
            });
        }
        let entry = (Proven { analysis, class }, true);
        // Most Binds reuse a name (the unnamed portal): no new key.
        match self.portals.get_mut(portal) {
            Some(e) => *e = entry,
            None => {
                self.portals.insert(portal.to_owned(), entry);
            }
        }
        Ok(())
    }

    /// The session is idle with nothing unanswered: every portal the
    /// target had is gone with its transaction. Those not executed yet
    /// are kept (a Bind the caller pipelined behind the Sync may already
    /// be here).
    pub(crate) fn transaction_ended(&mut self) {
        self.portals.retain(|_, (_, first)| *first);
    }

    /// The proof `portal` ran on, when an Execute continues it (not its
    /// first Execute after the Bind, which the Bind proved).
    fn continued(&mut self, portal: &str) -> Option<(Arc<Analysis>, Class)> {
        let (p, first) = self.portals.get_mut(portal)?;
        if std::mem::take(first) {
            return None;
        }
        Some((p.analysis.clone(), p.class))
    }
}

/// A message the gate let through, and for an approved simple query
/// with a counted preview, the counts its run must reproduce (see
/// [`crate::checked`]).
pub(crate) struct Admitted {
    pub message: Message,
    pub checked: Option<crate::checked::Expected>,
}

impl From<Message> for Admitted {
    fn from(message: Message) -> Self {
        Self {
            message,
            checked: None,
        }
    }
}

/// What holds statements of one session for approval.
pub(crate) struct Gate {
    approval: portcullis_front::Gate,
    /// For just-in-time access: the grant's end (Unix seconds); -1 until
    /// the first statement asks for it.
    jit_until: AtomicI64,
    /// The just-in-time duration the caller asked for (startup `options`).
    asked_session: Option<Duration>,
    /// Prepared statements held at every Bind.
    held: Mutex<HeldStatements>,
    /// The connection's masking rules, all of them: a preview's sample
    /// is masked by every one (see [`crate::preview`]).
    masks: Vec<Arc<portcullis_mask::Rule>>,
    /// The caller's session's settings that change how literals read
    /// ([`PREVIEW_SETTINGS`]), as the target last reported them: a
    /// preview runs with them (a review's preview under the gateway's
    /// `DateStyle` showed another row than the one the run deleted).
    settings: Mutex<std::collections::BTreeMap<String, String>>,
    /// The caller's startup parameters: a preview connects with them, so
    /// it starts from the caller's `search_path`, `extra_float_digits`, …
    startup: Vec<(String, String)>,
    /// Settings the caller's statements set or reset since the startup
    /// ([`crate::classify::settings_set`]); `None` once one may have
    /// changed any. A preview follows those the target reports and that
    /// cannot change what a statement does ([`PREVIEW_HARMLESS`]); any
    /// other leaves it unable to read the statement as the run will, so it
    /// is not run (a review's `SET extra_float_digits = 0`, or
    /// `bytea_output`, made a preview show one row and the run delete
    /// another; a `search_path` the target does not report made it count
    /// another table's).
    changed: Mutex<Option<std::collections::BTreeSet<String>>>,
    /// The last message was not proven a read or write: what it may
    /// change is counted with the next one.
    opaque_before: std::sync::atomic::AtomicBool,
}

/// Reported settings a preview takes from the caller's session.
const PREVIEW_SETTINGS: &[&str] = &["DateStyle", "IntervalStyle", "TimeZone", "search_path"];

/// Settings that cannot change which rows a statement touches or how its
/// text reads: a preview runs whatever the caller set them to.
const PREVIEW_HARMLESS: &[&str] = &[
    "application_name",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "client_min_messages",
    "work_mem",
    "jit",
    "plan_cache_mode",
    "random_page_cost",
    "max_parallel_workers_per_gather",
    "transaction",
    "transaction_isolation",
    "default_transaction_isolation",
];

/// What the caller may be told while a statement waits.
type CallerWriter<'a, W> = &'a tokio::sync::Mutex<W>;

impl Gate {
    pub fn new(
        approval: portcullis_front::Gate,
        asked_session: Option<Duration>,
        nonce: &str,
        masks: Vec<Arc<portcullis_mask::Rule>>,
        startup: Vec<(String, String)>,
    ) -> Self {
        Self {
            approval,
            jit_until: AtomicI64::new(-1),
            asked_session,
            held: Mutex::new(HeldStatements::new(nonce)),
            masks,
            settings: Mutex::default(),
            startup,
            changed: Mutex::new(Some(Default::default())),
            opaque_before: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A message the caller sends, of `class` where it was proven: the
    /// settings it may change are noted. A fast-path call, and anything
    /// not proven a read or write (`DO`, a function of the caller's that
    /// may call `set_config`), may change any (code review).
    pub fn observe(&self, m: &Message, class: Option<Class>) {
        let text = match m.tag {
            tag::QUERY => messages::query_text(m),
            tag::PARSE => messages::parse_text(m).map(|(_, sql)| sql),
            tag::FUNCTION_CALL => None,
            _ => return,
        };
        // What an opaque statement may change counts from the next
        // message on: its own review says why it is not previewed.
        let opaque = matches!(class, Some(Class::Admin | Class::Unknown));
        let was_opaque = self.opaque_before.swap(opaque, Ordering::Relaxed);
        let set = text.and_then(|t| crate::classify::settings_set(&t));
        if let Ok(mut changed) = self.changed.lock() {
            match (set, changed.as_mut()) {
                (Some(names), Some(all)) if !was_opaque => all.extend(names),
                _ => *changed = None,
            }
        }
    }

    /// Why a preview of `sql` cannot read it as the run will, if it
    /// cannot: a setting the session (or `sql` itself, which has not run
    /// yet) changed that the preview does not follow.
    fn unfollowed(&self, sql: &str, reported: &[(String, String)]) -> Option<String> {
        let follows = |name: &str| {
            PREVIEW_HARMLESS.contains(&name)
                || name.starts_with("enable_")
                || reported.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
        };
        let earlier = self.changed.lock().ok().and_then(|c| c.clone());
        let Some(earlier) = earlier else {
            return Some("the session may have changed any of its settings (RESET ALL, DISCARD or set_config), which the preview cannot follow".into());
        };
        if let Some(name) = earlier.iter().find(|n| !follows(n)) {
            return Some(format!(
                "the session set {name}, which the target does not report: the preview cannot read the statement as the run will"
            ));
        }
        match crate::classify::settings_set(sql) {
            None => Some("the statement may change its session's settings before it runs".into()),
            Some(own) => own
                .iter()
                .find(|n| !PREVIEW_HARMLESS.contains(&n.as_str()) && !n.starts_with("enable_"))
                .map(|n| {
                    format!(
                        "the statement sets {n} before it runs, which the preview cannot follow"
                    )
                }),
        }
    }

    /// A ParameterStatus the target sent the caller: kept if a preview
    /// needs it.
    pub fn reported(&self, body: &[u8]) {
        let mut b = body;
        let (Some(name), Some(value)) = (
            crate::frame::take_cstr(&mut b),
            crate::frame::take_cstr(&mut b),
        ) else {
            return;
        };
        if PREVIEW_SETTINGS.contains(&name.as_str())
            && let Ok(mut s) = self.settings.lock()
        {
            s.insert(name, value);
        }
    }

    fn mode(&self) -> ApprovalMode {
        self.approval.rule.mode
    }

    /// When this session's just-in-time grant ends, once it has one.
    pub fn jit_until(&self) -> Option<i64> {
        let until = self.jit_until.load(Ordering::Relaxed);
        (self.mode() == ApprovalMode::Session && until >= 0).then_some(until)
    }

    /// Whether this session runs on just-in-time access.
    pub fn is_just_in_time(&self) -> bool {
        self.mode() == ApprovalMode::Session
    }

    /// Whether statements are proven for this rule (it holds classes).
    pub fn holds_statements(&self) -> bool {
        self.mode() == ApprovalMode::Statements
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HeldStatements> {
        // Only a panic while holding it poisons it; the table is still whole.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask approvers to lift the budget limit `e` names for this session.
    pub async fn lift_budget(
        &self,
        budget: &portcullis_front::Budget,
        e: &portcullis_front::BudgetError,
    ) -> Option<Result<(), HoldError>> {
        self.approval.lift_budget(budget, e).await
    }

    /// Whether `m` may wait for a person, so what was batched before it
    /// must reach the target first.
    pub fn may_wait(&self, m: &Message) -> bool {
        match self.mode() {
            ApprovalMode::Session => matches!(m.tag, tag::QUERY | tag::PARSE | tag::FUNCTION_CALL),
            ApprovalMode::Statements => match m.tag {
                tag::QUERY | tag::FUNCTION_CALL => true,
                tag::BIND => messages::bind(&m.body).is_some_and(|b| self.holds_bind(&b.statement)),
                _ => false,
            },
            ApprovalMode::None => false,
        }
    }

    /// Whether `m` binds a held statement that may change the schema (it
    /// was proven at Parse; this is when it runs).
    pub fn binds_schema_change(&self, m: &Message) -> bool {
        m.tag == tag::BIND
            && messages::bind(&m.body).is_some_and(|b| {
                let held = self.held();
                match held.get(&b.statement) {
                    Some(h) => matches!(h.class, "ddl" | "admin" | "unknown"),
                    // Prepared where the gate could not read it.
                    None => held.unread(&b.statement),
                }
            })
    }

    /// Whether a Bind of `statement` waits for a person: a held
    /// statement, or one prepared where the gate could not read it while
    /// the rule holds what is not proven.
    fn holds_bind(&self, statement: &str) -> bool {
        let held = self.held();
        held.get(statement).is_some()
            || (held.unread(statement) && self.needs_approval(Class::Unknown).is_some())
    }

    /// The class under which a statement of `class` needs approval, if
    /// it does.
    pub(crate) fn needs_approval(&self, class: Class) -> Option<&'static str> {
        let rule = &self.approval.rule;
        if portcullis_approval::holds_statement(rule, class.as_str()) {
            return Some(class.as_str());
        }
        // What is not proven (a volatile function, EXECUTE of whatever was
        // prepared, a procedure) may do anything: held whenever anything is.
        (class == Class::Unknown && !rule.classes.is_empty()).then_some(class.as_str())
    }

    /// What the gate makes of one message from the caller: the message to
    /// send on (a held statement renamed to its private name, see
    /// [`crate::held`]), once a person has said yes where one must; or a
    /// refusal to give in protocol order.
    pub async fn admit<W: AsyncWrite + Unpin>(
        &self,
        m: &Message,
        checked: Option<&Checked>,
        up: &PgUpstream,
        caller_w: CallerWriter<'_, W>,
    ) -> Result<Admitted, Refusal> {
        match self.mode() {
            ApprovalMode::None => return Ok(m.clone().into()),
            ApprovalMode::Session => {
                if matches!(m.tag, tag::QUERY | tag::PARSE | tag::FUNCTION_CALL) {
                    self.hold_session(caller_w).await?;
                }
                return Ok(m.clone().into());
            }
            ApprovalMode::Statements => {}
        }
        let class = checked.and_then(|c| self.needs_approval(c.class));
        names_no_private_statement(m)?;
        match m.tag {
            tag::QUERY => {
                let mut checked = None;
                if let (Some(sql), Some(class)) = (messages::query_text(m), class) {
                    let preview = Previewed::Text { up, sql: &sql };
                    checked = self.hold(&sql, class, preview, caller_w).await?;
                }
                Ok(Admitted {
                    message: m.clone(),
                    checked,
                })
            }
            // A fast-path call is held like the statement that would call
            // it, its arguments part of the action.
            tag::FUNCTION_CALL => {
                if let (Some(c), Some(class)) = (checked, class) {
                    let action = format!(
                        "-- fast-path function call\n{}(...) -- message: \\x{}",
                        c.name,
                        hex::encode(&m.body)
                    );
                    self.hold(&action, class, Previewed::Not, caller_w).await?;
                }
                Ok(m.clone().into())
            }
            tag::PARSE => self.parse(m, class).map(Admitted::from),
            tag::BIND => self.bind(m, up, caller_w).await,
            tag::DESCRIBE | tag::CLOSE => Ok(self.rename(m).into()),
            _ => Ok(m.clone().into()),
        }
    }

    /// A Parse is held at each Bind, with its parameters, not here: it is
    /// renamed to a private name the caller cannot bind directly. A named
    /// statement that needs no approval is renamed too (see
    /// [`HeldStatements`]).
    fn parse(&self, m: &Message, class: Option<&'static str>) -> Result<Message, Refusal> {
        let Some((name, sql)) = messages::parse_text(m) else {
            return Ok(m.clone());
        };
        let private = match class {
            None => self.held().parse_plain(&name),
            Some(class) => {
                let types = messages::parse_types(m).unwrap_or_default();
                self.held().prepare(&name, &sql, types, class)
            }
        }
        .map_err(held_refusal)?;
        if private == name {
            return Ok(m.clone());
        }
        // It was read above, so it reads again; if not, fail closed.
        messages::rename_parse(m, &private).ok_or_else(|| Refusal {
            code: sqlstate::PROTOCOL_VIOLATION,
            message: "portcullis: a Parse message could not be read".into(),
        })
    }

    async fn bind<W: AsyncWrite + Unpin>(
        &self,
        m: &Message,
        up: &PgUpstream,
        caller_w: CallerWriter<'_, W>,
    ) -> Result<Admitted, Refusal> {
        let Some(bind) = messages::bind(&m.body) else {
            return Ok(m.clone().into());
        };
        if crate::held::reserved(&bind.statement) {
            return Err(held_refusal(HeldError::Reserved(bind.statement)));
        }
        let held = self.held().get(&bind.statement).cloned();
        let Some(h) = held else {
            return self.bind_unheld(m, &bind, caller_w).await;
        };
        let action = crate::held::action(&h.sql, &h.types, &bind);
        let preview = Previewed::Bound {
            up,
            sql: &h.sql,
            types: &h.types,
            bind: &bind,
        };
        let checked = self.hold(&action, h.class, preview, caller_w).await?;
        Ok(Admitted {
            message: bind.encode_for(&h.private),
            checked,
        })
    }

    /// A Bind of a statement the gate does not hold: one parsed through
    /// the protocol passes, under its private name; a named one the gate
    /// did not see parsed (SQL `PREPARE`, a function) is held as unknown
    /// where the rule holds what is not proven, its name and parameters
    /// the action.
    async fn bind_unheld<W: AsyncWrite + Unpin>(
        &self,
        m: &Message,
        bind: &messages::Bind<'_>,
        caller_w: CallerWriter<'_, W>,
    ) -> Result<Admitted, Refusal> {
        let private = self.held().plain(&bind.statement).map(str::to_owned);
        if let Some(private) = private {
            return Ok(bind.encode_for(&private).into());
        }
        if self.held().unread(&bind.statement)
            && let Some(class) = self.needs_approval(Class::Unknown)
        {
            let what = format!(
                "-- run prepared statement \"{}\" (prepared in SQL or by a function: its text is not known to the gateway)",
                bind.statement
            );
            let action = crate::held::action(&what, &[], bind);
            self.hold(&action, class, Previewed::Not, caller_w).await?;
        }
        Ok(m.clone().into())
    }

    /// Describe and Close of a statement under a private name name it.
    fn rename(&self, m: &Message) -> Message {
        let Some(name) = messages::statement_target(m) else {
            return m.clone();
        };
        let private = match m.tag {
            tag::CLOSE => self.held().close(&name),
            _ => {
                let held = self.held();
                held.get(&name)
                    .map(|h| h.private.clone())
                    .or_else(|| held.plain(&name).map(str::to_owned))
            }
        };
        private.map_or_else(|| m.clone(), |p| messages::statement_message(m.tag, &p))
    }

    /// Just-in-time access, asked for by the first statement (a notice
    /// can reach the caller only once it is logged in) and checked by
    /// every one after.
    async fn hold_session<W: AsyncWrite + Unpin>(
        &self,
        caller_w: CallerWriter<'_, W>,
    ) -> Result<(), Refusal> {
        let mut until = self.jit_until.load(Ordering::Relaxed);
        if until < 0 {
            until = self.just_in_time(caller_w).await?;
            self.jit_until.store(until, Ordering::Relaxed);
        }
        if portcullis_identity::unix_now() >= until {
            return Err(Refusal {
                code: sqlstate::INSUFFICIENT_PRIVILEGE,
                message: format!(
                    "portcullis: just-in-time access to connection \"{}\" ended; reconnect to ask for it again",
                    self.approval.connection()
                ),
            });
        }
        Ok(())
    }

    /// A live grant's end, or a person's yes now.
    async fn just_in_time<W: AsyncWrite + Unpin>(
        &self,
        caller_w: CallerWriter<'_, W>,
    ) -> Result<i64, Refusal> {
        if let Some(until) = self.approval.live_grant().await {
            return Ok(until);
        }
        let ask = self.approval.session_request(self.asked_session);
        let asked = Ask {
            kind: "session",
            action: &ask.action,
            classification: "session",
            grant: Some(ask.duration),
            preview: None,
        };
        let review = match self.approval.check(&asked).await.map_err(hold_refusal)? {
            Check::Approved(r) => return Ok(r.expires_at),
            Check::Pending(r) => r,
        };
        {
            let mut w = caller_w.lock().await;
            if let Some(cut) = ask.cut_notice() {
                send(&mut *w, &messages::notice(sqlstate::WARNING, &cut)).await;
            }
            let waiting = portcullis_approval::waiting_message(&review);
            send(&mut *w, &messages::notice(sqlstate::WARNING, &waiting)).await;
        }
        let approved = self.approval.wait(&review).await.map_err(hold_refusal)?;
        Ok(approved.expires_at)
    }

    /// Hold `action` (a statement, with its parameters when bound) until
    /// a person decides, or let it through at once if already approved;
    /// the counts its run must reproduce when the approval had some.
    async fn hold<W: AsyncWrite + Unpin>(
        &self,
        action: &str,
        class: &str,
        previewed: Previewed<'_>,
        caller_w: CallerWriter<'_, W>,
    ) -> Result<Option<crate::checked::Expected>, Refusal> {
        let mut preview = self.preview(&previewed, class).await;
        loop {
            let ask = Ask {
                kind: "statement",
                action,
                classification: class,
                grant: None,
                preview: preview.as_ref(),
            };
            // An approval waiting for exactly this action was checked
            // against this fresh preview before it was used.
            let review = match self.approval.check(&ask).await.map_err(hold_refusal)? {
                Check::Approved(r) => return Ok(self.expected(&r)),
                Check::Pending(r) => r,
            };
            {
                let mut w = caller_w.lock().await;
                let waiting = portcullis_approval::waiting_message(&review);
                send(&mut *w, &messages::notice(sqlstate::WARNING, &waiting)).await;
            }
            let approved = self.approval.wait(&review).await.map_err(hold_refusal)?;
            // Time passed while people looked: what they approved must
            // still be what would run.
            let Some(was) = approved.preview.as_ref().filter(|p| p.tables().is_some()) else {
                return Ok(None);
            };
            let now = self.preview(&previewed, class).await;
            let tolerance = self.approval.rule.preview_tolerance;
            match now.as_ref().map(|n| was.still_matches(n, tolerance)) {
                None | Some(Ok(())) => return Ok(self.expected(&approved)),
                Some(Err(why)) => {
                    self.approval.superseded(&approved, &why).await;
                    let again = format!(
                        "portcullis: the data changed since review {} was approved ({why}); the statement is held again with a new preview",
                        approved.id
                    );
                    let mut w = caller_w.lock().await;
                    send(&mut *w, &messages::notice(sqlstate::WARNING, &again)).await;
                    preview = now;
                }
            }
        }
    }

    /// The counts the run of `approved` must reproduce: those a person
    /// saw. Checked even when the last preview could not count (a lock
    /// it timed out on may be the very change that makes them differ).
    fn expected(&self, approved: &portcullis_approval::Review) -> Option<crate::checked::Expected> {
        Some(crate::checked::Expected {
            review: approved.id.clone(),
            tables: approved.preview.as_ref()?.tables()?.to_vec(),
            tolerance: self.approval.rule.preview_tolerance,
        })
    }

    /// What a held statement of `class` would change, for its review;
    /// `None` where the rule turns previews off.
    async fn preview(
        &self,
        previewed: &Previewed<'_>,
        class: &str,
    ) -> Option<portcullis_approval::Preview> {
        use portcullis_approval::Preview;
        let rule = &self.approval.rule;
        if !rule.preview {
            return None;
        }
        let settings: Vec<(String, String)> = self
            .settings
            .lock()
            .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let text = match previewed {
            Previewed::Text { sql, .. } | Previewed::Bound { sql, .. } => Some(&**sql),
            Previewed::Not => None,
        };
        if let Some(why) = text.and_then(|sql| self.unfollowed(sql, &settings)) {
            return Some(Preview::not_previewed(why));
        }
        let limits = crate::preview::Limits {
            statement_timeout: rule.preview_timeout,
            settings,
            startup: self.startup.clone(),
        };
        Some(match (previewed, class) {
            (Previewed::Text { up, sql }, "write") => {
                let sql = crate::preview::Sql::Simple(sql);
                crate::preview::preview(up, &sql, &self.masks, limits).await
            }
            (
                Previewed::Bound {
                    up,
                    sql,
                    types,
                    bind,
                },
                "write",
            ) => {
                let sql = crate::preview::Sql::Bound { sql, types, bind };
                crate::preview::preview(up, &sql, &self.masks, limits).await
            }
            (Previewed::Not, _) => {
                Preview::not_previewed("a fast-path function call is not previewed")
            }
            (_, "unknown") => Preview::not_previewed(
                "it is not proven free of side effects (a volatile function, a procedure, EXECUTE), so it is not run before approval",
            ),
            (_, other) => Preview::not_previewed(format!(
                "only data changes are previewed, and this is {} statement",
                if other == "admin" {
                    "an admin"
                } else {
                    "a DDL"
                }
            )),
        })
    }
}

/// What a held statement can be previewed from.
enum Previewed<'a> {
    /// A simple query's text, on this connection.
    Text { up: &'a PgUpstream, sql: &'a str },
    /// A Bind of a held prepared statement, with its parameters.
    Bound {
        up: &'a PgUpstream,
        sql: &'a str,
        types: &'a [u32],
        bind: &'a messages::Bind<'a>,
    },
    /// A fast-path function call.
    Not,
}

/// The statement rules' half that needs no person: prove the class of
/// what `m` carries (Query, Parse, FunctionCall; a Bind re-proves its
/// prepared statement) and apply the read-only rule. `None`: no rule of
/// this session looks at `m`.
pub(crate) async fn check(ctx: &SessionCtx<'_>, m: &Message) -> Result<Option<Checked>, Refusal> {
    let up = ctx.upstream;
    let gated = ctx.gate.is_some_and(Gate::holds_statements);
    let proven = matches!(
        m.tag,
        tag::QUERY | tag::PARSE | tag::FUNCTION_CALL | tag::BIND | tag::CLOSE | tag::EXECUTE
    );
    // A budget on writes needs every statement's proven class.
    let counted = ctx
        .budget
        .is_some_and(|b| b.counts(portcullis_policy::budget::Measure::Writes));
    if !proven || !(up.read_only || gated || ctx.masked || counted) {
        return Ok(None);
    }
    if m.tag == tag::FUNCTION_CALL && ctx.masked {
        // Its result is not a row the masker can read.
        return Err(Refusal {
            code: sqlstate::INSUFFICIENT_PRIVILEGE,
            message: format!(
                "portcullis: connection \"{}\" masks results: fast-path function calls are refused",
                ctx.connection
            ),
        });
    }
    if !(up.read_only || gated || counted) {
        // Masked only: no proof is needed, but the masker's catalog rows
        // must be forgotten after a schema change (its kinds tell).
        let sql = match m.tag {
            tag::QUERY => messages::query_text(m),
            tag::PARSE => messages::parse_text(m).map(|(_, sql)| sql),
            _ => None,
        };
        return Ok(sql.map(|sql| Checked {
            class: up.analyse(&sql).class,
            name: String::new(),
        }));
    }
    let checked = match m.tag {
        tag::BIND => return rebind(ctx, m).await,
        tag::EXECUTE => return reexecute(ctx, m).await,
        tag::CLOSE => {
            if let Some(name) = messages::statement_target(m) {
                ctx.prepared().forget(&name);
            } else if let Some((&b'P', mut rest)) = m.body.split_first()
                && let Some(portal) = crate::frame::take_cstr(&mut rest)
            {
                ctx.prepared().portals.remove(&portal);
            }
            return Ok(None);
        }
        tag::FUNCTION_CALL => match messages::function_call_oid(m) {
            Some(oid) => {
                let (class, name) = up.function_class(oid).await.map_err(|e| unproven(ctx, e))?;
                Checked { class, name }
            }
            None => Checked {
                class: Class::Unknown,
                name: "?".into(),
            },
        },
        tag::QUERY => {
            let class = match messages::query_text(m) {
                Some(sql) => {
                    let analysis = up.analyse(&sql);
                    let class = up.resolve(&analysis).await.map_err(|e| unproven(ctx, e))?;
                    refetch(ctx, &analysis).await?;
                    if !analysis.cursors.declared.is_empty() {
                        ctx.prepared().declare(&analysis, class)?;
                    }
                    class
                }
                None => Class::Unknown,
            };
            Checked {
                class,
                name: String::new(),
            }
        }
        _ => return parse(ctx, m).await,
    };
    read_only_rule(ctx, checked.class)?;
    Ok(Some(checked))
}

/// A Parse: proven, and remembered for its Binds when its proof rested
/// on function calls.
async fn parse(ctx: &SessionCtx<'_>, m: &Message) -> Result<Option<Checked>, Refusal> {
    let Some((name, sql)) = messages::parse_text(m) else {
        read_only_rule(ctx, Class::Unknown)?;
        return Ok(Some(Checked {
            class: Class::Unknown,
            name: String::new(),
        }));
    };
    let analysis = ctx.upstream.analyse(&sql);
    let class = ctx
        .upstream
        .resolve(&analysis)
        .await
        .map_err(|e| unproven(ctx, e))?;
    read_only_rule(ctx, class)?;
    refetch(ctx, &analysis).await?;
    if !analysis.cursors.declared.is_empty() {
        ctx.prepared().declare(&analysis, class)?;
    }
    ctx.prepared().remember(&name, analysis, class)?;
    Ok(Some(Checked {
        class,
        name: String::new(),
    }))
}

/// A Bind of a statement whose proof rested on function calls: proven
/// again against the catalog as it is now. Worse than at Parse and no
/// longer allowed (read-only), or newly in need of a review (approvals:
/// only the Parse can be held), it is refused: prepare it again.
async fn rebind(ctx: &SessionCtx<'_>, m: &Message) -> Result<Option<Checked>, Refusal> {
    let Some(bind) = messages::bind(&m.body) else {
        return Ok(None);
    };
    let Some((analysis, was)) = ctx.prepared().get(&bind.statement) else {
        return Ok(None);
    };
    let what = || format!("prepared statement \"{}\"", bind.statement);
    let proven = async {
        refetch(ctx, &analysis).await?;
        reprove(ctx, &analysis, was, what, "prepared", "prepare it again").await
    };
    if let Err(refused) = proven.await {
        // The portal is not made: its Execute is the Bind's to answer.
        ctx.prepared().portals.remove(&bind.portal);
        return Err(refused);
    }
    ctx.prepared().bound(&bind.portal, analysis, was)?;
    Ok(None)
}

/// An Execute that continues a portal (one executed before with a row
/// limit): its query runs again, so it is proven again.
async fn reexecute(ctx: &SessionCtx<'_>, m: &Message) -> Result<Option<Checked>, Refusal> {
    let Some(portal) = crate::frame::take_cstr(&mut &m.body[..]) else {
        return Ok(None);
    };
    let Some((analysis, was)) = ctx.prepared().continued(&portal) else {
        return Ok(None);
    };
    let what = || format!("portal \"{portal}\"");
    reprove(ctx, &analysis, was, what, "bound", "bind it again").await?;
    Ok(None)
}

/// `analysis`, proven `was` when it was `done` (prepared, declared,
/// bound), proven again: refused when it became worse in a way this
/// connection's rules refuse (read-only: no longer a read; approvals: now
/// held; only a Parse or a Query can be held), with what to do.
async fn reprove(
    ctx: &SessionCtx<'_>,
    analysis: &Analysis,
    was: Class,
    what: impl FnOnce() -> String,
    done: &str,
    remedy: &str,
) -> Result<(), Refusal> {
    let now = ctx
        .upstream
        .resolve(analysis)
        .await
        .map_err(|e| unproven(ctx, e))?;
    if !worse_than_allowed(ctx, was, now) {
        return Ok(());
    }
    Err(Refusal {
        code: sqlstate::INSUFFICIENT_PRIVILEGE,
        message: format!(
            "portcullis: connection \"{}\": {} was proven {} when it was {done}, but a function it calls, or code PostgreSQL runs for it, has changed since ({} now); {remedy}",
            ctx.connection,
            what(),
            was.as_str(),
            now.as_str()
        ),
    })
}

/// The cursors `analysis` fetches from, proven again: a cursor whose
/// query became worse than at its DECLARE (read-only: no longer a read;
/// approvals: now held) is refused, as a Bind of such a statement is.
async fn refetch(ctx: &SessionCtx<'_>, analysis: &Analysis) -> Result<(), Refusal> {
    for name in &analysis.cursors.fetched {
        let Some((declared, was)) = ctx.prepared().cursor(name) else {
            continue;
        };
        let what = || format!("cursor \"{name}\"");
        reprove(ctx, &declared, was, what, "declared", "declare it again").await?;
    }
    Ok(())
}

/// Whether `now` is worse than `was` in a way this connection's rules
/// refuse: no longer allowed (read-only), or newly in need of a review.
fn worse_than_allowed(ctx: &SessionCtx<'_>, was: Class, now: Class) -> bool {
    if now <= was {
        return false;
    }
    let newly_held = ctx
        .gate
        .is_some_and(|g| g.needs_approval(now).is_some() && g.needs_approval(was).is_none());
    newly_held || (ctx.upstream.read_only && inspect::read_only(ctx.connection, now).is_some())
}

fn read_only_rule(ctx: &SessionCtx<'_>, class: Class) -> Result<(), Refusal> {
    if ctx.upstream.read_only
        && let Some(r) = inspect::read_only(ctx.connection, class)
    {
        return Err(r);
    }
    Ok(())
}

fn unproven(ctx: &SessionCtx<'_>, e: crate::catalog::ProofError) -> Refusal {
    Refusal {
        code: sqlstate::INSUFFICIENT_PRIVILEGE,
        message: format!(
            "portcullis: connection \"{}\": the statement could not be proven free of side effects ({e}), so it was refused",
            ctx.connection
        ),
    }
}

/// Statement text naming one of the gateway's private statements
/// (`DEALLOCATE portcullis_plain_…; PREPARE portcullis_plain_… AS …`
/// would put the caller's text under a name the gate binds), or a
/// Describe or Close of one: refused.
/// Text a function builds at run time is not seen here; such a call is
/// `unknown`, held wherever the rule holds anything.
fn names_no_private_statement(m: &Message) -> Result<(), Refusal> {
    let text = match m.tag {
        tag::QUERY => messages::query_text(m),
        tag::PARSE => messages::parse_text(m).map(|(_, sql)| sql),
        _ => None,
    };
    let names_one = text.is_some_and(|t| crate::held::names_reserved(&t))
        || (matches!(m.tag, tag::DESCRIBE | tag::CLOSE)
            && messages::statement_target(m).is_some_and(|n| crate::held::reserved(&n)));
    match names_one {
        false => Ok(()),
        true => Err(Refusal {
            code: sqlstate::INSUFFICIENT_PRIVILEGE,
            message: "portcullis: prepared statement names starting with \"portcullis_\" are the gateway's own and cannot be used in SQL (nor can Unicode-escaped identifiers, U&\"…\", on this connection)".into(),
        }),
    }
}

fn held_refusal(e: HeldError) -> Refusal {
    let code = match e {
        HeldError::Reserved(_) => sqlstate::INSUFFICIENT_PRIVILEGE,
        HeldError::TooMany => sqlstate::PROGRAM_LIMIT,
    };
    Refusal {
        code,
        message: format!("portcullis: {e}"),
    }
}

/// A hold's outcome as the caller hears it.
fn hold_refusal(e: HoldError) -> Refusal {
    match e {
        HoldError::Unavailable(e) => Refusal {
            code: sqlstate::INSUFFICIENT_PRIVILEGE,
            message: format!(
                "portcullis: the statement needs approval, which cannot be checked now ({e})"
            ),
        },
        HoldError::Denied(_) | HoldError::Expired(_) => Refusal {
            code: sqlstate::INSUFFICIENT_PRIVILEGE,
            message: format!("portcullis: {e}"),
        },
        HoldError::TimedOut { .. } => Refusal {
            code: sqlstate::QUERY_CANCELED,
            message: format!(
                "portcullis: {e}; it stays open until it expires: once approved, run the same statement again"
            ),
        },
    }
}
