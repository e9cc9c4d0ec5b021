//! The approved statement runs with its preview's counts checked before
//! it commits. A person approved "4 rows of orders, 6 of lines"; the
//! gateway previews again just before letting it run, but rows can
//! change in the milliseconds between. So the caller's simple query is
//! sent as three statements in one transaction:
//!
//! 1. the counts PostgreSQL already holds for this backend, kept in a
//!    transaction-local setting (PostgreSQL 15 reports earlier
//!    transactions' counts late, so the statement's own are a difference);
//! 2. the caller's statement, as sent;
//! 3. a check that fails (an invalid cast naming a marker) when any
//!    table's counts differ from the approved ones beyond the tolerance.
//!
//! A failure rolls the implicit transaction back (or aborts the caller's
//! own), so what the reviewer did not see never commits. On the way back
//! the gateway's two statements are taken out of the answer, the caller's
//! CommandComplete is held until the check has passed, and the check's
//! error becomes a 40001 that names the review and the difference.
//!
//! The marker carries the session's nonce and a sequence number, so an
//! answer is only taken for the run the gateway is waiting for.

use std::collections::VecDeque;

use portcullis_approval::TableChange;

use crate::frame::{Message, tag};
use crate::messages::{self, SqlState};

/// 40001: the data changed under the statement; run it again.
pub const CHANGED: SqlState = messages::sqlstate::SERIALIZATION_FAILURE;

/// The counts an approved statement must reproduce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub review: String,
    pub tables: Vec<TableChange>,
    pub tolerance: u64,
}

// Literals the gateway writes into the caller's session are hex: the
// caller may have changed how its session reads strings.
use crate::catalog::literal;

fn marker(nonce: &str, seq: u64) -> String {
    format!("portcullis_checked_{nonce}_{seq}")
}

/// The statement that keeps the backend's counts before the run.
fn before_sql(nonce: &str, seq: u64) -> String {
    format!(
        "SELECT pg_catalog.set_config({setting}, coalesce((SELECT pg_catalog.json_agg(pg_catalog.json_build_array(relid, n_tup_ins, n_tup_upd, n_tup_del))::text \
         FROM pg_catalog.pg_stat_xact_user_tables), '[]'), true) AS \"{m}\"",
        setting = literal(&format!("portcullis.checked_{nonce}")),
        m = marker(nonce, seq),
    )
}

/// The statement that fails, naming the marker, when the run's counts
/// differ from `expected` beyond its tolerance.
fn check_sql(nonce: &str, seq: u64, expected: &Expected) -> String {
    let m = marker(nonce, seq);
    let json = serde_json::to_string(
        &expected
            .tables
            .iter()
            .map(|c| {
                serde_json::json!({"t": c.table, "i": c.inserted, "u": c.updated, "d": c.deleted})
            })
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|_| "[]".into());
    let tol = expected.tolerance;
    format!(
        "SELECT (CASE WHEN NOT EXISTS (\
           SELECT 1 FROM (\
             SELECT pg_catalog.format('%I.%I', s.schemaname, s.relname) AS t, \
                    s.n_tup_ins - coalesce((b.v->>1)::bigint, 0) AS i, \
                    s.n_tup_upd - coalesce((b.v->>2)::bigint, 0) AS u, \
                    s.n_tup_del - coalesce((b.v->>3)::bigint, 0) AS d \
               FROM pg_catalog.pg_stat_xact_user_tables s \
               LEFT JOIN pg_catalog.json_array_elements(pg_catalog.current_setting({setting})::json) b(v) \
                 ON (b.v->>0)::oid = s.relid) n \
           FULL JOIN pg_catalog.json_to_recordset({json}::json) AS e(t text, i bigint, u bigint, d bigint) USING (t) \
           WHERE abs(coalesce(n.i, 0) - coalesce(e.i, 0)) > {tol} \
              OR abs(coalesce(n.u, 0) - coalesce(e.u, 0)) > {tol} \
              OR abs(coalesce(n.d, 0) - coalesce(e.d, 0)) > {tol}) \
         THEN NULL ELSE {marker_lit} END)::int AS \"{m}\"",
        setting = literal(&format!("portcullis.checked_{nonce}")),
        json = literal(&json),
        marker_lit = literal(&m),
    )
}

/// The query to send for `sql`, checked against `expected`.
pub fn wrap(sql: &str, nonce: &str, seq: u64, expected: &Expected) -> String {
    // The line break ends a trailing `--` comment of the caller's text;
    // the semicolon after it ends the caller's statement.
    format!(
        "{};\n{sql}\n;\n{}",
        before_sql(nonce, seq),
        check_sql(nonce, seq, expected)
    )
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

/// One of the gateway's statements in the extended protocol, under its
/// own statement and portal name (the caller's unnamed ones untouched):
/// Parse, Bind, Describe (its RowDescription names the marker, so its
/// answer is told apart), Execute, and Close of both.
fn extended(name: &str, sql: &str) -> [Message; 6] {
    let named = |t: u8, kind: Option<u8>, tail: &[u8]| {
        let mut b = Vec::new();
        b.extend(kind);
        cstr(&mut b, name);
        b.extend_from_slice(tail);
        Message::new(t, b)
    };
    [
        messages::parse_named(name, sql),
        messages::bind_message(name, name),
        named(tag::DESCRIBE, Some(b'P'), &[]),
        named(tag::EXECUTE, None, &[0, 0, 0, 0]),
        named(tag::CLOSE, Some(b'S'), &[]),
        named(tag::CLOSE, Some(b'P'), &[]),
    ]
}

/// How a run was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One simple query of three statements.
    Simple,
    /// The caller's Bind and Execute between the gateway's own extended
    /// statements, all before the caller's Sync.
    Extended,
}

/// Where the answer to a checked run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the counts are kept (extended: the caller's earlier
    /// messages' answers pass).
    Before,
    /// The counts being kept (dropped).
    Keeping,
    /// The caller's statement (passed, but its completion held).
    Statement,
    /// The check (dropped; its error swapped).
    Check,
    /// The check passed (extended: the caller's later messages' answers
    /// pass).
    After,
    /// An error ended it: pass what is left.
    Done,
}

/// One checked run waiting for its answer.
#[derive(Debug)]
struct Run {
    seq: u64,
    mode: Mode,
    expected: Expected,
    phase: Phase,
    /// The caller's completion (CommandComplete, PortalSuspended), until
    /// the check has passed.
    held: Option<Message>,
    /// ParseComplete and BindComplete not yet known to be the caller's
    /// or the gateway's (extended: the gateway's come just before its
    /// marked RowDescription).
    maybe_ours: Vec<Message>,
    /// CloseComplete answers of the gateway's statement seen.
    closed: u8,
}

/// The checked runs of one session, in the order they were sent.
#[derive(Debug, Default)]
pub struct Checks {
    seq: u64,
    runs: VecDeque<Run>,
    /// For each run, the answers (sync points: Query, Sync,
    /// FunctionCall) still due before its own.
    waiting_before: VecDeque<u64>,
    /// An extended run whose check goes after the caller's Execute of
    /// this portal.
    armed: Option<(String, u64)>,
}

/// At most this many checked runs in flight per session (a caller who
/// pipelines more is refused the extra, fail closed).
pub const MAX_IN_FLIGHT: usize = 64;

impl Checks {
    fn push(&mut self, mode: Mode, expected: Expected, in_flight: u64) -> Option<u64> {
        if self.runs.len() >= MAX_IN_FLIGHT {
            return None;
        }
        self.seq += 1;
        // Those not already counted: the runs ahead, and what is due
        // before each of them.
        let counted = self.runs.len() as u64 + self.waiting_before.iter().sum::<u64>();
        self.waiting_before
            .push_back(in_flight.saturating_sub(counted));
        self.runs.push_back(Run {
            seq: self.seq,
            mode,
            expected,
            phase: match mode {
                Mode::Simple => Phase::Keeping,
                Mode::Extended => Phase::Before,
            },
            held: None,
            maybe_ours: Vec::new(),
            closed: 0,
        });
        Some(self.seq)
    }

    /// Queue a checked run of `sql`, sent after `in_flight` sync points
    /// still unanswered; the text to send, or `None` when too many are
    /// in flight.
    pub fn queue(
        &mut self,
        sql: &str,
        nonce: &str,
        expected: Expected,
        in_flight: u64,
    ) -> Option<String> {
        let text = wrap(sql, nonce, self.seq + 1, &expected);
        self.push(Mode::Simple, expected, in_flight)?;
        Some(text)
    }

    /// Queue a checked run of an approved Bind into `portal`: the
    /// messages to send before it (its check goes after the caller's
    /// Execute of that portal, see [`Self::after_caller`]).
    pub fn queue_bound(
        &mut self,
        portal: &str,
        nonce: &str,
        expected: Expected,
        in_flight: u64,
    ) -> Option<[Message; 6]> {
        let seq = self.push(Mode::Extended, expected, in_flight)?;
        self.armed = Some((portal.to_string(), seq));
        Some(extended(&marker(nonce, seq), &before_sql(nonce, seq)))
    }

    /// A message from the caller was sent: after the Execute of an armed
    /// portal, the check to send. A Sync first disarms (the statement was
    /// not run in this transaction; nothing to check).
    pub fn after_caller(&mut self, nonce: &str, m: &Message) -> Option<[Message; 6]> {
        let (portal, seq) = self.armed.as_ref()?;
        match m.tag {
            tag::SYNC | tag::QUERY => {
                self.armed = None;
                None
            }
            tag::EXECUTE
                if crate::frame::take_cstr(&mut &m.body[..]).as_deref() == Some(portal) =>
            {
                let seq = *seq;
                self.armed = None;
                let expected = &self.runs.iter().find(|r| r.seq == seq)?.expected;
                Some(extended(
                    &marker(nonce, seq),
                    &check_sql(nonce, seq, expected),
                ))
            }
            _ => None,
        }
    }

    /// Whether `m` from the caller must not be sent while an approved
    /// portal waits for its Execute: only that Execute, a Describe, a
    /// Flush or a Close may come first. A review approved a Bind, then
    /// ran the portal with `FETCH ALL FROM p1` in a simple query: the
    /// check follows an Execute only, so the delete ran unchecked, and
    /// committed. Anything else (SQL, another portal's Execute, a Sync
    /// that in a transaction block leaves the portal open) could run it
    /// the same way.
    pub fn blocks(&self, m: &Message) -> bool {
        let Some((portal, _)) = &self.armed else {
            return false;
        };
        match m.tag {
            tag::DESCRIBE | tag::FLUSH | tag::CLOSE => false,
            tag::EXECUTE => {
                crate::frame::take_cstr(&mut &m.body[..]).as_deref() != Some(portal.as_str())
            }
            _ => true,
        }
    }

    /// Nothing is waiting: the relay's fast path.
    pub fn is_idle(&self) -> bool {
        self.runs.is_empty()
    }

    /// One message from the target: what to pass on instead (nothing, the
    /// message, or what was held before it).
    pub fn backend(&mut self, nonce: &str, m: Message) -> Vec<Message> {
        // Answers to the sync points sent before the first run pass.
        if let Some(before) = self.waiting_before.front_mut()
            && *before > 0
        {
            if m.tag == tag::READY_FOR_QUERY {
                *before -= 1;
            }
            return vec![m];
        }
        let Some(run) = self.runs.front_mut() else {
            return vec![m];
        };
        let mut out = Vec::new();
        if m.tag == tag::READY_FOR_QUERY {
            out.append(&mut run.maybe_ours);
            if matches!(run.phase, Phase::Statement | Phase::Check) {
                // Nothing failed: the check passed, or never ran (the
                // caller synced before executing).
                out.extend(run.held.take());
            }
            out.push(m);
            self.runs.pop_front();
            self.waiting_before.pop_front();
            return out;
        }
        if matches!(
            m.tag,
            tag::NOTICE_RESPONSE | tag::PARAMETER_STATUS | tag::NOTIFICATION_RESPONSE
        ) {
            return vec![m];
        }
        match run.mode {
            Mode::Simple => simple(nonce, run, m, &mut out),
            Mode::Extended => extended_answer(nonce, run, m, &mut out),
        }
        out
    }
}

/// A message of a simple checked run's answer.
fn simple(nonce: &str, run: &mut Run, m: Message, out: &mut Vec<Message>) {
    match (run.phase, m.tag) {
        (Phase::Keeping, tag::ROW_DESCRIPTION | tag::DATA_ROW) => {}
        (Phase::Keeping, tag::COMMAND_COMPLETE) => run.phase = Phase::Statement,
        (Phase::Statement, tag::COMMAND_COMPLETE) => {
            run.held = Some(m);
            run.phase = Phase::Check;
        }
        (Phase::Check, tag::ROW_DESCRIPTION | tag::DATA_ROW | tag::COMMAND_COMPLETE) => {}
        (_, tag::ERROR_RESPONSE) => failed(nonce, run, m, out),
        // The caller's own rows, and anything after an error.
        _ => out.push(m),
    }
}

/// Whether `m` is the RowDescription of this run's own statement.
fn is_marked(nonce: &str, run: &Run, m: &Message) -> bool {
    m.tag == tag::ROW_DESCRIPTION
        && crate::upstream::row_description_names(&m.body).first() == Some(&marker(nonce, run.seq))
}

/// A message of an extended checked run's answer.
fn extended_answer(nonce: &str, run: &mut Run, m: Message, out: &mut Vec<Message>) {
    let phase = run.phase;
    // ParseComplete and BindComplete wait one message: the gateway's
    // come right before its marked RowDescription.
    if matches!(phase, Phase::Before | Phase::Statement)
        && matches!(m.tag, tag::PARSE_COMPLETE | tag::BIND_COMPLETE)
    {
        run.maybe_ours.push(m);
        if run.maybe_ours.len() > 2 {
            out.push(run.maybe_ours.remove(0));
        }
        return;
    }
    if matches!(phase, Phase::Before | Phase::Statement) && is_marked(nonce, run, &m) {
        run.maybe_ours.clear();
        run.closed = 0;
        run.phase = if phase == Phase::Before {
            Phase::Keeping
        } else {
            Phase::Check
        };
        return;
    }
    out.append(&mut run.maybe_ours);
    match (phase, m.tag) {
        (Phase::Keeping | Phase::Check, tag::DATA_ROW | tag::COMMAND_COMPLETE) => {}
        (Phase::Keeping | Phase::Check, tag::CLOSE_COMPLETE) => {
            run.closed += 1;
            if run.closed == 2 {
                if phase == Phase::Keeping {
                    run.phase = Phase::Statement;
                } else {
                    out.extend(run.held.take());
                    run.phase = Phase::After;
                }
            }
        }
        (Phase::Statement, tag::COMMAND_COMPLETE | tag::PORTAL_SUSPENDED | tag::EMPTY_QUERY) => {
            // Each completion replaces the one before: the last before
            // the check is the Execute's.
            out.extend(run.held.replace(m));
        }
        (_, tag::ERROR_RESPONSE) => failed(nonce, run, m, out),
        _ => out.push(m),
    }
}

/// An error ends the run: the check's is swapped for the caller's words,
/// and nothing held is shown (the statement will not commit).
fn failed(nonce: &str, run: &mut Run, m: Message, out: &mut Vec<Message>) {
    out.append(&mut run.maybe_ours);
    let was = run.phase;
    run.held = None;
    run.phase = Phase::Done;
    let swapped = (was == Phase::Check)
        .then(|| changed_error(nonce, run, &m))
        .flatten();
    out.push(swapped.unwrap_or(m));
}

/// The check's error, as the caller is told it.
fn changed_error(nonce: &str, run: &Run, m: &Message) -> Option<Message> {
    let fields = messages::parse_fields(&m.body);
    let text = messages::field(&fields, b'M')?;
    if !text.contains(&format!("\"{}\"", marker(nonce, run.seq))) {
        return None;
    }
    let e = &run.expected;
    let approved = portcullis_approval::Preview::Counted {
        tables: e.tables.clone(),
        sample: None,
    }
    .summary();
    Some(messages::error(
        false,
        CHANGED,
        &format!(
            "portcullis: the statement approved in review {} would have changed other rows than its preview ({approved}, within {} rows); it was rolled back. Run it again to have it previewed and held again",
            e.review, e.tolerance
        ),
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected {
        Expected {
            review: "rv_1".into(),
            tables: vec![TableChange {
                table: "public.t".into(),
                inserted: 0,
                updated: 0,
                deleted: 4,
            }],
            tolerance: 0,
        }
    }

    fn cc(text: &str) -> Message {
        let mut b = text.as_bytes().to_vec();
        b.push(0);
        Message::new(tag::COMMAND_COMPLETE, b)
    }

    fn simple(t: u8) -> Message {
        Message::new(t, bytes::Bytes::from_static(b"x"))
    }

    fn rfq() -> Message {
        Message::new(tag::READY_FOR_QUERY, bytes::Bytes::from_static(b"I"))
    }

    fn tags(v: &[Message]) -> Vec<u8> {
        v.iter().map(|m| m.tag).collect()
    }

    #[test]
    fn the_wrapped_text_keeps_the_callers_statement_apart() {
        let sql = "DELETE FROM t WHERE x -- trailing comment";
        let w = wrap(sql, "n0", 7, &expected());
        assert!(
            w.contains("DELETE FROM t WHERE x -- trailing comment\n;\n"),
            "{w}"
        );
        assert!(w.contains(&literal("portcullis_checked_n0_7")));
        assert!(
            w.contains(&literal(r#"[{"d":4,"i":0,"t":"public.t","u":0}]"#)),
            "{w}"
        );
        let quoted = Expected {
            tables: vec![TableChange {
                table: "public.\"it's\"".into(),
                inserted: 1,
                updated: 0,
                deleted: 0,
            }],
            ..expected()
        };
        let w = wrap("x", "n0", 1, &quoted);
        assert!(
            w.contains(&literal(r#"[{"d":0,"i":1,"t":"public.\"it's\"","u":0}]"#)),
            "{w}"
        );
        assert!(!w.contains("it's"), "only as hex: {w}");
    }

    #[test]
    fn a_passing_check_shows_only_the_callers_answer() {
        let mut c = Checks::default();
        c.queue("DELETE FROM t", "n0", expected(), 0).unwrap();
        let mut out = Vec::new();
        for m in [
            simple(tag::ROW_DESCRIPTION),
            simple(tag::DATA_ROW),
            cc("SELECT 1"),
            cc("DELETE 4"),
            simple(tag::ROW_DESCRIPTION),
            simple(tag::DATA_ROW),
            cc("SELECT 1"),
            rfq(),
        ] {
            out.extend(c.backend("n0", m));
        }
        assert_eq!(
            tags(&out),
            vec![tag::COMMAND_COMPLETE, tag::READY_FOR_QUERY]
        );
        assert_eq!(&out[0].body[..], b"DELETE 4\0");
        assert!(c.is_idle());
    }

    #[test]
    fn a_failing_check_becomes_40001_and_hides_the_count() {
        let mut c = Checks::default();
        c.queue("DELETE FROM t", "n0", expected(), 0).unwrap();
        let err = messages::error(
            false,
            messages::sqlstate::INVALID_PARAMETER_VALUE,
            "invalid input syntax for type integer: \"portcullis_checked_n0_1\"",
            None,
        );
        let mut out = Vec::new();
        for m in [
            cc("SELECT 1"),
            cc("DELETE 5"),
            simple(tag::ROW_DESCRIPTION),
            err,
            rfq(),
        ] {
            out.extend(c.backend("n0", m));
        }
        assert_eq!(tags(&out), vec![tag::ERROR_RESPONSE, tag::READY_FOR_QUERY]);
        let f = messages::parse_fields(&out[0].body);
        assert_eq!(messages::field(&f, b'C'), Some("40001"));
        assert!(messages::field(&f, b'M').unwrap().contains("review rv_1"));
    }

    #[test]
    fn another_error_passes_as_it_is() {
        // The statement's own error (and a forged marker for a run that
        // is not this one) reach the caller unchanged.
        let mut c = Checks::default();
        c.queue("DELETE FROM t", "n0", expected(), 0).unwrap();
        let own = messages::error(false, CHANGED, "boom \"portcullis_checked_n0_9\"", None);
        let mut out = Vec::new();
        for m in [cc("SELECT 1"), own.clone(), rfq()] {
            out.extend(c.backend("n0", m));
        }
        assert_eq!(out[0].body, own.body);
        assert_eq!(tags(&out), vec![tag::ERROR_RESPONSE, tag::READY_FOR_QUERY]);
    }

    fn marked(c: &Checks, nonce: &str) -> Message {
        let name = marker(nonce, c.seq);
        let mut b = vec![0, 1];
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(&[0; 18]);
        Message::new(tag::ROW_DESCRIPTION, b)
    }

    fn execute(portal: &str) -> Message {
        let mut b = portal.as_bytes().to_vec();
        b.extend_from_slice(&[0, 0, 0, 0, 0]);
        Message::new(tag::EXECUTE, b)
    }

    /// The answer to the caller's `Parse, Bind(p), Describe, Execute(p),
    /// Sync` with the gateway's statements around its Bind and Execute.
    fn extended_answer(c: &Checks, check: Option<Message>) -> Vec<Message> {
        let mut v = vec![
            simple(tag::PARSE_COMPLETE), // the caller's Parse
            // the counts kept
            simple(tag::PARSE_COMPLETE),
            simple(tag::BIND_COMPLETE),
            marked(c, "n0"),
            simple(tag::DATA_ROW),
            cc("SELECT 1"),
            simple(tag::CLOSE_COMPLETE),
            simple(tag::CLOSE_COMPLETE),
            // the caller's Bind, Describe, Execute
            simple(tag::BIND_COMPLETE),
            simple(tag::NO_DATA),
            cc("DELETE 4"),
            // the check
            simple(tag::PARSE_COMPLETE),
            simple(tag::BIND_COMPLETE),
            marked(c, "n0"),
        ];
        match check {
            None => v.extend([
                simple(tag::DATA_ROW),
                cc("SELECT 1"),
                simple(tag::CLOSE_COMPLETE),
                simple(tag::CLOSE_COMPLETE),
            ]),
            Some(err) => v.push(err),
        }
        v.push(rfq());
        v
    }

    #[test]
    fn an_extended_run_shows_only_the_callers_answers() {
        let mut c = Checks::default();
        let before = c.queue_bound("p", "n0", expected(), 0).unwrap();
        assert_eq!(before[0].tag, tag::PARSE);
        // Other messages do not trigger the check; the Execute of the
        // approved portal does.
        assert!(c.after_caller("n0", &execute("other")).is_none());
        let check = c.after_caller("n0", &execute("p")).unwrap();
        assert!(c.after_caller("n0", &execute("p")).is_none(), "once");
        assert_eq!(check[3].tag, tag::EXECUTE);
        let mut out = Vec::new();
        for m in extended_answer(&c, None) {
            out.extend(c.backend("n0", m));
        }
        assert_eq!(
            tags(&out),
            vec![
                tag::PARSE_COMPLETE,
                tag::BIND_COMPLETE,
                tag::NO_DATA,
                tag::COMMAND_COMPLETE,
                tag::READY_FOR_QUERY
            ]
        );
        assert!(c.is_idle());
    }

    #[test]
    fn an_extended_run_that_fails_its_check_shows_40001_and_no_count() {
        let mut c = Checks::default();
        c.queue_bound("", "n0", expected(), 0).unwrap();
        c.after_caller("n0", &execute("")).unwrap();
        let err = messages::error(
            false,
            messages::sqlstate::INVALID_PARAMETER_VALUE,
            "invalid input syntax for type integer: \"portcullis_checked_n0_1\"",
            None,
        );
        let mut out = Vec::new();
        for m in extended_answer(&c, Some(err)) {
            out.extend(c.backend("n0", m));
        }
        assert_eq!(
            tags(&out),
            vec![
                tag::PARSE_COMPLETE,
                tag::BIND_COMPLETE,
                tag::NO_DATA,
                tag::ERROR_RESPONSE,
                tag::READY_FOR_QUERY
            ]
        );
        let f = messages::parse_fields(&out[3].body);
        assert_eq!(messages::field(&f, b'C'), Some("40001"));
    }

    #[test]
    fn a_sync_before_the_execute_disarms() {
        let mut c = Checks::default();
        c.queue_bound("p", "n0", expected(), 0).unwrap();
        assert!(c.after_caller("n0", &simple(tag::SYNC)).is_none());
        assert!(c.after_caller("n0", &execute("p")).is_none());
    }

    #[test]
    fn an_armed_portal_runs_by_its_execute_only() {
        let mut c = Checks::default();
        assert!(!c.blocks(&simple(tag::QUERY)));
        c.queue_bound("p", "n0", expected(), 0).unwrap();
        for m in [
            simple(tag::QUERY),
            simple(tag::SYNC),
            simple(tag::PARSE),
            simple(tag::BIND),
            simple(tag::FUNCTION_CALL),
            execute("other"),
        ] {
            assert!(c.blocks(&m), "{}", m.tag as char);
        }
        for m in [execute("p"), simple(tag::FLUSH), simple(tag::DESCRIBE)] {
            assert!(!c.blocks(&m), "{}", m.tag as char);
        }
        assert!(c.after_caller("n0", &execute("p")).is_some());
        assert!(!c.blocks(&simple(tag::QUERY)));
    }

    #[test]
    fn answers_to_earlier_queries_pass_untouched() {
        let mut c = Checks::default();
        c.queue("DELETE FROM t", "n0", expected(), 1).unwrap();
        let mut out = Vec::new();
        for m in [
            simple(tag::ROW_DESCRIPTION),
            cc("SELECT 1"),
            rfq(),
            cc("SELECT 1"),
            cc("DELETE 4"),
            cc("SELECT 1"),
            rfq(),
        ] {
            out.extend(c.backend("n0", m));
        }
        assert_eq!(
            tags(&out),
            vec![
                tag::ROW_DESCRIPTION,
                tag::COMMAND_COMPLETE,
                tag::READY_FOR_QUERY,
                tag::COMMAND_COMPLETE,
                tag::READY_FOR_QUERY
            ]
        );
        assert_eq!(&out[3].body[..], b"DELETE 4\0");
    }
}
