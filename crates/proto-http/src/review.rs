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
    /// The body as the caller sent it, where masking swapped tokens in it
    /// back for their values: the review shows and binds the caller's
    /// form, since the caller may read its own review.
    pub caller_body: Option<&'a [u8]>,
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

/// Whether parameter `key` is an override parameter as a framework reads
/// it: any case, and with PHP's mangling (`.`, space and `[` in a name
/// become `_`, so `.method` is `_method`).
fn is_override_key(key: &str) -> bool {
    let k: String = key
        .trim()
        .chars()
        .map(|c| if matches!(c, '.' | ' ' | '[') { '_' } else { c })
        .collect();
    OVERRIDE_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p))
}

/// Whether a multipart body names an override field in any spelling a
/// parser may accept (`name="_method"`, `name=_method`,
/// `name*=UTF-8''_method`, a backslash-escaped name): read crudely and
/// on the side of finding one.
fn multipart_names_override(body: &[u8]) -> bool {
    let lower = String::from_utf8_lossy(body).to_ascii_lowercase();
    // A name may be percent-encoded (`name*=UTF-8''%5fmethod`, or a
    // parser that decodes `name="%5Fmethod"`): read decoded as well.
    let decoded = percent_encoding::percent_decode_str(&lower)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    names_override_in(&lower) || names_override_in(&decoded)
}

fn names_override_in(lower: &str) -> bool {
    let mut rest = lower;
    while let Some(i) = rest.find("name") {
        rest = &rest[i + 4..];
        let tail: String = rest.chars().take(96).collect();
        let tail = tail.trim_start_matches(|c: char| "*= \t\"'".contains(c));
        let tail = tail.strip_prefix("utf-8''").unwrap_or(tail);
        let name: String = tail
            .chars()
            .filter(|c| !matches!(c, '\\' | '"' | '\''))
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '['))
            .collect();
        if is_override_key(&name) {
            return true;
        }
    }
    false
}

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
            // A list (`POST, DELETE`): each item.
            for item in String::from_utf8_lossy(v.as_bytes()).split(',') {
                add(item);
            }
        }
    }
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if is_override_key(&k) {
                add(&v);
            }
        }
    }
    found
}

/// The methods a form body names as overrides (`_method=DELETE`: Rails
/// and Laravel read it from the body), when the request's content type
/// is a form; `Err` for a multipart form naming one, which is not read
/// here (refused where the method matters).
pub(crate) fn body_overrides(headers: &http::HeaderMap, body: &[u8]) -> Result<Vec<String>, ()> {
    let kind = content_kind(headers)?;
    let mut found: Vec<String> = Vec::new();
    let mut add = |v: &str| {
        let m = v.trim().to_ascii_uppercase();
        if !found.contains(&m) {
            found.push(m);
        }
    };
    // No type at all: Rack reads a POST without one as a form.
    if kind.is_empty() || kind.starts_with("application/x-www-form-urlencoded") {
        for (k, v) in form_urlencoded::parse(body) {
            if is_override_key(&k) {
                add(&v);
            }
        }
    } else if kind.starts_with("multipart/") {
        // Any multipart type: a parser may read form fields from
        // `multipart/mixed` as from `form-data`.
        if multipart_names_override(body) {
            return Err(());
        }
    } else if kind.contains("json") {
        // Laravel reads `_method` from a JSON body's input too. A body
        // serde_json cannot read (`1e400`, deeper than it goes) another
        // parser may: it cannot be shown to name no override (code
        // review), and is refused where the method matters.
        match serde_json::from_slice(body) {
            Ok(serde_json::Value::Object(o)) => {
                for (k, v) in &o {
                    if is_override_key(k) {
                        match v.as_str() {
                            Some(s) => add(s),
                            None => return Err(()),
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(_) if body.iter().all(u8::is_ascii_whitespace) => {}
            Err(_) => return Err(()),
        }
    }
    Ok(found)
}

/// A request body read whole (within the request limit).
pub(crate) async fn read_whole(
    body: Body,
    state: &BodyState,
    max_body: u64,
) -> Result<bytes::Bytes, ProxyError> {
    Ok(body
        .collect()
        .await
        .map_err(|_| {
            if state.over_limit() {
                ProxyError::BodyTooLarge { limit: max_body }
            } else {
                ProxyError::CallerBody("the request body could not be read".into())
            }
        })?
        .to_bytes())
}

/// The methods a form body asks the target to see, read where the method
/// matters (a rule holding methods, a per-method limit): the body is
/// read whole and handed on.
pub(crate) async fn form_overrides(
    headers: &http::HeaderMap,
    body: Body,
    state: &BodyState,
    max_body: u64,
) -> Result<(Body, Vec<String>), ProxyError> {
    if !is_form(headers) {
        return Ok((body, Vec::new()));
    }
    let bytes = read_whole(body, state, max_body).await?;
    let found = body_overrides(headers, &bytes).map_err(|()| {
        ProxyError::CallerBody(
            "a method override in a multipart form (or a JSON one that is not a string, or a body under two content types) is refused on this connection (its rules look at the method); send the method itself"
                .into(),
        )
    })?;
    Ok((crate::full(bytes), found))
}

/// Whether a request with these headers may carry a form body.
/// A body without a type is one (Rack's `form_data?` is true for a POST
/// without a Content-Type), and so is any multipart one.
pub(crate) fn is_form(headers: &http::HeaderMap) -> bool {
    content_kind(headers).map_or(true, |v| {
        v.is_empty()
            || v.starts_with("application/x-www-form-urlencoded")
            || v.starts_with("multipart/")
            || v.contains("json")
    })
}

/// The request's content type, lower-cased ("" without one); `Err` for
/// two of them or one that is not text (a target may read another than
/// we would: read as a form, and refused).
fn content_kind(headers: &http::HeaderMap) -> Result<String, ()> {
    let mut all = headers.get_all(http::header::CONTENT_TYPE).iter();
    let kind = match (all.next(), all.next()) {
        (None, _) => return Ok(String::new()),
        (Some(v), None) => v.to_str().map_err(|_| ())?,
        (Some(_), Some(_)) => return Err(()),
    };
    Ok(kind.trim().to_ascii_lowercase())
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
    in_body: &[String],
    overrides_allowed: bool,
) -> Result<http::Method, ProxyError> {
    if gate.mode() != ApprovalMode::Statements || gate.rule.methods.is_empty() {
        return Ok(method.clone());
    }
    let mut overrides = method_overrides(headers, query);
    for m in in_body {
        if !overrides.contains(m) {
            overrides.push(m.clone());
        }
    }
    let Some(m) = overrides.first() else {
        return Ok(method.clone());
    };
    // The overrides are read from what goes to the target, where masking
    // swapped reversible tokens back for their values: a message quoting
    // them handed the caller the value (found in review). None is quoted.
    if overrides.len() > 1 {
        return Err(ProxyError::CallerBody(format!(
            "conflicting method overrides ({} of them): send one, or the method itself",
            overrides.len()
        )));
    }
    if !overrides_allowed {
        return Err(ProxyError::CallerBody(format!(
            "method overrides are refused on this connection: its approval rule holds methods {:?}; send the method itself",
            gate.rule.methods
        )));
    }
    http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| ProxyError::CallerBody("the method override is not an HTTP method".into()))
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
            let bytes = read_whole(body, state, max_body).await?;
            let method = req.method.as_str();
            let shown = req.caller_body.unwrap_or(&bytes);
            let action = portcullis_approval::http_action(method, req.path_and_query, shown);
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

    #[test]
    fn overrides_are_found_in_form_bodies() {
        let form = |ct: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(ct),
            );
            h
        };
        let url = form("application/x-www-form-urlencoded; charset=utf-8");
        assert!(is_form(&url));
        assert_eq!(
            body_overrides(&url, b"a=1&_method=delete&_METHOD=put"),
            Ok(vec!["DELETE".to_string(), "PUT".to_string()])
        );
        assert_eq!(body_overrides(&url, b"a=1"), Ok(vec![]));
        // A multipart form naming one is not read: refused by the caller.
        let multi = form("Multipart/Form-Data; boundary=x");
        assert!(is_form(&multi));
        let body =
            b"--x\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--x--";
        assert_eq!(body_overrides(&multi, body), Err(()));
        assert_eq!(body_overrides(&multi, b"--x--"), Ok(vec![]));
        // Spellings a parser may accept, refused.
        for body in [
            &b"--x\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--x--"[..],
            b"--x\r\nContent-Disposition: form-data; name*=UTF-8''_method\r\n\r\nDELETE",
            b"--x\r\nContent-Disposition: form-data; name=\"_meth\\od\"\r\n\r\nDELETE",
            b"--x\r\nContent-Disposition: form-data; name=\".method\"\r\n\r\nDELETE",
        ] {
            assert_eq!(
                body_overrides(&multi, body),
                Err(()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // PHP's mangling: `.method` and ` method` are `_method`.
        assert_eq!(
            body_overrides(&url, b".method=delete&+method=put"),
            Ok(vec!["DELETE".to_string(), "PUT".to_string()])
        );
        let h = http::HeaderMap::new();
        assert_eq!(method_overrides(&h, Some(".method=DELETE")), ["DELETE"]);
        // A list in a header: each item.
        let mut l = http::HeaderMap::new();
        l.insert(
            "x-http-method-override",
            http::HeaderValue::from_static("POST, DELETE"),
        );
        assert_eq!(method_overrides(&l, None), ["POST", "DELETE"]);
        // JSON (Laravel reads `_method` there too).
        let json = form("application/json");
        assert!(is_form(&json));
        assert_eq!(
            body_overrides(&json, br#"{"_method":"delete","a":1}"#),
            Ok(vec!["DELETE".to_string()])
        );
        assert_eq!(body_overrides(&json, br#"{"_method":["DELETE"]}"#), Err(()));
        // One serde_json cannot read may name one for another parser.
        assert_eq!(body_overrides(&json, b"not json"), Err(()));
        assert_eq!(body_overrides(&json, b"  "), Ok(vec![]));
        assert!(!is_form(&form("text/plain")));
        // Two content types: a target may read either; refused.
        let mut two = form("text/plain");
        two.append(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert!(is_form(&two));
        assert_eq!(body_overrides(&two, b"_method=DELETE"), Err(()));
    }
}
