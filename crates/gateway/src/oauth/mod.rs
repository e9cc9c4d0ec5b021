//! The gateway as the OAuth 2.1 authorization server of MCP clients (the
//! MCP authorization model): protected resource metadata (RFC 9728),
//! authorization server metadata (RFC 8414), dynamic client registration
//! (RFC 7591), authorization code with PKCE (RFC 7636) and resource
//! indicators (RFC 8707), refresh tokens that rotate.
//!
//! People sign in through the configured OpenID provider: the gateway is
//! that provider's client, so an identity provider without dynamic
//! registration or resource indicators still serves agents. What a client
//! gets is a short-lived gateway token that acts for the person, as
//! `agent:CLIENT@person` with the person's groups as its upper bound, and
//! is accepted at the one resource it was asked for.
//!
//! Every secret of a sign-in lives in the store by hash, in one family per
//! consent: a spent code or refresh token that comes back revokes the
//! family, access tokens included. Each phase is its own file:
//! [`metadata`] (discovery), [`register`], [`authorize`] (the browser's
//! side: authorize, the provider's callback, consent), [`token`].

mod authorize;
mod idp;
mod metadata;
mod register;
mod token;

use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_audit::{AuditEvent, AuditLog, OAuthAction};
use portcullis_config::oauth::OAuth;
use portcullis_http::{Body, json_response};
use portcullis_identity::OidcVerifier;
use portcullis_store::Store;
use serde::{Deserialize, Serialize};

// Shared with the console's sign-in pages.
pub(crate) use authorize::{escape, page};
pub use metadata::challenge_header;
#[cfg(feature = "saml")]
pub(crate) use register::PerPeer;

/// The authority a request was sent to, as text (for the challenge).
pub fn authority<B>(req: &Request<B>) -> Option<String> {
    metadata::authority_of(req).map(|a| a.as_str().to_owned())
}

pub const WELL_KNOWN_RESOURCE: &str = "/.well-known/oauth-protected-resource";
pub const WELL_KNOWN_SERVER: &str = "/.well-known/oauth-authorization-server";
const AUTHORIZE: &str = "/oauth/authorize";
const CALLBACK: &str = "/oauth/callback";
const CONSENT: &str = "/oauth/consent";
const TOKEN: &str = "/oauth/token";
const REGISTER: &str = "/oauth/register";
/// The browser's binding to one sign-in (`__Host-`: secure, this host
/// only, path `/`).
const COOKIE: &str = "__Host-portcullis-oauth";
/// Forms and registrations are small.
const MAX_BODY: usize = 16 * 1024;
/// How long a person has to sign in and decide, and a code to be
/// exchanged.
const SIGN_IN_SECS: i64 = 600;
const CODE_SECS: i64 = 60;
/// The only scope: use the MCP resource the token is bound to.
pub const SCOPE: &str = "mcp";

/// Whether `path` is one of the authorization server's endpoints.
pub fn is_oauth_path(path: &str) -> bool {
    path.starts_with(WELL_KNOWN_RESOURCE)
        || path == WELL_KNOWN_SERVER
        || path.starts_with("/oauth/")
}

/// What the authorization server is built from.
pub struct Parts {
    pub cfg: OAuth,
    pub public_url: String,
    pub store: Store,
    pub audit: AuditLog,
    pub verifier: OidcVerifier,
    /// Host names callers use for the gateway.
    pub hosts: Vec<String>,
    pub domain: Option<String>,
    pub console: Arc<crate::console::Console>,
}

/// The authorization server: built once at start (`[oauth]` changes
/// need a restart, like `[[oidc]]`).
pub struct OAuthServer {
    cfg: OAuth,
    client_secret: Option<portcullis_config::Secret>,
    /// This server's issuer identifier: the gateway's public URL.
    issuer: String,
    store: Store,
    audit: AuditLog,
    verifier: OidcVerifier,
    idp: idp::Provider,
    /// Host names callers use for the gateway (a resource must name one).
    hosts: Vec<String>,
    domain: Option<String>,
    /// When the store was last swept of ended grants (Unix seconds).
    swept: std::sync::atomic::AtomicI64,
    registrations: register::PerPeer,
    /// Sign-ins started per address (each keeps a row until it expires).
    sign_ins: register::PerPeer,
    /// Where a console sign-in ends.
    console: Arc<crate::console::Console>,
}

/// How often, at most, ended grants are swept, and how long after their
/// end they are kept (for an operator looking at `token list`); sign-ins
/// in progress go as soon as they expired.
const SWEEP_EVERY_SECS: i64 = 600;
const KEEP_ENDED_SECS: i64 = 24 * 3600;

impl OAuthServer {
    pub fn new(p: Parts) -> Result<Arc<Self>, String> {
        let Parts {
            cfg,
            public_url,
            store,
            audit,
            verifier,
            hosts,
            domain,
            console,
        } = p;
        let client_secret = match &cfg.client_secret {
            None => None,
            Some(r) => Some(
                r.resolve()
                    .map_err(|e| format!("oauth.client_secret: {e}"))?,
            ),
        };
        Ok(Arc::new(Self {
            idp: idp::Provider::new(&cfg.issuer),
            cfg,
            client_secret,
            issuer: public_url.trim_end_matches('/').to_owned(),
            store,
            audit,
            verifier,
            hosts,
            domain,
            swept: std::sync::atomic::AtomicI64::new(0),
            registrations: register::PerPeer::new(register::PER_PEER),
            sign_ins: register::PerPeer::new(register::SIGN_INS_PER_PEER),
            console,
        }))
    }

    /// Sweep ended grants from the store, in the background, at most
    /// once an hour (each refresh adds a token row and a secret).
    fn sweep_now_and_then(&self) {
        use std::sync::atomic::Ordering;
        let now = unix_now();
        let last = self.swept.load(Ordering::Relaxed);
        if now - last < SWEEP_EVERY_SECS
            || self
                .swept
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            match store.sweep_oauth(now - KEEP_ENDED_SECS, now).await {
                Ok(n) => tracing::debug!(rows = n, "ended OAuth grants swept"),
                Err(e) => tracing::warn!(error = %e, "sweeping ended OAuth grants failed"),
            }
        });
    }

    /// Serve one request to an OAuth path. `ctx` is the config in force
    /// (which connections exist and who may reach them).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: std::net::IpAddr,
        ctx: &portcullis_front::FrontContext,
        mcp: &portcullis_mcp::McpEndpoint,
    ) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let resp = if let Some(rest) = path.strip_prefix(WELL_KNOWN_RESOURCE) {
            self.resource_metadata(&req, rest, mcp)
        } else if path == WELL_KNOWN_SERVER {
            self.server_metadata()
        } else if path == REGISTER {
            self.register(req, peer).await
        } else if path == AUTHORIZE {
            self.sweep_now_and_then();
            if !self.sign_ins.allow(peer, unix_now()) {
                return no_store(too_many_sign_ins());
            }
            self.authorize(req, mcp).await
        } else if path == CALLBACK {
            self.callback(req, ctx).await
        } else if path == CONSENT {
            self.consent(req).await
        } else if path == TOKEN {
            self.token(req, mcp).await
        } else {
            json_error(StatusCode::NOT_FOUND, "not_found", "no such OAuth endpoint")
        };
        no_store(resp)
    }

    async fn audit(&self, e: OAuthEntry<'_>) -> Result<(), portcullis_audit::AuditError> {
        let event = AuditEvent::OAuth {
            action: e.action,
            client_id: e.client_id.to_owned(),
            principal: e.principal,
            on_behalf_of: e.person.map(str::to_owned),
            token_id: e.token_id,
            family: e.family.map(str::to_owned),
            resource: e.resource.map(str::to_owned),
            reason: e.reason,
        };
        self.audit.append(&event).await.map(|_| ())
    }
}

/// One [`AuditEvent::OAuth`] entry, built by the phase that writes it.
struct OAuthEntry<'a> {
    action: OAuthAction,
    client_id: &'a str,
    principal: Option<String>,
    person: Option<&'a str>,
    token_id: Option<String>,
    family: Option<&'a str>,
    resource: Option<&'a str>,
    reason: Option<String>,
}

impl<'a> OAuthEntry<'a> {
    fn new(action: OAuthAction, client_id: &'a str) -> Self {
        Self {
            action,
            client_id,
            principal: None,
            person: None,
            token_id: None,
            family: None,
            resource: None,
            reason: None,
        }
    }
}

/// What a client asked for at `/oauth/authorize`, checked; carried
/// through sign-in and consent into the code.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ask {
    client_id: String,
    client_name: String,
    redirect_uri: String,
    state: Option<String>,
    /// The PKCE challenge (S256).
    challenge: String,
    /// The resource as the client named it, and its audience key.
    resource: String,
    audience: String,
}

/// A person signed in by the identity provider, and until when what they
/// grant may be used.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Person {
    subject: String,
    groups: Vec<String>,
    /// Unix seconds: the end of the grant (sign-in + refresh_token_ttl).
    deadline: i64,
}

/// A fresh random secret (256 bits, base64url) and the hash it is kept
/// under.
pub(crate) fn secret() -> Result<(String, [u8; 32]), StatusCode> {
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let s = URL_SAFE_NO_PAD.encode(raw);
    let h = hash(&s);
    Ok((s, h))
}

/// SHA-256 of a secret: what the store keeps and looks it up by.
pub(crate) fn hash(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, s.as_bytes()).as_ref());
    out
}

/// The S256 PKCE challenge of `verifier` (RFC 7636 §4.2).
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()).as_ref())
}

fn unix_now() -> i64 {
    portcullis_identity::unix_now()
}

fn too_many_sign_ins() -> Response<Body> {
    json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "temporarily_unavailable",
        "too many sign-ins started from this network, or from all of them; try again in a few minutes",
    )
}

/// An OAuth error as JSON (RFC 6749 §5.2, RFC 7591 §3.2.2).
fn json_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json_response(
        status,
        &serde_json::json!({"error": error, "error_description": description}),
    )
}

/// Tokens, codes and pages that carry them are never cached (RFC 6749
/// §5.1), nor sent on as a referrer.
fn no_store(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// Whether a request says its body is a form
/// (`application/x-www-form-urlencoded`, with or without parameters).
pub(crate) fn is_form(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The body of a form POST, bounded, as name/value pairs; `None` when it
/// is too large or not a form.
pub(crate) async fn form(req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let is_form = is_form(req.headers());
    let bytes = body(req).await?;
    if !is_form {
        return None;
    }
    Some(pairs(&bytes))
}

async fn body(req: Request<Incoming>) -> Option<Bytes> {
    http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

fn pairs(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes)
        .into_owned()
        .take(64)
        .collect()
}

/// The one value of `name`: a parameter sent twice is refused (RFC 6749
/// §3.1: parameters must not be included more than once).
fn one<'a>(params: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, String> {
    let mut found = params.iter().filter(|(k, _)| k == name);
    let first = found.next().map(|(_, v)| v.as_str());
    if found.next().is_some() {
        return Err(format!("{name} is given more than once"));
    }
    Ok(first.filter(|v| !v.is_empty()))
}

/// The query of a request as name/value pairs.
fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    pairs(req.uri().query().unwrap_or("").as_bytes())
}

/// The value of cookie `name` in the request.
fn cookie<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    portcullis_http::headers::cookie(req.headers(), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_proxy_keeps_the_sign_in_cookie_from_targets() {
        assert!(COOKIE.starts_with(portcullis_http::headers::GATEWAY_COOKIE_PREFIX));
    }

    #[test]
    fn parameters_sent_twice_are_refused() {
        let p = pairs(b"a=1&b=2&a=3&c=");
        assert!(one(&p, "a").is_err());
        assert_eq!(one(&p, "b").unwrap(), Some("2"));
        assert_eq!(one(&p, "c").unwrap(), None);
        assert_eq!(one(&p, "d").unwrap(), None);
    }
}
