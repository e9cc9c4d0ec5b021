//! The MCP proxy: a `type = "mcp"` connection fronts an upstream MCP
//! server (Streamable HTTP). Requests are JSON-RPC; the gateway reads each
//! one (bounded), refuses calls to tools that policy or pinning does not
//! allow with a JSON-RPC error, forwards the rest with the upstream's
//! credential, then rewrites the answer: `tools/list` filtered to the
//! allowed and approved tools, `tools/call` results masked. JSON and SSE
//! answers are both handled; the server-initiated GET stream is not
//! relayed (405, which the protocol allows).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use portcullis_config::Protocol;
use portcullis_http::BodyState;
use portcullis_policy::budget::Measure;
use portcullis_record::Event;
use serde_json::{Value, json};

use crate::pins::{self, PinState};
use crate::tools::ToolError;
use crate::{Body, Caller, Context, Kind};

/// Largest JSON-RPC request accepted from a caller.
const MAX_REQUEST: usize = 1024 * 1024;
/// Largest upstream answer read (it is rewritten as a whole).
const MAX_RESPONSE: usize = 8 * 1024 * 1024;
/// JSON-RPC error code for a policy refusal (implementation-defined
/// server-error range).
const POLICY_REFUSAL: i64 = -32001;
/// Headers of the Streamable HTTP transport passed in both directions
/// (the session id sealed, see [`session_id`]).
const PASSED: &[&str] = &["mcp-protocol-version", "last-event-id"];
const SESSION_ID: &str = "mcp-session-id";

/// The server's session ids as callers hold them: sealed to the
/// principal and connection they were given to, so that one caller cannot
/// post into another's session on the server (a review found the id was
/// passed through as it was, to be used by anyone who learnt it). The key
/// is shared by the gateways on one store (`Store::shared_key`): a
/// session opened through one gateway goes on through another.
pub struct SessionSeal(aws_lc_rs::hmac::Key);

impl SessionSeal {
    /// The name of its key in the store.
    pub const KEY_NAME: &'static str = "mcp-session-seal";

    pub fn new(key: &[u8]) -> Self {
        Self(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key))
    }

    fn bound(principal: &str, connection: &str, id: &str) -> Vec<u8> {
        [principal, connection, id].join("\0").into_bytes()
    }

    /// The server's `id` as the caller gets it: `ID.TAG`.
    pub fn seal(&self, principal: &str, connection: &str, id: &str) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.0, &Self::bound(principal, connection, id));
        format!("{id}.{}", hex::encode(tag.as_ref()))
    }

    /// The server's id in what the caller sent, if it was sealed for this
    /// principal and connection.
    pub fn open(&self, principal: &str, connection: &str, sealed: &str) -> Option<String> {
        let (id, tag) = sealed.rsplit_once('.')?;
        let tag = hex::decode(tag).ok()?;
        aws_lc_rs::hmac::verify(&self.0, &Self::bound(principal, connection, id), &tag).ok()?;
        Some(id.to_string())
    }
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    portcullis_http::json_response(status, &json!({"error": code, "message": message}))
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// JSON-RPC's "invalid request".
const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC's "parse error".
const PARSE_ERROR: i64 = -32700;

/// A request the gateway cannot read as JSON-RPC, answered in JSON-RPC
/// (with no id: there is none to give) and 400, as MCP's Streamable HTTP
/// transport has servers answer it (a review got the gateway's own JSON
/// shape instead).
fn unreadable(code: i64, message: &str) -> Response<Body> {
    let mut r = rpc_error_code(&Value::Null, code, message);
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

/// What JSON-RPC 2.0 does not allow a request body to be: an empty batch,
/// a message that is not an object, an id that is not a string, a number
/// or null, a method that is not a string.
fn invalid_shape(msg: &Value) -> Option<String> {
    let items: Vec<&Value> = match msg {
        Value::Array(a) if a.is_empty() => return Some("an empty batch".into()),
        Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    items.into_iter().find_map(|m| {
        let Value::Object(o) = m else {
            return Some(format!("a message must be an object, not {m}"));
        };
        if o.get("id")
            .is_some_and(|id| !(id.is_string() || id.is_number() || id.is_null()))
        {
            return Some("an id must be a string, a number or null".into());
        }
        if o.get("method").is_some_and(|m| !m.is_string()) {
            return Some("a method must be a string".into());
        }
        None
    })
}

/// A JSON-RPC error answer to request `id`.
fn rpc_error(id: &Value, message: &str) -> Response<Body> {
    rpc_error_code(id, POLICY_REFUSAL, message)
}

fn rpc_error_code(id: &Value, code: i64, message: &str) -> Response<Body> {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    let mut r = Response::new(full(body.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, String> {
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(format!("larger than {limit} bytes"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// One request to an MCP connection, as phases: admit the caller, read
/// the request, open the caller's sealed session id, check each call
/// (policy, pinning, approval, budget), then relay it under a recording.
pub async fn handle(
    ctx: &Context,
    req: Request<Incoming>,
    who: &Caller,
    name: &str,
    rest: &str,
) -> Response<Body> {
    let Some(Kind::Mcp { upstream, target }) = ctx.get(name).map(|c| &c.kind) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "unknown_connection",
            "no such MCP connection",
        );
    };
    // The shared admission path (its refusals are audited there).
    let admitted = match ctx
        .front
        .authorize(who.principal.clone(), name, Protocol::Mcp, &who.origin())
        .await
    {
        Ok(a) => a,
        Err(e) => {
            portcullis_http::linger(req.into_body()).await;
            // Word for word the HTTP front's refusal: a different body for
            // an MCP connection's name told which names are MCP connections
            // (a re-review).
            return portcullis_http::ProxyError::from(e).into_response();
        }
    };
    let (parts, bytes) = match read_request(req, rest).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let Ok(session) = opened_session(&ctx.seal, who, name, &parts) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "no such MCP session for this caller on this connection; start a new one (initialize)",
        );
    };
    let (asked, bytes) = match check_calls(ctx, who, &admitted, target, &parts, &bytes).await {
        Ok(m) => m,
        Err(refused) => return refused,
    };
    let call = Call {
        ctx,
        who,
        name,
        upstream,
        target,
        asked: std::sync::Mutex::new(asked),
        session,
    };
    recorded(&call, &admitted, &parts, rest, bytes).await
}

/// A session id that opens to no session.
struct NoSession;

/// The server's session id, opened from the seal the caller holds: one
/// sealed for another caller or connection, or forged, is no session.
fn opened_session(
    seal: &SessionSeal,
    who: &Caller,
    name: &str,
    parts: &http::request::Parts,
) -> Result<Option<String>, NoSession> {
    let Some(v) = parts.headers.get(SESSION_ID) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|v| seal.open(&who.principal.subject, name, v))
        .map(Some)
        .ok_or(NoSession)
}

/// Relay the checked call under a recording and the admission's live
/// guard, charge what it returned to the budget, and seal the session.
async fn recorded(
    call: &Call<'_>,
    admitted: &portcullis_front::Admitted,
    parts: &http::request::Parts,
    rest: &str,
    bytes: Bytes,
) -> Response<Body> {
    let ctx = call.ctx;
    let mut open = match crate::call::open(ctx, admitted).await {
        Ok(o) => o,
        Err(e) => {
            let code = match e {
                ToolError::RecordingUnavailable(_) => "recording_unavailable",
                _ => "audit_unavailable",
            };
            return json_error(StatusCode::SERVICE_UNAVAILABLE, code, &e.to_string());
        }
    };
    // hyper drops this future when the client leaves mid-call.
    open.if_dropped(portcullis_front::Closing {
        outcome: portcullis_front::Outcome::CallerGone,
        error: Some("the caller went away before the answer".into()),
        bytes_from_caller: bytes.len() as u64,
        bytes_to_caller: 0,
        requests: 1,
    });
    let rec = open.recorder.clone();
    let request = Event::HttpRequest {
        request: None,
        method: parts.method.to_string(),
        path: rest.to_string(),
        headers: vec![],
        body: Some(String::from_utf8_lossy(&bytes).into_owned()),
    };
    let result = match crate::call::record(&rec, [request]) {
        Ok(()) => {
            crate::call::while_admitted(ctx, call.who, admitted, &open, relay(call, parts, bytes))
                .await
        }
        Err(e) => Err(e),
    };
    let result = match result {
        Ok((resp, body)) => within_budget(ctx, call.who, admitted, body.len() as u64)
            .await
            .map(|()| (resp, body)),
        Err(e) => Err(e),
    };
    let (resp, sent, sealed) = answer(result, &rec);
    crate::call::seal(open, &sealed, sent).await;
    resp
}

/// The request, read whole (bounded); GET streams and odd paths refused.
async fn read_request(
    req: Request<Incoming>,
    rest: &str,
) -> Result<(http::request::Parts, Bytes), Response<Body>> {
    if req.method() == Method::GET {
        let mut r = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "server-initiated streams are not relayed through the gateway; use POST",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
        return Err(r);
    }
    if portcullis_http::route::has_dot_segment(rest) {
        portcullis_http::linger(req.into_body()).await;
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "paths with `.` or `..` segments are not forwarded",
        ));
    }
    let (parts, body) = req.into_parts();
    let bytes = match read_body(body, MAX_REQUEST).await {
        Ok(b) => b,
        Err(e) => {
            return Err(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!("the JSON-RPC request is {e}"),
            ));
        }
    };
    Ok((parts, bytes))
}

/// The requests of one call, by the id the gateway gave each for the
/// server: the caller's own id, and the method it asked for (to know what
/// each answer is).
type Asked = HashMap<String, (Value, String)>;

/// What was asked (see [`Asked`]), and the body to forward: re-serialised
/// from what was checked, so the server reads exactly that (a duplicate
/// key one parser takes first and another last cannot differ), with ids
/// of the gateway's own. A call (or a notification) naming a tool that
/// policy or pinning does not allow is refused with a JSON-RPC error and
/// audited; one the connection's approval rule holds waits for a person's
/// yes. Ids repeated within a batch are refused. Only POST carries
/// JSON-RPC; a DELETE (ending the server's session) carries nothing.
async fn check_calls(
    ctx: &Context,
    who: &Caller,
    admitted: &portcullis_front::Admitted,
    target: &portcullis_config::McpTarget,
    parts: &http::request::Parts,
    bytes: &Bytes,
) -> Result<(Asked, Bytes), Response<Body>> {
    let carries = carries_json_rpc(parts, bytes).ok_or_else(method_not_allowed)?;
    let name = admitted.connection.as_str();
    // Just-in-time access holds every request, not only tool calls: a
    // resource read or a prompt is data too, and a DELETE acts (review).
    if let Err(why) = session_hold(admitted).await {
        let id = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v.get("id").cloned());
        return Err(refused(ctx, who, name, &why, id.as_ref()).await);
    }
    if !carries {
        return Ok((Asked::new(), bytes.clone()));
    }
    let mut msg: Value = serde_json::from_slice(bytes).map_err(|e| {
        unreadable(
            PARSE_ERROR,
            &format!("Parse error: the body is not JSON: {e}"),
        )
    })?;
    if let Some(why) = invalid_shape(&msg) {
        return Err(unreadable(
            INVALID_REQUEST,
            &format!("Invalid Request: {why}"),
        ));
    }
    let items: Vec<&Value> = match &msg {
        Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    let pinned = ctx.store.tool_pins(name).await.map_err(|e| {
        tracing::error!(error = %e, "tool pins unavailable");
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "tool approvals cannot be checked, so the call is refused",
        )
    })?;
    // This request is the calls' session: a per-session limit counts the
    // calls of one request.
    let calls = Calls {
        admitted,
        target,
        pinned: &pinned,
        budget: ctx.front.budget(admitted),
    };
    // Each call of a batch takes its approval and budget as it is
    // checked: a later one refused would leave the earlier ones' spent
    // for nothing (review). Where either applies, calls come one at a
    // time (MCP 2025-06-18 has no batches anyway).
    let tool_calls = items
        .iter()
        .filter(|m| m.get("method").and_then(Value::as_str) == Some("tools/call"))
        .count();
    if tool_calls > 1 && (admitted.gate.is_some() || calls.budget.is_some()) {
        return Err(rpc_error_code(
            &Value::Null,
            INVALID_REQUEST,
            "this connection holds tool calls for approval or counts them against a budget: send them one at a time, not in a batch",
        ));
    }
    let mut ids: HashMap<String, ()> = HashMap::new();
    for m in &items {
        let id = m.get("id");
        if let (Some(_), Some(id)) = (m.get("method"), id)
            && ids.insert(id.to_string(), ()).is_some()
        {
            return Err(rpc_error_code(
                &Value::Null,
                INVALID_REQUEST,
                &format!("request id {id} appears twice in the batch"),
            ));
        }
        if let Some(why) = calls.refusal(ctx, m).await {
            return Err(refused(ctx, who, name, &why, id).await);
        }
    }
    let asked = own_ids(&mut msg);
    let forwarded = serde_json::to_vec(&msg)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()))?;
    Ok((asked, Bytes::from(forwarded)))
}

/// Whether the request carries JSON-RPC to check: a POST does; a DELETE
/// (ending the server's session) carries nothing and passes; `None` for
/// any other method, refused (a server that runs JSON-RPC whatever the
/// method would run a PUT's body unchecked; review).
fn carries_json_rpc(parts: &http::request::Parts, bytes: &Bytes) -> Option<bool> {
    match parts.method {
        Method::POST => Some(true),
        Method::DELETE if bytes.is_empty() => Some(false),
        _ => None,
    }
}

fn method_not_allowed() -> Response<Body> {
    let mut r = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "MCP requests are POST (and DELETE, without a body, to end a session)",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
    r
}

/// A refusal, audited, in the caller's protocol: a JSON-RPC error to the
/// request `id`, or (a notification, a batch) a 403.
async fn refused(
    ctx: &Context,
    who: &Caller,
    name: &str,
    why: &str,
    id: Option<&Value>,
) -> Response<Body> {
    tracing::info!(principal = %who.principal.subject, connection = %name, "MCP request refused");
    let principal = Some(who.principal.subject.as_str());
    ctx.front
        .refuse(principal, Some(name), &who.origin(), why)
        .await;
    match id {
        Some(id) => rpc_error(id, why),
        // A notification has no answer of its own: the request is.
        None => json_error(StatusCode::FORBIDDEN, "forbidden", why),
    }
}

/// What a request's tool calls are checked against.
struct Calls<'a> {
    admitted: &'a portcullis_front::Admitted,
    target: &'a portcullis_config::McpTarget,
    pinned: &'a [portcullis_store::ToolPin],
    budget: Option<portcullis_front::Budget>,
}

impl Calls<'_> {
    /// Why a tool call may not run, if it may not: policy or pinning, the
    /// connection's approval rule (a person's yes, waited for), a reload
    /// while it waited, or the budget. Any other message passes here.
    async fn refusal(&self, ctx: &Context, m: &Value) -> Option<String> {
        if m.get("method").and_then(Value::as_str) != Some("tools/call") {
            return None;
        }
        let name = self.admitted.connection.as_str();
        let tool = m
            .pointer("/params/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(why) = tool_refusal(name, self.target, tool, self.pinned) {
            return Some(why);
        }
        if let Err(why) = held(self.admitted, tool, m).await {
            return Some(why);
        }
        // A hold may have lasted across a reload.
        if !ctx.front.is_current() {
            return Some(
                "the gateway's config changed while this call was being admitted; make the call again"
                    .to_owned(),
            );
        }
        let b = self.budget.as_ref()?;
        // Nothing left to return: the call does not run.
        if b.counts(Measure::Bytes)
            && let Err(e) = b.left(Measure::Bytes, None).await
        {
            return Some(e.to_string());
        }
        b.take_one(Measure::ToolCalls, Some(tool))
            .await
            .err()
            .map(|e| e.to_string())
    }
}

/// Give every request an id of the gateway's own, unique in this process,
/// and say which caller's id and method each stands for. What an answer
/// is must not rest on how the server reads the caller's ids: a review
/// sent `1.0` and `1`, which the gateway kept apart and a JavaScript
/// server read as one, and a tool's result came back as the answer to
/// `tools/list`, which is not masked.
fn own_ids(msg: &mut Value) -> Asked {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut asked = Asked::new();
    let items: Vec<&mut Value> = match msg {
        Value::Array(a) => a.iter_mut().collect(),
        one => vec![one],
    };
    for m in items {
        let method = m.get("method").and_then(Value::as_str).map(str::to_owned);
        let (Some(method), Some(id)) = (method, m.get("id").cloned()) else {
            continue;
        };
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let own = format!("portcullis-{n}");
        asked.insert(own.clone(), (id, method));
        m["id"] = Value::String(own);
    }
    asked
}

/// Under a just-in-time rule, every request waits for a live grant.
async fn session_hold(admitted: &portcullis_front::Admitted) -> Result<(), String> {
    let just_in_time = admitted
        .gate
        .as_ref()
        .is_some_and(|g| g.mode() == portcullis_config::ApprovalMode::Session);
    if !just_in_time {
        return Ok(());
    }
    crate::call::approve(admitted, "mcp_session", "", "session", |_| false)
        .await
        .map_err(|e| match e {
            ToolError::Refused { reason, .. } => reason,
            other => other.to_string(),
        })
}

/// An upstream answer of `n` bytes against the grant's bytes budget:
/// taken whole, or refused whole (the answer is not handed over; the
/// calls in it already ran upstream).
async fn within_budget(
    ctx: &Context,
    who: &Caller,
    admitted: &portcullis_front::Admitted,
    n: u64,
) -> Result<(), ToolError> {
    let Some(b) = ctx
        .front
        .budget(admitted)
        .filter(|b| b.counts(Measure::Bytes))
    else {
        return Ok(());
    };
    let Err(e) = b.take_exactly(Measure::Bytes, n).await else {
        return Ok(());
    };
    // Not its size: a size the upstream's data chose is data.
    let reason = format!("{e}: the answer is larger; nothing was returned");
    let principal = Some(who.principal.subject.as_str());
    ctx.front
        .refuse(
            principal,
            Some(&admitted.connection),
            &who.origin(),
            &reason,
        )
        .await;
    Err(ToolError::Budget {
        connection: admitted.connection.clone(),
        reason,
    })
}

/// Why policy or pinning refuses a call to `tool`, if they do.
fn tool_refusal(
    name: &str,
    target: &portcullis_config::McpTarget,
    tool: &str,
    pinned: &[portcullis_store::ToolPin],
) -> Option<String> {
    if !target.allows(tool) {
        return Some(format!(
            "tool {tool:?} is not allowed on connection {name:?}"
        ));
    }
    match pinned.iter().find(|p| p.tool == tool) {
        None => Some(format!(
            "tool {tool:?} has not been reviewed on connection {name:?}: list the tools first"
        )),
        Some(p) if p.pending_hash.is_some() => Some(format!(
            "tool {tool:?} changed its definition since it was approved; it is held until \
             `portcullis mcp approve --connection {name} --tool {tool}`"
        )),
        Some(_) => None,
    }
}

/// The connection's approval rule over a tool call: `tools` names the
/// tools it holds (`"*"`: all); just-in-time rules hold every call until a
/// grant is live. The action a reviewer approves is the tool and its
/// exact arguments.
async fn held(
    admitted: &portcullis_front::Admitted,
    tool: &str,
    call: &Value,
) -> Result<(), String> {
    let args = call
        .pointer("/params/arguments")
        .map(Value::to_string)
        .unwrap_or_else(|| "{}".into());
    let action = format!("tools/call {tool} {args}");
    crate::call::approve(admitted, "mcp_tool", &action, "tool", |r| {
        r.tools.iter().any(|t| t == "*" || t == tool)
    })
    .await
    .map_err(|e| match e {
        ToolError::Refused { reason, .. } => reason,
        other => other.to_string(),
    })
}

/// What the caller gets, what was sent, and the outcome to seal.
fn answer(
    result: Result<(Response<()>, Bytes), ToolError>,
    rec: &portcullis_record::Recorder,
) -> (
    Response<Body>,
    u64,
    Result<rmcp::model::CallToolResult, ToolError>,
) {
    match result {
        Ok((resp, body)) => {
            let response = Event::HttpResponse {
                request: None,
                status: resp.status().as_u16(),
                headers: vec![],
                body: Some(String::from_utf8_lossy(&body).into_owned()),
            };
            if let Err(e) = crate::call::record(rec, [response]) {
                // Not handed over unrecorded.
                let msg = e.to_string();
                return (
                    json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "recording_unavailable",
                        &msg,
                    ),
                    msg.len() as u64,
                    Err(e),
                );
            }
            let n = body.len() as u64;
            let (p, _) = resp.into_parts();
            let ok = rmcp::model::CallToolResult::success(vec![]);
            (Response::from_parts(p, full(body)), n, Ok(ok))
        }
        Err(e) => {
            let (status, code) = match &e {
                ToolError::Target { reason, .. } if reason.contains("did not answer") => {
                    (StatusCode::GATEWAY_TIMEOUT, "bad_gateway")
                }
                ToolError::RecordingUnavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "recording_unavailable")
                }
                ToolError::Budget { .. } => (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded"),
                ToolError::Ended(portcullis_front::Ended::Credential(_)) => {
                    (StatusCode::UNAUTHORIZED, "credential_ended")
                }
                ToolError::Ended(portcullis_front::Ended::Access(_)) => {
                    (StatusCode::FORBIDDEN, "access_ended")
                }
                _ => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            };
            let msg = e.to_string();
            (json_error(status, code, &msg), msg.len() as u64, Err(e))
        }
    }
}

/// One admitted request to an MCP connection.
struct Call<'a> {
    ctx: &'a Context,
    who: &'a Caller,
    name: &'a str,
    upstream: &'a portcullis_http::Upstream,
    target: &'a portcullis_config::McpTarget,
    /// What each of the gateway's ids asked for (see [`own_ids`]); taken
    /// by its first answer, so a second answer with the same id is data.
    asked: std::sync::Mutex<Asked>,
    /// The server's own session id, opened from what the caller sent.
    session: Option<String>,
}

/// Forward the request; rewrite the answer (tool lists filtered, results
/// masked).
async fn relay(
    call: &Call<'_>,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<(Response<()>, Bytes), ToolError> {
    let (name, upstream) = (call.name, call.upstream);
    let target_err = |reason: String| ToolError::Target {
        connection: name.to_string(),
        reason,
    };
    // The server's one endpoint, whatever path or query the caller put
    // after the connection's name (clients add `/c/NAME/` or
    // `/c/NAME/mcp`): forwarding them made the connection a credentialed
    // proxy to whatever lies under its URL (review: `DELETE
    // /c/conn/admin/users/42`).
    let uri = upstream
        .target_uri("", None)
        .or_else(|_| upstream.target_uri("/", None))
        .map_err(|e| target_err(e.to_string()))?;
    let mut req = Request::builder().method(parts.method.clone()).uri(uri);
    for h in [header::CONTENT_TYPE, header::ACCEPT]
        .iter()
        .map(|h| h.as_str())
        .chain(PASSED.iter().copied())
    {
        if let Some(v) = parts.headers.get(h) {
            req = req.header(h, v);
        }
    }
    if let Some(id) = &call.session {
        req = req.header(SESSION_ID, id);
    }
    let req = req
        .body(full(body))
        .map_err(|e| target_err(e.to_string()))?;
    let resp = upstream
        .forward(
            Some(call.who.principal.accountable()),
            req,
            &Arc::new(BodyState::default()),
        )
        .await
        .map_err(|e| target_err(e.to_string()))?;
    let (mut head, body) = resp.into_parts();
    if let Some(s) = upstream.scrubber() {
        s.searchable(&head.headers).map_err(target_err)?;
    }
    let mut raw = read_body(body, MAX_RESPONSE)
        .await
        .map_err(|e| target_err(format!("the answer is {e}")))?;
    // The credential the gateway added, wherever the server echoed it
    // (review: an MCP server reflecting headers returned it).
    if let Some(s) = upstream.scrubber() {
        let mut b = raw.to_vec();
        if s.bytes(&mut b) > 0 {
            raw = Bytes::from(b);
        }
        s.headers(&mut head.headers);
    }
    let essence = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut rewritten = rewrite_body(call, &essence, raw)
        .await
        .map_err(target_err)?;
    // Rewriting reads JSON, undoing its escapes (review: a key spelled
    // with `\/` or `\u` escapes came out plain): scrubbed again as sent.
    if let Some(s) = upstream.scrubber() {
        let mut b = rewritten.to_vec();
        if s.bytes(&mut b) > 0 {
            rewritten = Bytes::from(b);
        }
    }
    let mut out = Response::builder()
        .status(head.status)
        // A text/html answer rendered by a browser must not run as the
        // gateway (its console shares this origin).
        .header(
            header::CONTENT_SECURITY_POLICY,
            portcullis_http::headers::TARGET_SANDBOX,
        );
    // The type alone: its parameters are the server's text.
    if !essence.is_empty() {
        out = out.header(header::CONTENT_TYPE, &essence);
    }
    for h in PASSED {
        if let Some(v) = head.headers.get(*h) {
            out = out.header(*h, v);
        }
    }
    if let Some(id) = head.headers.get(SESSION_ID).and_then(|v| v.to_str().ok()) {
        let sealed = call.ctx.seal.seal(&call.who.principal.subject, name, id);
        out = out.header(SESSION_ID, sealed);
    }
    let out = out.body(()).map_err(|e| target_err(e.to_string()))?;
    Ok((out, rewritten))
}

/// The server's answer as the caller gets it, by its type: SSE events
/// and JSON rewritten message by message (lists filtered, everything else
/// masked), text masked (refused where it names a key a rule hides), any
/// other type refused under masking; `Err` says why.
async fn rewrite_body(call: &Call<'_>, essence: &str, raw: Bytes) -> Result<Bytes, String> {
    let (ctx, who, name) = (call.ctx, call.who, call.name);
    if raw.is_empty() {
        return Ok(raw);
    }
    if essence == "text/event-stream" {
        let text = String::from_utf8_lossy(&raw);
        let mut out = String::with_capacity(text.len());
        for event in split_events(&text) {
            out.push_str(&rewrite_event(call, event).await);
        }
        return Ok(Bytes::from(out));
    }
    if essence == "application/json" || essence.ends_with("+json") {
        let mut v = serde_json::from_slice::<Value>(&raw)
            .map_err(|_| "the server's JSON answer does not parse".to_string())?;
        rewrite(call, &mut v).await;
        return Ok(Bytes::from(v.to_string()));
    }
    if ctx.front.mask_rule(name, &who.principal).is_none() {
        return Ok(raw);
    }
    if !(essence.starts_with("text/") || essence.is_empty()) {
        return Err(format!(
            "the server answered with content type {essence:?}, which masking cannot inspect"
        ));
    }
    let text = std::str::from_utf8(&raw)
        .map_err(|_| "the server's text answer is not UTF-8".to_string())?;
    if names_a_key(ctx, who, name, text) {
        return Err(
            "the server's text answer names a key a masking rule hides, and is not JSON".into(),
        );
    }
    Ok(Bytes::from(mask_text(ctx, who, name, text)))
}

/// SSE events (separated by a blank line), line endings normalised: SSE
/// ends a line at CRLF, LF or a lone CR (a review's server framed events
/// with CRs alone, and a key rule's value passed as one unread line to
/// the official SDK client).
fn split_events(text: &str) -> Vec<String> {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(str::to_string)
        .collect()
}

async fn rewrite_event(call: &Call<'_>, event: String) -> String {
    let (ctx, who, name) = (call.ctx, call.who, call.name);
    let mut data = String::new();
    let mut other = Vec::new();
    for line in event.lines() {
        match line.strip_prefix("data:") {
            Some(d) => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
            // `event:`, `id:` and comments are the server's text too;
            // withheld where they name a key a rule hides (a review's
            // `id: {"api_key": …}`).
            None if names_a_key(ctx, who, name, line) => {
                let field = line.split(':').next().unwrap_or_default();
                other.push(format!("{field}: [WITHHELD]"));
            }
            None => other.push(mask_text(ctx, who, name, line)),
        }
    }
    let mut out = other.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    if !data.is_empty() {
        let data = match serde_json::from_str::<Value>(&data) {
            Ok(mut v) => {
                rewrite(call, &mut v).await;
                v.to_string()
            }
            // Not JSON (MCP's events carry JSON-RPC only): withheld, never
            // masked as text, under a masking rule (a review's lone
            // surrogate `\ud800` split an address, and the text masking
            // passed its local part, with the gateway's own id); a result
            // too deep for the parser had kept its keyed values (code
            // review).
            Err(_) if ctx.front.mask_rule(name, &who.principal).is_some() => {
                "\"[WITHHELD]\"".to_string()
            }
            Err(_) => data,
        };
        out.push_str(&format!("data: {data}\n"));
    }
    out.push('\n');
    out
}

/// Rewrite one JSON-RPC message (or a batch) from the server.
async fn rewrite(call: &Call<'_>, v: &mut Value) {
    if let Value::Array(items) = v {
        for item in items {
            Box::pin(rewrite(call, item)).await;
        }
        return;
    }
    let Call {
        ctx,
        who,
        name,
        target,
        ..
    } = *call;
    let method = answered(call, v);
    // Tool lists are filtered and pinned as the server wrote them, then
    // masked as every other answer is.
    let listed = method.as_deref() == Some("tools/list");
    if listed && let Some(Value::Array(tools)) = v.pointer_mut("/result/tools") {
        let all = std::mem::take(tools);
        *tools = review(ctx, name, target, all).await;
    }
    let Some(rule) = ctx.front.mask_rule(name, &who.principal) else {
        return;
    };
    // Every member but the protocol's own carries the server's data: a
    // result (an `initialize`'s instructions and server info too: a
    // review read an email and a key rule's value there), an error, what
    // the server sends of its own accord (notifications, requests: their
    // params), and members JSON-RPC does not define (a review's `extra`
    // beside a masked result).
    let mut stats = Default::default();
    if let Value::Object(members) = v {
        for (key, x) in members.iter_mut() {
            match key.as_str() {
                "jsonrpc" | "id" | "method" => {}
                "result" if listed => mask_tools(rule, x, &mut stats),
                _ => {
                    mask_blobs(rule, x, &mut stats);
                    rule.masker.mask_json(x, &mut stats);
                }
            }
        }
    }
    ctx.front.mask_metrics.record(name, &stats);
}

/// A `tools/list` result as the caller gets it: each tool's name and
/// schemas keep their shape (a key rule's name as a property of an input
/// schema is a parameter, not a value), their strings read by the
/// detectors; everything else a tool says (description, title,
/// annotations, `_meta`) and the rest of the result (`nextCursor`,
/// `_meta`) are masked as data: a review read an email and a key rule's
/// value in them.
fn mask_tools(
    rule: &portcullis_mask::Rule,
    result: &mut Value,
    stats: &mut portcullis_mask::Stats,
) {
    let Value::Object(members) = result else {
        rule.masker.mask_json(result, stats);
        return;
    };
    for (key, x) in members.iter_mut() {
        match (key.as_str(), x) {
            ("tools", Value::Array(tools)) => {
                for tool in tools {
                    let Value::Object(parts) = tool else {
                        rule.masker.mask_json(tool, stats);
                        continue;
                    };
                    for (part, y) in parts.iter_mut() {
                        match part.as_str() {
                            "name" => {}
                            "inputSchema" | "outputSchema" => mask_strings(rule, y, stats),
                            _ => rule.masker.mask_json(y, stats),
                        }
                    }
                }
            }
            (_, x) => rule.masker.mask_json(x, stats),
        }
    }
}

/// Every string value in `v` through the detectors; keys kept.
fn mask_strings(rule: &portcullis_mask::Rule, v: &mut Value, stats: &mut portcullis_mask::Stats) {
    match v {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(masked) = rule.masker.mask_str(s, stats) {
                *s = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| mask_strings(rule, i, stats)),
        Value::Object(o) => o.values_mut().for_each(|i| mask_strings(rule, i, stats)),
        _ => {}
    }
}

/// MCP carries files as base64: a resource's `blob`, an image's or
/// audio's `data`. Encoded, the masker reads nothing in them (a review
/// read a resource's JSON, keys and emails and all, as a blob). Decoded,
/// UTF-8 text is masked as text and encoded again (withheld where it
/// names a key a rule hides); anything else is withheld unless the rule
/// passes its `mimeType` (`pass_content_types`).
fn mask_blobs(rule: &portcullis_mask::Rule, v: &mut Value, stats: &mut portcullis_mask::Stats) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(|i| mask_blobs(rule, i, stats)),
        Value::Object(o) => {
            let media = matches!(
                o.get("type").and_then(Value::as_str),
                Some("image" | "audio")
            );
            let mime = o
                .get("mimeType")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase();
            for key in ["blob", "data"] {
                if key == "data" && !media {
                    continue;
                }
                if let Some(Value::String(b64)) = o.get_mut(key) {
                    *b64 = masked_blob(rule, b64, &mime, stats);
                }
            }
            o.values_mut().for_each(|i| mask_blobs(rule, i, stats));
        }
        _ => {}
    }
}

/// One base64 payload as the caller gets it ("" when withheld).
fn masked_blob(
    rule: &portcullis_mask::Rule,
    b64: &str,
    mime: &str,
    stats: &mut portcullis_mask::Stats,
) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let withheld = |stats: &mut portcullis_mask::Stats| {
        *stats.entry("blob".into()).or_default() += 1;
        String::new()
    };
    let Ok(bytes) = engine.decode(b64.trim()) else {
        return withheld(stats);
    };
    match String::from_utf8(bytes) {
        Ok(text) if rule.masker.names_a_key(&text) => withheld(stats),
        Ok(text) => engine.encode(rule.masker.mask_str(&text, stats).as_bytes()),
        Err(_) if rule.passes_content_type(mime) => b64.to_string(),
        Err(_) => withheld(stats),
    }
}

/// For an answer (no `method`) to one of the gateway's ids: the caller's
/// id put back, and the method it answers. `None` for anything else
/// (a server's own request or notification, an id not asked, a second
/// answer): such a message is data.
fn answered(call: &Call<'_>, v: &mut Value) -> Option<String> {
    if v.get("method").is_some() {
        return None;
    }
    let own = v.get("id").and_then(Value::as_str)?;
    let (id, method) = call.asked.lock().ok()?.remove(own)?;
    v["id"] = id;
    Some(method)
}

/// Keep the tools policy allows and pinning approves; pin new ones; flag
/// changed ones (hidden until approved).
async fn review(
    ctx: &Context,
    name: &str,
    target: &portcullis_config::McpTarget,
    tools: Vec<Value>,
) -> Vec<Value> {
    let pinned = ctx.store.tool_pins(name).await.unwrap_or_default();
    let now = portcullis_identity::unix_now();
    let mut kept = Vec::with_capacity(tools.len());
    for t in tools {
        let Some(tool) = t.get("name").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        if !target.allows(&tool) {
            continue;
        }
        let hash = pins::tool_hash(&t);
        let pin = pinned.iter().find(|p| p.tool == tool);
        match pins::state(pin.map(|p| p.hash.as_str()), &hash) {
            PinState::Same => kept.push(t),
            PinState::New => {
                if ctx.store.pin_tool(name, &tool, &hash, now).await.is_ok() {
                    admin(
                        ctx,
                        "mcp_tool_pinned",
                        json!({"connection": name, "tool": tool, "hash": hash}),
                    )
                    .await;
                    kept.push(t);
                }
            }
            PinState::Changed => {
                if pin.and_then(|p| p.pending_hash.as_deref()) != Some(hash.as_str()) {
                    tracing::warn!(connection = %name, %tool, "MCP tool definition changed; held until approved");
                    let _ = ctx.store.flag_tool(name, &tool, &hash).await;
                    admin(
                        ctx,
                        "mcp_tool_changed",
                        json!({"connection": name, "tool": tool, "hash": hash}),
                    )
                    .await;
                }
            }
        }
    }
    kept
}

async fn admin(ctx: &Context, action: &str, detail: Value) {
    let e = portcullis_audit::AuditEvent::Admin {
        action: action.into(),
        detail,
    };
    if let Err(err) = ctx.front.sessions.audit().append(&e).await {
        tracing::error!(error = %err, "audit append failed");
    }
}

/// Whether `text` names a key a masking rule of this caller hides.
fn names_a_key(ctx: &Context, who: &Caller, name: &str, text: &str) -> bool {
    ctx.front
        .mask_rule(name, &who.principal)
        .is_some_and(|rule| rule.masker.names_a_key(text))
}

fn mask_text(ctx: &Context, who: &Caller, name: &str, text: &str) -> String {
    match ctx.front.mask_rule(name, &who.principal) {
        Some(rule) => {
            let mut stats = Default::default();
            rule.masker.mask_str(text, &mut stats).into_owned()
        }
        None => text.to_string(),
    }
}
