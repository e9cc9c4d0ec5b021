//! The web console under `/ui/`: pages embedded in the binary that read
//! and write through the same `/api/v1` the CLI uses, so the two can never
//! disagree about who sees what.
//!
//! A console sign-in is a gateway token bound to the audience `console`
//! and carried only in a cookie (`__Host-`, `HttpOnly`, `Secure`,
//! `SameSite=Strict`): no script can read it, no other front accepts it,
//! signing out revokes it, and the HTTP proxy never passes it to a target.
//! A state change made with it must also carry the CSRF value the page
//! read from `/api/v1/me` (derived from the token, so nothing more is
//! stored). People sign in through the `[oauth]` provider client, or on a
//! quickstart through a one-time link.

pub mod api;
#[cfg(feature = "saml")]
pub mod saml;
#[cfg(not(feature = "saml"))]
#[path = "saml_absent.rs"]
pub mod saml;

use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use portcullis_audit::{AuditEvent, AuditLog};
use portcullis_http::{Body, full};
use portcullis_identity::{AuthMethod, Principal, Resource};
use portcullis_store::{GrantKind, NewTokenRow, OAuthGrantRow, Spent, Store};

/// Where the console lives.
pub const UI: &str = "/ui";
/// The SAML service provider's metadata, and where the provider's answers
/// are posted.
pub const METADATA_PATH: &str = "/saml/metadata";
pub const ACS_PATH: &str = "/saml/acs";
/// Named in the metadata (samael requires one); answers that single
/// logout is not supported.
pub const SLO_PATH: &str = "/saml/slo";
/// The console's session cookie.
pub const COOKIE: &str = "__Host-portcullis-console";
/// The header a cookie-authenticated state change carries.
pub const CSRF_HEADER: &str = "x-portcullis-csrf";
/// How long a quickstart's sign-in link stays usable.
const LINK_SECS: i64 = 24 * 3600;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The console: sign-in, sign-out and its pages.
pub struct Console {
    store: Store,
    audit: AuditLog,
    cfg: portcullis_config::console::Console,
    /// The gateway's public URL (the origin state changes must come from).
    origin: String,
    /// Where the audit log's checkpoints and public key are.
    audit_dir: std::path::PathBuf,
    /// One chain verification at a time (it reads the whole log).
    verifying: tokio::sync::Semaphore,
    /// Where recordings are read from (this gateway's spool, or the
    /// shared object store).
    sink: portcullis_recordings::RecordingSink,
    /// Open review streams per principal (each polls the store).
    streams: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Sign-in through a SAML provider, with `[saml]`.
    saml: Option<saml::SamlSp>,
    /// The agents linked to this gateway (the access page's health).
    links: Arc<portcullis_link::AgentRegistry>,
}

/// What the console is built from besides the store and the audit log.
pub struct Parts {
    pub cfg: portcullis_config::console::Console,
    /// The gateway's public URL.
    pub public_url: String,
    /// Where the audit log's checkpoints and public key are.
    pub audit_dir: std::path::PathBuf,
    pub sink: portcullis_recordings::RecordingSink,
    pub saml: Option<saml::SamlSp>,
    pub links: Arc<portcullis_link::AgentRegistry>,
}

/// Review streams one principal may hold open, and all together.
const STREAMS_PER_PRINCIPAL: usize = 4;
const STREAMS_IN_ALL: usize = 256;

/// A place among the open review streams, given back when dropped.
pub struct StreamSlot {
    streams: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    principal: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.streams.lock()
            && let Some(n) = m.get_mut(&self.principal)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.principal);
            }
        }
    }
}

/// What a quickstart sign-in link signs in.
#[derive(serde::Serialize, serde::Deserialize)]
struct LinkData {
    subject: String,
    groups: Vec<String>,
}

impl Console {
    pub fn new(store: Store, audit: AuditLog, p: Parts) -> Arc<Self> {
        Arc::new(Self {
            store,
            audit,
            cfg: p.cfg,
            origin: p.public_url.trim_end_matches('/').to_owned(),
            audit_dir: p.audit_dir,
            verifying: tokio::sync::Semaphore::new(1),
            streams: Default::default(),
            sink: p.sink,
            saml: p.saml,
            links: p.links,
        })
    }

    /// The agents linked to this gateway.
    pub fn agents(&self) -> Vec<portcullis_link::AgentInfo> {
        self.links.list()
    }

    /// A place for one more review stream of `principal`, if there is one.
    pub fn stream_slot(&self, principal: &str) -> Option<StreamSlot> {
        let mut m = self.streams.lock().ok()?;
        let all: usize = m.values().sum();
        let mine = m.get(principal).copied().unwrap_or(0);
        if all >= STREAMS_IN_ALL || mine >= STREAMS_PER_PRINCIPAL {
            return None;
        }
        m.insert(principal.to_owned(), mine + 1);
        Some(StreamSlot {
            streams: self.streams.clone(),
            principal: principal.to_owned(),
        })
    }

    /// Whether `p` may see everything (every session, the audit log): a
    /// person (not an agent, not an agent acting for a person) in one of
    /// the admin groups.
    pub fn is_admin(&self, p: &Principal) -> bool {
        is_admin_in(&self.cfg.admin_groups, p)
    }

    /// Serve `/ui/…`. `oauth` signs people in through the provider.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        oauth: Option<&crate::oauth::OAuthServer>,
        peer: std::net::IpAddr,
    ) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let rest = path.strip_prefix(UI).unwrap_or("");
        let resp = match (req.method(), rest) {
            (&Method::GET, "" | "/" | "/index.html") => asset(INDEX, "text/html; charset=utf-8"),
            (&Method::GET, "/app.js") => asset(APP_JS, "text/javascript; charset=utf-8"),
            (&Method::GET, "/app.css") => asset(APP_CSS, "text/css; charset=utf-8"),
            (&Method::GET, "/login") => match oauth {
                Some(o) => o.console_sign_in(peer).await,
                None => message(
                    StatusCode::NOT_FOUND,
                    "sign-in through an identity provider needs [oauth] in the gateway's config",
                ),
            },
            (&Method::GET, "/login/saml") => match &self.saml {
                Some(s) => s.sign_in(peer).await,
                None => message(
                    StatusCode::NOT_FOUND,
                    "sign-in through a SAML provider needs [saml] in the gateway's config",
                ),
            },
            (&Method::GET, "/link") => self.link(&req).await,
            // The form of the page above: reads its own body.
            (&Method::POST, "/link") => return self.link_posted(req).await,
            // Which sign-in buttons the page shows.
            (&Method::GET, "/methods") => secure(portcullis_http::json_response(
                StatusCode::OK,
                &serde_json::json!({"oidc": oauth.is_some(), "saml": self.saml.is_some()}),
            )),
            (&Method::POST, "/logout") => self.logout(&req).await,
            _ => message(StatusCode::NOT_FOUND, "no such page"),
        };
        // Whatever the browser still sends is read, so the answer is not
        // lost to a reset stream.
        portcullis_http::linger(req.into_body()).await;
        resp
    }

    /// Serve `/saml/…`: the service provider's metadata and the endpoint
    /// the provider's answers are posted to.
    pub async fn handle_saml(
        &self,
        req: Request<Incoming>,
        peer: std::net::IpAddr,
    ) -> Response<Body> {
        let Some(sp) = &self.saml else {
            portcullis_http::linger(req.into_body()).await;
            return message(
                StatusCode::NOT_FOUND,
                "this gateway is not a SAML service provider (configure [saml])",
            );
        };
        match (req.method(), req.uri().path()) {
            (&Method::GET, METADATA_PATH) => sp.metadata(),
            (&Method::POST, ACS_PATH) => sp.acs(req, self, peer).await,
            (_, SLO_PATH) => {
                portcullis_http::linger(req.into_body()).await;
                message(
                    StatusCode::NOT_IMPLEMENTED,
                    "single logout is not supported: sign out in the console, which revokes its session",
                )
            }
            _ => {
                portcullis_http::linger(req.into_body()).await;
                message(StatusCode::NOT_FOUND, "no such SAML endpoint")
            }
        }
    }

    /// Whether the console offers sign-in through a SAML provider.
    pub fn has_saml(&self) -> bool {
        self.saml.is_some()
    }

    /// A person signed in (by the provider, or a link): their console
    /// session, and the browser sent to the console.
    pub async fn signed_in(&self, person: &Principal, via: &str) -> Response<Body> {
        match self
            .open_session(&person.subject, &person.groups, via)
            .await
        {
            Ok(secret) => {
                let mut resp = redirect(&format!("{UI}/"));
                let ttl = self.cfg.session_ttl.as_secs();
                set_cookie(&mut resp, &secret, ttl as i64);
                resp
            }
            Err(e) => {
                tracing::error!(error = %e, "console sign-in could not be stored or audited");
                message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store or the audit log is unavailable",
                )
            }
        }
    }

    async fn open_session(
        &self,
        subject: &str,
        groups: &[String],
        via: &str,
    ) -> Result<String, String> {
        let token = portcullis_identity::token::generate().map_err(|e| e.to_string())?;
        let now = portcullis_identity::unix_now();
        let expires_at = now + self.cfg.session_ttl.as_secs() as i64;
        // Durable evidence first: no console session without its entry.
        self.audit
            .append(&AuditEvent::Admin {
                action: "console_signed_in".into(),
                detail: serde_json::json!({
                    "principal": subject,
                    "groups": groups,
                    "token_id": token.hash.id(),
                    "via": via,
                    "expires_at": expires_at,
                }),
            })
            .await
            .map_err(|e| e.to_string())?;
        let stored = self
            .store
            .insert_token(&NewTokenRow {
                hash: token.hash,
                subject,
                groups,
                created_at: now,
                expires_at: Some(expires_at),
                on_behalf_of: None,
                audience: Some("console"),
                oauth_family: None,
            })
            .await;
        if let Err(e) = stored {
            // The entry above names a session that never began: say so
            // (a review found the log claiming a sign-in the store refused).
            let _ = self
                .audit
                .append(&AuditEvent::Admin {
                    action: "console_sign_in_refused".into(),
                    detail: serde_json::json!({
                        "principal": subject,
                        "token_id": token.hash.id(),
                        "via": via,
                        "reason": e.to_string(),
                    }),
                })
                .await;
            return Err(e.to_string());
        }
        tracing::info!(principal = %subject, token_id = %token.hash.id(), via, "console sign-in");
        Ok(token.secret)
    }

    /// `GET /ui/link?t=…`: a quickstart's one-time sign-in link. In a
    /// browser (which says `Sec-Fetch-Site`, whatever its value) it only
    /// shows whom it would sign in, with a button; a client without
    /// fetch metadata (curl, a script) is signed in at once. A review's
    /// page navigated an admin's browser to the attacker's own link and
    /// silently swapped the admin's console session for the attacker's;
    /// a re-review did it again through a redirect from a link the admin
    /// opened (which keeps `Sec-Fetch-Site: none`).
    async fn link(&self, req: &Request<Incoming>) -> Response<Body> {
        let t = req
            .uri()
            .query()
            .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "t"))
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        match looks_like_a_browser(req.headers()) {
            false => self.use_link(&t).await,
            true => self.link_page(&t).await,
        }
    }

    /// The page a link reached from another page shows: whom it signs in,
    /// and a button that posts it.
    async fn link_page(&self, t: &str) -> Response<Body> {
        let now = portcullis_identity::unix_now();
        let data = match self
            .store
            .peek_oauth_grant(&crate::oauth::hash(t), GrantKind::Link, now)
            .await
        {
            Ok(Some(data)) => data,
            Ok(None) => return link_unusable(),
            Err(e) => {
                tracing::error!(error = %e, "console link lookup failed");
                return message(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable");
            }
        };
        let Ok(who) = serde_json::from_str::<LinkData>(&data) else {
            return message(StatusCode::FORBIDDEN, "this sign-in link is damaged");
        };
        let subject = crate::oauth::escape(&who.subject);
        crate::oauth::page(
            StatusCode::OK,
            "Sign in to the console",
            &format!(
                "<p>This link signs this browser in to the Portcullis console as <b>{subject}</b>, \
                 replacing any console session it has.</p>\
                 <p>If you did not open this link yourself, close this page.</p>\
                 <form method=\"post\" action=\"{UI}/link\">\
                 <input type=\"hidden\" name=\"t\" value=\"{t}\">\
                 <button type=\"submit\">Sign in as {subject}</button></form>",
                t = crate::oauth::escape(t),
            ),
        )
    }

    /// `POST /ui/link`: the button of [`Self::link_page`], from this
    /// origin only (a browser says where a form came from).
    async fn link_posted(&self, req: Request<Incoming>) -> Response<Body> {
        let h = req.headers();
        // Without fetch metadata, the `Origin` every browser sends with
        // a POST must be there and be ours (code review).
        let same_origin = match h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
            Some(site) => site == "same-origin",
            None => h
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|o| o.eq_ignore_ascii_case(&self.origin)),
        };
        if !same_origin {
            portcullis_http::linger(req.into_body()).await;
            return message(
                StatusCode::FORBIDDEN,
                "a sign-in link is used from the console's own page",
            );
        }
        let Some(params) = crate::oauth::form(req).await else {
            return message(StatusCode::BAD_REQUEST, "expected the sign-in form");
        };
        let t = params
            .iter()
            .find(|(k, _)| k == "t")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        self.use_link(t).await
    }

    /// Spend the link `t` and sign its person in.
    async fn use_link(&self, t: &str) -> Response<Body> {
        let h = crate::oauth::hash(t);
        let now = portcullis_identity::unix_now();
        let data = match self.store.spend_oauth_grant(&h, GrantKind::Link, now).await {
            Ok(Spent::Fresh { data, .. }) => data,
            Ok(_) => return link_unusable(),
            Err(e) => {
                tracing::error!(error = %e, "console link lookup failed");
                return message(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable");
            }
        };
        let Ok(who) = serde_json::from_str::<LinkData>(&data) else {
            return message(StatusCode::FORBIDDEN, "this sign-in link is damaged");
        };
        let person = Principal {
            kind: portcullis_identity::PrincipalKind::of_subject(&who.subject),
            subject: who.subject,
            groups: who.groups,
            via: AuthMethod::GatewayToken {
                token_id: String::new(),
                on_behalf_of: None,
                audience: None,
            },
        };
        self.signed_in(&person, "link").await
    }

    /// `POST /ui/logout`: revoke the session (every gateway refuses it
    /// from the next request) and clear the cookie.
    async fn logout(&self, req: &Request<Incoming>) -> Response<Body> {
        let live = match session_cookie(req.headers()) {
            Some(secret) if csrf_ok(req.headers(), &secret, &self.origin) => {
                match portcullis_identity::token::parse(&secret) {
                    Ok(hash) => match self.store.token_by_hash(&hash).await {
                        Ok(Some(t))
                            if t.audience.as_deref() == Some("console")
                                && t.revoked_at.is_none() =>
                        {
                            Some(hash)
                        }
                        _ => None,
                    },
                    Err(_) => None,
                }
            }
            _ => None,
        };
        if let Some(hash) = live {
            let now = portcullis_identity::unix_now();
            if let Err(e) = self.store.revoke_token(&hash.id(), now).await {
                tracing::error!(error = %e, "console sign-out could not revoke its session");
                return message(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable");
            }
            let _ = self
                .audit
                .append(&AuditEvent::Admin {
                    action: "console_signed_out".into(),
                    detail: serde_json::json!({"token_id": hash.id()}),
                })
                .await;
        } else {
            return message(
                StatusCode::FORBIDDEN,
                "sign-out needs the console's own request",
            );
        }
        let mut resp = message(StatusCode::OK, "signed out");
        set_cookie(&mut resp, "", 0);
        resp
    }

    pub fn sink(&self) -> &portcullis_recordings::RecordingSink {
        &self.sink
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Where state changes made with the cookie must come from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// Make a one-time console sign-in link for `subject` in `groups` (the
/// quickstart's local admin): the secret to put in the URL. It replaces
/// the person's previous link.
pub async fn make_link(store: &Store, subject: &str, groups: &[String]) -> Result<String, String> {
    let token = portcullis_identity::token::generate().map_err(|e| e.to_string())?;
    let secret = token
        .secret
        .replacen(portcullis_identity::token::PREFIX, "pcs_", 1);
    let h = crate::oauth::hash(&secret);
    let now = portcullis_identity::unix_now();
    store
        .revoke_oauth_grants_of(GrantKind::Link, subject, now)
        .await
        .map_err(|e| e.to_string())?;
    let data = serde_json::to_string(&LinkData {
        subject: subject.to_owned(),
        groups: groups.to_vec(),
    })
    .map_err(|e| e.to_string())?;
    store
        .insert_oauth_grant(&OAuthGrantRow {
            hash: h,
            kind: GrantKind::Link,
            client_id: subject.to_owned(),
            family: String::new(),
            data,
            created_at: now,
            expires_at: now + LINK_SECS,
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(secret)
}

/// The console session token in a request's cookies.
pub fn session_cookie(headers: &http::HeaderMap) -> Option<String> {
    portcullis_http::headers::cookie(headers, COOKIE)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The CSRF value of a console session: derived from its token, so that
/// only a page that could read `/api/v1/me` (same origin) knows it.
pub fn csrf_value(secret: &str) -> String {
    hex::encode(digest(
        &SHA256,
        format!("portcullis-csrf:{secret}").as_bytes(),
    ))
}

/// Whether a cookie-authenticated state change is the console's own: the
/// CSRF header matches, and an `Origin`, when sent, is the gateway's.
/// Whether a request comes from a browser: fetch metadata, or (where a
/// browser sends none: an old one, a plain-HTTP origin) what browsers
/// send with a navigation. Code review: trusting a missing
/// `Sec-Fetch-Site` left old browsers open to the session swap.
fn looks_like_a_browser(h: &http::HeaderMap) -> bool {
    let text = |n: header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    h.contains_key("sec-fetch-site")
        || h.contains_key("upgrade-insecure-requests")
        || text(header::ACCEPT).contains("text/html")
        || text(header::USER_AGENT).starts_with("Mozilla/")
}

fn link_unusable() -> Response<Body> {
    message(
        StatusCode::FORBIDDEN,
        "this sign-in link is unknown, expired or already used; start the quickstart again for a new one",
    )
}

pub fn csrf_ok(headers: &http::HeaderMap, secret: &str, origin: &str) -> bool {
    let header_ok = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let want = csrf_value(secret);
            aws_lc_rs::constant_time::verify_slices_are_equal(v.as_bytes(), want.as_bytes()).is_ok()
        });
    let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => o.eq_ignore_ascii_case(origin),
    };
    header_ok && origin_ok
}

/// Where a console session's token is accepted.
pub const RESOURCE: Resource<'static> = Resource::Console;

/// The console's pages: scripts and styles only from this origin, no
/// framing, no referrer.
pub fn secure(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(bytes::Bytes::from_static(body.as_bytes())));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(resp)
}

fn message(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = portcullis_http::json_response(
        status,
        &serde_json::json!({"error": status.canonical_reason().unwrap_or("error"), "message": text}),
    );
    *resp.status_mut() = status;
    secure(resp)
}

fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    secure(resp)
}

fn set_cookie(resp: &mut Response<Body>, value: &str, max_age: i64) {
    let c =
        format!("{COOKIE}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Whether `p` is an admin under `admin_groups` (`[console]`): a person
/// (not an agent, not an agent acting for a person, whose token carries
/// its person's groups) in one of them. The console and the admin
/// listener ask the same question.
pub(crate) fn is_admin_in(admin_groups: &[String], p: &Principal) -> bool {
    let delegated = matches!(
        &p.via,
        AuthMethod::GatewayToken {
            on_behalf_of: Some(_),
            ..
        }
    );
    p.kind == portcullis_identity::PrincipalKind::Human
        && !delegated
        && p.groups.iter().any(|g| admin_groups.contains(g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_needs_the_value_and_the_origin() {
        let secret = "pcl_x";
        let mut h = http::HeaderMap::new();
        assert!(!csrf_ok(&h, secret, "https://gw"));
        h.insert(
            CSRF_HEADER,
            HeaderValue::from_str(&csrf_value(secret)).unwrap(),
        );
        assert!(csrf_ok(&h, secret, "https://gw"));
        assert!(
            !csrf_ok(&h, "pcl_y", "https://gw"),
            "another session's value"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.test"),
        );
        assert!(!csrf_ok(&h, secret, "https://gw"));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://gw"));
        assert!(csrf_ok(&h, secret, "https://gw"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-portcullis-console=pcl_abc; b=2"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("pcl_abc"));
        assert!(COOKIE.starts_with(portcullis_http::headers::GATEWAY_COOKIE_PREFIX));
    }
}
