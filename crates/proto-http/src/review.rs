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
