//! Announcing a new review: a JSON POST whose body is signed with
//! HMAC-SHA256 (`x-portcullis-signature: sha256=<hex>`), generic or in
//! the shape of a Slack incoming webhook.

use std::time::Duration;

use aws_lc_rs::hmac;
use portcullis_config::Secret;

use crate::Review;

pub const SIGNATURE_HEADER: &str = "x-portcullis-signature";

pub struct Webhook {
    url: String,
    key: hmac::Key,
    slack: bool,
    http: reqwest::Client,
}

impl Webhook {
    pub fn new(
        url: String,
        secret: &Secret,
        slack: bool,
        tls: rustls::ClientConfig,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            url,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
            slack,
            http,
        })
    }

    /// The body for `r`.
    pub fn body(&self, r: &Review) -> Vec<u8> {
        let command = format!("portcullis reviews approve {}", r.id);
        let v = if self.slack {
            // Counts only: the sample stays in the gateway (a chat channel
            // is not where masked rows belong).
            let preview = r
                .preview
                .as_ref()
                .map(|p| format!(" Preview: {}.", p.summary()))
                .unwrap_or_default();
            serde_json::json!({
                "text": format!(
                    "Review {} — {} asks to run on {}: `{}` ({}).{preview} Approve: `{}`",
                    r.id, r.requester, r.connection, r.action, r.classification, command
                )
            })
        } else {
            serde_json::json!({"event": "review.created", "review": r, "approve_command": command})
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }

    pub fn sign(&self, body: &[u8]) -> String {
        format!(
            "sha256={}",
            hex::encode(hmac::sign(&self.key, body).as_ref())
        )
    }

    pub async fn send(&self, r: &Review) {
        let body = self.body(r);
        let sig = self.sign(&body);
        let res = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, sig)
            .header("x-portcullis-event", "review.created")
            .body(body)
            .send()
            .await;
        match res {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(review = %r.id, "review announced by webhook")
            }
            Ok(resp) => {
                tracing::warn!(review = %r.id, status = %resp.status(), "review webhook refused")
            }
            // Without the URL: a Slack webhook's URL is its credential
            // (review).
            Err(e) => {
                tracing::warn!(review = %r.id, error = %e.without_url(), "review webhook failed")
            }
        }
    }
}
