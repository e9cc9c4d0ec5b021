//! A PostgreSQL session over the link, agent side: open a target session
//! (or take an idle one), answer, relay the bytes, and keep the target's
//! session for the next caller when this one leaves cleanly and idle.
//!
//! The relay copies bytes rather than messages (the gateway has already
//! inspected every message), but it follows their framing with
//! [`Bounds`]: a session is only kept when the caller's Terminate arrived
//! whole after whole messages, every sync point it sent was answered,
//! and the target's last word was "idle". Anything else closes it, so a
//! caller cannot leave rows in flight for the next one.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_link::{Body, HDR_PG_ACCESS, HDR_PG_OWNER, HDR_PG_PARAMS};
use portcullis_postgres::bounds::Bounds;
use portcullis_postgres::io::FrameReader;
use portcullis_postgres::{MAX_BACKEND_MESSAGE, Owner, PgUpstream, UpstreamSession};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::serve::{full, link_error};

/// Bytes read at a time in each direction: one TLS record's worth.
const CHUNK: usize = 16 * 1024;

/// Connect and authenticate to the target (or take an idle session),
/// answer 200, and once the stream is upgraded: send the target's
/// startup messages, then relay.
pub(crate) async fn open(
    mut req: Request<Incoming>,
    upstream: Arc<PgUpstream>,
    connection: &str,
    gateway: &str,
) -> Response<Body> {
    let params: Vec<(String, String)> = req
        .headers()
        .get(HDR_PG_PARAMS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    // The gateway's mode for this connection; anything but an explicit
    // read-write is read-only (fail closed).
    let read_only = req
        .headers()
        .get(HDR_PG_ACCESS)
        .is_none_or(|v| v.as_bytes() != b"read-write");
    let owner = owner(&req, gateway);
    let session = match upstream.connect_as(&params, read_only, owner).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%connection, error = %e, "target session failed");
            return link_error(StatusCode::BAD_GATEWAY, "upstream", &e.to_string());
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let connection = connection.to_string();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(tunnel) => {
                relay(
                    TokioIo::new(tunnel),
                    session,
                    &upstream,
                    &params,
                    &connection,
                )
                .await
            }
            Err(e) => tracing::info!(%connection, error = %e, "session stream was not upgraded"),
        }
    });
    Response::new(full(Bytes::new()))
}

/// Whose the session is: the owner the gateway named, through that
/// gateway (an agent linked to several gateways keeps their callers
/// apart, since each admits them under its own policy). Unnamed: nobody's,
/// never kept.
fn owner(req: &Request<Incoming>, gateway: &str) -> Owner {
    match req.headers().get(HDR_PG_OWNER).map(|v| v.to_str()) {
        Some(Ok(tag)) if !tag.is_empty() => Owner::Relayed {
            gateway: gateway.to_string(),
            tag: tag.to_string(),
        },
        _ => Owner::Nobody,
    }
}

/// How the caller's side of a relayed session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// A whole Terminate after whole messages, kept from the target.
    Goodbye,
    /// End of stream, an error, or the target's side ended first.
    Other,
}

/// Relay one session between the link stream and the target until either
/// side ends; then keep the target's session if it is idle, or close it.
pub(crate) async fn relay<T>(
    tunnel: T,
    session: UpstreamSession,
    upstream: &Arc<PgUpstream>,
    params: &[(String, String)],
    connection: &str,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let startup = PgUpstream::startup_bytes(&session);
    let UpstreamSession {
        reader,
        writer: mut target_w,
        startup_messages,
        pid,
        secret,
        status,
        read_only,
        owner,
        home,
    } = session;
    let (mut target_r, buffered) = reader.into_parts();
    let (mut tunnel_r, mut tunnel_w) = tokio::io::split(tunnel);
    let mut sent = Bounds::caller();
    // A session nobody may have again passes the goodbye on.
    let keep = upstream.reuse() && owner != Owner::Nobody;
    let mut answered = Bounds::after_startup(status);
    answered.feed(&buffered);
    if tunnel_w.write_all(&startup).await.is_err()
        || tunnel_w.write_all(&buffered).await.is_err()
        || tunnel_w.flush().await.is_err()
    {
        return;
    }
    // Each direction has its own HTTP/2 flow-control window: a caller
    // that stops reading stalls only this session.
    let end = tokio::select! {
        e = caller_to_target(&mut tunnel_r, &mut target_w, &mut sent, keep) => e,
        () = target_to_caller(&mut target_r, &mut tunnel_w, &mut answered) => End::Other,
    };
    // Closing the link stream now lets the gateway finish its side of
    // the session without waiting for the reset below.
    drop((tunnel_r, tunnel_w));
    if end == End::Goodbye && keep && Bounds::idle_after(&sent, &answered) {
        let session = UpstreamSession {
            reader: FrameReader::new(target_r, MAX_BACKEND_MESSAGE),
            writer: target_w,
            startup_messages,
            pid,
            secret,
            status: b'I',
            read_only,
            owner,
            home,
        };
        // Resets it (DISCARD ALL, checked) or closes it.
        upstream.checkin(params, session).await;
        tracing::debug!(%connection, "session over the link ended; target session kept");
        return;
    }
    if !Bounds::idle_after(&sent, &answered) {
        // A statement may still run: the gateway's cancel can be caught
        // and the target's connection check turned off by the caller
        // (review, 2026-12-05), so it is ended for certain if it outlives
        // the goodbye, as the gateway does for targets it reaches itself.
        upstream.end_for_certain(pid);
    }
    portcullis_postgres::goodbye(&mut target_w, sent.at_boundary()).await;
    tracing::debug!(%connection, ?end, "session over the link ended");
}

/// Caller → target until either ends; with `keep`, a goodbye is held back
/// (the target session may serve the caller's next session).
async fn caller_to_target<R, W>(from: &mut R, to: &mut W, sent: &mut Bounds, keep: bool) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return End::Other,
            Ok(n) => n,
        };
        sent.feed(&buf[..n]);
        let goodbye = sent.ends_with_terminate(n).filter(|_| keep);
        let pass = &buf[..goodbye.unwrap_or(n)];
        if to.write_all(pass).await.is_err() || to.flush().await.is_err() {
            return End::Other;
        }
        if goodbye.is_some() {
            return End::Goodbye;
        }
    }
}

async fn target_to_caller<R, W>(from: &mut R, to: &mut W, answered: &mut Bounds)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        answered.feed(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            return;
        }
    }
}
