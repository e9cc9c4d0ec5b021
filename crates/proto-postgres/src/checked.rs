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

/// `text` as an SQL string literal (`standard_conforming_strings` is on
/// for every session the gateway opens: a caller cannot change it, see
/// `crate::classify`).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn marker(nonce: &str, seq: u64) -> String {
    format!("portcullis_checked_{nonce}_{seq}")
}

/// The query to send for `sql`, checked against `expected`.
pub fn wrap(sql: &str, nonce: &str, seq: u64, expected: &Expected) -> String {
    let m = marker(nonce, seq);
    let setting = format!("portcullis.checked_{nonce}");
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
    // The line break ends a trailing `--` comment of the caller's text;
    // the semicolon after it ends the caller's statement.
    format!(
        "SELECT pg_catalog.set_config({setting}, coalesce((SELECT pg_catalog.json_agg(pg_catalog.json_build_array(relid, n_tup_ins, n_tup_upd, n_tup_del))::text \
         FROM pg_catalog.pg_stat_xact_user_tables), '[]'), true) AS \"{m}\";\n\
         {sql}\n;\n\
         SELECT (CASE WHEN NOT EXISTS (\
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
        setting = literal(&setting),
        json = literal(&json),
        marker_lit = literal(&m),
    )
}

/// Where the answer to a checked run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The counts before (dropped).
    Before,
    /// The caller's statement (passed, but its CommandComplete held).
    Statement,
    /// The check (dropped; its error swapped).
    Check,
    /// An error ended the query early: pass what is left.
    Done,
}

/// One checked run waiting for its answer.
#[derive(Debug)]
struct Run {
    seq: u64,
    expected: Expected,
    phase: Phase,
    /// The caller's CommandComplete, until the check has passed.
    held: Option<Message>,
}

/// The checked runs of one session, in the order they were sent.
#[derive(Debug, Default)]
pub struct Checks {
    seq: u64,
    runs: VecDeque<Run>,
    /// For each run, the answers (sync points: Query, Sync,
    /// FunctionCall) still due before its own.
    waiting_before: VecDeque<u64>,
}

/// At most this many checked runs in flight per session (a caller who
/// pipelines more is refused the extra, fail closed).
pub const MAX_IN_FLIGHT: usize = 64;

impl Checks {
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
        if self.runs.len() >= MAX_IN_FLIGHT {
            return None;
        }
        self.seq += 1;
        let text = wrap(sql, nonce, self.seq, &expected);
        // Those not already counted: the runs ahead, and what is due
        // before each of them.
        let counted = self.runs.len() as u64 + self.waiting_before.iter().sum::<u64>();
        self.waiting_before
            .push_back(in_flight.saturating_sub(counted));
        self.runs.push_back(Run {
            seq: self.seq,
            expected,
            phase: Phase::Before,
            held: None,
        });
        Some(text)
    }

    /// Nothing is waiting: the relay's fast path.
    pub fn is_idle(&self) -> bool {
        self.runs.is_empty()
    }

    /// One message from the target: what to pass on instead (nothing, the
    /// message, or the held CommandComplete before it).
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
        match (run.phase, m.tag) {
            (_, tag::READY_FOR_QUERY) => {
                if run.phase == Phase::Check || run.phase == Phase::Statement {
                    // The check passed (or, in Statement, could not run:
                    // no CommandComplete was held then).
                    out.extend(run.held.take());
                }
                out.push(m);
                self.runs.pop_front();
                self.waiting_before.pop_front();
                return out;
            }
            (_, tag::NOTICE_RESPONSE | tag::PARAMETER_STATUS) => out.push(m),
            (Phase::Before, tag::ROW_DESCRIPTION | tag::DATA_ROW) => {}
            (Phase::Before, tag::COMMAND_COMPLETE) => run.phase = Phase::Statement,
            (Phase::Statement, tag::COMMAND_COMPLETE) => {
                run.held = Some(m);
                run.phase = Phase::Check;
            }
            (Phase::Check, tag::ROW_DESCRIPTION | tag::DATA_ROW | tag::COMMAND_COMPLETE) => {}
            (Phase::Check, tag::ERROR_RESPONSE) => {
                run.held = None;
                run.phase = Phase::Done;
                out.push(changed_error(nonce, run, &m).unwrap_or(m));
            }
            (_, tag::ERROR_RESPONSE) => {
                run.held = None;
                run.phase = Phase::Done;
                out.push(m);
            }
            // The caller's own rows, and anything after an error.
            _ => out.push(m),
        }
        out
    }
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
        assert!(w.contains("'portcullis_checked_n0_7'"));
        assert!(
            w.contains(r#"'[{"d":4,"i":0,"t":"public.t","u":0}]'"#),
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
        assert!(wrap("x", "n0", 1, &quoted).contains("it''s"));
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
