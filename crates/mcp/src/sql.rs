//! `sql_query`: one statement on an upstream session from the
//! connection's pool, bounded in rows (kept) and time (`statement_timeout`
//! on the target), with every cell masked by the connection's rule before
//! it is recorded or returned. [`run`] is shared with `describe_schema`.

use std::time::Duration;

use portcullis_postgres::classify::{self, Class};
use portcullis_postgres::{QueryOutcome, UpstreamError};
use portcullis_record::Event;
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Value, json};

use portcullis_config::Protocol;
use portcullis_front::Admitted;
use portcullis_policy::budget::Measure;

use crate::call::{self, ToolError, int_arg, refused, str_arg};
use crate::tools;
use crate::{Caller, Context, Kind};

/// One statement, bounded.
pub(crate) struct Query<'a> {
    pub sql: &'a str,
    pub max_rows: usize,
    pub timeout_ms: u64,
}

/// Longest cell shown in the text table; the structured result has all.
const CELL_WIDTH: usize = 60;

pub async fn sql_query(
    ctx: &Context,
    who: &Caller,
    args: &Value,
) -> Result<CallToolResult, ToolError> {
    let name = str_arg(args, "connection")?;
    let sql = str_arg(args, "sql")?;
    if sql.len() > 100_000 {
        return Err(ToolError::Params("sql is longer than 100000 bytes".into()));
    }
    let max_rows = int_arg(
        args,
        "max_rows",
        tools::DEFAULT_ROWS,
        1,
        tools::MAX_ROWS_LIMIT,
    )?;
    let timeout_ms = int_arg(
        args,
        "timeout_ms",
        tools::DEFAULT_TIMEOUT_MS,
        100,
        tools::MAX_TIMEOUT_MS,
    )?;
    let (conn, admitted) = call::admit(ctx, who, name, Protocol::Postgres).await?;
    let Kind::Postgres {
        read_only,
        upstream,
    } = &conn.kind
    else {
        unreachable!("admit checked the protocol")
    };
    let class = checked_statement(ctx, who, name, *read_only, upstream, sql).await?;
    let approved = call::approve(&admitted, "statement", sql, class.as_str(), |r| {
        portcullis_approval::holds_statement(r, class.as_str())
            || (class == Class::Unknown && !r.classes.is_empty())
            || portcullis_approval::holds_tool(r, "sql_query", None)
    });
    call::unless_gone(who, approved).await?;
    charge(ctx, who, &admitted, upstream, sql, class).await?;
    let query = Query {
        sql,
        max_rows: max_rows as usize,
        timeout_ms,
    };
    let result = run(ctx, who, &admitted, upstream, query, |out, masked| {
        let table = text_table(&out.columns, &masked);
        let shown = masked.len() as u64;
        let mut text = table;
        if out.total_rows > shown {
            text.push_str(&format!(
                "\n({} of {} rows shown; raise max_rows or narrow the query)",
                shown, out.total_rows
            ));
        } else if out.columns.is_empty() {
            text = out.tags.join("\n");
        }
        let mut r = CallToolResult::structured(json!({
            "columns": out.columns,
            "rows": masked,
            "row_count": out.total_rows,
            "truncated": out.total_rows > shown,
            "command": out.tags.last(),
        }));
        r.content = vec![ContentBlock::text(text)];
        r
    })
    .await;
    if class >= Class::Ddl {
        // It may have changed what the catalog says.
        upstream.forget_catalog();
    }
    result
}

/// One statement that parses, proven against the target's catalog, and a
/// read where the connection is read-only: its class.
async fn checked_statement(
    ctx: &Context,
    who: &Caller,
    name: &str,
    read_only: bool,
    upstream: &portcullis_postgres::PgUpstream,
    sql: &str,
) -> Result<Class, ToolError> {
    // One statement per call: the result is one table, and a guard cannot
    // be undone by a second statement in the same string.
    match classify::statement_count(sql) {
        Some(1) => {}
        Some(0) => return Err(ToolError::Params("sql holds no statement".into())),
        Some(n) => {
            return Err(ToolError::Params(format!(
                "send one statement per call (this holds {n})"
            )));
        }
        None if read_only => {
            return Err(refused(
                ctx,
                who,
                name,
                "the statement does not parse, so it cannot be shown to be read-only",
            )
            .await);
        }
        // Text the parser cannot read runs as PostgreSQL reads it: a `;`
        // inside may end a statement (a review ran five "in one").
        None if sql.trim_end().trim_end_matches(';').contains(';') => {
            return Err(ToolError::Params(
                "send one statement per call (this text cannot be parsed, and holds a `;`)".into(),
            ));
        }
        None => {}
    }
    // Proven against the target's catalog, as on the wire protocol.
    let class = match upstream.classify(sql).await {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("the statement could not be proven free of side effects ({e})");
            return Err(refused(ctx, who, name, &reason).await);
        }
    };
    if read_only && class != Class::Read {
        let reason = format!(
            "access = \"read-only\": {} is not allowed",
            class.statement()
        );
        return Err(refused(ctx, who, name, &reason).await);
    }
    Ok(class)
}

/// The grant's budget: tables touched, the tool call, and each statement
/// that may write.
async fn charge(
    ctx: &Context,
    who: &Caller,
    admitted: &Admitted,
    upstream: &portcullis_postgres::PgUpstream,
    sql: &str,
    class: Class,
) -> Result<(), ToolError> {
    let name = admitted.connection.as_str();
    if let Some(b) = ctx.front.budget(admitted) {
        let a = upstream.analyse(sql);
        if a.refs.opaque && b.counts(Measure::Tables) {
            let reason = format!(
                "grant {:?} limits the distinct tables touched, and the tables this statement names cannot be read from it; write it so they can",
                b.grant()
            );
            return Err(refused(ctx, who, name, &reason).await);
        }
        let names: Vec<String> = a.refs.qualified.iter().cloned().collect();
        if let Err(e) = b.touch_tables(&names).await {
            return Err(refused(ctx, who, name, &e.to_string()).await);
        }
    }
    let mut what = vec![(Measure::ToolCalls, Some("sql_query"), 1)];
    if class >= Class::Write {
        // Each statement of a multi-statement text that may write
        // (all of them when the catalog could not prove it).
        let n = upstream.analyse(sql).writes_under(class) as u64;
        what.push((Measure::Writes, None, n));
    }
    call::budget_of(ctx, who, admitted, &what).await
}

/// Open the session, run `sql`, mask, record, seal; `shape` turns the
/// outcome and its masked rows into the tool result.
pub(crate) async fn run(
    ctx: &Context,
    who: &Caller,
    admitted: &Admitted,
    upstream: &std::sync::Arc<portcullis_postgres::PgUpstream>,
    query: Query<'_>,
    shape: impl FnOnce(&QueryOutcome, Vec<Vec<Option<String>>>) -> CallToolResult,
) -> Result<CallToolResult, ToolError> {
    let Query {
        sql,
        max_rows,
        timeout_ms,
    } = query;
    let name = admitted.connection.as_str();
    // The grant's rows budget: what is left is reserved (taken, so a
    // concurrent session sees it gone) and bounds the rows kept; a result
    // with more is refused whole (never silently shorter); what is not
    // kept is given back.
    let budget = ctx.front.budget(admitted);
    let rows_left = match &budget {
        Some(b) if b.counts(Measure::Rows) => match b.reserve(Measure::Rows).await {
            Ok(n) => n,
            Err(e) => return Err(refused(ctx, who, name, &e.to_string()).await),
        },
        _ => None,
    };
    let max_rows = rows_left.map_or(max_rows, |n| max_rows.min(n as usize));
    let budget = budget.as_ref();
    let give_back = |kept: u64| async move {
        if let (Some(b), Some(reserved)) = (budget, rows_left) {
            b.refund(Measure::Rows, reserved.saturating_sub(kept)).await;
        }
    };
    let open = match call::open(ctx, admitted).await {
        Ok(open) => open,
        Err(e) => {
            give_back(0).await;
            return Err(e);
        }
    };
    let rec = open.recorder.clone();
    if let Err(e) = call::record(
        &rec,
        [Event::PgQuery {
            sql: sql.to_string(),
        }],
    ) {
        let refused = Err(e);
        call::seal(open, &refused, 0).await;
        give_back(0).await;
        return refused;
    }
    let target_err = |reason: String| ToolError::Target {
        connection: name.to_string(),
        reason,
    };
    let work = query_target(ctx, who, upstream, name, sql, max_rows, timeout_ms);
    // The target stops the statement at statement_timeout; this bounds
    // the rest (connecting, a target that does not answer at all).
    let deadline = Duration::from_millis(timeout_ms) + Duration::from_secs(5);
    let bounded = async {
        tokio::time::timeout(deadline, work)
            .await
            .map_err(|_| target_err("the target did not answer in time".into()))
    };
    let ran = call::while_admitted(ctx, who, admitted, &open, bounded).await;
    let (result, mut kept) = answered(ran, &rec, name, budget, rows_left, shape);
    let result = call::take_bytes(ctx, who, admitted, result).await;
    if result.is_err() {
        kept = 0;
    }
    let sent = match &result {
        Ok(r) => serde_json::to_vec(r).map(|v| v.len() as u64).unwrap_or(0),
        Err(e) => e.to_string().len() as u64,
    };
    call::seal(open, &result, sent).await;
    give_back(kept).await;
    result
}

/// Cancels the statement on the target when the tool call is dropped
/// before the target answered (the MCP client went away): the target
/// would otherwise run it to its `statement_timeout` (a re-review left
/// `pg_sleep`s running after their callers reset their connections).
struct CancelOnDrop {
    upstream: std::sync::Arc<portcullis_postgres::PgUpstream>,
    key: Option<(i32, i32)>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some((pid, secret)) = self.key.take() else {
            return;
        };
        // Outside a runtime only when the gateway itself is going away.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let upstream = self.upstream.clone();
            rt.spawn(async move {
                if let Err(e) = upstream.cancel(pid, secret).await {
                    tracing::warn!(connection = %upstream.name, error = %e, "cancelling a dropped tool call's statement failed");
                }
            });
        }
    }
}

/// Run `sql` on a session of the connection's pool, its results through
/// the wire protocol's masker (one place where rules are applied: column
/// sources, binary values, errors).
async fn query_target(
    ctx: &Context,
    who: &Caller,
    upstream: &std::sync::Arc<portcullis_postgres::PgUpstream>,
    name: &str,
    sql: &str,
    max_rows: usize,
    timeout_ms: u64,
) -> Result<Result<QueryOutcome, UpstreamError>, ToolError> {
    let target_err = |reason: String| ToolError::Target {
        connection: name.to_string(),
        reason,
    };
    let owner = portcullis_postgres::Owner::Caller {
        subject: who.principal.subject.clone(),
        accountable: who.principal.accountable().to_owned(),
    };
    let mut session = upstream
        .connect(&[], owner)
        .await
        .map_err(|e| target_err(e.to_string()))?;
    session
        .query(&format!("SET statement_timeout = {timeout_ms}"), 0)
        .await
        .map_err(|e| target_err(e.to_string()))?;
    // The wire protocol's masker, so there is one place where rules
    // are applied (column sources, binary values, errors).
    let mut masker = match ctx.front.mask_rule(name, &who.principal) {
        Some(rule) => Some(
            portcullis_postgres::masking::prepare(rule, &mut session, upstream, name)
                .await
                .map_err(|e| target_err(format!("masking rules could not be prepared: {e}")))?
                .with_metrics(ctx.front.mask_metrics.clone()),
        ),
        None => None,
    };
    let inspector = masker
        .as_mut()
        .map(|m| m as &mut dyn portcullis_postgres::inspect::Inspector);
    let mut running = CancelOnDrop {
        upstream: upstream.clone(),
        key: Some((session.pid, session.secret)),
    };
    let result = session.query_inspected(sql, max_rows, inspector).await;
    running.key = None;
    // A session that ends idle goes back to the pool (DISCARD ALL);
    // one left inside a transaction is dropped.
    if session.status == b'I' {
        upstream.checkin(&[], session).await;
    }
    Ok(result)
}

/// What the bounded run answered, as the tool's result (recorded), and
/// the rows kept. A result with more rows than the budget left is refused
/// whole.
fn answered(
    ran: Result<Result<Result<QueryOutcome, UpstreamError>, ToolError>, ToolError>,
    rec: &portcullis_record::Recorder,
    name: &str,
    budget: Option<&portcullis_front::Budget>,
    rows_left: Option<u64>,
    shape: impl FnOnce(&QueryOutcome, Vec<Vec<Option<String>>>) -> CallToolResult,
) -> (Result<CallToolResult, ToolError>, u64) {
    let target_err = |reason: String| ToolError::Target {
        connection: name.to_string(),
        reason,
    };
    let mut kept = 0u64;
    let result = match ran {
        Err(e) => Err(e),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Err(UpstreamError::Server(msg)))) => {
            let (code, message) = msg.split_once(": ").unwrap_or(("?????", &msg));
            call::record(
                rec,
                [Event::PgError {
                    code: code.to_string(),
                    message: message.to_string(),
                }],
            )
            .and(Err(target_err(msg.clone())))
        }
        Ok(Ok(Err(e))) => Err(target_err(e.to_string())),
        Ok(Ok(Ok(out))) if rows_left.is_some_and(|n| out.total_rows > n) => {
            let why = budget
                .map(|b| b.cut(Measure::Rows, None).to_string())
                .unwrap_or_default();
            Err(ToolError::Refused {
                connection: name.to_string(),
                reason: format!("{why}: the result has more rows; nothing was returned"),
            })
        }
        Ok(Ok(Ok(mut out))) => {
            // Masked already, by the inspector the rows came through.
            let masked = std::mem::take(&mut out.rows);
            kept = masked.len() as u64;
            let events = std::iter::once(Event::PgRowDescription {
                columns: out.columns.clone(),
            })
            .chain(
                masked
                    .iter()
                    .map(|row| Event::PgDataRow { cells: row.clone() }),
            )
            .chain(
                out.tags
                    .iter()
                    .map(|tag| Event::PgCommandComplete { tag: tag.clone() }),
            );
            call::record(rec, events).map(|()| shape(&out, masked))
        }
    };
    (result, kept)
}

/// A compact, pipe-separated table for the model to read.
pub fn text_table(columns: &[String], rows: &[Vec<Option<String>>]) -> String {
    let clip = |s: &str| -> String {
        let one_line = s.replace(['\n', '\r'], " ");
        if one_line.chars().count() > CELL_WIDTH {
            let cut: String = one_line.chars().take(CELL_WIDTH - 1).collect();
            format!("{cut}…")
        } else {
            one_line
        }
    };
    let mut out = columns.join(" | ");
    for row in rows {
        out.push('\n');
        let cells: Vec<String> = row
            .iter()
            .map(|c| c.as_deref().map(clip).unwrap_or_else(|| "NULL".into()))
            .collect();
        out.push_str(&cells.join(" | "));
    }
    out
}
