//! Holding an HTTP request for approval: the exact action is the method,
//! the caller's path and query, and the SHA-256 of the body (read whole,
//! within the request limit, so the digest covers what will be sent).

use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use portcullis_config::ApprovalMode;
use portcullis_front::{Ask, Gate, HoldError};

use crate::{Body, BodyState, ProxyError};

/// The header a caller asks for a just-in-time duration with (`30m`).
pub const SESSION_HEADER: &str = "portcullis-session";

/// The just-in-time duration the caller asked for, if any.
pub(crate) fn requested_session(headers: &http::HeaderMap) -> Result<Option<Duration>, ProxyError> {
    let Some(v) = headers.get(SESSION_HEADER) else {
        return Ok(None);
    };
    let bad = |reason: String| ProxyError::BadHeader {
        name: SESSION_HEADER,
        reason,
    };
    let text = v
        .to_str()
        .map_err(|_| bad("not a duration like 30m or 2h".into()))?;
    portcullis_approval::parse_session_duration(text)
        .map(Some)
        .map_err(bad)
}

/// The request as a reviewer sees it.
pub(crate) struct HeldRequest<'a> {
    pub method: &'a Method,
    /// The caller's own path and query (not the target's URI).
    pub path_and_query: &'a str,
    /// The just-in-time duration the caller asked for.
    pub asked_session: Option<Duration>,
}

/// Headers and query parameters frameworks read as "the real method"
/// (Rails, Laravel, Express's method-override, ASP.NET, Google APIs).
const OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
const OVERRIDE_PARAMS: &[&str] = &["_method", "method", "x-http-method-override"];

/// Every method a request asks the target to see instead of its own
/// (`X-HTTP-Method-Override: DELETE`, `?_method=DELETE`), upper-cased,
/// each once: every value of every override header and parameter, since
/// frameworks differ in which they read (one header or another; PHP
/// takes a repeated parameter's last value, others the first).
pub(crate) fn method_overrides(headers: &http::HeaderMap, query: Option<&str>) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut add = |v: &str| {
        let m = v.trim().to_ascii_uppercase();
        if !found.contains(&m) {
            found.push(m);
        }
    };
    for h in OVERRIDE_HEADERS {
        for v in headers.get_all(*h) {
            add(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if OVERRIDE_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p)) {
                add(&v);
            }
        }
    }
    found
}

/// The method the approval rule must look at. A rule that holds some
/// methods cannot be walked around by a method override: on a connection
/// whose target reads overrides (`method_overrides = true`) the rule sees
/// the overriding method; elsewhere an override is refused (400).
pub(crate) fn held_method(
    gate: &Gate,
    method: &http::Method,
    headers: &http::HeaderMap,
    query: Option<&str>,
    overrides_allowed: bool,
) -> Result<http::Method, ProxyError> {
    if gate.mode() != ApprovalMode::Statements || gate.rule.methods.is_empty() {
        return Ok(method.clone());
    }
    let overrides = method_overrides(headers, query);
    let Some(m) = overrides.first() else {
        return Ok(method.clone());
    };
    let shown: String = m.chars().take(16).collect();
    if overrides.len() > 1 {
        return Err(ProxyError::CallerBody(format!(
            "conflicting method overrides ({overrides:?}): send one, or the method itself"
        )));
    }
    if !overrides_allowed {
        return Err(ProxyError::CallerBody(format!(
            "method overrides ({shown:?}) are refused on this connection: its approval rule holds methods {:?}; send the method itself",
            gate.rule.methods
        )));
    }
    http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| ProxyError::CallerBody(format!("{shown:?} is not an HTTP method")))
}

/// Hold the request where the connection's rule says so; the body is
/// read whole (within the request limit) when it must be, so the action's
/// digest covers exactly what is sent.
pub(crate) async fn hold(
    gate: &Gate,
    req: HeldRequest<'_>,
    body: Body,
    state: &BodyState,
    max_body: u64,
) -> Result<Body, ProxyError> {
    let held = match gate.mode() {
        ApprovalMode::Session => gate.hold_session(req.asked_session).await.map(|_| body),
        ApprovalMode::Statements
            if portcullis_approval::holds_method(&gate.rule, req.method.as_str()) =>
        {
            let bytes = body
                .collect()
                .await
                .map_err(|_| {
                    if state.over_limit() {
                        ProxyError::BodyTooLarge { limit: max_body }
                    } else {
                        ProxyError::CallerBody("the request body could not be read".into())
                    }
                })?
                .to_bytes();
            let method = req.method.as_str();
            let action = portcullis_approval::http_action(method, req.path_and_query, &bytes);
            let ask = Ask {
                kind: "http",
                action: &action,
                classification: method,
                grant: None,
                preview: None,
            };
            gate.hold(&ask).await.map(|_| crate::full(bytes))
        }
        _ => return Ok(body),
    };
    held.map_err(|e| refusal(e, gate.rule.wait))
}

/// A hold's outcome as the caller hears it.
fn refusal(e: HoldError, wait: Duration) -> ProxyError {
    let review = e.review().map(|r| r.id.clone()).unwrap_or_default();
    let (code, message) = match &e {
        HoldError::Unavailable(inner) => (
            "approval_required",
            format!("this request needs approval, which cannot be checked now ({inner})"),
        ),
        HoldError::Denied(_) => ("approval_denied", e.to_string()),
        HoldError::Expired(_) => ("approval_expired", e.to_string()),
        HoldError::TimedOut { review, .. } => (
            "approval_required",
            format!(
                "{}; not decided within {}s: once approved, send the identical request again",
                portcullis_approval::waiting_message(review),
                wait.as_secs()
            ),
        ),
    };
    ProxyError::Review {
        review,
        code,
        message,
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;

    #[test]
    fn overrides_are_found_in_headers_and_query() {
        let mut h = http::HeaderMap::new();
        assert!(method_overrides(&h, Some("a=1")).is_empty());
        assert_eq!(method_overrides(&h, Some("a=1&_method=DELETE")), ["DELETE"]);
        assert_eq!(method_overrides(&h, Some("_METHOD=delete")), ["DELETE"]);
        h.insert(
            "x-http-method-override",
            http::HeaderValue::from_static("DELETE"),
        );
        assert_eq!(method_overrides(&h, None), ["DELETE"]);
        // Every value counts: a repeated parameter (PHP reads the last),
        // a second header (frameworks read different ones).
        assert_eq!(
            method_overrides(&h, Some("_method=POST&_method=PATCH")),
            ["DELETE", "POST", "PATCH"]
        );
        h.append("x-method-override", http::HeaderValue::from_static("put"));
        assert_eq!(method_overrides(&h, None), ["DELETE", "PUT"]);
    }
}
