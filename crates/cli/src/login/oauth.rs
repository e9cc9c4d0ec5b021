//! The OAuth 2.0 client flows `portcullis login` needs, against any
//! OpenID provider: device authorization (RFC 8628), authorization code
//! with PKCE (RFC 7636) on a loopback redirect (RFC 8252), and refresh.
//!
//! Written here rather than with the `openidconnect` crate: these are
//! three form POSTs and one redirect, and the crate would bring a second
//! HTTP stack (STACK.md); the token itself is verified by the gateway, not
//! by the CLI.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The provider endpoints the flows use.
#[derive(Debug, Clone, Deserialize)]
pub struct Endpoints {
    pub issuer: String,
    pub token_endpoint: String,
    pub authorization_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
}

/// A token endpoint's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenSet {
    pub access_token: String,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl TokenSet {
    /// What to present to the gateway: the access token when it is a JWT
    /// (verifiable by the gateway), else the ID token.
    pub fn bearer(&self) -> Option<&str> {
        if portcullis_identity::oidc::looks_like_jwt(&self.access_token) {
            Some(&self.access_token)
        } else {
            self.id_token
                .as_deref()
                .filter(|t| portcullis_identity::oidc::looks_like_jwt(t))
        }
    }
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    error_description: Option<String>,
}

pub async fn discover(http: &reqwest::Client, issuer: &str) -> anyhow::Result<Endpoints> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let e: Endpoints = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()?
        .json()
        .await
        .with_context(|| format!("{url}: not a discovery document"))?;
    if e.issuer != issuer {
        bail!("{url} names issuer {:?}, expected {issuer:?}", e.issuer);
    }
    Ok(e)
}

async fn token_request(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, &str)],
) -> anyhow::Result<Result<TokenSet, OAuthError>> {
    let resp = http
        .post(endpoint)
        .form(form)
        .send()
        .await
        .with_context(|| format!("POST {endpoint}"))?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if status.is_success() {
        return Ok(Ok(serde_json::from_slice(&body).with_context(|| {
            format!("{endpoint}: unexpected token response")
        })?));
    }
    match serde_json::from_slice::<OAuthError>(&body) {
        Ok(e) => Ok(Err(e)),
        Err(_) => bail!("{endpoint}: HTTP {status}"),
    }
}

fn describe(e: &OAuthError) -> String {
    match &e.error_description {
        Some(d) => format!("{} ({d})", e.error),
        None => e.error.clone(),
    }
}

#[derive(Deserialize)]
struct DeviceAuth {
    device_code: String,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: u64,
    interval: Option<u64>,
}

/// Device authorization grant: print where to approve, poll until done.
pub async fn device_flow(
    http: &reqwest::Client,
    ep: &Endpoints,
    client_id: &str,
    scopes: &str,
) -> anyhow::Result<TokenSet> {
    let endpoint = ep.device_authorization_endpoint.as_deref().ok_or_else(|| {
        anyhow!(
            "{} does not offer the device flow; try --browser",
            ep.issuer
        )
    })?;
    let d: DeviceAuth = http
        .post(endpoint)
        .form(&[("client_id", client_id), ("scope", scopes)])
        .send()
        .await
        .with_context(|| format!("POST {endpoint}"))?
        .error_for_status()?
        .json()
        .await?;
    match &d.verification_uri_complete {
        Some(u) => eprintln!("To sign in, open {u} and confirm the code {}", d.user_code),
        None => eprintln!(
            "To sign in, open {} and enter the code {}",
            d.verification_uri, d.user_code
        ),
    }
    let mut interval = Duration::from_secs(d.interval.unwrap_or(5).max(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(d.expires_in);
    loop {
        tokio::time::sleep(interval).await;
        if std::time::Instant::now() > deadline {
            bail!("the sign-in code expired before it was approved");
        }
        let r = token_request(
            http,
            &ep.token_endpoint,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &d.device_code),
                ("client_id", client_id),
            ],
        )
        .await?;
        match r {
            Ok(t) => return Ok(t),
            Err(e) if e.error == "authorization_pending" => {}
            // RFC 8628 §3.5: back off by 5 seconds.
            Err(e) if e.error == "slow_down" => interval += Duration::from_secs(5),
            Err(e) => bail!("sign-in refused: {}", describe(&e)),
        }
    }
}

/// PKCE verifier and its S256 challenge.
pub fn pkce_pair(random: &[u8; 32]) -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(random);
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    (verifier, challenge)
}

fn random32() -> anyhow::Result<[u8; 32]> {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow!("no system randomness"))?;
    Ok(b)
}

/// The `code` and `state` of a loopback redirect's request line, e.g.
/// `GET /callback?code=…&state=… HTTP/1.1`.
pub fn parse_callback(request_line: &str) -> Result<(String, String), String> {
    let target = request_line
        .split(' ')
        .nth(1)
        .ok_or("not an HTTP request")?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/callback" {
        return Err(format!("unexpected path {path}"));
    }
    let mut code = None;
    let mut state = None;
    let mut error = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "code" => code = Some(v.into_owned()),
            "state" => state = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            _ => {}
        }
    }
    if let Some(e) = error {
        return Err(format!("the provider refused: {e}"));
    }
    Ok((
        code.ok_or("no code in the redirect")?,
        state.ok_or("no state in the redirect")?,
    ))
}

/// Authorization code with PKCE: listen on a loopback port, print the
/// authorization URL, take the one redirect, exchange the code.
pub async fn browser_flow(
    http: &reqwest::Client,
    ep: &Endpoints,
    client_id: &str,
    scopes: &str,
) -> anyhow::Result<TokenSet> {
    let auth = ep
        .authorization_endpoint
        .as_deref()
        .ok_or_else(|| anyhow!("{} has no authorization endpoint", ep.issuer))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let (verifier, challenge) = pkce_pair(&random32()?);
    let state = URL_SAFE_NO_PAD.encode(random32()?);
    let url = reqwest::Url::parse_with_params(
        auth,
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", &redirect),
            ("scope", scopes),
            ("state", &state),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;
    eprintln!("To sign in, open this URL in a browser on this machine:\n  {url}");
    let (code, got_state) = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let (mut sock, _) = listener.accept().await?;
            // One request line is all a redirect carries that we need; a
            // full HTTP server for a single GET would be more code to trust.
            let mut buf = vec![0u8; 8192];
            let n = sock.read(&mut buf).await?;
            let head = String::from_utf8_lossy(&buf[..n]);
            let line = head.lines().next().unwrap_or_default().to_string();
            let result = parse_callback(&line);
            let (status, text) = match &result {
                Ok(_) => ("200 OK", "Signed in to Portcullis. You can close this page."),
                Err(_) => ("400 Bad Request", "Sign-in failed; see the terminal."),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = sock.write_all(reply.as_bytes()).await;
            match result {
                Ok(v) => return Ok::<_, anyhow::Error>(v),
                // A favicon request or a stray probe: keep waiting.
                Err(e) if e.starts_with("unexpected path") => continue,
                Err(e) => bail!("{e}"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no redirect arrived within 5 minutes"))??;
    if got_state != state {
        bail!("the redirect's state does not match this login (possible CSRF); not using it");
    }
    match token_request(
        http,
        &ep.token_endpoint,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect),
            ("client_id", client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await?
    {
        Ok(t) => Ok(t),
        Err(e) => bail!("code exchange refused: {}", describe(&e)),
    }
}

/// Refresh grant.
pub async fn refresh(
    http: &reqwest::Client,
    token_endpoint: &str,
    client_id: &str,
    refresh_token: &str,
) -> anyhow::Result<TokenSet> {
    match token_request(
        http,
        token_endpoint,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ],
    )
    .await?
    {
        Ok(t) => Ok(t),
        Err(e) => bail!(
            "refresh refused: {} (run `portcullis login` again)",
            describe(&e)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        // The RFC's example verifier comes from these 32 octets.
        let octets: [u8; 32] = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212,
            37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let (v, c) = pkce_pair(&octets);
        assert_eq!(v, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(c, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn callback_lines() {
        assert_eq!(
            parse_callback("GET /callback?code=abc&state=xyz&iss=https%3A%2F%2Fi HTTP/1.1"),
            Ok(("abc".into(), "xyz".into()))
        );
        assert!(
            parse_callback("GET /callback?error=access_denied&state=x HTTP/1.1")
                .unwrap_err()
                .contains("access_denied")
        );
        assert!(
            parse_callback("GET /favicon.ico HTTP/1.1")
                .unwrap_err()
                .starts_with("unexpected path")
        );
        assert!(parse_callback("GET /callback?state=x HTTP/1.1").is_err());
        assert!(parse_callback("garbage").is_err());
    }

    #[test]
    fn bearer_prefers_a_jwt_access_token() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.sig";
        let t = |access: &str, id: Option<&str>| TokenSet {
            access_token: access.into(),
            id_token: id.map(str::to_string),
            refresh_token: None,
            expires_in: None,
        };
        assert_eq!(t(jwt, None).bearer(), Some(jwt));
        assert_eq!(t("opaque", Some(jwt)).bearer(), Some(jwt));
        assert_eq!(t("opaque", None).bearer(), None);
    }
}
