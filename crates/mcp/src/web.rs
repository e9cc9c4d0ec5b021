//! `http_request`: one request to an HTTP connection through its upstream
//! half (verified TLS, credential injected), the response masked by the
//! connection's rule and cut at [`MAX_BODY`].

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use portcullis_http::BodyState;
use portcullis_record::Event;
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Value, json};

use portcullis_config::Protocol;

use crate::call::{self, ToolError, str_arg};
use crate::{Caller, Context, Kind};

/// Largest response body returned to the model (and recorded).
const MAX_BODY: usize = 1024 * 1024;
/// Largest request body accepted from the model.
const MAX_REQUEST: usize = 1024 * 1024;

/// One call's arguments, checked.
struct ApiCall<'a> {
    connection: &'a str,
    method: Method,
    path: &'a str,
    query: Option<String>,
    body: Option<Vec<u8>>,
}

impl ApiCall<'_> {
    /// The caller's own path and query: what a reviewer sees.
    fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_string(),
        }
    }
}

/// The answer as the model gets it (masked, bounded).
struct Answer {
    status: http::StatusCode,
    content_type: String,
    body: Bytes,
    truncated: bool,
}

pub async fn http_request(
    ctx: &Context,
    who: &Caller,
    args: &Value,
) -> Result<CallToolResult, ToolError> {
    let a = parse_args(args)?;
    let (conn, admitted) = call::admit(ctx, who, a.connection, Protocol::Http).await?;
    let Kind::Http(upstream) = &conn.kind else {
        unreachable!("admit checked the protocol")
    };
    let pq = a.path_and_query();
    // The same action text as the HTTP front's, so one approval fits
    // either way of sending the request.
    let body_bytes = a.body.as_deref().unwrap_or_default();
    let method = held_method(ctx, &admitted, upstream, &a, body_bytes)?;
    let method = method.as_str();
    let action = portcullis_approval::http_action(method, &pq, body_bytes);
    let approved = call::approve(&admitted, "http", &action, method, |r| {
        portcullis_approval::holds_method(r, method)
            || portcullis_approval::holds_tool(r, "http_request", Some(method))
    });
    call::unless_gone(who, approved).await?;
    let uri = upstream
        .target_uri(a.path, a.query.as_deref())
        .map_err(|e| ToolError::Params(format!("path: {e}")))?;
    {
        use portcullis_policy::budget::Measure;
        let what = [
            (Measure::ToolCalls, Some("http_request"), 1),
            (Measure::Requests, Some(method), 1),
        ];
        call::budget_of(ctx, who, &admitted, &what).await?;
    }
    let open = call::open(ctx, &admitted).await?;
    let rec = open.recorder.clone();
    let request = Event::HttpRequest {
        request: None,
        method: a.method.to_string(),
        path: pq,
        headers: vec![],
        body: a
            .body
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned()),
    };
    let result = match call::record(&rec, [request]) {
        Err(e) => Err(e),
        Ok(()) => {
            match call::while_admitted(
                ctx,
                who,
                &admitted,
                &open,
                send(ctx, who, upstream, &a, uri),
            )
            .await
            {
                Ok(answer) => {
                    let (text, parsed) = readable(&answer, upstream.scrubber());
                    let response = Event::HttpResponse {
                        request: None,
                        status: answer.status.as_u16(),
                        headers: vec![("content-type".into(), answer.content_type.clone())],
                        body: Some(text.clone()),
                    };
                    call::record(&rec, [response]).map(|()| tool_result(&answer, text, parsed))
                }
                Err(e) => Err(e),
            }
        }
    };
    let result = call::take_bytes(ctx, who, &admitted, result).await;
    let sent = match &result {
        Ok(r) => serde_json::to_vec(r).map(|v| v.len() as u64).unwrap_or(0),
        Err(e) => e.to_string().len() as u64,
    };
    call::seal(open, &result, sent).await;
    result
}

/// The method the connection's rules look at. Where they look at it (an
/// approval rule holding methods, a budget per method), an override in
/// the query or body (`_method=DELETE`, which Rails, Laravel and Symfony
/// read) is that method on a target that reads overrides, and refused
/// elsewhere: the proxy's rule, which a review found this tool skipped.
fn held_method(
    ctx: &Context,
    admitted: &portcullis_front::Admitted,
    upstream: &portcullis_http::Upstream,
    a: &ApiCall<'_>,
    body: &[u8],
) -> Result<String, ToolError> {
    let own = a.method.as_str().to_string();
    let matters = admitted.gate.as_ref().is_some_and(|g| g.holds_methods())
        || ctx.front.limits_methods(admitted);
    if !matters {
        return Ok(own);
    }
    let mut headers = http::HeaderMap::new();
    if a.body.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    let refused = |why: &str| ToolError::Refused {
        connection: admitted.connection.clone(),
        reason: format!("{why}: its rules look at the method; send the method itself"),
    };
    let found = portcullis_http::requested_methods(&headers, a.query.as_deref(), body)
        .ok_or_else(|| refused("a method override that cannot be read"))?;
    match found.as_slice() {
        [] => Ok(own),
        [m] if upstream.method_overrides() => Ok(m.clone()),
        [_] => Err(refused("method overrides are refused on this connection")),
        _ => Err(refused("conflicting method overrides")),
    }
}

fn parse_args(args: &Value) -> Result<ApiCall<'_>, ToolError> {
    let connection = str_arg(args, "connection")?;
    let path = str_arg(args, "path")?;
    let method = match args.get("method").and_then(Value::as_str).unwrap_or("GET") {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE") => {
            Method::from_bytes(m.as_bytes()).map_err(|_| ToolError::Params("bad method".into()))?
        }
        other => {
            return Err(ToolError::Params(format!(
                "method {other:?} is not supported"
            )));
        }
    };
    if !path.starts_with('/') || path.contains(['?', '#']) {
        return Err(ToolError::Params(
            "path must start with / and carry no query or fragment (use `query`)".into(),
        ));
    }
    if portcullis_http::route::has_dot_segment(path) {
        return Err(ToolError::Params(
            "paths with `.` or `..` segments are not forwarded".into(),
        ));
    }
    Ok(ApiCall {
        connection,
        method,
        path,
        query: query_arg(args)?,
        body: body_arg(args)?,
    })
}

/// `query`: an object of strings, numbers and booleans.
fn query_arg(args: &Value) -> Result<Option<String>, ToolError> {
    let m = match args.get("query") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ToolError::Params("query must be an object".into())),
    };
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in m {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ToolError::Params(format!(
                    "query value of {k:?} must be a string, number or boolean"
                )));
            }
        };
        q.append_pair(k, &v);
    }
    Ok(Some(q.finish()))
}

/// `body`: any JSON, at most [`MAX_REQUEST`] bytes.
fn body_arg(args: &Value) -> Result<Option<Vec<u8>>, ToolError> {
    let Some(v) = args.get("body").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let b = serde_json::to_vec(v).map_err(|e| ToolError::Params(e.to_string()))?;
    if b.len() > MAX_REQUEST {
        return Err(ToolError::Params(format!(
            "body is larger than {MAX_REQUEST} bytes"
        )));
    }
    Ok(Some(b))
}

/// Send the request through the connection's upstream half; the answer
/// masked by the caller's rule and cut at [`MAX_BODY`].
async fn send(
    ctx: &Context,
    who: &Caller,
    upstream: &portcullis_http::Upstream,
    a: &ApiCall<'_>,
    uri: http::Uri,
) -> Result<Answer, ToolError> {
    let name = a.connection;
    let mut req = Request::builder()
        .method(a.method.clone())
        .uri(uri)
        .header(header::ACCEPT, "application/json, text/*;q=0.9, */*;q=0.1")
        .header(header::USER_AGENT, "portcullis-mcp");
    if a.body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(
            Full::new(Bytes::from(a.body.clone().unwrap_or_default()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .map_err(|e| ToolError::Params(e.to_string()))?;
    // A reason may quote what the target sent (a charset, a coding): the
    // secret is overwritten in it (re-review).
    let target = |reason: String| ToolError::Target {
        connection: name.to_string(),
        reason: match upstream.scrubber() {
            Some(s) => s.text(&reason),
            None => reason,
        },
    };
    let resp = upstream
        .forward(
            Some(who.principal.accountable()),
            req,
            &Arc::new(BodyState::default()),
        )
        .await
        .map_err(|e| target(e.to_string()))?;
    let status = resp.status();
    let masked = match ctx.front.mask_rule(name, &who.principal) {
        Some(rule) => {
            let mut stats = Default::default();
            let r = portcullis_http::mask_response(
                rule,
                &a.method,
                resp,
                &mut stats,
                None,
                upstream.scrubber(),
            )
            .await
            .map_err(|e| match e {
                portcullis_http::ResponseError::Mask(f) => {
                    target(format!("the response could not be masked: {}", f.0))
                }
                portcullis_http::ResponseError::Target(reason) => target(reason),
            })?;
            ctx.front.mask_metrics.record(name, &stats);
            r
        }
        None => resp.map(|b| {
            b.map_err(|e: hyper::Error| -> portcullis_http::BoxError { Box::new(e) })
                .boxed()
        }),
    };
    // The credential the gateway added, wherever the target echoed it.
    let masked = match upstream.scrubber() {
        Some(s) => s.response(masked).map_err(target)?,
        None => masked,
    };
    // The type as masking left it: its parameters are the target's text
    // (review: read before masking, a value passed in them).
    let content_type = masked
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // Read by hand rather than with `Limited`: its boxed error trips a
    // rustc limitation (higher-ranked `From` on `Send` futures).
    let mut body = masked.into_body();
    let mut buf = Vec::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| target(format!("reading the response: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                truncated = true;
                buf.clear();
                break;
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Answer {
        status,
        content_type,
        body: Bytes::from(buf),
        truncated,
    })
}

/// The answer's body as text, and parsed when it is JSON. The raw bytes
/// were scrubbed; reading JSON undoes its escapes (review: `\/` and
/// `\u0041` spelled the key so the scrubber did not see it, and the parsed
/// body then showed it plain), so the parsed value is scrubbed again and
/// the text is written from it (re-review: the text, which the model
/// reads and the recording keeps, still held the escaped key).
fn readable(
    a: &Answer,
    scrubber: Option<&portcullis_http::scrub::Scrubber>,
) -> (String, Option<Value>) {
    let mut parsed: Option<Value> = if a.content_type.contains("json") {
        serde_json::from_slice(&a.body).ok()
    } else {
        None
    };
    let raw = || String::from_utf8_lossy(&a.body);
    match (scrubber, parsed.as_mut()) {
        (Some(s), Some(v)) => {
            scrub_value(s, v);
            let text = serde_json::to_string(v).unwrap_or_default();
            (text, parsed)
        }
        (Some(s), None) => (s.text(&raw()), None),
        (None, _) => (raw().into_owned(), parsed),
    }
}

/// The tool result: structured (status, type, body parsed when JSON) and
/// as text for the model.
fn tool_result(a: &Answer, text: String, parsed: Option<Value>) -> CallToolResult {
    let (status, content_type) = (a.status.as_u16(), &a.content_type);
    let shown = if a.truncated {
        format!(
            "HTTP {status} ({content_type}); the body is over {MAX_BODY} bytes and was not returned"
        )
    } else {
        format!("HTTP {status} ({content_type})\n{text}")
    };
    let body = parsed.unwrap_or(Value::String(if a.truncated {
        String::new()
    } else {
        text
    }));
    let mut r = CallToolResult::structured(json!({
        "status": status,
        "content_type": content_type,
        "body": body,
        "truncated": a.truncated,
    }));
    r.content = vec![ContentBlock::text(shown)];
    if a.status.is_client_error() || a.status.is_server_error() {
        r.is_error = Some(true);
    }
    r
}

/// The secret overwritten in every string and key of `v`, as read.
pub(crate) fn scrub_value(s: &portcullis_http::scrub::Scrubber, v: &mut Value) {
    let text = |t: &mut String| *t = s.text(t);
    match v {
        Value::String(t) => text(t),
        Value::Array(items) => items.iter_mut().for_each(|i| scrub_value(s, i)),
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (mut k, mut item) in old {
                text(&mut k);
                scrub_value(s, &mut item);
                map.insert(k, item);
            }
        }
        _ => {}
    }
}
