//! Holding an HTTP request for approval: the exact action is the method,
//! the caller's path and query, and the SHA-256 of the body (read whole,
//! within the request limit, so the digest covers what will be sent).

use http::Method;
use http_body_util::BodyExt;
use portcullis_approval::{Approvals, Check, Held, Outcome, SessionRequest};
use portcullis_config::{ApprovalMode, ApprovalRule};
use portcullis_identity::{Principal, unix_now};

use crate::{Body, BodyState, ProxyError};

/// The header a caller asks for a just-in-time duration with (`30m`).
pub const SESSION_HEADER: &str = "portcullis-session";

/// The just-in-time duration the caller asked for, if any.
pub(crate) fn requested_session(
    headers: &http::HeaderMap,
) -> Result<Option<std::time::Duration>, ProxyError> {
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

#[allow(clippy::too_many_arguments)]
pub(crate) async fn hold(
    approvals: &Approvals,
    rule: &ApprovalRule,
    principal: &Principal,
    connection: &str,
    method: &Method,
    asked_session: Option<std::time::Duration>,
    path_and_query: &str,
    body: Body,
    state: &BodyState,
    max_body: u64,
) -> Result<Body, ProxyError> {
    let unavailable = |e: portcullis_approval::ReviewError| ProxyError::Review {
        review: String::new(),
        code: "approval_required",
        message: format!("this request needs approval, which cannot be checked now ({e})"),
    };
    let mut grant = None;
    let (kind, action, classification, body) = match rule.mode {
        ApprovalMode::Session => {
            if let Ok(Some(until)) = approvals.jit_until(&principal.subject, connection).await
                && until > unix_now()
            {
                return Ok(body);
            }
            let ask = SessionRequest::new(connection, rule, asked_session);
            grant = Some(ask.duration);
            ("session", ask.action, "session".to_string(), body)
        }
        ApprovalMode::Statements if portcullis_approval::holds_method(rule, method.as_str()) => {
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
            let digest = portcullis_tls::sha256_hex(&bytes);
            let action = format!("{method} {path_and_query} body-sha256:{digest}");
            ("http", action, method.to_string(), crate::full(bytes))
        }
        _ => return Ok(body),
    };
    let held = Held {
        requester: principal,
        connection,
        kind,
        action: &action,
        classification: &classification,
        rule,
        session: None,
        grant,
    };
    let review = match approvals.check(&held).await.map_err(unavailable)? {
        Check::Approved(_) => return Ok(body),
        Check::Pending(r) => r,
    };
    tracing::info!(target: "portcullis::access", principal = %principal.subject, connection, review = %review.id, "request held for review");
    match approvals
        .wait(&review.id, rule.wait, None)
        .await
        .map_err(unavailable)?
    {
        Outcome::Approved(_) => Ok(body),
        Outcome::Denied(r) => Err(ProxyError::Review {
            review: r.id.clone(),
            code: "approval_denied",
            message: format!(
                "review {} was denied by {}{}",
                r.id,
                r.decided_by.as_deref().unwrap_or("an approver"),
                r.reason
                    .as_deref()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default()
            ),
        }),
        Outcome::Expired(r) => Err(ProxyError::Review {
            review: r.id.clone(),
            code: "approval_expired",
            message: format!("review {} expired before it was approved", r.id),
        }),
        Outcome::TimedOut(r) => Err(ProxyError::Review {
            review: r.id.clone(),
            code: "approval_required",
            message: format!(
                "{}; not decided within {}s: once approved, send the identical request again",
                portcullis_approval::waiting_message(&r),
                rule.wait.as_secs()
            ),
        }),
    }
}
