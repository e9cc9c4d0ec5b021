//! `portcullis login`, `logout` and `env`: a person signs in with the
//! gateway's identity provider once; the token is cached (0600) in the
//! user's config folder, refreshed when it can be, and handed to tools
//! (`portcullis env` prints `PGPASSWORD=…`-style variables).

mod cache;
mod oauth;

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde::Deserialize;

pub use cache::{Cache, Entry};

#[derive(Args)]
pub(crate) struct LoginArgs {
    /// The gateway's URL, e.g. https://gw.example.com:8443.
    #[arg(long, env = "PORTCULLIS_URL")]
    gateway: String,
    /// Extra CA to trust for the gateway (PEM), e.g. the quickstart's ca.pem.
    #[arg(long, env = "PORTCULLIS_CA")]
    ca: Option<PathBuf>,
    /// Which issuer to use when the gateway trusts several.
    #[arg(long)]
    issuer: Option<String>,
    /// Sign in with a code shown here and approved in any browser (the
    /// default; works over SSH).
    #[arg(long, conflicts_with = "browser")]
    device: bool,
    /// Sign in through a browser on this machine (authorization code with
    /// PKCE, redirect to a loopback port).
    #[arg(long)]
    browser: bool,
}

#[derive(Args)]
pub(crate) struct GatewayArgs {
    #[arg(long, env = "PORTCULLIS_URL")]
    gateway: String,
    #[arg(long, env = "PORTCULLIS_CA")]
    ca: Option<PathBuf>,
}

/// The gateway's `/.well-known/portcullis`.
#[derive(Deserialize)]
struct GatewayInfo {
    #[serde(default)]
    oidc: Vec<LoginIssuer>,
    postgres: Option<PgInfo>,
}

#[derive(Deserialize)]
struct LoginIssuer {
    issuer: String,
    client_id: String,
    scopes: String,
}

#[derive(Deserialize)]
struct PgInfo {
    port: u16,
}

/// An HTTP client trusting the system's roots (which honour
/// `SSL_CERT_FILE`) plus `extra`.
pub(crate) fn http(extra: Option<&PathBuf>) -> anyhow::Result<reqwest::Client> {
    let mut roots = portcullis_tls::system_roots();
    if let Some(ca) = extra {
        for c in portcullis_tls::load_cert_chain(ca)? {
            roots
                .add(c)
                .with_context(|| format!("adding {} to the trusted roots", ca.display()))?;
        }
    }
    https_client(roots)
}

/// An HTTP client that trusts exactly `roots` (TLS only, our policy).
pub(crate) fn https_client(roots: rustls::RootCertStore) -> anyhow::Result<reqwest::Client> {
    let tls = portcullis_tls::client_config(&Default::default(), roots)?;
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}

fn normalize(gateway: &str) -> anyhow::Result<String> {
    let g = gateway.trim_end_matches('/');
    if !g.starts_with("https://") {
        bail!("--gateway must be an https:// URL (the gateway accepts TLS only)");
    }
    Ok(g.to_string())
}

async fn gateway_info(http: &reqwest::Client, gateway: &str) -> anyhow::Result<GatewayInfo> {
    let url = format!("{gateway}/.well-known/portcullis");
    http.get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("{url}: not a Portcullis gateway"))
}

pub(crate) async fn login(a: &LoginArgs) -> anyhow::Result<()> {
    let gateway = normalize(&a.gateway)?;
    let gw_http = http(a.ca.as_ref())?;
    let info = gateway_info(&gw_http, &gateway).await?;
    let issuer = match &a.issuer {
        Some(i) => info
            .oidc
            .iter()
            .find(|o| &o.issuer == i)
            .ok_or_else(|| anyhow!("the gateway does not offer login with {i}"))?,
        None => info.oidc.first().ok_or_else(|| {
            anyhow!("the gateway offers no OIDC login (no [[oidc]] with login_client_id)")
        })?,
    };
    let idp_http = http(None)?;
    let ep = oauth::discover(&idp_http, &issuer.issuer).await?;
    let tokens = if a.browser {
        oauth::browser_flow(&idp_http, &ep, &issuer.client_id, &issuer.scopes).await?
    } else {
        oauth::device_flow(&idp_http, &ep, &issuer.client_id, &issuer.scopes).await?
    };
    let entry = Entry::from_tokens(&ep, &issuer.client_id, &tokens)?;
    let mut cache = Cache::load()?;
    cache.put(&gateway, entry);
    cache.save()?;
    eprintln!(
        "signed in to {gateway} via {}; credentials cached in {}",
        issuer.issuer,
        Cache::path()?.display()
    );
    Ok(())
}

pub(crate) fn logout(a: &GatewayArgs) -> anyhow::Result<()> {
    let gateway = normalize(&a.gateway)?;
    let mut cache = Cache::load()?;
    if cache.remove(&gateway) {
        cache.save()?;
        eprintln!("signed out of {gateway}");
    } else {
        eprintln!("not signed in to {gateway}");
    }
    Ok(())
}

/// The cached token for `gateway`, refreshed when it is about to expire.
pub(crate) async fn token_for(gateway: &str) -> anyhow::Result<String> {
    let mut cache = Cache::load()?;
    let entry = cache.get(gateway).cloned().ok_or_else(|| {
        anyhow!("not signed in to {gateway}: run `portcullis login --gateway {gateway}`")
    })?;
    if !entry.expires_soon(portcullis_identity::unix_now()) {
        return Ok(entry.bearer);
    }
    let Some(rt) = &entry.refresh_token else {
        bail!("the sign-in for {gateway} has expired: run `portcullis login` again");
    };
    let tokens = oauth::refresh(&http(None)?, &entry.token_endpoint, &entry.client_id, rt).await?;
    let mut fresh = entry.refreshed(&tokens)?;
    if fresh.refresh_token.is_none() {
        fresh.refresh_token = entry.refresh_token.clone();
    }
    let bearer = fresh.bearer.clone();
    cache.put(gateway, fresh);
    cache.save()?;
    Ok(bearer)
}

/// `token create --gateway`: ask the gateway to mint a token for an agent
/// acting for the signed-in person.
pub(crate) async fn mint_remote(
    gateway: &str,
    ca: Option<&PathBuf>,
    principal: &str,
    ttl: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<()> {
    let gateway = normalize(gateway)?;
    let bearer = token_for(&gateway).await?;
    let mut body = serde_json::json!({ "principal": principal });
    if let Some(t) = ttl {
        body["ttl"] = format!("{}s", t.as_secs()).into();
    }
    let url = format!("{gateway}/api/v1/tokens");
    let resp = http(ca)?
        .post(&url)
        .bearer_auth(&bearer)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let v: serde_json::Value = resp
        .json()
        .await
        .with_context(|| format!("{url}: HTTP {status}, not JSON"))?;
    if !status.is_success() {
        bail!(
            "the gateway refused (HTTP {status}): {}",
            v["message"].as_str().unwrap_or("no message")
        );
    }
    if json {
        println!("{v}");
    } else {
        eprintln!(
            "created token {} for {} acting for {}, expires at {} (Unix time). It is shown once:",
            v["id"].as_str().unwrap_or("?"),
            v["principal"].as_str().unwrap_or("?"),
            v["on_behalf_of"].as_str().unwrap_or("?"),
            v["expires_at"]
        );
        println!("{}", v["token"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// Single-quote for POSIX shells.
fn sh(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

pub(crate) async fn env(a: &GatewayArgs) -> anyhow::Result<()> {
    let gateway = normalize(&a.gateway)?;
    let token = token_for(&gateway).await?;
    let info = gateway_info(&http(a.ca.as_ref())?, &gateway).await?;
    let host = reqwest::Url::parse(&gateway)?
        .host_str()
        .unwrap_or("localhost")
        .trim_matches(['[', ']'])
        .to_string();
    let mut out = vec![
        ("PORTCULLIS_URL", gateway.clone()),
        ("PORTCULLIS_TOKEN", token.clone()),
    ];
    if let Some(ca) = &a.ca {
        let ca = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.clone());
        out.push(("PORTCULLIS_CA", ca.display().to_string()));
        out.push(("PGSSLROOTCERT", ca.display().to_string()));
    }
    if let Some(pg) = info.postgres {
        out.push(("PGHOST", host));
        out.push(("PGPORT", pg.port.to_string()));
        out.push(("PGSSLMODE", "verify-full".into()));
        out.push(("PGPASSWORD", token));
    }
    for (k, v) in out {
        println!("export {k}={}", sh(&v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(sh("a b"), "'a b'");
        assert_eq!(sh("it's"), "'it'\\''s'");
    }

    #[test]
    fn gateway_urls_are_https() {
        assert_eq!(normalize("https://gw:8443/").unwrap(), "https://gw:8443");
        assert!(normalize("http://gw").is_err());
    }
}
