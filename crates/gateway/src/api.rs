//! The gateway's own REST API (`/api/v1`) on the HTTPS listener, beside
//! the fronts (paths that no connection routes): a signed-in person mints
//! a short-lived token for an agent that acts for them, and reviews are
//! listed and decided. The caller is authenticated by the shared admission
//! path first.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_identity::Principal;
use serde::Deserialize;

use portcullis_front::FrontContext;
use portcullis_http::{Body, ProxyError};

pub const TOKENS: &str = "/api/v1/tokens";
pub const REVIEWS: &str = "/api/v1/reviews";
pub const BUDGETS: &str = "/api/v1/budgets";
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

/// `GET PREFIX[?state=S]`, `GET PREFIX/ID`, `POST PREFIX/ID/approve|deny`
/// (`{"reason": "…"}`), where PREFIX is `/api/v1/reviews` on the gateway's
/// listener and `/reviews` on the admin listener. A review (whose action
/// may hold data) is visible to its requester, the person it acts for,
/// and members of its approver groups; deciding is for people in those
/// groups (checked by the review itself).
/// Whether `who` may see review `r`: its requester, the person it acts
/// for, and people in its approver groups.
pub(crate) fn review_visible(r: &portcullis_approval::Review, who: &Principal) -> bool {
    use portcullis_identity::PrincipalKind;
    r.requester == who.subject
        || r.on_behalf_of.as_deref() == Some(who.subject.as_str())
        || (who.kind == PrincipalKind::Human && r.approvers.iter().any(|g| who.groups.contains(g)))
}

/// `r` as `who` may read it: a preview's sample (rows, however masked)
/// is for the approvers; the requester and the person it acts for see
/// the counts.
pub(crate) fn review_for(
    mut r: portcullis_approval::Review,
    who: &Principal,
) -> portcullis_approval::Review {
    use portcullis_identity::PrincipalKind;
    let approver =
        who.kind == PrincipalKind::Human && r.approvers.iter().any(|g| who.groups.contains(g));
    if !approver && let Some(portcullis_approval::Preview::Counted { sample, .. }) = &mut r.preview
    {
        *sample = None;
    }
    r
}

pub async fn reviews(
    approvals: &portcullis_approval::Approvals,
    prefix: &str,
    req: Request<Incoming>,
    who: &Principal,
) -> Result<Response<Body>, ProxyError> {
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix(prefix).unwrap_or_default();
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let visible = |r: &portcullis_approval::Review| review_visible(r, who);
    let ok = |v: serde_json::Value| portcullis_http::json_response(StatusCode::OK, &v);
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, []) => {
            let state = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("state="))
                    .and_then(portcullis_approval::State::parse)
            });
            let list = approvals.list(state).await.map_err(ProxyError::ReviewApi)?;
            let list: Vec<_> = list
                .into_iter()
                .filter(|r| visible(r))
                .map(|r| review_for(r, who))
                .collect();
            Ok(ok(serde_json::json!({ "reviews": list })))
        }
        (Method::GET, [id]) => {
            let r = approvals.get(id).await.map_err(ProxyError::ReviewApi)?;
            if !visible(&r) {
                return Err(ProxyError::ReviewApi(
                    portcullis_approval::ReviewError::Unknown(id.to_string()),
                ));
            }
            Ok(ok(
                serde_json::to_value(review_for(r, who)).unwrap_or_default()
            ))
        }
        (Method::POST, [id, verb @ ("approve" | "deny")]) => {
            let id = id.to_string();
            let approve = *verb == "approve";
            let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
            let bytes = limited
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let reason = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["reason"].as_str().map(|s| s.chars().take(500).collect()));
            let r = approvals
                .decide(&id, who, approve, reason)
                .await
                .map_err(ProxyError::ReviewApi)?;
            tracing::info!(review = %r.id, by = %who.subject, approve, state = r.state.as_str(), "review decided");
            Ok(ok(serde_json::to_value(&r).unwrap_or_default()))
        }
        (m, _) => Err(ProxyError::Method(
            m,
            "GET on the list or a review, or POST …/ID/approve|deny",
        )),
    }
}

pub(crate) async fn mint_for_agent(
    ctx: &FrontContext,
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
    let minted = ctx
        .auth
        .delegate(person, &m.principal, ttl)
        .await
        .map_err(ProxyError::Delegate)?;
    // Durable before the token is shown: an unaudited token must not exist
    // in anyone's hands.
    ctx.sessions
        .audit()
        .append(&portcullis_audit::AuditEvent::Admin {
            action: "token_delegated".into(),
            detail: serde_json::json!({
                "token_id": minted.id,
                "principal": minted.subject,
                "on_behalf_of": person.subject,
                "groups": person.groups,
                "expires_at": minted.expires_at,
            }),
        })
        .await
        .map_err(|_| ProxyError::AuditUnavailable)?;
    tracing::info!(token_id = %minted.id, principal = %minted.subject, on_behalf_of = %person.subject, "token minted for an agent");
    Ok(portcullis_http::json_response(
        StatusCode::CREATED,
        &serde_json::json!({
            "token": minted.secret,
            "id": minted.id,
            "principal": minted.subject,
            "on_behalf_of": person.subject,
            "groups": person.groups,
            "expires_at": minted.expires_at,
        }),
    ))
}
