//! `portcullis sessions list` and `portcullis replay`.

use std::io::Write;
use std::time::Duration;

use portcullis_record::Event;

use crate::Cli;
use crate::token_cmd::rfc3339;

#[derive(clap::Args)]
pub(crate) struct ListArgs {
    /// One JSON object per session.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    principal: Option<String>,
    #[arg(long)]
    connection: Option<String>,
    /// e.g. caller_closed, upstream_error, 200; `open` for sessions that
    /// never ended (the gateway stopped abruptly). 200; `open` for
    /// sessions that never ended (a crash).
    #[arg(long)]
    outcome: Option<String>,
    /// Only sessions started at or after this time: RFC 3339
    /// (2026-12-01T10:00:00Z) or a duration ago (90s, 30m, 1h, 2d).
    #[arg(long, value_parser = parse_since)]
    since: Option<i64>,
    /// At most this many sessions, newest first (0: all).
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// `--since`: Unix milliseconds from an RFC 3339 time or a duration ago.
fn parse_since(s: &str) -> Result<i64, String> {
    let now = std::time::SystemTime::now();
    let at = match s.parse::<humantime::Timestamp>() {
        Ok(t) => std::time::SystemTime::from(t),
        Err(_) => {
            let ago = humantime::parse_duration(s).map_err(|_| {
                format!("{s:?} is neither a time (2026-12-01T10:00:00Z) nor a duration (1h, 30m)")
            })?;
            now.checked_sub(ago).ok_or("that is before 1970")?
        }
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

#[derive(clap::Args)]
pub(crate) struct ReplayArgs {
    /// The session id, or a prefix of it that names one session (see
    /// `portcullis sessions list`).
    session: String,
    /// Print everything at once instead of with the original timing.
    #[arg(long)]
    no_wait: bool,
    /// Play faster (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// One JSON event per line, for tools.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub(crate) struct EndArgs {
    /// The session's id (`portcullis sessions list`).
    id: String,
    /// Why: kept in the audit log and told to the caller.
    #[arg(long, default_value = "ended by an operator")]
    reason: String,
}

/// `portcullis sessions end ID`: ask, through the store, whichever gateway
/// runs the session to end it; audited first.
pub(crate) async fn end(cli: &Cli, a: &EndArgs) -> anyhow::Result<()> {
    let (config, store) = cli.load().await?;
    let live = store
        .session_by_id(&a.id)
        .await?
        .is_some_and(|s| s.ended_at_ms.is_none());
    if !live {
        anyhow::bail!(
            "no live session with id {:?} (see `portcullis sessions list`)",
            a.id
        );
    }
    let by = "operator (portcullis sessions end)";
    crate::token_cmd::audit_admin(
        &store,
        config.dir(),
        "session_end_requested",
        serde_json::json!({"session": a.id, "by": by, "reason": a.reason}),
    )
    .await?;
    let now = portcullis_identity::unix_now();
    if store.request_session_end(&a.id, by, &a.reason, now).await? {
        eprintln!("asked the gateway running session {} to end it", a.id);
    } else {
        eprintln!("session {} is already ending", a.id);
    }
    store.close().await;
    Ok(())
}

pub(crate) async fn list(cli: &Cli, a: &ListArgs) -> anyhow::Result<()> {
    let (_, store) = cli.load().await?;
    let since_ms = a.since.unwrap_or(0);
    let mut rows: Vec<_> = store
        .sessions()
        .await?
        .into_iter()
        .filter(|s| a.principal.as_ref().is_none_or(|p| *p == s.principal))
        .filter(|s| a.connection.as_ref().is_none_or(|c| *c == s.connection))
        .filter(|s| {
            a.outcome
                .as_ref()
                .is_none_or(|o| o == s.outcome.as_deref().unwrap_or("open"))
        })
        .filter(|s| s.started_at_ms >= since_ms)
        .collect();
    rows.sort_by_key(|s| std::cmp::Reverse(s.started_at_ms));
    let matched = rows.len();
    if a.limit > 0 && matched > a.limit {
        rows.truncate(a.limit);
        eprintln!(
            "the newest {} of {matched} sessions (--limit 0 for all)",
            a.limit
        );
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        for s in &rows {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "id": s.id,
                    "principal": s.principal,
                    "connection": s.connection,
                    "protocol": s.protocol,
                    "started_at": rfc3339(s.started_at_ms / 1000),
                    "ended_at": s.ended_at_ms.map(|t| rfc3339(t / 1000)),
                    "outcome": s.outcome.clone().unwrap_or_else(|| "open".into()),
                    "recording_digest": s.recording_digest,
                })
            )?;
        }
    } else {
        writeln!(
            out,
            "{:<26} {:<22} {:<14} {:<9} {:<21} OUTCOME",
            "ID", "PRINCIPAL", "CONNECTION", "PROTOCOL", "STARTED"
        )?;
        for s in &rows {
            writeln!(
                out,
                "{:<26} {:<22} {:<14} {:<9} {:<21} {}",
                s.id,
                s.principal,
                s.connection,
                s.protocol,
                rfc3339(s.started_at_ms / 1000),
                s.outcome.as_deref().unwrap_or("open")
            )?;
        }
    }
    store.close().await;
    Ok(())
}

/// The one session whose id starts with `prefix` (a whole id is its
/// own prefix).
async fn unique_session(store: &portcullis_store::Store, prefix: &str) -> anyhow::Result<String> {
    let ids: Vec<String> = store
        .sessions()
        .await?
        .into_iter()
        .map(|s| s.id)
        .filter(|id| id.starts_with(prefix))
        .collect();
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        // Not in the index (an older store): the recording may still be.
        [] => Ok(prefix.to_owned()),
        many => anyhow::bail!(
            "{prefix:?} names {} sessions; give more of the id",
            many.len()
        ),
    }
}

pub(crate) async fn replay(cli: &Cli, a: &ReplayArgs) -> anyhow::Result<()> {
    let (config, store) = cli.load().await?;
    if !a.session.chars().all(|c| c.is_ascii_hexdigit()) || a.session.is_empty() {
        anyhow::bail!("{:?} is not a session id", a.session);
    }
    let session = unique_session(&store, &a.session).await;
    store.close().await;
    let session = session?;
    // From this gateway's spool, or from the shared object store.
    let sink = portcullis_recordings::from_config(&config.recordings)?;
    let scratch = tempfile::tempdir()?;
    let path = match sink.fetch(&session, scratch.path()).await {
        Ok(p) => p,
        Err(portcullis_recordings::SinkError::NotFound(_)) => {
            anyhow::bail!("no recording for session {session} (see `portcullis sessions list`)")
        }
        Err(e) => return Err(e.into()),
    };
    let (records, digest) = portcullis_record::read(&path)?;
    let mut out = std::io::stdout().lock();
    let speed = if a.speed > 0.0 { a.speed } else { 1.0 };
    let mut last = 0u64;
    for r in &records {
        if !a.no_wait && !a.json && r.t_us > last {
            out.flush()?;
            std::thread::sleep(
                Duration::from_micros(((r.t_us - last) as f64 / speed) as u64)
                    .min(Duration::from_secs(5)),
            );
        }
        last = r.t_us;
        if a.json {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
            continue;
        }
        write!(out, "{}", shown_event(r))?;
    }
    if !a.json {
        writeln!(
            out,
            "-- {} events, recording digest {}",
            records.len(),
            digest
        )?;
    }
    Ok(())
}

/// ` #N` for a numbered request of a multi-request HTTP session.
/// An event as `replay` shows it: one line (or a few) starting with its
/// time in brackets; whatever the caller or the target sent follows on
/// the same line or on lines indented under it, with control characters
/// shown as escapes. So no body, cell or statement can print a line that
/// reads as another event, nor move the terminal's cursor (a review found
/// a body holding `\n[    2.000s] #7 > DELETE /admin` shown as a request).
fn shown_event(r: &portcullis_record::Record) -> String {
    let t = format!("[{:>9.3}s]", r.t_us as f64 / 1e6);
    let list = |items: &[Option<String>], sep: &str| {
        items
            .iter()
            .map(|c| shown(c.as_deref().unwrap_or("NULL")))
            .collect::<Vec<_>>()
            .join(sep)
    };
    let line = match &r.event {
        Event::SessionStart {
            session,
            principal,
            connection,
            protocol,
        } => format!(
            "{t} session {session}: {} on {} ({protocol})",
            shown(principal),
            shown(connection)
        ),
        Event::SessionEnd { outcome } => format!("{t} session ended: {}", shown(outcome)),
        Event::HttpRequest {
            request,
            method,
            path,
            body,
            ..
        } => format!(
            "{t}{} > {} {}{}",
            numbered(*request),
            shown(method),
            shown(path),
            body.as_deref().map(indented).unwrap_or_default()
        ),
        Event::HttpResponse {
            request,
            status,
            body,
            ..
        } => format!(
            "{t}{} < {status}{}",
            numbered(*request),
            body.as_deref().map(indented).unwrap_or_default()
        ),
        Event::HttpBody {
            request,
            from_caller,
            data,
        } => format!(
            "{t}{} {} body{}",
            numbered(*request),
            if *from_caller { ">" } else { "<" },
            indented(data)
        ),
        Event::PgQuery { sql } => format!("{t} => {}", shown(sql)),
        Event::PgParse { statement, sql } => {
            format!("{t} => PREPARE {statement:?}: {}", shown(sql))
        }
        Event::PgBind {
            statement, params, ..
        } => format!("{t}    bind {statement:?} ({})", list(params, ", ")),
        Event::PgExecute { .. } => return String::new(),
        Event::PgRowDescription { columns } => format!(
            "{t}    {}",
            columns
                .iter()
                .map(|c| shown(c))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        Event::PgDataRow { cells } => format!("{t}    {}", list(cells, " | ")),
        Event::PgCommandComplete { tag } => format!("{t} ({})", shown(tag)),
        Event::PgError { code, message } => {
            format!("{t} ERROR {}: {}", shown(code), shown(message))
        }
        Event::PgNotice { message } => format!("{t} NOTICE: {}", shown(message)),
        Event::PgCopyData { from_caller, data } => format!(
            "{t} {} {}",
            if *from_caller { "COPY IN" } else { "COPY OUT" },
            shown(data.strip_suffix('\n').unwrap_or(data))
        ),
        Event::PgFunctionCall { oid, args } => {
            format!("{t} FUNCTION CALL oid {oid} ({})", list(args, ", "))
        }
        Event::PgFunctionResult { value } => {
            format!("{t} = {}", shown(value.as_deref().unwrap_or("NULL")))
        }
        Event::Refused {
            statement,
            code,
            reason,
        } => format!(
            "{t} REFUSED [{}] {}\n{t}   {}",
            shown(code),
            shown(statement),
            shown(reason)
        ),
    };
    line + "\n"
}

/// Text from a session, on its event's line: control characters as
/// escapes (`\u{1b}`), and each line after the first indented.
fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\n      "),
            '\t' => out.push('\t'),
            c if c.is_control() || is_bidi_control(c) => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// The characters that reorder text on screen (Unicode's bidirectional
/// embeddings, overrides and isolates, and the marks): a terminal that
/// honours them could show an indented line as if it began with a time.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A body under its event's line, every line indented.
fn indented(body: &str) -> String {
    format!("\n      {}", shown(body.strip_suffix('\n').unwrap_or(body)))
}

fn numbered(request: Option<u64>) -> String {
    request.map(|n| format!(" #{n}")).unwrap_or_default()
}

#[cfg(test)]
mod replay_tests {
    use super::*;
    use portcullis_record::Record;

    /// Every line `replay` prints for `event` at 1 s.
    fn lines(event: Event) -> Vec<String> {
        shown_event(&Record {
            t_us: 1_000_000,
            event,
        })
        .lines()
        .map(str::to_owned)
        .collect()
    }

    const FORGED: &str = "ok\n[    2.000s] #7 > DELETE /admin\r\u{1b}[2K\u{9b}A\n\u{202e}]s000.3[";

    /// Whatever a caller or target sent, only the event's own first line
    /// starts with a time, and no control character reaches the terminal.
    #[test]
    fn session_text_cannot_print_another_event_or_move_the_cursor() {
        let events = vec![
            Event::HttpBody {
                request: Some(1),
                from_caller: false,
                data: FORGED.into(),
            },
            Event::HttpRequest {
                request: Some(1),
                method: "GET".into(),
                path: FORGED.into(),
                headers: vec![],
                body: Some(FORGED.into()),
            },
            Event::PgQuery { sql: FORGED.into() },
            Event::PgDataRow {
                cells: vec![Some(FORGED.into()), None],
            },
            Event::PgError {
                code: "XX000".into(),
                message: FORGED.into(),
            },
            Event::PgCopyData {
                from_caller: true,
                data: FORGED.into(),
            },
        ];
        for e in events {
            let shown = lines(e.clone());
            assert!(shown[0].starts_with("[    1.000s]"), "{shown:?}");
            assert!(
                shown[1..].iter().all(|l| l.starts_with("      ")),
                "{e:?}: {shown:?}"
            );
            assert!(
                shown
                    .iter()
                    .all(|l| !l.chars().any(|c| c.is_control() && c != '\t')),
                "{shown:?}"
            );
            assert!(
                shown.concat().contains("DELETE /admin"),
                "still shown: {shown:?}"
            );
            assert!(
                !shown.concat().chars().any(is_bidi_control),
                "no reordering: {shown:?}"
            );
        }
    }
}
