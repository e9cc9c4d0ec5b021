//! Accepting a caller's TLS handshake: one place that times it out, turns
//! it into a [`HandshakeRecord`], logs it and counts it, whatever protocol
//! runs on top.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::HandshakeRecord;
use crate::metrics::{FailureLabels, HandshakeLabels, TlsMetrics};

/// Run the server side of a handshake on `io`. `None` when it failed or
/// timed out (already logged and counted).
pub async fn accept<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
    peer: SocketAddr,
    timeout: Duration,
    metrics: &TlsMetrics,
) -> Option<(TlsStream<IO>, HandshakeRecord)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let tls = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = failure_reason(&e);
            metrics
                .failures
                .get_or_create(&FailureLabels { reason })
                .inc();
            tracing::info!(target: "portcullis::tls", %peer, reason, error = %e, "tls handshake failed");
            return None;
        }
        Err(_) => {
            metrics
                .failures
                .get_or_create(&FailureLabels { reason: "timeout" })
                .inc();
            tracing::info!(target: "portcullis::tls", %peer, reason = "timeout", "tls handshake failed");
            return None;
        }
    };
    let record = HandshakeRecord::from_connection(tls.get_ref().1, peer, started.elapsed());
    tracing::info!(
        target: "portcullis::tls",
        peer = %record.peer,
        version = %record.version,
        suite = %record.cipher_suite,
        group = record.group.as_deref().unwrap_or("-"),
        sni = record.sni.as_deref().unwrap_or("-"),
        alpn = record.alpn.as_deref().unwrap_or("-"),
        client_cert_sha256 = record.client_cert_sha256.as_deref().unwrap_or("-"),
        duration_us = record.duration_us,
        "tls handshake"
    );
    metrics
        .handshakes
        .get_or_create(&HandshakeLabels {
            version: record.version.clone(),
            suite: record.cipher_suite.clone(),
            group: record.group.clone().unwrap_or_else(|| "-".into()),
        })
        .inc();
    Some((tls, record))
}

/// A short, bounded label for a failed handshake.
fn failure_reason(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::PeerIncompatible(_)) => "peer_incompatible",
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "invalid_certificate",
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        Some(rustls::Error::InvalidMessage(_)) => "invalid_message",
        Some(rustls::Error::PeerMisbehaved(_)) => "peer_misbehaved",
        Some(rustls::Error::NoApplicationProtocol) => "no_application_protocol",
        Some(_) => "tls_error",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io_error",
    }
}
