//! The handshake record: what was negotiated with one caller, logged for
//! every handshake and carried into the session.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::ServerConnection;
use rustls_pki_types::CertificateDer;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HandshakeRecord {
    pub peer: SocketAddr,
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// e.g. `X25519`; absent when a TLS 1.2 session was resumed.
    pub group: Option<String>,
    pub sni: Option<String>,
    pub alpn: Option<String>,
    /// SHA-256 of the client certificate (DER), lower-case hex.
    pub client_cert_sha256: Option<String>,
    pub duration_us: u64,
    /// The verified client certificate (leaf), when one was presented.
    #[serde(skip)]
    pub client_cert: Option<CertificateDer<'static>>,
}

impl HandshakeRecord {
    pub fn from_connection(conn: &ServerConnection, peer: SocketAddr, took: Duration) -> Self {
        Self {
            peer,
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_else(|| "unknown".into()),
            cipher_suite: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_else(|| "unknown".into()),
            group: conn
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name())),
            sni: conn.server_name().map(str::to_owned),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            client_cert_sha256: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| crate::sha256_hex(c)),
            duration_us: took.as_micros().min(u64::MAX as u128) as u64,
            client_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned()),
        }
    }
}
