//! Each configured issuer's keys: discovery document and JWKS fetched over
//! verified TLS, cached, refreshed on a schedule and when a token names a
//! key id we have not seen (at most once per [`MIN_REFRESH_GAP`], so a
//! flood of forged `kid`s cannot turn the gateway into a load generator
//! against the identity provider).
//!
//! Until an issuer's keys have been fetched, its tokens are refused with
//! [`OidcError::KeysUnavailable`]: fail closed.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use serde_json::Value;

use crate::oidc::{self, IssuerSettings, OidcError};
use crate::{Principal, unix_now};

pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A JWKS or discovery document larger than this is refused.
const MAX_DOCUMENT: usize = 512 * 1024;

/// Why keys could not be fetched. Logged by the gateway; callers only see
/// [`OidcError::KeysUnavailable`].
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: {reason}")]
    Document { url: String, reason: String },
}

struct Issuer {
    settings: IssuerSettings,
    keys: RwLock<Option<Arc<JwkSet>>>,
    last_fetch: Mutex<Option<Instant>>,
    /// One refresh at a time per issuer.
    refreshing: tokio::sync::Mutex<()>,
}

/// Verifies OIDC bearer tokens for every configured issuer.
#[derive(Clone)]
pub struct OidcVerifier {
    issuers: Arc<Vec<Issuer>>,
    http: reqwest::Client,
}

impl OidcVerifier {
    /// `tls` is the client configuration for discovery and JWKS fetches
    /// (system roots plus any configured issuer CA).
    pub fn new(settings: Vec<IssuerSettings>, tls: rustls::ClientConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("OIDC HTTP client: {e}"))?;
        let issuers = settings
            .into_iter()
            .map(|settings| Issuer {
                settings,
                keys: RwLock::new(None),
                last_fetch: Mutex::new(None),
                refreshing: tokio::sync::Mutex::new(()),
            })
            .collect();
        Ok(Self {
            issuers: Arc::new(issuers),
            http,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    pub fn issuers(&self) -> impl Iterator<Item = &IssuerSettings> {
        self.issuers.iter().map(|i| &i.settings)
    }

    /// Fetch every issuer's keys now; returns the failures (the gateway
    /// logs them and keeps refusing that issuer's tokens until a refresh
    /// succeeds).
    pub async fn refresh_all(&self) -> Vec<(String, FetchError)> {
        let mut failed = Vec::new();
        for i in self.issuers.iter() {
            if let Err(e) = self.refresh(i).await {
                failed.push((i.settings.issuer.clone(), e));
            }
        }
        failed
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, OidcError> {
        let iss = oidc::unverified_issuer(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.settings.issuer == iss)
            .ok_or_else(|| OidcError::UnknownIssuer(iss.chars().take(200).collect()))?;
        let (alg, key) = self.key_for(issuer, token).await?;
        oidc::verify(token, &issuer.settings, alg, &key, unix_now())
    }

    /// Verify an ID token `issuer` gave the gateway for its own client
    /// `client_id` in answer to a sign-in sent with `nonce`.
    pub async fn verify_id_token(
        &self,
        token: &str,
        issuer: &str,
        client_id: &str,
        nonce: &str,
    ) -> Result<Principal, OidcError> {
        let found = self
            .issuers
            .iter()
            .find(|i| i.settings.issuer == issuer)
            .ok_or_else(|| OidcError::UnknownIssuer(issuer.chars().take(200).collect()))?;
        let (alg, key) = self.key_for(found, token).await?;
        let settings = IssuerSettings {
            audiences: vec![client_id.to_owned()],
            ..found.settings.clone()
        };
        oidc::verify_id_token(token, &settings, alg, &key, unix_now(), nonce)
    }

    /// The HTTP client for this verifier's providers (their CA trusted,
    /// no redirects followed, bounded in time).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The algorithm and key `token` is signed with, fetching the
    /// issuer's keys when they are missing or the key is new.
    async fn key_for(&self, issuer: &Issuer, token: &str) -> Result<(Algorithm, Jwk), OidcError> {
        let (alg, kid) = oidc::header_of(token, &issuer.settings)?;
        let mut keys = self.cached(issuer);
        if keys.is_none() && self.refresh_allowed(issuer) {
            let _ = self.refresh(issuer).await;
            keys = self.cached(issuer);
        }
        let Some(mut keys) = keys else {
            return Err(OidcError::KeysUnavailable(issuer.settings.issuer.clone()));
        };
        let mut key = oidc::select_key(&keys, kid.as_deref(), alg)?.cloned();
        if key.is_none() && self.refresh_allowed(issuer) {
            // Keys rotate: a new kid may be published since we fetched.
            if let Err(e) = self.refresh(issuer).await {
                tracing::warn!(issuer = %issuer.settings.issuer, error = %e, "JWKS refresh failed");
            }
            if let Some(k) = self.cached(issuer) {
                keys = k;
            }
            key = oidc::select_key(&keys, kid.as_deref(), alg)?.cloned();
        }
        let key: Jwk = key.ok_or_else(|| OidcError::UnknownKey {
            kid: kid.unwrap_or_default().chars().take(100).collect(),
            issuer: issuer.settings.issuer.clone(),
        })?;
        Ok((alg, key))
    }

    fn cached(&self, issuer: &Issuer) -> Option<Arc<JwkSet>> {
        issuer.keys.read().ok().and_then(|k| k.clone())
    }

    fn refresh_allowed(&self, issuer: &Issuer) -> bool {
        let last = issuer.last_fetch.lock().ok().and_then(|l| *l);
        last.is_none_or(|t| t.elapsed() >= MIN_REFRESH_GAP)
    }

    async fn refresh(&self, issuer: &Issuer) -> Result<(), FetchError> {
        let _one = issuer.refreshing.lock().await;
        if let Ok(mut last) = issuer.last_fetch.lock() {
            *last = Some(Instant::now());
        }
        let base = issuer.settings.issuer.trim_end_matches('/');
        let discovery_url = format!("{base}/.well-known/openid-configuration");
        let discovery = self.get_json(&discovery_url).await?;
        let doc_err = |reason: &str| FetchError::Document {
            url: discovery_url.clone(),
            reason: reason.to_string(),
        };
        // OIDC Discovery §4.3: the document must name the issuer we asked.
        if discovery.get("issuer").and_then(Value::as_str) != Some(&issuer.settings.issuer) {
            return Err(doc_err("its issuer differs from the configured one"));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| doc_err("no jwks_uri"))?
            .to_string();
        if !jwks_uri.starts_with("https://") {
            return Err(doc_err("jwks_uri is not https"));
        }
        let jwks = self.get_json(&jwks_uri).await?;
        let keys = parse_jwks(&jwks).map_err(|reason| FetchError::Document {
            url: jwks_uri.clone(),
            reason,
        })?;
        tracing::info!(issuer = %issuer.settings.issuer, keys = keys.keys.len(), "OIDC keys fetched");
        if let Ok(mut slot) = issuer.keys.write() {
            *slot = Some(Arc::new(keys));
        }
        Ok(())
    }

    async fn get_json(&self, url: &str) -> Result<Value, FetchError> {
        let http_err = |reason: String| FetchError::Http {
            url: url.to_string(),
            reason,
        };
        let resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| http_err(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(http_err(format!("status {}", resp.status())));
        }
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_DOCUMENT)
        {
            return Err(http_err("document too large".into()));
        }
        let body = resp.bytes().await.map_err(|e| http_err(error_chain(&e)))?;
        if body.len() > MAX_DOCUMENT {
            return Err(http_err("document too large".into()));
        }
        serde_json::from_slice(&body).map_err(|e| FetchError::Document {
            url: url.to_string(),
            reason: format!("not JSON: {e}"),
        })
    }

    /// Refresh every issuer's keys on a schedule, until the token is
    /// cancelled (the task ends with the runtime otherwise).
    pub fn spawn_refresh(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                for (issuer, e) in me.refresh_all().await {
                    tracing::warn!(%issuer, error = %e, "scheduled JWKS refresh failed; keeping the cached keys");
                }
            }
        })
    }
}

/// Signing keys of a JWKS document. Keys for encryption and keys of kinds
/// we cannot use are skipped rather than failing the whole set.
fn parse_jwks(doc: &Value) -> Result<JwkSet, String> {
    let Some(items) = doc.get("keys").and_then(Value::as_array) else {
        return Err("no \"keys\" array".into());
    };
    let keys: Vec<Jwk> = items
        .iter()
        .filter(|k| k.get("use").and_then(Value::as_str) != Some("enc"))
        .filter(|k| {
            matches!(
                k.get("kty").and_then(Value::as_str),
                Some("RSA" | "EC" | "OKP")
            )
        })
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .collect();
    if keys.is_empty() {
        return Err("no usable signing keys".into());
    }
    Ok(JwkSet { keys })
}

/// The whole `source()` chain of an error: reqwest's own message alone
/// ("error sending request") hides the TLS reason.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_skips_encryption_and_unknown_keys() {
        let doc = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "use": "enc", "kid": "e",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "use": "sig", "kid": "s",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "weird"}
        ]});
        let set = parse_jwks(&doc).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].common.key_id.as_deref(), Some("s"));
        assert!(parse_jwks(&serde_json::json!({"keys": []})).is_err());
        assert!(parse_jwks(&serde_json::json!({})).is_err());
    }
}
