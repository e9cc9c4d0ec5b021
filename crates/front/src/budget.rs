//! A session's budget: what its grant lets the principal take, checked
//! before each action and counted after it. Rolling windows are sums of
//! minutes in the store, so a limit holds across gateways sharing it and
//! across restarts; a session's own use is counted here. The store being
//! unavailable refuses the action (fail closed), as for every other rule
//! that needs it.

use std::collections::HashMap;
use std::sync::Mutex;

use portcullis_identity::unix_now;
use portcullis_policy::budget::{Limit, Measure, Window};
use portcullis_store::{Store, UsageWindow};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Why an action is refused by a budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "budget {what:?} of grant {grant:?} {}{}",
        state_words(*.used, *.limit, *.asked),
        resets_words(*.resets_at)
    )]
    Exceeded {
        grant: String,
        /// "rows per hour", "DELETE requests per day"…
        what: String,
        used: u64,
        limit: u64,
        /// When use starts to leave the window (Unix seconds); `None` for
        /// a per-session budget.
        resets_at: Option<i64>,
        /// Which limit it is, for lifting it (see [`Budget::lift`]).
        key: String,
        /// What the refused action needed (1 for one action; the writes
        /// of a query), or 0 where that is the target's data (the rows or
        /// bytes of a result: its size would tell what it holds).
        asked: u64,
    },
    #[error("the budget of grant {0:?} cannot be checked now (the store is unavailable)")]
    Unavailable(String),
}

fn state_words(used: u64, limit: u64, asked: u64) -> String {
    if used >= limit {
        format!("is used up ({used} of {limit})")
    } else if asked == 0 {
        format!("has {} of {limit} left, not enough for this", limit - used)
    } else {
        format!(
            "has {} of {limit} left, not the {asked} this needs",
            limit - used
        )
    }
}

fn resets_words(at: Option<i64>) -> String {
    match at {
        Some(t) => format!("; it frees up from {}", rfc3339(t)),
        None => "; it is for this session: a new session starts again".into(),
    }
}

fn rfc3339(t: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
    )
    .to_string()
}

impl BudgetError {
    /// Seconds until the budget frees up, for `Retry-After`.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            BudgetError::Exceeded {
                resets_at: Some(t), ..
            } => Some((*t - unix_now()).max(1) as u64),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub grant: String,
    pub measure: String,
    pub per: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UseLabels {
    pub grant: String,
    pub measure: String,
}

/// Whose turn it is to read and take: one per principal and grant.
type TurnLock = std::sync::Arc<tokio::sync::Mutex<()>>;

/// What every session's budget shares: the store, and the metrics by
/// grant (`portcullis_budget_refusals_total`, `…_taken_total`,
/// `…_given_back_total`).
#[derive(Clone)]
pub struct Budgets {
    store: Store,
    pub refusals: Family<BudgetLabels, Counter>,
    /// What this gateway counted against budgets, by grant and measure
    /// (reservations included when taken)…
    taken: Family<UseLabels, Counter>,
    /// …and what it gave back of them: used = taken − given back.
    given_back: Family<UseLabels, Counter>,
    /// One lock per principal and grant: reading what is left and taking
    /// it is one step for the sessions of this gateway.
    locks: std::sync::Arc<Mutex<HashMap<(String, String), TurnLock>>>,
}

impl Budgets {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            refusals: Family::default(),
            taken: Family::default(),
            given_back: Family::default(),
            locks: Default::default(),
        }
    }

    /// The budget of a session `principal` opened under `grant`, when
    /// the grant has one.
    pub fn session(&self, principal: &str, grant: &portcullis_policy::Grant) -> Option<Budget> {
        if grant.budgets.is_empty() {
            return None;
        }
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            // Forget locks nobody holds a session of, now and then.
            if locks.len() > 10_000 {
                locks.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
            }
            locks
                .entry((principal.to_string(), grant.name.clone()))
                .or_default()
                .clone()
        };
        Some(Budget {
            lock,
            shared: self.clone(),
            principal: principal.to_string(),
            grant: grant.name.clone(),
            limits: grant.budgets.clone(),
            session: Mutex::default(),
            tables: Mutex::default(),
            lifted: Mutex::default(),
        })
    }

    /// What `principal` used of `limit` of `grant` in its window now, and
    /// the first minute of that use.
    pub async fn used(
        &self,
        principal: &str,
        grant: &str,
        limit: &Limit,
    ) -> Result<(u64, Option<i64>), portcullis_store::StoreError> {
        let Some(minutes) = limit.per.minutes() else {
            return Ok((0, None));
        };
        let since = unix_now() / 60 - minutes + 1;
        if limit.measure == Measure::Tables {
            let (names, first) = self
                .store
                .counters_since(principal, grant, TABLES, since)
                .await?;
            return Ok((names.len() as u64, first));
        }
        let (used, first) = self
            .store
            .usage_since(principal, grant, &limit.counter(), since)
            .await?;
        Ok((used.max(0) as u64, first))
    }

    /// `portcullis_budget_refusals_total{grant,measure,per}`,
    /// `portcullis_budget_taken_total{grant,measure}` and
    /// `portcullis_budget_given_back_total{grant,measure}`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "portcullis_budget_refusals",
            "Actions refused (or results cut) because a grant's budget was used up",
            self.refusals.clone(),
        );
        registry.register(
            "portcullis_budget_taken",
            "What this gateway counted against grants' budgets (rows, bytes, writes, requests, tool calls), reservations included",
            self.taken.clone(),
        );
        registry.register(
            "portcullis_budget_given_back",
            "What this gateway gave back of what it counted (reserved and not used)",
            self.given_back.clone(),
        );
    }
}

/// One session's budget.
pub struct Budget {
    shared: Budgets,
    principal: String,
    grant: String,
    limits: Vec<Limit>,
    /// This session's use, by counter.
    session: Mutex<HashMap<String, u64>>,
    /// The distinct tables this session named.
    tables: Mutex<Vec<String>>,
    /// Shared by the principal's sessions under this grant here.
    lock: TurnLock,
    /// Limits an approver lifted for this session.
    lifted: Mutex<Vec<String>>,
}

/// The counters of a distinct-tables budget: `tables:NAME`.
const TABLES: &str = "tables:";

/// The window of rolling limit `l` at `minute`, for the store.
fn window(l: &Limit, minute: i64) -> UsageWindow {
    UsageWindow {
        since: minute - l.per.minutes().unwrap_or(0) + 1,
        limit: i64::try_from(l.limit).unwrap_or(i64::MAX),
    }
}

/// The rolling limits among `limits`, by the counter they read (rows per
/// hour and per day read one counter, taken in one step).
fn rolling_by_counter<'a>(limits: &[&'a Limit]) -> Vec<(String, Vec<&'a Limit>)> {
    let mut by: Vec<(String, Vec<&'a Limit>)> = Vec::new();
    for l in limits.iter().filter(|l| l.per != Window::Session) {
        let c = l.counter();
        match by.iter_mut().find(|(x, _)| *x == c) {
            Some((_, ls)) => ls.push(l),
            None => by.push((c, vec![l])),
        }
    }
    by
}

/// What names one limit for lifting: its counter and window.
fn lift_key(l: &Limit) -> String {
    format!("{}/{}", l.counter(), l.per.as_str())
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("grant", &self.grant)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Budget {
    pub fn grant(&self) -> &str {
        &self.grant
    }

    /// Whether any limit counts `measure` (a front skips the counting
    /// otherwise).
    pub fn counts(&self, measure: Measure) -> bool {
        self.limits.iter().any(|l| l.measure == measure)
    }

    fn session_used(&self, counter: &str) -> u64 {
        let s = self.session.lock().unwrap_or_else(|e| e.into_inner());
        s.get(counter).copied().unwrap_or(0)
    }

    /// How much of `measure` (a request of `qualifier`, …) may still be
    /// taken: `None` when no limit applies; `Err` when none is left.
    pub async fn left(
        &self,
        measure: Measure,
        qualifier: Option<&str>,
    ) -> Result<Option<u64>, BudgetError> {
        let mut tightest: Option<(&Limit, u64, u64, Option<i64>)> = None;
        let lifted = self
            .lifted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for l in self
            .limits
            .iter()
            .filter(|l| l.applies(measure, qualifier) && !lifted.contains(&lift_key(l)))
        {
            let (used, first) = match l.per {
                Window::Session => (self.session_used(&l.counter()), None),
                _ => self
                    .shared
                    .used(&self.principal, &self.grant, l)
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, grant = %self.grant, "budget store unavailable");
                        BudgetError::Unavailable(self.grant.clone())
                    })?,
            };
            let left = l.limit.saturating_sub(used);
            if tightest.is_none_or(|t| left < t.2) {
                tightest = Some((l, used, left, first));
            }
        }
        let Some((l, used, left, first)) = tightest else {
            return Ok(None);
        };
        if left == 0 {
            return Err(self.exceeded(l, used, first));
        }
        Ok(Some(left))
    }

    /// The action a reviewer approves to lift the limit `e` names for
    /// session `session` (its kind is `budget`).
    pub fn lift_action(&self, e: &BudgetError, session: &str) -> Option<String> {
        match e {
            BudgetError::Exceeded { what, grant, .. } => Some(format!(
                "lift budget {what:?} of grant {grant:?} for session {session}"
            )),
            BudgetError::Unavailable(_) => None,
        }
    }

    /// An approver said yes: the limit `e` names no longer applies to
    /// this session (other sessions and the window's count are as they
    /// were).
    pub fn lift(&self, e: &BudgetError) {
        if let BudgetError::Exceeded { key, .. } = e {
            let mut l = self.lifted.lock().unwrap_or_else(|e| e.into_inner());
            if !l.contains(key) {
                l.push(key.clone());
            }
        }
    }

    /// The refusal for limit `l`, counted.
    pub fn exceeded(&self, l: &Limit, used: u64, first: Option<i64>) -> BudgetError {
        self.exceeded_asking(l, used, first, 1)
    }

    /// The refusal for limit `l` of an action needing `asked`, counted.
    fn exceeded_asking(&self, l: &Limit, used: u64, first: Option<i64>, asked: u64) -> BudgetError {
        self.shared
            .refusals
            .get_or_create(&BudgetLabels {
                grant: self.grant.clone(),
                measure: l.measure.as_str().into(),
                per: l.per.as_str().into(),
            })
            .inc();
        let resets_at = match (l.per.minutes(), first) {
            (Some(m), Some(f)) => Some((f + m) * 60),
            (Some(m), None) => Some((unix_now() / 60 + m) * 60),
            (None, _) => None,
        };
        BudgetError::Exceeded {
            grant: self.grant.clone(),
            what: l.describe(),
            used,
            limit: l.limit,
            resets_at,
            key: lift_key(l),
            asked: match l.measure {
                Measure::Rows | Measure::Bytes => 0,
                _ => asked,
            },
        }
    }

    /// The refusal for a result cut where it reached a limit on
    /// `measure` (the smallest that applies: the allowance was the least
    /// of what each had left).
    pub fn cut(&self, measure: Measure, qualifier: Option<&str>) -> BudgetError {
        let limit = self
            .limits
            .iter()
            .filter(|l| l.applies(measure, qualifier))
            .min_by_key(|l| l.limit)
            .cloned()
            .unwrap_or(Limit {
                measure,
                per: Window::Session,
                limit: 0,
                only: None,
            });
        self.exceeded(&limit, limit.limit, None)
    }

    /// One action of `measure` (a request, a tool call, a write): refused
    /// when nothing is left, counted when it goes on.
    pub async fn take_one(
        &self,
        measure: Measure,
        qualifier: Option<&str>,
    ) -> Result<(), BudgetError> {
        self.take_one_of(measure, &[qualifier]).await
    }

    /// One action that counts under several qualifiers at once (a
    /// request whose method a target may read from an override header:
    /// both methods' limits apply), counted once per counter.
    pub async fn take_one_of(
        &self,
        measure: Measure,
        qualifiers: &[Option<&str>],
    ) -> Result<(), BudgetError> {
        let _one_at_a_time = self.lock.lock().await;
        if self.take(measure, qualifiers, 1, true).await?.is_none() {
            self.spend_all(measure, qualifiers, 1).await;
        }
        Ok(())
    }

    /// `n` actions of `measure` at once (the writes of one query), all
    /// or none: refused when fewer are left, counted when it goes on.
    pub async fn take_many(&self, measure: Measure, n: u64) -> Result<(), BudgetError> {
        let _one_at_a_time = self.lock.lock().await;
        if self.take(measure, &[None], n, true).await?.is_none() {
            self.spend_all(measure, &[None], n).await;
        }
        Ok(())
    }

    /// Count `n` of `measure` used: in this session, and in the store for
    /// every rolling window that reads it. A store that fails here loses
    /// the count (logged): the next check, which needs the store too,
    /// refuses.
    pub async fn spend(&self, measure: Measure, qualifier: Option<&str>, n: u64) {
        self.spend_all(measure, &[qualifier], n).await;
    }

    /// `n` actions counted on each of `what` (a tool call, and the writes
    /// or request it makes), all or none, in one step.
    pub async fn take_each(
        &self,
        what: &[(Measure, Option<&str>, u64)],
    ) -> Result<(), BudgetError> {
        let _one_at_a_time = self.lock.lock().await;
        for (i, (measure, q, n)) in what.iter().enumerate() {
            match self.take(*measure, &[*q], *n, true).await {
                Ok(Some(_)) => {}
                Ok(None) => self.spend(*measure, *q, *n).await,
                Err(e) => {
                    // All or none: what this call took already goes back.
                    for (m, q, n) in &what[..i] {
                        self.add(*m, &[*q], -(*n as i64), &[]).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// A statement names `tables`: refused when that makes more distinct
    /// tables than a `tables` limit allows (in this session, or in the
    /// window across sessions), recorded otherwise. One step, like
    /// [`Self::take_one`].
    pub async fn touch_tables(&self, tables: &[String]) -> Result<(), BudgetError> {
        if tables.is_empty() || !self.counts(Measure::Tables) {
            return Ok(());
        }
        let _one_at_a_time = self.lock.lock().await;
        let lifted = self.lifted_keys();
        let binding: Vec<&Limit> = self
            .limits
            .iter()
            .filter(|l| l.measure == Measure::Tables && !lifted.contains(&lift_key(l)))
            .collect();
        {
            let seen = self.tables.lock().unwrap_or_else(|e| e.into_inner());
            let new = tables.iter().filter(|t| !seen.contains(t)).count() as u64;
            let before = seen.len() as u64;
            if let Some(l) = binding
                .iter()
                .find(|l| l.per == Window::Session && before + new > l.limit)
            {
                return Err(self.exceeded_asking(l, before, None, new));
            }
        }
        let minute = unix_now() / 60;
        let rolling: Vec<&Limit> = binding
            .iter()
            .filter(|l| l.per != Window::Session)
            .copied()
            .collect();
        if !rolling.is_empty() {
            // Checked and recorded in one step across gateways.
            let windows: Vec<UsageWindow> = rolling.iter().map(|l| window(l, minute)).collect();
            let done = self
                .shared
                .store
                .take_distinct(
                    &self.principal,
                    &self.grant,
                    TABLES,
                    tables,
                    minute,
                    &windows,
                )
                .await
                .map_err(|e| self.unavailable(&e))?;
            if let Err(too_many) = done {
                let l = rolling.get(too_many.window).copied().unwrap_or(rolling[0]);
                let (seen, new) = (too_many.seen.max(0) as u64, too_many.new.max(0) as u64);
                return Err(self.exceeded_asking(l, seen, too_many.first, new));
            }
        } else if self
            .limits
            .iter()
            .any(|l| l.measure == Measure::Tables && l.per != Window::Session)
        {
            // Only lifted rolling limits: still counted for the window.
            for t in tables {
                let c = format!("{TABLES}{t}");
                if let Err(e) = self
                    .shared
                    .store
                    .add_usage(&self.principal, &self.grant, &c, minute, 1)
                    .await
                {
                    tracing::error!(error = %e, grant = %self.grant, "budget use not recorded");
                }
            }
        }
        let mut s = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        for t in tables {
            if !s.contains(t) {
                s.push(t.clone());
            }
        }
        Ok(())
    }

    /// Take exactly `n` of `measure` (a response whose size is known
    /// before it goes out), or nothing: refused whole, never cut, when
    /// less is left. `None` when no limit binds it (nothing counted).
    pub async fn take_exactly(&self, measure: Measure, n: u64) -> Result<Option<u64>, BudgetError> {
        if n == 0 {
            return Ok(Some(0));
        }
        let _one_at_a_time = self.lock.lock().await;
        self.take(measure, &[None], n, true).await
    }

    /// Take all that is left of `measure` ahead (`None`: no limit applies,
    /// lifted; `Err` when it is used up), to give back what is not used
    /// with [`Self::refund`]: a concurrent
    /// session of the same principal on this gateway sees it gone at
    /// once. (Across gateways the read and the write are two steps.)
    pub async fn reserve(&self, measure: Measure) -> Result<Option<u64>, BudgetError> {
        let _one_at_a_time = self.lock.lock().await;
        self.take(measure, &[None], u64::MAX, false).await
    }

    /// Take up to `want` of `measure` (an action of any of `qualifiers`):
    /// as much as every limit that applies has left, counted on each
    /// counter a rolling window reads in one step against every other
    /// take, on this gateway or another sharing the store. `None` when no
    /// limit binds it (none applies, or all are lifted): nothing is
    /// counted then. `Err` when one has nothing left (or, `whole`, less
    /// than `want`): nothing is counted then.
    async fn take(
        &self,
        measure: Measure,
        qualifiers: &[Option<&str>],
        want: u64,
        whole: bool,
    ) -> Result<Option<u64>, BudgetError> {
        let asked = want;
        let lifted = self.lifted_keys();
        let binding: Vec<&Limit> = self
            .limits
            .iter()
            .filter(|l| qualifiers.iter().any(|q| l.applies(measure, *q)))
            .filter(|l| !lifted.contains(&lift_key(l)))
            .collect();
        if binding.is_empty() {
            return Ok(None);
        }
        let mut want = want;
        // This session's own limits first: they need no store.
        for l in binding.iter().filter(|l| l.per == Window::Session) {
            let used = self.session_used(&l.counter());
            let left = l.limit.saturating_sub(used);
            if left == 0 || (whole && left < want) {
                return Err(self.exceeded_asking(l, used, None, asked));
            }
            want = want.min(left);
        }
        let minute = unix_now() / 60;
        let mut taken: Vec<(String, u64)> = Vec::new();
        for (counter, limits) in rolling_by_counter(&binding) {
            let windows: Vec<UsageWindow> = limits.iter().map(|l| window(l, minute)).collect();
            let got = self
                .shared
                .store
                .take_usage(
                    &self.principal,
                    &self.grant,
                    &counter,
                    minute,
                    &windows,
                    i64::try_from(want).unwrap_or(i64::MAX),
                )
                .await;
            let got = match got {
                Ok(got) if got.granted > 0 && (!whole || got.granted as u64 >= want) => got,
                refused => {
                    if let Ok(got) = &refused {
                        // Taken in part: given back with the rest.
                        taken.push((counter, got.granted.max(0) as u64));
                    }
                    self.give_back(&taken, 0, minute).await;
                    return Err(match refused {
                        Ok(got) => self.refusal_of(&limits, &got.used, asked),
                        Err(e) => self.unavailable(&e),
                    });
                }
            };
            want = want.min(got.granted as u64);
            taken.push((counter, got.granted as u64));
        }
        // A counter that took more than the tightest allowed gives the
        // rest back; then the session's counters and those only lifted
        // limits read count what was taken.
        self.give_back(&taken, want, minute).await;
        let stored: Vec<String> = taken.into_iter().map(|(c, _)| c).collect();
        self.add(measure, qualifiers, want as i64, &stored).await;
        Ok(Some(want))
    }

    /// Give back, on each taken counter, what it took beyond `keep`.
    async fn give_back(&self, taken: &[(String, u64)], keep: u64, minute: i64) {
        for (c, got) in taken {
            if *got <= keep {
                continue;
            }
            let back = -((got - keep) as i64);
            if let Err(e) = self
                .shared
                .store
                .add_usage(&self.principal, &self.grant, c, minute, back)
                .await
            {
                tracing::error!(error = %e, grant = %self.grant, counter = %c, "budget use not given back");
            }
        }
    }

    /// The refusal when `limits` (of one counter) had `used` (each its
    /// window's use and first minute): the one with the least left.
    fn refusal_of(
        &self,
        limits: &[&Limit],
        used: &[(i64, Option<i64>)],
        asked: u64,
    ) -> BudgetError {
        let tightest = limits
            .iter()
            .zip(used)
            .min_by_key(|(l, (u, _))| l.limit.saturating_sub((*u).max(0) as u64));
        match tightest {
            Some((l, (u, first))) => self.exceeded_asking(l, (*u).max(0) as u64, *first, asked),
            None => BudgetError::Unavailable(self.grant.clone()),
        }
    }

    fn unavailable(&self, e: &portcullis_store::StoreError) -> BudgetError {
        tracing::error!(error = %e, grant = %self.grant, "budget store unavailable");
        BudgetError::Unavailable(self.grant.clone())
    }

    fn lifted_keys(&self) -> Vec<String> {
        self.lifted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Give back `n` of `measure` that was counted ahead (a reservation
    /// not used): in this session and in the store.
    pub async fn refund(&self, measure: Measure, n: u64) {
        self.add(measure, &[None], -(n as i64), &[]).await;
    }

    /// [`Self::spend`] under each limit that applies to any of
    /// `qualifiers`, by the limit's own counter (a tool named `Echo`
    /// counts for the limit on `echo` it was checked against).
    async fn spend_all(&self, measure: Measure, qualifiers: &[Option<&str>], n: u64) {
        self.add(measure, qualifiers, n as i64, &[]).await;
    }

    /// Add `delta` (a refund when negative) to every counter a limit on
    /// `measure` for any of `qualifiers` reads, each once: in this
    /// session, and in the store for the rolling windows (but `stored`,
    /// counted there already).
    async fn add(
        &self,
        measure: Measure,
        qualifiers: &[Option<&str>],
        delta: i64,
        stored: &[String],
    ) {
        if delta == 0 {
            return;
        }
        // (counter, whether a rolling window reads it): two limits on one
        // counter (rows per session and per hour) count it once.
        let mut counters: Vec<(String, bool)> = Vec::new();
        for l in &self.limits {
            if qualifiers.iter().any(|q| l.applies(measure, *q)) {
                let c = l.counter();
                let stored = l.per != Window::Session;
                match counters.iter_mut().find(|(x, _)| *x == c) {
                    Some(entry) => entry.1 |= stored,
                    None => counters.push((c, stored)),
                }
            }
        }
        if counters.is_empty() {
            return;
        }
        let labels = UseLabels {
            grant: self.grant.clone(),
            measure: measure.as_str().into(),
        };
        let family = if delta > 0 {
            &self.shared.taken
        } else {
            &self.shared.given_back
        };
        family.get_or_create(&labels).inc_by(delta.unsigned_abs());
        {
            let mut s = self.session.lock().unwrap_or_else(|e| e.into_inner());
            for (c, _) in &counters {
                let v = s.entry(c.clone()).or_default();
                *v = v.saturating_add_signed(delta);
            }
        }
        let minute = unix_now() / 60;
        for (c, rolling) in counters {
            if !rolling || stored.contains(&c) {
                continue;
            }
            if let Err(e) = self
                .shared
                .store
                .add_usage(&self.principal, &self.grant, &c, minute, delta)
                .await
            {
                tracing::error!(error = %e, grant = %self.grant, counter = %c, "budget use not recorded");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn budgets() -> (tempfile::TempDir, Budgets) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("b.db")).await.unwrap();
        (dir, Budgets::new(store))
    }

    fn grant(limits: Vec<Limit>) -> portcullis_policy::Grant {
        portcullis_policy::Grant {
            name: "agents".into(),
            principals: vec![],
            groups: vec!["agents".into()],
            connections: vec!["*".into()],
            budgets: limits,
        }
    }

    fn limit(measure: Measure, per: Window, limit: u64, only: Option<&str>) -> Limit {
        Limit {
            measure,
            per,
            limit,
            only: only.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn a_rolling_limit_holds_across_sessions() {
        let (_d, b) = budgets().await;
        let g = grant(vec![limit(
            Measure::Requests,
            Window::Hour,
            2,
            Some("DELETE"),
        )]);
        let one = b.session("agent:a", &g).unwrap();
        one.take_one(Measure::Requests, Some("GET")).await.unwrap();
        one.take_one(Measure::Requests, Some("delete"))
            .await
            .unwrap();
        // Another session of the same principal (another gateway, after
        // a restart: the same store) shares the window.
        let two = b.session("agent:a", &g).unwrap();
        two.take_one(Measure::Requests, Some("DELETE"))
            .await
            .unwrap();
        let e = two
            .take_one(Measure::Requests, Some("DELETE"))
            .await
            .unwrap_err();
        let BudgetError::Exceeded {
            used,
            limit,
            resets_at,
            ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!((*used, *limit), (2, 2));
        assert!(resets_at.unwrap() > unix_now());
        assert!(e.retry_after().unwrap() <= 3600);
        assert!(e.to_string().contains("DELETE requests per hour"), "{e}");
        // Other principals and methods are not touched.
        two.take_one(Measure::Requests, Some("GET")).await.unwrap();
        let other = b.session("agent:b", &g).unwrap();
        other
            .take_one(Measure::Requests, Some("DELETE"))
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn gateways_sharing_a_store_never_give_out_one_allowance_twice() {
        // Two gateways (each its own Budgets, so its own turn locks) on
        // one store, sessions of one principal racing on both: the read
        // and the take are one step in the store.
        let (_d, a) = budgets().await;
        let b = Budgets::new(a.store.clone());
        let g = grant(vec![
            limit(Measure::Rows, Window::Hour, 50, None),
            limit(Measure::Writes, Window::Day, 7, None),
            limit(Measure::Tables, Window::Hour, 3, None),
        ]);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..16 {
            let s = [&a, &b][i % 2].session("agent:a", &g).unwrap();
            set.spawn(async move {
                let rows = s.reserve(Measure::Rows).await.ok().flatten().unwrap_or(0);
                let write = u64::from(s.take_one(Measure::Writes, None).await.is_ok());
                let table = u64::from(s.touch_tables(&[format!("t{i}")]).await.is_ok());
                (rows, write, table)
            });
        }
        let (mut rows, mut writes, mut tables) = (0, 0, 0);
        while let Some(r) = set.join_next().await {
            let (r, w, t) = r.unwrap();
            (rows, writes, tables) = (rows + r, writes + w, tables + t);
        }
        assert_eq!((rows, writes, tables), (50, 7, 3));
        let used = a
            .store
            .usage_since("agent:a", "agents", "rows", 0)
            .await
            .unwrap();
        assert_eq!(used.0, 50);
        // A refused take counted nothing.
        let s = b.session("agent:a", &g).unwrap();
        assert!(s.take_one(Measure::Writes, None).await.is_err());
        let used = a
            .store
            .usage_since("agent:a", "agents", "writes", 0)
            .await
            .unwrap();
        assert_eq!(used.0, 7);
    }

    #[tokio::test]
    async fn a_refund_under_two_limits_on_one_counter_is_given_back_once() {
        let (_d, b) = budgets().await;
        let g = grant(vec![
            limit(Measure::Rows, Window::Session, 10, None),
            limit(Measure::Rows, Window::Hour, 100, None),
        ]);
        let s = b.session("agent:a", &g).unwrap();
        assert_eq!(s.reserve(Measure::Rows).await.unwrap(), Some(10));
        // 2 taken of the 10 reserved: 8 given back, once.
        s.refund(Measure::Rows, 8).await;
        assert_eq!(s.left(Measure::Rows, None).await.unwrap(), Some(8));
    }

    #[tokio::test]
    async fn a_name_in_another_case_counts_for_the_limit_it_matched() {
        let (_d, b) = budgets().await;
        let g = grant(vec![limit(
            Measure::ToolCalls,
            Window::Hour,
            1,
            Some("echo"),
        )]);
        let s = b.session("agent:a", &g).unwrap();
        s.take_one(Measure::ToolCalls, Some("Echo")).await.unwrap();
        assert!(s.take_one(Measure::ToolCalls, Some("echo")).await.is_err());
        assert!(s.take_one(Measure::ToolCalls, Some("ECHO")).await.is_err());
    }

    #[tokio::test]
    async fn an_overridden_method_counts_under_both() {
        let (_d, b) = budgets().await;
        let g = grant(vec![limit(
            Measure::Requests,
            Window::Hour,
            1,
            Some("DELETE"),
        )]);
        let s = b.session("agent:a", &g).unwrap();
        s.take_one_of(Measure::Requests, &[Some("POST"), Some("DELETE")])
            .await
            .unwrap();
        assert!(s.take_one(Measure::Requests, Some("DELETE")).await.is_err());
    }

    #[tokio::test]
    async fn a_session_limit_is_the_sessions_own() {
        let (_d, b) = budgets().await;
        let g = grant(vec![
            limit(Measure::Rows, Window::Session, 10, None),
            limit(Measure::Rows, Window::Day, 100, None),
        ]);
        let s = b.session("agent:a", &g).unwrap();
        assert_eq!(s.left(Measure::Rows, None).await.unwrap(), Some(10));
        s.spend(Measure::Rows, None, 7).await;
        assert_eq!(s.left(Measure::Rows, None).await.unwrap(), Some(3));
        s.spend(Measure::Rows, None, 3).await;
        let e = s.left(Measure::Rows, None).await.unwrap_err();
        assert!(e.to_string().contains("rows per session"), "{e}");
        assert_eq!(e.retry_after(), None);
        // A new session starts again, within the day's limit.
        let t = b.session("agent:a", &g).unwrap();
        assert_eq!(t.left(Measure::Rows, None).await.unwrap(), Some(10));
        assert!(b.session("agent:a", &grant(vec![])).is_none());
    }
}
