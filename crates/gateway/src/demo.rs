//! The quickstart's demo API: a small HTTPS service that stands for a
//! real target. It answers only when its API key is present, so a working
//! `curl` through the gateway shows that the gateway injected the key (and
//! the caller never had it).

use std::sync::Arc;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_config::Secret;
use portcullis_http::{Body, ConnInfo, json_response};

use crate::listener::Handler;

/// The header the demo API expects its key in.
pub const DEMO_KEY_HEADER: &str = "x-api-key";

#[derive(Clone)]
pub struct DemoApi {
    pub(crate) api_key: Arc<Secret>,
}

impl Handler for DemoApi {
    async fn handle(&self, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
        let key_ok = req.headers().get(DEMO_KEY_HEADER).is_some_and(|v| {
            verify_slices_are_equal(v.as_bytes(), self.api_key.expose().as_bytes()).is_ok()
        });
        if !key_ok {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "unauthorized", "message": "missing or wrong x-api-key"}),
            );
        }
        let saw_authorization = req.headers().contains_key(header::AUTHORIZATION);
        match (req.method().clone(), req.uri().path()) {
            (Method::GET, "/hello") => json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "message": "hello from the Portcullis demo API",
                    "api_key_valid": true,
                    "caller_authorization_seen": saw_authorization,
                }),
            ),
            (Method::GET, "/customers") => json_response(StatusCode::OK, &customers()),
            (method, "/echo") => {
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let headers: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => Bytes::new(),
                };
                json_response(
                    StatusCode::OK,
                    &serde_json::json!({
                        "method": method.as_str(),
                        "path": path,
                        "header_names": headers,
                        "body_bytes": body.len(),
                        "body_sha256": portcullis_tls::sha256_hex(&body),
                        "caller_authorization_seen": saw_authorization,
                    }),
                )
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "not_found", "message": "demo endpoints: GET /hello, GET /customers, ANY /echo"}),
            ),
        }
    }
}

/// Synthetic customer records full of sensitive values (all invented: test
/// card numbers, example.com addresses, reserved phone numbers).
pub fn customers() -> serde_json::Value {
    serde_json::json!({
        "customers": [
            {
                "id": 1,
                "name": "Ada Lovelace",
                "email": "ada.lovelace@example.com",
                "phone": "+44 20 7946 0958",
                "card": "4111 1111 1111 1111",
                "iban": "GB82 WEST 1234 5698 7654 32",
                "address": {"city": "London", "ip_last_login": "203.0.113.42"},
                "integrations": {"billing": {"api_key": "sk_live_51HbV2dKq9XyZ8aBcD3eFgH4"}}
            },
            {
                "id": 2,
                "name": "Grace Hopper",
                "email": "grace.hopper@example.org",
                "phone": "(415) 555-0132",
                "card": "5500-0000-0000-0004",
                "iban": "DE89370400440532013000",
                "address": {"city": "Arlington", "ip_last_login": "2001:db8::8a2e:370:7334"},
                "integrations": {"github": {"token": "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"}}
            },
            {
                "id": 3,
                "name": "Alan Turing",
                "email": "alan@example.net",
                "phone": "+1 212 555 0199",
                "card": 378282246310005u64,
                "iban": "FR1420041010050500013M02606",
                "notes": "prefers contact by email: alan.t@example.net; password=enigma-1912"
            }
        ]
    })
}
