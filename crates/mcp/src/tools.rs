//! The tools: their definitions (precise JSON schemas, written out rather
//! than derived, so what the model reads is exactly what is enforced) and
//! the checks every call goes through: the connection exists and speaks
//! the tool's protocol, a grant allows the caller, then a session is
//! opened (audit entry durable before the target is reached).

use std::sync::Arc;

use portcullis_audit::{Closing, OpenSession, Opening};
use portcullis_policy::Decision;
use rmcp::model::{CallToolResult, JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};

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
        protocol: &'static str,
        tool: &'static str,
    },
    #[error("{0}")]
    Denied(String),
    #[error("refused by connection {connection:?}: {reason}")]
    Refused { connection: String, reason: String },
    #[error("connection {connection:?}: {reason}")]
    Target { connection: String, reason: String },
    #[error("the call cannot be audited and recorded, so it is refused")]
    AuditUnavailable,
}

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(JsonObject::new()),
    }
}

pub const MAX_ROWS_LIMIT: u64 = 1000;
pub const DEFAULT_ROWS: u64 = 100;
pub const MAX_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

pub fn definitions() -> Vec<Tool> {
    let read_only = |title: &str| {
        let mut a = ToolAnnotations::with_title(title);
        a.read_only_hint = Some(true);
        a
    };
    vec![
        Tool::new(
            "list_connections",
            "List the connections you may use: name, type (postgres or http) and access \
             mode (read-only or read-write).",
            schema(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        )
        .with_annotations(read_only("List connections")),
        Tool::new(
            "sql_query",
            "Run one SQL statement on a PostgreSQL connection. Results are masked (personal \
             data and secrets replaced) and limited to max_rows rows. On a read-only \
             connection only reading statements are allowed.",
            schema(json!({
                "type": "object",
                "properties": {
                    "connection": {"type": "string", "description": "A postgres connection from list_connections"},
                    "sql": {"type": "string", "minLength": 1, "maxLength": 100000, "description": "Exactly one SQL statement"},
                    "max_rows": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS_LIMIT, "default": DEFAULT_ROWS},
                    "timeout_ms": {"type": "integer", "minimum": 100, "maximum": MAX_TIMEOUT_MS, "default": DEFAULT_TIMEOUT_MS}
                },
                "required": ["connection", "sql"],
                "additionalProperties": false
            })),
        )
        .with_title("Run SQL"),
        Tool::new(
            "http_request",
            "Call an HTTP API connection. The gateway adds the API's credential; the response \
             body is masked.",
            schema(json!({
                "type": "object",
                "properties": {
                    "connection": {"type": "string", "description": "An http connection from list_connections"},
                    "method": {"type": "string", "enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], "default": "GET"},
                    "path": {"type": "string", "pattern": "^/", "description": "Path under the connection's base URL, e.g. /customers"},
                    "query": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
                    "body": {"description": "A JSON request body"}
                },
                "required": ["connection", "path"],
                "additionalProperties": false
            })),
        )
        .with_title("Call an API"),
        Tool::new(
            "describe_schema",
            "Tables and columns (name, type, nullable) of a PostgreSQL connection, to plan \
             queries.",
            schema(json!({
                "type": "object",
                "properties": {
                    "connection": {"type": "string"},
                    "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "description": "Only this schema (default: all but the system ones)"}
                },
                "required": ["connection"],
                "additionalProperties": false
            })),
        )
        .with_annotations(read_only("Describe schema")),
    ]
}

pub async fn call(
    ctx: &Context,
    who: &Caller,
    name: &str,
    args: Value,
) -> Result<CallToolResult, ToolError> {
    match name {
        "list_connections" => Ok(list_connections(ctx, who)),
        "sql_query" => crate::sql::sql_query(ctx, who, &args).await,
        "describe_schema" => crate::sql::describe_schema(ctx, who, &args).await,
        "http_request" => crate::web::http_request(ctx, who, &args).await,
        other => Err(ToolError::Params(format!("unknown tool {other:?}"))),
    }
}

fn list_connections(ctx: &Context, who: &Caller) -> CallToolResult {
    let mut out = Vec::new();
    for c in &ctx.connections {
        if let Decision::Allow { rule, .. } = ctx.policy.decide(&who.principal, &c.name) {
            out.push(json!({
                "name": c.name,
                "type": c.kind.protocol(),
                "access": c.kind.access(),
                "grant": rule,
            }));
        }
    }
    let text = if out.is_empty() {
        format!("{} has no grants on any connection.", who.principal.subject)
    } else {
        out.iter()
            .map(|c| format!("{} ({}, {})", c["name"], c["type"], c["access"]).replace('"', ""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut r = CallToolResult::structured(json!({ "connections": out }));
    r.content = vec![rmcp::model::ContentBlock::text(text)];
    r
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
/// is granted; refusals are audited.
pub async fn admit<'c>(
    ctx: &'c Context,
    who: &Caller,
    name: &str,
    protocol: &'static str,
) -> Result<(&'c Conn, String), ToolError> {
    let refuse = |reason: String| async move {
        ctx.sessions
            .refusal(
                Some(who.principal.subject.clone()),
                Some(name.to_string()),
                "mcp",
                who.peer.clone(),
                reason,
            )
            .await;
    };
    let Some(conn) = ctx.get(name) else {
        refuse("unknown connection".into()).await;
        return Err(ToolError::UnknownConnection(
            name.chars().take(128).collect(),
        ));
    };
    if conn.kind.protocol() != protocol {
        return Err(ToolError::WrongProtocol {
            connection: name.to_string(),
            protocol: conn.kind.protocol(),
            tool: match conn.kind.protocol() {
                "http" => "http_request",
                "postgres" => "sql_query",
                // Its own tools, at /c/<name>/ as an MCP server.
                _ => "its own MCP endpoint at /c/<connection>/",
            },
        });
    }
    match ctx.policy.decide(&who.principal, name) {
        Decision::Allow { rule, .. } => Ok((conn, rule)),
        Decision::Deny { reason } => {
            refuse(reason.to_string()).await;
            Err(ToolError::Denied(reason.to_string()))
        }
    }
}

/// Ask for approval when the connection's rule holds this call: `held`
/// says whether the rule's statement classes, methods or tools match.
/// Just-in-time rules hold every call until a grant is live.
pub async fn approve(
    ctx: &Context,
    who: &Caller,
    connection: &str,
    kind: &str,
    action: &str,
    classification: &str,
    held: impl Fn(&portcullis_config::ApprovalRule) -> bool,
) -> Result<(), ToolError> {
    use portcullis_approval::{Check, Held, Outcome};
    use portcullis_config::ApprovalMode;
    let (Some(rule), Some(approvals)) = (ctx.approval_rules.get(connection), ctx.approvals.get())
    else {
        return Ok(());
    };
    let refused = |reason: String| ToolError::Refused {
        connection: connection.to_string(),
        reason,
    };
    let session_ask;
    let mut grant = None;
    let (kind, action, classification) = match rule.mode {
        ApprovalMode::Session => {
            let live = approvals
                .jit_until(&who.principal.subject, connection)
                .await
                .ok()
                .flatten()
                .is_some_and(|u| u > portcullis_identity::unix_now());
            if live {
                return Ok(());
            }
            // A tool call cannot say how long it wants: the rule's `session`.
            session_ask = portcullis_approval::SessionRequest::new(connection, rule, None);
            grant = Some(session_ask.duration);
            ("session", session_ask.action.as_str(), "session")
        }
        ApprovalMode::Statements if held(rule) => (kind, action, classification),
        _ => return Ok(()),
    };
    let h = Held {
        requester: &who.principal,
        connection,
        kind,
        action,
        classification,
        rule,
        session: None,
        grant,
    };
    let unavailable = |e: portcullis_approval::ReviewError| {
        refused(format!(
            "this call needs approval, which cannot be checked now ({e})"
        ))
    };
    let review = match approvals.check(&h).await.map_err(unavailable)? {
        Check::Approved(_) => return Ok(()),
        Check::Pending(r) => r,
    };
    match approvals
        .wait(&review.id, rule.wait, None)
        .await
        .map_err(unavailable)?
    {
        Outcome::Approved(_) => Ok(()),
        Outcome::Denied(r) => Err(refused(format!(
            "review {} was denied by {}{}",
            r.id,
            r.decided_by.as_deref().unwrap_or("an approver"),
            r.reason
                .as_deref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        ))),
        Outcome::Expired(r) => Err(refused(format!(
            "review {} expired before it was approved",
            r.id
        ))),
        Outcome::TimedOut(r) => Err(refused(format!(
            "{}; not decided within {}s: once approved, make the identical call again",
            portcullis_approval::waiting_message(&r),
            rule.wait.as_secs()
        ))),
    }
}

/// Open the session of one tool call.
pub async fn open(
    ctx: &Context,
    who: &Caller,
    connection: &str,
    rule: String,
) -> Result<OpenSession, ToolError> {
    ctx.sessions
        .open(Opening {
            principal: who.principal.subject.clone(),
            principal_kind: format!("{:?}", who.principal.kind).to_ascii_lowercase(),
            auth: serde_json::to_value(&who.principal.via).unwrap_or_default(),
            connection: connection.to_string(),
            protocol: "mcp",
            peer: who.peer.clone(),
            tls: Value::Null,
            rule,
            agent: ctx.get(connection).and_then(|c| match &c.kind {
                crate::Kind::Http(u) => u.agent().map(str::to_owned),
                crate::Kind::Postgres { upstream, .. } => upstream.agent().map(str::to_owned),
                crate::Kind::Mcp { .. } => None,
            }),
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "audit or recording unavailable; MCP call refused");
            ToolError::AuditUnavailable
        })
}

/// Seal a tool call's session.
pub async fn seal(open: OpenSession, result: &Result<CallToolResult, ToolError>, sent: u64) {
    let (outcome, error) = match result {
        Ok(_) => ("ok".to_string(), None),
        Err(e) => ("error".to_string(), Some(e.to_string())),
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
