//! The browser's side of a sign-in: `/oauth/authorize` checks what the
//! client asks and sends the person to the identity provider;
//! `/oauth/callback` takes the provider's answer and shows the consent
//! page; `/oauth/consent` takes the person's decision and sends the
//! browser back to the client with a code.
//!
//! A cookie binds the three steps to one browser, so a sign-in started
//! elsewhere (a link an attacker sent) cannot be finished here. Until the
//! client and its redirect URI are known good, errors are shown as a page,
//! never sent to a redirect URI (RFC 6749 §4.1.2.1).

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use portcullis_audit::OAuthAction;
use portcullis_config::Protocol;
use portcullis_front::FrontContext;
use portcullis_http::{Body, full};
use portcullis_identity::{AuthMethod, Principal, PrincipalKind};
use portcullis_mcp::McpEndpoint;
use portcullis_store::{GrantKind, OAuthGrantRow, Spent};
use serde::{Deserialize, Serialize};

use super::idp::Exchange;
use super::{
    Ask, CALLBACK, CODE_SECS, CONSENT, COOKIE, OAuthEntry, OAuthServer, Person, SCOPE,
    SIGN_IN_SECS, cookie, form, hash, one, query, s256, secret, unix_now,
};

/// What a person signs in for.
#[derive(Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "snake_case")]
enum Purpose {
    /// To let an MCP client act for them (then the consent page).
    Client(Ask),
    /// To use the web console.
    Console,
}

/// A sign-in sent to the identity provider.
#[derive(Serialize, Deserialize)]
struct Pending {
    purpose: Purpose,
    nonce: String,
    /// The PKCE verifier of the gateway's own request to the provider.
    verifier: String,
    /// SHA-256 (base64url) of the browser's cookie.
    browser: String,
}

/// A signed-in person's pending decision.
#[derive(Serialize, Deserialize)]
struct Consent {
    ask: Ask,
    person: Person,
    browser: String,
}

/// What an authorization code stands for.
#[derive(Serialize, Deserialize)]
pub(super) struct Code {
    pub(super) ask: Ask,
    pub(super) person: Person,
}

impl OAuthServer {
    /// `GET /oauth/authorize`.
    pub(super) async fn authorize(
        &self,
        req: Request<Incoming>,
        mcp: &McpEndpoint,
    ) -> Response<Body> {
        if req.method() != Method::GET {
            return page(StatusCode::METHOD_NOT_ALLOWED, "Not allowed", "Use GET.");
        }
        // The sign-in's cookie and the provider's callback belong to the
        // issuer's host: a request that came in under another name for the
        // gateway goes there first, or the cookie would never come back.
        let issuer_authority = self.issuer.strip_prefix("https://").unwrap_or("");
        if let Some(a) = super::metadata::authority_of(&req)
            && !a.as_str().eq_ignore_ascii_case(issuer_authority)
        {
            let q = req.uri().query().unwrap_or("");
            return redirect(
                StatusCode::FOUND,
                &format!("{}{}?{q}", self.issuer, super::AUTHORIZE),
            );
        }
        let params = query(&req);
        let ask = match self.check_client(&params).await {
            Ok(ask) => ask,
            Err(resp) => return resp,
        };
        let mut ask = ask;
        if let Err((error, description)) = self.check_request(&params, &mut ask, mcp) {
            return redirect_error(&self.issuer, &ask, error, &description);
        }
        match self.send_to_provider(Purpose::Client(ask)).await {
            Ok(resp) => resp,
            Err(message) => {
                tracing::error!(error = %message, "OAuth sign-in could not start");
                page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in unavailable",
                    "The identity provider or the store cannot be reached; try again shortly.",
                )
            }
        }
    }

    /// The client and redirect URI, or a page saying what is wrong.
    async fn check_client(&self, params: &[(String, String)]) -> Result<Ask, Response<Body>> {
        let bad = |m: &str| page(StatusCode::BAD_REQUEST, "Invalid request", m);
        let client_id = one(params, "client_id").map_err(|e| bad(&e))?;
        let Some(client_id) = client_id else {
            return Err(bad("client_id is missing."));
        };
        let client = match self.store.oauth_client(client_id).await {
            Ok(Some(c)) if c.revoked_at.is_none() => c,
            Ok(_) => {
                return Err(bad(
                    "This client is not registered with the gateway, or was revoked.",
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "OAuth client lookup failed");
                return Err(page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    "The store cannot be reached.",
                ));
            }
        };
        let redirect_uri = match one(params, "redirect_uri").map_err(|e| bad(&e))? {
            Some(u) if client.redirect_uris.iter().any(|r| r == u) => u.to_owned(),
            Some(_) => return Err(bad("redirect_uri is not one this client registered.")),
            None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
            None => return Err(bad("redirect_uri is missing.")),
        };
        let state = one(params, "state").map_err(|e| bad(&e))?;
        if state.is_some_and(|s| s.len() > 1024) {
            return Err(bad("state is too long."));
        }
        Ok(Ask {
            client_id: client.id,
            client_name: client.name,
            redirect_uri,
            state: state.map(str::to_owned),
            challenge: String::new(),
            resource: String::new(),
            audience: String::new(),
        })
    }

    /// The rest of the request (RFC 6749 §4.1.1, RFC 7636 §4.3, RFC 8707
    /// §2): errors from here on go back to the client.
    fn check_request(
        &self,
        params: &[(String, String)],
        ask: &mut Ask,
        mcp: &McpEndpoint,
    ) -> Result<(), (&'static str, String)> {
        macro_rules! param {
            ($name:literal) => {
                match one(params, $name) {
                    Ok(v) => v,
                    Err(e) => return Err(("invalid_request", e)),
                }
            };
        }
        if param!("response_type") != Some("code") {
            return Err((
                "unsupported_response_type",
                "response_type must be code".into(),
            ));
        }
        let challenge = param!("code_challenge");
        let method = param!("code_challenge_method");
        let Some(challenge) = challenge else {
            return Err((
                "invalid_request",
                "PKCE is required: send code_challenge".into(),
            ));
        };
        if method != Some("S256") {
            return Err((
                "invalid_request",
                "code_challenge_method must be S256".into(),
            ));
        }
        let pkce_chars = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        if !(43..=128).contains(&challenge.len()) || !challenge.chars().all(pkce_chars) {
            return Err(("invalid_request", "code_challenge is malformed".into()));
        }
        if let Some(scope) = param!("scope")
            && scope.split(' ').any(|s| !s.is_empty() && s != SCOPE)
        {
            return Err(("invalid_scope", format!("the only scope is {SCOPE:?}")));
        }
        let default = format!("{}{}", self.issuer, crate::listener::MCP_PATH);
        let resource = param!("resource").map(str::to_owned).unwrap_or(default);
        let audience = match self.audience_of(&resource, mcp) {
            Ok(a) => a,
            Err(e) => return Err(("invalid_target", e)),
        };
        ask.challenge = challenge.to_owned();
        ask.resource = resource;
        ask.audience = audience;
        Ok(())
    }

    /// Keep the sign-in and send the browser to the identity provider.
    async fn send_to_provider(&self, purpose: Purpose) -> Result<Response<Body>, String> {
        let endpoints = self.idp.endpoints(self.verifier.http()).await?;
        let fail = |_| "no randomness".to_string();
        let (handle, handle_hash) = secret().map_err(fail)?;
        let (nonce, _) = secret().map_err(fail)?;
        let (verifier, _) = secret().map_err(fail)?;
        let (browser, _) = secret().map_err(fail)?;
        let client_id = match &purpose {
            Purpose::Client(ask) => ask.client_id.clone(),
            Purpose::Console => String::new(),
        };
        let pending = Pending {
            purpose,
            nonce: nonce.clone(),
            verifier: verifier.clone(),
            browser: b64_hash(&browser),
        };
        let now = unix_now();
        self.store
            .insert_oauth_grant(&OAuthGrantRow {
                hash: handle_hash,
                kind: GrantKind::Request,
                client_id,
                family: String::new(),
                data: serde_json::to_string(&pending).map_err(|e| e.to_string())?,
                created_at: now,
                expires_at: now + SIGN_IN_SECS,
            })
            .await
            .map_err(|e| e.to_string())?;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.cfg.client_id)
            .append_pair("redirect_uri", &self.callback_uri())
            .append_pair("scope", &self.cfg.scopes)
            .append_pair("state", &handle)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &s256(&verifier))
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if endpoints.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!("{}{sep}{query}", endpoints.authorization_endpoint);
        let mut resp = redirect(StatusCode::FOUND, &location);
        set_cookie(&mut resp, &browser, SIGN_IN_SECS);
        Ok(resp)
    }

    fn callback_uri(&self) -> String {
        format!("{}{CALLBACK}", self.issuer)
    }

    /// `GET /oauth/callback`: the identity provider's answer.
    pub(super) async fn callback(
        &self,
        req: Request<Incoming>,
        ctx: &FrontContext,
    ) -> Response<Body> {
        let params = query(&req);
        let expired = || {
            page(
                StatusCode::BAD_REQUEST,
                "Sign-in expired",
                "This sign-in has expired or was already used. Start again from your client.",
            )
        };
        let Ok(Some(state)) = one(&params, "state") else {
            return expired();
        };
        let pending: Pending = match self.spend_handle(state, GrantKind::Request).await {
            Ok(Some((data, _))) => match serde_json::from_str(&data) {
                Ok(p) => p,
                Err(_) => return expired(),
            },
            Ok(None) => return expired(),
            Err(resp) => return resp,
        };
        if !same_browser(&req, &pending.browser) {
            return other_browser();
        }
        let ask = match &pending.purpose {
            Purpose::Client(ask) => ask,
            Purpose::Console => return self.console_callback(&params, &pending).await,
        };
        if let Ok(Some(error)) = one(&params, "error") {
            let why = format!(
                "the identity provider answered {}",
                error.chars().take(64).collect::<String>()
            );
            return redirect_error(&self.issuer, ask, "access_denied", &why);
        }
        let Ok(Some(code)) = one(&params, "code") else {
            return redirect_error(
                &self.issuer,
                ask,
                "server_error",
                "the identity provider sent no code",
            );
        };
        let person = match self.sign_in(code, &pending).await {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let Purpose::Client(ask) = pending.purpose else {
            return expired();
        };
        self.consent_page(ask, pending.browser, person, ctx).await
    }

    /// The provider's answer to a console sign-in: the console's session.
    async fn console_callback(
        &self,
        params: &[(String, String)],
        pending: &Pending,
    ) -> Response<Body> {
        let refused = |why: &str| page(StatusCode::FORBIDDEN, "Sign-in refused", &escape(why));
        if let Ok(Some(error)) = one(params, "error") {
            return refused(&format!(
                "the identity provider answered {}",
                error.chars().take(64).collect::<String>()
            ));
        }
        let Ok(Some(code)) = one(params, "code") else {
            return refused("the identity provider sent no code");
        };
        match self.sign_in(code, pending).await {
            Ok(person) => {
                let mut resp = self.console.signed_in(&person, "oidc").await;
                set_cookie(&mut resp, "", 0);
                resp
            }
            Err(resp) => resp,
        }
    }

    /// `GET /ui/login`: a person signs in to the console through the
    /// provider.
    pub async fn console_sign_in(&self, peer: std::net::IpAddr) -> Response<Body> {
        if !self.sign_ins.allow(peer, unix_now()) {
            return super::too_many_sign_ins();
        }
        self.sweep_now_and_then();
        match self.send_to_provider(Purpose::Console).await {
            Ok(resp) => resp,
            Err(message) => {
                tracing::error!(error = %message, "console sign-in could not start");
                page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in unavailable",
                    "The identity provider or the store cannot be reached; try again shortly.",
                )
            }
        }
    }

    /// The person the provider's code stands for.
    async fn sign_in(&self, code: &str, pending: &Pending) -> Result<Principal, Response<Body>> {
        let secret = self.client_secret.as_ref().map(|s| s.expose());
        let exchange = Exchange {
            client_id: &self.cfg.client_id,
            client_secret: secret,
            redirect_uri: &self.callback_uri(),
            verifier: &pending.verifier,
        };
        let refused = |why: String| {
            tracing::warn!(reason = %why, "OAuth sign-in refused");
            page(StatusCode::FORBIDDEN, "Sign-in refused", &escape(&why))
        };
        let id_token = self
            .idp
            .exchange(self.verifier.http(), code, &exchange)
            .await
            .map_err(refused)?;
        let person = self
            .verifier
            .verify_id_token(
                &id_token,
                self.idp.issuer(),
                &self.cfg.client_id,
                &pending.nonce,
            )
            .await
            .map_err(|e| refused(format!("the identity provider's ID token was refused: {e}")))?;
        if person.kind != PrincipalKind::Human {
            return Err(refused(
                "only a person can let a client act for them".into(),
            ));
        }
        Ok(person)
    }

    async fn consent_page(
        &self,
        ask: Ask,
        browser: String,
        person: Principal,
        ctx: &FrontContext,
    ) -> Response<Body> {
        let now = unix_now();
        let person = Person {
            subject: person.subject,
            groups: person.groups,
            deadline: now + self.cfg.refresh_token_ttl.as_secs() as i64,
        };
        let agent = portcullis_identity::delegated_subject(
            &format!("agent:{}", ask.client_id),
            &person.subject,
        );
        if portcullis_identity::validate_principal(&agent).is_err() {
            return page(
                StatusCode::FORBIDDEN,
                "Sign-in refused",
                "Your name cannot be used in a principal.",
            );
        }
        let reach = reachable(ctx, &agent, &person, &ask.audience);
        let Ok((handle, handle_hash)) = secret() else {
            return page(StatusCode::INTERNAL_SERVER_ERROR, "Error", "No randomness.");
        };
        let consent = Consent {
            ask,
            person,
            browser,
        };
        let row = OAuthGrantRow {
            hash: handle_hash,
            kind: GrantKind::Consent,
            client_id: consent.ask.client_id.clone(),
            family: String::new(),
            data: serde_json::to_string(&consent).unwrap_or_default(),
            created_at: now,
            expires_at: now + SIGN_IN_SECS,
        };
        if let Err(e) = self.store.insert_oauth_grant(&row).await {
            tracing::error!(error = %e, "OAuth consent could not be kept");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The store cannot be reached.",
            );
        }
        page(
            StatusCode::OK,
            "Allow access?",
            &consent_html(&consent, &agent, &reach, &handle, self.cfg.access_token_ttl),
        )
    }

    /// `POST /oauth/consent`: the person's decision.
    pub(super) async fn consent(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::POST {
            return page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Not allowed",
                "Use the consent form.",
            );
        }
        let browser = cookie(&req, COOKIE).map(b64_hash);
        let Some(params) = form(req).await else {
            return page(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "Expected the consent form.",
            );
        };
        let Ok(Some(handle)) = one(&params, "consent") else {
            return page(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "Expected the consent form.",
            );
        };
        let (data, _) = match self.spend_handle(handle, GrantKind::Consent).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return page(
                    StatusCode::BAD_REQUEST,
                    "Expired",
                    "This decision has expired or was already made.",
                );
            }
            Err(resp) => return resp,
        };
        let Ok(consent) = serde_json::from_str::<Consent>(&data) else {
            return page(
                StatusCode::BAD_REQUEST,
                "Expired",
                "This decision has expired.",
            );
        };
        if browser.as_deref() != Some(consent.browser.as_str()) {
            return other_browser();
        }
        let allow = one(&params, "decision") == Ok(Some("allow"));
        let mut resp = if allow {
            self.allow(consent).await
        } else {
            let mut entry = OAuthEntry::new(OAuthAction::Declined, &consent.ask.client_id);
            entry.person = Some(&consent.person.subject);
            let _ = self.audit(entry).await;
            redirect_error(
                &self.issuer,
                &consent.ask,
                "access_denied",
                "the person declined",
            )
        };
        set_cookie(&mut resp, "", 0);
        resp
    }

    /// Issue the code of an allowed request.
    async fn allow(&self, consent: Consent) -> Response<Body> {
        let (Ok((code, code_hash)), Ok((family, _))) = (secret(), secret()) else {
            return page(StatusCode::INTERNAL_SERVER_ERROR, "Error", "No randomness.");
        };
        let family = family[..16].to_owned();
        let now = unix_now();
        let ask = consent.ask;
        let agent = portcullis_identity::delegated_subject(
            &format!("agent:{}", ask.client_id),
            &consent.person.subject,
        );
        let mut entry = OAuthEntry::new(OAuthAction::Consented, &ask.client_id);
        entry.principal = Some(agent);
        entry.person = Some(&consent.person.subject);
        entry.family = Some(&family);
        entry.resource = Some(&ask.resource);
        // Durable before the code leaves: no grant without its evidence.
        if self.audit(entry).await.is_err() {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The audit log is unavailable.",
            );
        }
        let data = serde_json::to_string(&Code {
            ask: ask.clone(),
            person: consent.person,
        })
        .unwrap_or_default();
        let row = OAuthGrantRow {
            hash: code_hash,
            kind: GrantKind::Code,
            client_id: ask.client_id.clone(),
            family,
            data,
            created_at: now,
            expires_at: now + CODE_SECS,
        };
        if let Err(e) = self.store.insert_oauth_grant(&row).await {
            tracing::error!(error = %e, "OAuth code could not be kept");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The store cannot be reached.",
            );
        }
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("code", &code);
        if let Some(s) = &ask.state {
            q.append_pair("state", s);
        }
        q.append_pair("iss", &self.issuer);
        redirect(StatusCode::SEE_OTHER, &join(&ask.redirect_uri, &q.finish()))
    }

    /// Spend a one-time handle of `kind`; `Ok(None)` when it is unknown,
    /// expired or used.
    async fn spend_handle(
        &self,
        handle: &str,
        kind: GrantKind,
    ) -> Result<Option<(String, String)>, Response<Body>> {
        match self
            .store
            .spend_oauth_grant(&hash(handle), kind, unix_now())
            .await
        {
            Ok(Spent::Fresh {
                data, client_id, ..
            }) => Ok(Some((data, client_id))),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::error!(error = %e, "OAuth store operation failed");
                Err(page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    "The store cannot be reached.",
                ))
            }
        }
    }
}

/// Which connections `agent` (acting for `person`) could use through the
/// resource `audience`: what the consent page lists.
fn reachable(ctx: &FrontContext, agent: &str, person: &Person, audience: &str) -> Vec<String> {
    let principal = Principal {
        subject: agent.to_owned(),
        kind: PrincipalKind::Agent,
        groups: person.groups.clone(),
        via: AuthMethod::GatewayToken {
            token_id: String::new(),
            on_behalf_of: Some(person.subject.clone()),
            audience: Some(audience.to_owned()),
        },
    };
    ctx.connections()
        .into_iter()
        // `/mcp` offers tools for the PostgreSQL and HTTP connections;
        // an MCP connection is its own resource.
        .filter(|(name, protocol)| match audience.strip_prefix("mcp/") {
            Some(only) => *name == only,
            None => *protocol != Protocol::Mcp,
        })
        .filter(|(name, protocol)| ctx.decide(&principal, name, *protocol).is_ok())
        .map(|(name, protocol)| format!("{name} ({protocol})"))
        .collect()
}

fn consent_html(
    c: &Consent,
    agent: &str,
    reach: &[String],
    handle: &str,
    ttl: std::time::Duration,
) -> String {
    let reach = if reach.is_empty() {
        "<li>nothing yet: no grant covers it (an operator can add one)</li>".to_owned()
    } else {
        reach
            .iter()
            .map(|r| format!("<li>{}</li>", escape(r)))
            .collect()
    };
    let host = c
        .ask
        .redirect_uri
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', '?']).next())
        .unwrap_or("");
    format!(
        "<p><strong><bdi>{name}</bdi></strong> (client <code>{id}</code>, returning to <code>{host}</code>) \
         asks to act for you, <strong>{person}</strong>.</p>\
         <p>It will act as <code>{agent}</code> at <code>{resource}</code>, with at most your \
         groups ({groups}), for up to {hours} hours; each token it holds lasts {minutes} minutes. \
         Everything it does is recorded under that name.</p>\
         <p>What it could reach now:</p><ul>{reach}</ul>\
         <form method=\"post\" action=\"{CONSENT}\">\
         <input type=\"hidden\" name=\"consent\" value=\"{handle}\">\
         <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button> \
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        name = escape(&c.ask.client_name),
        id = escape(&c.ask.client_id),
        host = escape(host),
        person = escape(&c.person.subject),
        agent = escape(agent),
        resource = escape(&c.ask.resource),
        groups = escape(&c.person.groups.join(", ")),
        hours = (c.person.deadline - unix_now()).max(0) / 3600,
        minutes = ttl.as_secs() / 60,
        handle = escape(handle),
    )
}

/// HTML text and attribute escaping for the few values these pages show.
/// Written here rather than pulling in a template engine for two pages.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page: no script, no framing, no referrer.
pub(crate) fn page(status: StatusCode, title: &str, body_html: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} · Portcullis</title></head>\
         <body><h1>{t}</h1>{body_html}</body></html>\n",
        t = escape(title)
    );
    let mut resp = Response::new(full(bytes::Bytes::from(html)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn other_browser() -> Response<Body> {
    page(
        StatusCode::FORBIDDEN,
        "Sign-in refused",
        "This sign-in was started in another browser. Start again from your client.",
    )
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Send the browser back to the client with an error (RFC 6749 §4.1.2.1).
fn redirect_error(issuer: &str, ask: &Ask, error: &str, description: &str) -> Response<Body> {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("error", error);
    q.append_pair("error_description", description);
    if let Some(s) = &ask.state {
        q.append_pair("state", s);
    }
    // RFC 9207: errors name the issuer too.
    q.append_pair("iss", issuer);
    redirect(StatusCode::FOUND, &join(&ask.redirect_uri, &q.finish()))
}

fn join(uri: &str, query: &str) -> String {
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{query}")
}

fn set_cookie(resp: &mut Response<Body>, value: &str, max_age: i64) {
    let c = format!("{COOKIE}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn b64_hash(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash(s))
}

fn same_browser(req: &Request<Incoming>, expected: &str) -> bool {
    cookie(req, COOKIE).map(b64_hash).as_deref() == Some(expected)
}
