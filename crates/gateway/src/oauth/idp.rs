//! The gateway as a client of the OpenID provider people sign in with:
//! discovery (kept once it succeeds; a failure is retried at the next
//! sign-in) and the exchange of the provider's code for an ID token.

use serde::Deserialize;
use tokio::sync::OnceCell;

/// Where the provider signs people in and answers codes.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Endpoints {
    issuer: String,
    pub(super) authorization_endpoint: String,
    token_endpoint: String,
}

pub(super) struct Provider {
    issuer: String,
    endpoints: OnceCell<Endpoints>,
}

/// What the provider's token endpoint answered.
#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// What the exchange needs beside the code.
pub(super) struct Exchange<'a> {
    pub client_id: &'a str,
    pub client_secret: Option<&'a str>,
    pub redirect_uri: &'a str,
    pub verifier: &'a str,
}

impl Provider {
    pub(super) fn new(issuer: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            endpoints: OnceCell::new(),
        }
    }

    pub(super) fn issuer(&self) -> &str {
        &self.issuer
    }

    pub(super) async fn endpoints(&self, http: &reqwest::Client) -> Result<&Endpoints, String> {
        self.endpoints
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let e: Endpoints = http
                    .get(&url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| format!("discovery at {url}: {e}"))?
                    .json()
                    .await
                    .map_err(|e| format!("discovery at {url}: {e}"))?;
                if e.issuer != self.issuer {
                    return Err(format!(
                        "discovery at {url} names issuer {:?}",
                        e.issuer.chars().take(200).collect::<String>()
                    ));
                }
                for endpoint in [&e.authorization_endpoint, &e.token_endpoint] {
                    if !endpoint.starts_with("https://") {
                        return Err(format!("discovery at {url}: endpoints must be https"));
                    }
                }
                Ok(e)
            })
            .await
    }

    /// Exchange the provider's `code` for its ID token.
    pub(super) async fn exchange(
        &self,
        http: &reqwest::Client,
        code: &str,
        x: &Exchange<'_>,
    ) -> Result<String, String> {
        let endpoints = self.endpoints(http).await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", x.redirect_uri),
            ("code_verifier", x.verifier),
        ];
        let mut req = http.post(&endpoints.token_endpoint);
        match x.client_secret {
            Some(secret) => req = req.basic_auth(x.client_id, Some(secret)),
            None => form.push(("client_id", x.client_id)),
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("the identity provider's token endpoint: {e}"))?;
        let status = resp.status();
        let answer: TokenAnswer = resp.json().await.map_err(|e| {
            format!("the identity provider's token endpoint answered {status}: {e}")
        })?;
        match (answer.id_token, answer.error) {
            (Some(t), None) if status.is_success() => Ok(t),
            (_, Some(error)) => Err(format!(
                "the identity provider refused the sign-in: {error} {}",
                answer.error_description.unwrap_or_default()
            )
            .chars()
            .take(300)
            .collect()),
            _ => Err(format!(
                "the identity provider answered {status} without an ID token (is `openid` in oauth.scopes?)"
            )),
        }
    }
}
