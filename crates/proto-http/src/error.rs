//! Every refusal the HTTP front can give, each with its status and a JSON
//! body `{"error": CODE, "message": TEXT, ...}`. Messages name principals,
//! connections and reasons, never a credential.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use portcullis_identity::AuthError;
use portcullis_policy::DenyReason;

use crate::Body;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route: address a connection as /c/<connection>/<path>")]
    NoRoute,
    #[error("{0}")]
    Auth(AuthError),
    #[error("no connection named {0:?}")]
    UnknownConnection(String),
    #[error("connection {connection:?} speaks {protocol}, not HTTP")]
    WrongProtocol {
        connection: String,
        protocol: portcullis_config::Protocol,
    },
    #[error("{0}")]
    Forbidden(DenyReason),
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request body could not be read: {0}")]
    CallerBody(String),
    /// The request's path is not one the gateway forwards.
    #[error("{0}")]
    BadPath(String),
    #[error("header {name}: {reason}")]
    BadHeader { name: &'static str, reason: String },
    #[error("connection {connection:?}: the target did not answer within {}", humantime_secs(*after))]
    UpstreamTimeout { connection: String, after: Duration },
    #[error("connection {connection:?}: {reason}")]
    Upstream { connection: String, reason: String },
    #[error("connection {connection:?}: the response could not be masked: {reason}")]
    MaskFailed { connection: String, reason: String },
    #[error("the audit log cannot record this request, so it is refused")]
    AuditUnavailable,
    /// The session's recording cannot be written (a full spool): the
    /// request is refused and the connection's session ends.
    #[error("this session cannot be recorded, so it is refused and ends ({0})")]
    RecordingUnavailable(String),
    #[error(
        "this connection already carries {limit} sessions (principal and target pairs); open another connection"
    )]
    TooManySessions { limit: usize },
    /// The caller holds its share of its agent's streams already.
    #[error("connection {connection:?}: {reason}")]
    AgentBusy { connection: String, reason: String },
    #[error("{message}")]
    Review {
        review: String,
        /// `approval_required`, `approval_denied` or `approval_expired`.
        code: &'static str,
        message: String,
    },
    #[error("{0}")]
    ReviewApi(portcullis_approval::ReviewError),
    #[error("connection {connection:?} is served by agent {agent:?}, which is not connected")]
    AgentUnavailable { connection: String, agent: String },
    #[error("{0}")]
    Delegate(portcullis_identity::DelegateError),
    #[error("{0} is not allowed here; use {1}")]
    Method(http::Method, &'static str),
    /// A reload replaced the rules this request was admitted under while
    /// it was held or its body arrived: not forwarded under rules that no
    /// longer exist.
    #[error("the gateway's config changed while this request was being admitted; send it again")]
    ConfigChanged,
    /// A budget of the grant is used up (429, with `Retry-After` when it
    /// frees up), or cannot be checked (503).
    #[error("portcullis: {0}")]
    Budget(portcullis_front::BudgetError),
    /// The caller's connection hung up before the answer: nothing more is
    /// forwarded for it, and its session ends `caller_gone`. Nobody
    /// reads this answer; its status (nginx's 499) is for the audit log.
    #[error("the caller closed its connection before the answer")]
    CallerGone,
}

impl ProxyError {
    /// The error with the connection's secret overwritten in what the
    /// target's bytes may have filled in (a reason quoting its headers).
    pub fn scrubbed(self, s: &crate::scrub::Scrubber) -> Self {
        match self {
            Self::Upstream { connection, reason } => Self::Upstream {
                connection,
                reason: s.text(&reason),
            },
            Self::MaskFailed { connection, reason } => Self::MaskFailed {
                connection,
                reason: s.text(&reason),
            },
            other => other,
        }
    }
}

/// nginx's status for a request whose client closed the connection
/// before the answer: no registered code says it.
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

fn humantime_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute | Self::UnknownConnection(_) | Self::WrongProtocol { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::Auth(AuthError::Unavailable) | Self::AuditUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Auth(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::CallerBody(_) | Self::BadPath(_) | Self::BadHeader { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream { .. } | Self::MaskFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::AgentUnavailable { .. } | Self::ConfigChanged | Self::RecordingUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Review { .. } => StatusCode::FORBIDDEN,
            Self::ReviewApi(portcullis_approval::ReviewError::Unknown(_)) => StatusCode::NOT_FOUND,
            Self::ReviewApi(portcullis_approval::ReviewError::Unavailable) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::ReviewApi(
                portcullis_approval::ReviewError::NotPending { .. }
                | portcullis_approval::ReviewError::Expired(_)
                | portcullis_approval::ReviewError::AlreadyApproved(_),
            ) => StatusCode::CONFLICT,
            Self::ReviewApi(_) => StatusCode::FORBIDDEN,
            Self::Delegate(portcullis_identity::DelegateError::NotAPerson(_)) => {
                StatusCode::FORBIDDEN
            }
            Self::Delegate(portcullis_identity::DelegateError::Auth(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Delegate(portcullis_identity::DelegateError::TooMany { .. }) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Delegate(_) => StatusCode::BAD_REQUEST,
            Self::Method(..) => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManySessions { .. } | Self::AgentBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Budget(portcullis_front::BudgetError::Exceeded { .. }) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Budget(portcullis_front::BudgetError::Unavailable(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::CallerGone => CLIENT_CLOSED_REQUEST,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::Auth(AuthError::Unavailable) => "auth_unavailable",
            Self::Auth(_) => "unauthenticated",
            Self::UnknownConnection(_) => "unknown_connection",
            Self::WrongProtocol { .. } => "wrong_protocol",
            Self::Forbidden(_) => "forbidden",
            Self::BodyTooLarge { .. } => "payload_too_large",
            Self::CallerBody(_) | Self::BadPath(_) | Self::BadHeader { .. } => "bad_request",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::Upstream { .. } => "bad_gateway",
            Self::MaskFailed { .. } => "masking_failed",
            Self::AuditUnavailable => "audit_unavailable",
            Self::RecordingUnavailable(_) => "recording_unavailable",
            Self::AgentUnavailable { .. } => "agent_unavailable",
            Self::Review { code, .. } => code,
            Self::ReviewApi(portcullis_approval::ReviewError::Unknown(_)) => "not_found",
            Self::ReviewApi(portcullis_approval::ReviewError::SelfApproval) => "self_approval",
            Self::ReviewApi(portcullis_approval::ReviewError::Unavailable) => "store_unavailable",
            Self::ReviewApi(
                portcullis_approval::ReviewError::NotPending { .. }
                | portcullis_approval::ReviewError::Expired(_)
                | portcullis_approval::ReviewError::AlreadyApproved(_),
            ) => "conflict",
            Self::ReviewApi(_) => "forbidden",
            Self::Delegate(portcullis_identity::DelegateError::NotAPerson(_)) => "forbidden",
            Self::Delegate(portcullis_identity::DelegateError::TooMany { .. }) => "too_many_tokens",
            Self::Delegate(_) => "bad_request",
            Self::Method(..) => "method_not_allowed",
            Self::TooManySessions { .. } => "too_many_sessions",
            Self::AgentBusy { .. } => "agent_busy",
            Self::ConfigChanged => "config_changed",
            Self::Budget(portcullis_front::BudgetError::Exceeded { .. }) => "budget_exceeded",
            Self::Budget(portcullis_front::BudgetError::Unavailable(_)) => "store_unavailable",
            Self::CallerGone => "caller_gone",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
        });
        match &self {
            Self::UnknownConnection(c)
            | Self::UpstreamTimeout { connection: c, .. }
            | Self::Upstream { connection: c, .. }
            | Self::MaskFailed { connection: c, .. }
            | Self::AgentBusy { connection: c, .. } => body["connection"] = c.clone().into(),
            Self::Review { review, .. } => {
                body["review"] = review.clone().into();
                body["approve_with"] = format!("portcullis reviews approve {review}").into();
            }
            Self::AgentUnavailable { connection, agent } => {
                body["connection"] = connection.clone().into();
                body["agent"] = agent.clone().into();
            }
            Self::Forbidden(DenyReason::NoGrant {
                principal,
                connection,
            }) => {
                body["principal"] = principal.clone().into();
                body["connection"] = connection.clone().into();
            }
            _ => {}
        }
        if let Self::Budget(portcullis_front::BudgetError::Exceeded {
            grant,
            what,
            used,
            limit,
            resets_at,
            ..
        }) = &self
        {
            body["budget"] = serde_json::json!({
                "grant": grant, "what": what, "used": used, "limit": limit, "resets_at": resets_at,
            });
        }
        let retry_after = match &self {
            Self::Budget(b) => b.retry_after(),
            _ => None,
        };
        let mut resp = json_response(self.status(), &body);
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, Self::Auth(_)) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis\""),
            );
        }
        resp
    }
}

/// A complete JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(full(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A body from bytes already in memory.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(r: Response<Body>) -> serde_json::Value {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    #[tokio::test]
    async fn forbidden_names_principal_and_connection() {
        let e = ProxyError::Forbidden(DenyReason::NoGrant {
            principal: "agent:x".into(),
            connection: "db".into(),
        });
        let r = e.into_response();
        assert_eq!(r.status(), 403);
        let j = body_json(r).await;
        assert_eq!(j["error"], "forbidden");
        assert_eq!(j["principal"], "agent:x");
        assert!(j["message"].as_str().unwrap().contains("agent:x"));
    }

    #[tokio::test]
    async fn unauthenticated_has_challenge() {
        let r = ProxyError::Auth(AuthError::Missing).into_response();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(body_json(r).await["error"], "unauthenticated");
    }
}
