//! What every tool call goes through: the connection exists and speaks
//! the tool's protocol and a grant allows the caller (the shared admission
//! path), the connection's approval rule, then a session of its own
//! (audit entry durable before the target is reached), sealed at the end.

use portcullis_config::{ApprovalMode, Protocol};
use portcullis_front::{AdmitError, Admitted, Ask, Closing, HoldError, OpenSession, Outcome};
use rmcp::model::CallToolResult;
use serde_json::Value;

use crate::{Caller, Conn, Context};

/// Why a tool call did not succeed. Everything but `Params` is returned
/// to the model as a tool result with `isError: true`.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    Params(String),
    #[error("no connection named {0:?} (call list_connections)")]
    UnknownConnection(String),
    #[error("connection {connection:?} speaks {protocol}; use {tool}")]
    WrongProtocol {
        connection: String,
        protocol: Protocol,
        tool: &'static str,
    },
    #[error("{0}")]
    Denied(String),
    #[error("refused by connection {connection:?}: {reason}")]
    Refused { connection: String, reason: String },
    #[error("connection {connection:?}: {reason}")]
    Target { connection: String, reason: String },
    /// An answer larger than what the grant's bytes budget has left.
    #[error("refused by connection {connection:?}: {reason}")]
    Budget { connection: String, reason: String },
    #[error("the call cannot be audited and recorded, so it is refused")]
    AuditUnavailable,
    #[error("the call cannot be recorded, so it is refused ({0})")]
    RecordingUnavailable(String),
    /// The caller's credential was revoked or ran out, or a reload took
    /// its grant, while the call ran: it was stopped.
    #[error("the call was stopped: {0}")]
    Ended(portcullis_front::Ended),
    /// The caller stopped waiting for the call ([`Caller::gone`]): no one
    /// reads this answer; it is the session's evidence.
    #[error("the call was stopped: the caller went away")]
    CallerGone,
}

/// Run a tool call's `work` until it finishes, until the access that
/// admitted it ends (the token revoked, the OIDC token expired, the grant
/// gone in a reload), or until the caller goes away: a long query or
/// request does not outlive it. `work` is dropped then (a statement
/// running on the target is cancelled by its guard).
pub async fn while_admitted<T>(
    ctx: &Context,
    who: &Caller,
    admitted: &Admitted,
    session: &OpenSession,
    work: impl std::future::Future<Output = Result<T, ToolError>>,
) -> Result<T, ToolError> {
    let watch = ctx.front.live.watch(
        &admitted.principal,
        &session.id,
        &admitted.connection,
        admitted.origin.front,
        ctx.front.generation,
    );
    // Work that is done is answered, whatever else happened meanwhile (a
    // write committed is not reported as stopped).
    tokio::select! {
        biased;
        r = work => r,
        why = watch.ended() => Err(ToolError::Ended(why)),
        () = who.left() => Err(ToolError::CallerGone),
    }
}

/// `work` (before a session is open: an approval's wait), unless the
/// caller goes away first: a call held for approval whose caller left
/// waits no longer (its review stays, and an identical call later can
/// use a yes).
pub async fn unless_gone<T>(
    who: &Caller,
    work: impl std::future::Future<Output = Result<T, ToolError>>,
) -> Result<T, ToolError> {
    tokio::select! {
        biased;
        r = work => r,
        () = who.left() => Err(ToolError::CallerGone),
    }
}

/// Record `events` in order; the first that cannot be recorded fails the
/// call (its result is not given to the caller unrecorded).
pub fn record(
    rec: &portcullis_record::Recorder,
    events: impl IntoIterator<Item = portcullis_record::Event>,
) -> Result<(), ToolError> {
    for e in events {
        rec.event(e)
            .map_err(|e| ToolError::RecordingUnavailable(e.to_string()))?;
    }
    Ok(())
}

/// A required string argument.
pub fn str_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, ToolError> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::Params(format!("missing string argument {key:?}")))
}

/// An optional integer argument within `min..=max`.
pub fn int_arg(
    args: &Value,
    key: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ToolError::Params(format!(
                "{key} must be an integer from {min} to {max}"
            ))),
        },
    }
}

/// The connection `name`, of the protocol `tool` needs, that the caller
/// is granted (the shared admission path: refusals are audited).
pub async fn admit<'c>(
    ctx: &'c Context,
    who: &Caller,
    name: &str,
    protocol: Protocol,
) -> Result<(&'c Conn, Admitted), ToolError> {
    let admitted = ctx
        .front
        .authorize(who.principal.clone(), name, protocol, &who.origin())
        .await
        .map_err(|e| match e {
            AdmitError::UnknownConnection(name) => ToolError::UnknownConnection(name),
            AdmitError::WrongProtocol {
                connection, speaks, ..
            } => ToolError::WrongProtocol {
                connection,
                protocol: speaks,
                tool: match speaks {
                    Protocol::Http => "http_request",
                    Protocol::Postgres => "sql_query",
                    // Its own tools, at /c/<name>/ as an MCP server.
                    Protocol::Mcp => "its own MCP endpoint at /c/<connection>/",
                },
            },
            other => ToolError::Denied(other.to_string()),
        })?;
    match ctx.get(name) {
        Some(conn) => Ok((conn, admitted)),
        // Admission knows every connection and the table was built from
        // the same config: unreachable, but refused with evidence.
        None => Err(refused(ctx, who, name, "no upstream for this connection").await),
    }
}

/// Ask for approval when the connection's rule holds this call: `held`
/// says whether the rule's statement classes, methods or tools match.
/// Just-in-time rules hold every call until a grant is live (a tool call
/// cannot say how long it wants: the rule's `session`).
pub async fn approve(
    admitted: &Admitted,
    kind: &str,
    action: &str,
    classification: &str,
    held: impl Fn(&portcullis_config::ApprovalRule) -> bool,
) -> Result<(), ToolError> {
    let Some(gate) = &admitted.gate else {
        return Ok(());
    };
    let outcome = match gate.mode() {
        ApprovalMode::Session => gate.hold_session(None).await,
        ApprovalMode::Statements if held(&gate.rule) => {
            let ask = Ask {
                kind,
                action,
                classification,
                grant: None,
                preview: None,
            };
            gate.hold(&ask).await
        }
        _ => return Ok(()),
    };
    outcome.map_err(|e| {
        let reason = match &e {
            HoldError::Unavailable(inner) => {
                format!("this call needs approval, which cannot be checked now ({inner})")
            }
            HoldError::TimedOut { review, waited } => format!(
                "{}; not decided within {}s: once approved, make the identical call again",
                portcullis_approval::waiting_message(review),
                waited.as_secs()
            ),
            _ => e.to_string(),
        };
        ToolError::Refused {
            connection: admitted.connection.clone(),
            reason,
        }
    })
}

/// Open the session of one tool call.
pub async fn open(ctx: &Context, admitted: &Admitted) -> Result<OpenSession, ToolError> {
    // Admitted (and perhaps held for approval) under rules a reload has
    // since replaced: not run under them.
    if !ctx.front.is_current() {
        return Err(ToolError::Refused {
            connection: admitted.connection.clone(),
            reason: "the gateway's config changed while this call was being admitted; make the call again"
                .into(),
        });
    }
    let agent = ctx.get(&admitted.connection).and_then(|c| c.kind.agent());
    ctx.front.open(admitted, agent).await.map_err(|e| match e {
        portcullis_front::SessionError::Audit(_) => ToolError::AuditUnavailable,
        portcullis_front::SessionError::Recording(r) => ToolError::RecordingUnavailable(r),
    })
}

/// Seal a tool call's session.
pub async fn seal(open: OpenSession, result: &Result<CallToolResult, ToolError>, sent: u64) {
    // A caller that left was sent nothing.
    let sent = if matches!(result, Err(ToolError::CallerGone)) {
        0
    } else {
        sent
    };
    let (outcome, error) = match result {
        Ok(_) => (Outcome::Ok, None),
        Err(e @ ToolError::Ended(portcullis_front::Ended::Credential(_))) => {
            (Outcome::CredentialEnded, Some(e.to_string()))
        }
        Err(e @ ToolError::Ended(portcullis_front::Ended::Access(_))) => {
            (Outcome::AccessEnded, Some(e.to_string()))
        }
        Err(e @ ToolError::CallerGone) => (Outcome::CallerGone, Some(e.to_string())),
        Err(e) => (Outcome::Error, Some(e.to_string())),
    };
    open.seal(Closing {
        outcome,
        error,
        bytes_from_caller: 0,
        bytes_to_caller: sent,
        requests: 1,
    })
    .await;
}

/// One call of `tool` against its grant's budget: refused (with
/// evidence) when the budget is used up or cannot be checked.
pub async fn budget(
    ctx: &Context,
    who: &Caller,
    admitted: &Admitted,
    tool: &str,
) -> Result<(), ToolError> {
    use portcullis_policy::budget::Measure;
    budget_of(ctx, who, admitted, &[(Measure::ToolCalls, Some(tool), 1)]).await
}

/// One call against its grant's budget on each of `what` (a tool call,
/// and what it does: a write, a request of a method), all checked before
/// any is counted.
pub async fn budget_of(
    ctx: &Context,
    who: &Caller,
    admitted: &Admitted,
    what: &[(portcullis_policy::budget::Measure, Option<&str>, u64)],
) -> Result<(), ToolError> {
    let Some(b) = ctx.front.budget(admitted) else {
        return Ok(());
    };
    use portcullis_policy::budget::Measure;
    // Nothing left to return: the call does not run.
    if b.counts(Measure::Bytes)
        && let Err(e) = b.left(Measure::Bytes, None).await
    {
        return Err(refused(ctx, who, &admitted.connection, &e.to_string()).await);
    }
    match b.take_each(what).await {
        Ok(()) => Ok(()),
        Err(e) => Err(refused(ctx, who, &admitted.connection, &e.to_string()).await),
    }
}

/// A tool result against its grant's bytes budget: taken whole (its
/// size as sent), or refused whole when less is left (never cut short).
pub async fn take_bytes(
    ctx: &Context,
    who: &Caller,
    admitted: &Admitted,
    result: Result<CallToolResult, ToolError>,
) -> Result<CallToolResult, ToolError> {
    use portcullis_policy::budget::Measure;
    // A result, or the target's error (a failed cast quotes its input:
    // values come back in error text too); the gateway's own refusals
    // are not the target's data.
    let n = match &result {
        Ok(r) => serde_json::to_vec(r).map_or(0, |v| v.len() as u64),
        Err(ToolError::Target { reason, .. }) => reason.len() as u64,
        Err(_) => return result,
    };
    let Some(b) = ctx.front.budget(admitted) else {
        return result;
    };
    if !b.counts(Measure::Bytes) {
        return result;
    }
    match b.take_exactly(Measure::Bytes, n).await {
        Ok(_) => result,
        Err(e) => {
            let what = if result.is_ok() {
                "result"
            } else {
                "target's error"
            };
            // Not its size: a size the target's data chose is data.
            let reason = format!("{e}: the {what} is larger; nothing of it was returned");
            Err(refused(ctx, who, &admitted.connection, &reason).await)
        }
    }
}

/// Evidence of a call refused by a connection's rules, and the error the
/// model reads.
pub async fn refused(ctx: &Context, who: &Caller, name: &str, reason: &str) -> ToolError {
    ctx.front
        .refuse(
            Some(&who.principal.subject),
            Some(name),
            &who.origin(),
            reason,
        )
        .await;
    ToolError::Refused {
        connection: name.to_string(),
        reason: reason.to_string(),
    }
}
