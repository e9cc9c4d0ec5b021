//! The gateway's own API on the HTTPS listener (paths that no connection
//! routes). For now one endpoint: a signed-in person mints a short-lived
//! token for an agent that acts for them.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_identity::Principal;
use serde::Deserialize;

use crate::front::Inner;
use crate::{Body, ProxyError};

pub const TOKENS: &str = "/api/v1/tokens";
/// The request is a few dozen bytes; anything larger is not one.
const MAX_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    /// `agent:NAME`.
    principal: String,
    /// e.g. `8h` (default), at most 24h.
    ttl: Option<String>,
}

pub(crate) async fn mint_for_agent(
    inner: &Inner,
    req: Request<Incoming>,
    person: &Principal,
) -> Result<Response<Body>, ProxyError> {
    if req.method() != Method::POST {
        return Err(ProxyError::Method(req.method().clone(), "POST"));
    }
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| ProxyError::BodyTooLarge {
            limit: MAX_BODY as u64,
        })?
        .to_bytes();
    let m: MintRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ProxyError::CallerBody(format!(
            "expected {{\"principal\": \"agent:NAME\", \"ttl\": \"8h\"}}: {e}"
        ))
    })?;
    let ttl = match &m.ttl {
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| ProxyError::CallerBody(format!("ttl {t:?}: {e}")))?,
        None => std::time::Duration::from_secs(8 * 3600),
    };
    let minted = inner
        .auth
        .delegate(person, &m.principal, ttl)
        .await
        .map_err(ProxyError::Delegate)?;
    // Durable before the token is shown: an unaudited token must not exist
    // in anyone's hands.
    inner
        .sessions
        .audit()
        .append(&portcullis_audit::AuditEvent::Admin {
            action: "token_delegated".into(),
            detail: serde_json::json!({
                "token_id": minted.id,
                "principal": m.principal,
                "on_behalf_of": person.subject,
                "groups": person.groups,
                "expires_at": minted.expires_at,
            }),
        })
        .await
        .map_err(|_| ProxyError::AuditUnavailable)?;
    tracing::info!(token_id = %minted.id, principal = %m.principal, on_behalf_of = %person.subject, "token minted for an agent");
    Ok(crate::error::json_response(
        StatusCode::CREATED,
        &serde_json::json!({
            "token": minted.secret,
            "id": minted.id,
            "principal": m.principal,
            "on_behalf_of": person.subject,
            "groups": person.groups,
            "expires_at": minted.expires_at,
        }),
    ))
}
