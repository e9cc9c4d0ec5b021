//! Agent enrolment: a one-time token (made by `portcullis agents enrol`)
//! exchanged for the agent's client certificate, so an agent host needs no
//! file copied from the gateway's CA. The agent keeps its private key: it
//! sends a certificate signing request, whose signature proves it holds
//! the key; only that public key is taken from the request, the name
//! (`connector:NAME`) comes from the token.
//!
//! `POST /api/v1/agents/enrol` on the main listener, `Authorization:
//! Bearer pce_…`, body `{"csr": "-----BEGIN CERTIFICATE REQUEST-----…"}`;
//! answers `{"certificate": PEM, "principal": "connector:NAME"}`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_http::{Body, json_response};
use portcullis_tls::{CertificateAuthority, LeafKind};

pub const ENROL_PATH: &str = "/api/v1/agents/enrol";
/// Prefix of enrolment tokens (gateway tokens are `pcl_`).
pub const TOKEN_PREFIX: &str = "pce_";
/// A CSR is a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;

/// What the endpoint needs; absent when `[agent_listener]` has no
/// `enrol_ca_key`.
#[derive(Clone)]
pub struct Enrolment {
    pub ca: Arc<CertificateAuthority>,
    pub validity: std::time::Duration,
    pub store: portcullis_store::Store,
    pub audit: portcullis_audit::AuditLog,
}

/// The SHA-256 an enrolment token is stored under.
pub fn token_hash(token: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}

pub async fn handle(e: Option<&Enrolment>, req: Request<Incoming>) -> Response<Body> {
    let Some(e) = e else {
        portcullis_http::linger(req.into_body()).await;
        return refuse(
            StatusCode::NOT_FOUND,
            "enrolment_disabled",
            "this gateway does not enrol agents (set [agent_listener] enrol_ca_key)",
        );
    };
    if req.method() != Method::POST {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST a certificate signing request",
        );
    }
    let token = portcullis_identity::token::bearer(
        req.headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    )
    .ok()
    .filter(|t| t.starts_with(TOKEN_PREFIX) && t.len() < 200)
    .map(str::to_owned);
    let bytes: Bytes = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "a certificate signing request is at most 16 KiB",
            );
        }
    };
    let Some(token) = token else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "an enrolment token (Bearer pce_…) is required",
        );
    };
    let csr = match serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["csr"].as_str().map(str::to_owned))
    {
        Some(c) => c,
        None => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected {\"csr\": \"-----BEGIN CERTIFICATE REQUEST-----…\"}",
            );
        }
    };
    // Check the request before spending the token, so a malformed request
    // does not burn it.
    if portcullis_tls::check_request(&csr).is_err() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the certificate signing request could not be read, or its signature does not match its key",
        );
    }
    let now = portcullis_identity::unix_now();
    let (id, agent) = match e.store.use_enrolment(&token_hash(&token), now).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            tracing::info!(target: "portcullis::access", "agent enrolment refused: unknown, used or expired token");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the enrolment token is unknown, already used or expired",
            );
        }
        Err(err) => {
            tracing::error!(error = %err, "enrolment lookup failed");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "enrolment cannot be checked now",
            );
        }
    };
    let principal = format!("connector:{agent}");
    let cert = match e.ca.sign_request(
        &csr,
        LeafKind::Client,
        std::slice::from_ref(&principal),
        e.validity,
    ) {
        Ok(c) => c,
        Err(err) => {
            return refuse(StatusCode::BAD_REQUEST, "bad_request", &err.to_string());
        }
    };
    let fingerprint = portcullis_tls::pem_certificates(cert.as_bytes())
        .ok()
        .and_then(|c| c.first().map(|d| portcullis_tls::sha256_hex(d)))
        .unwrap_or_default();
    // Durable before the certificate is handed out (fail closed).
    if let Err(err) = e
        .audit
        .append(&portcullis_audit::AuditEvent::Admin {
            action: "agent_enrolled".into(),
            detail: serde_json::json!({
                "enrolment": id,
                "principal": principal,
                "certificate_sha256": fingerprint,
            }),
        })
        .await
    {
        tracing::error!(error = %err, "audit unavailable; enrolment refused");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit log cannot record this enrolment",
        );
    }
    tracing::info!(%principal, enrolment = %id, "agent enrolled");
    json_response(
        StatusCode::OK,
        &serde_json::json!({"certificate": cert, "principal": principal}),
    )
}
