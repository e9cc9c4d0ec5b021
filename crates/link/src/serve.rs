//! One link, gateway side: HTTP/2 client handshake on the accepted TLS
//! connection, `hello` and its check, registration, heartbeats, and the
//! end (agent gone, revoked, replaced, or gateway shutdown).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::registry::{Link, empty, unix_now};
use crate::{AgentRegistry, Body, HDR_OP, Hello, check_announced};

/// Flow-control windows of each session and of the whole link.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
pub const LINK_WINDOW: u32 = 64 * 1024 * 1024;

/// How often the gateway pings each agent (and re-checks revocation).
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// No answer to a ping in this long: the link is dead.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEnd {
    /// The handshake or `hello` failed.
    Handshake(String),
    /// The agent announced a connection it may not serve.
    Refused(String),
    /// The agent's certificate was revoked.
    Revoked,
    /// A newer link of the same agent replaced this one.
    Replaced,
    /// The agent went away or stopped answering.
    Lost(String),
    Shutdown,
}

/// Serve one agent link until it ends: the HTTP/2 handshake, the agent's
/// `hello` and its check, registration, heartbeats, the end. `allowed`
/// lists the connections (name, protocol, mode) this agent may announce;
/// `revoked` is asked on every heartbeat whether the agent's certificate
/// has been revoked since.
#[allow(clippy::too_many_arguments)]
pub async fn run_link<IO, R, RF>(
    io: IO,
    peer: SocketAddr,
    agent: String,
    allowed: Vec<crate::Assignment>,
    registry: Arc<AgentRegistry>,
    stop: CancellationToken,
    revoked: R,
) -> LinkEnd
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    R: Fn() -> RF,
    RF: Future<Output = bool>,
{
    let cut = CancellationToken::new();
    let io = crate::kill::Killable::new(io, cut.clone());
    let (send, conn) = match handshake(io).await {
        Ok(x) => x,
        Err(e) => return LinkEnd::Handshake(e.to_string()),
    };
    // Set when the connection itself ended (agent gone, network down).
    let gone = CancellationToken::new();
    let driver = drive(conn, cut.clone(), gone.clone());
    let hello = match tokio::time::timeout(HEARTBEAT_TIMEOUT, hello(send.clone())).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            cut.cancel();
            return LinkEnd::Handshake(e);
        }
        Err(_) => {
            cut.cancel();
            return LinkEnd::Handshake("no hello in time".into());
        }
    };
    if let Err(reason) = check_announced(&hello, &allowed) {
        tracing::warn!(%agent, %peer, %reason, "agent link refused");
        refuse(send, &reason).await;
        cut.cancel();
        return LinkEnd::Refused(reason);
    }
    let link = Arc::new(Link {
        id: registry.next_id(),
        agent: agent.clone(),
        version: hello.version.clone(),
        peer,
        connections: hello.connections.clone(),
        connected_at: unix_now(),
        last_heartbeat: unix_now().into(),
        send: send.clone(),
        cut: cut.clone(),
        held: std::sync::Mutex::default(),
    });
    registry.register(link.clone());
    tracing::info!(%agent, %peer, version = %hello.version, connections = hello.connections.len(), "agent connected");
    let end = heartbeats(&link, &stop, &gone, revoked).await;
    registry.remove(&agent, link.id);
    cut.cancel();
    let _ = driver.await;
    match &end {
        LinkEnd::Revoked => {
            tracing::warn!(%agent, %peer, "agent certificate revoked: link and its sessions cut")
        }
        other => tracing::info!(%agent, %peer, end = ?other, "agent disconnected"),
    }
    end
}

/// The gateway's side of the link's HTTP/2 connection (it is the client:
/// it opens a stream per session).
async fn handshake<IO>(
    io: IO,
) -> hyper::Result<(
    SendRequest<Body>,
    hyper::client::conn::http2::Connection<TokioIo<IO>, Body, TokioExecutor>,
)>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        // A session's window is small next to the link's: a caller that
        // stops reading fills its stream's window and nobody else's.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(LINK_WINDOW)
        .max_concurrent_reset_streams(1024)
        .handshake(TokioIo::new(io))
        .await
}

/// The connection's own task: until it ends (then `gone`) or the link is
/// `cut`. Dropping the connection future ends every stream on the link.
fn drive<F>(
    conn: F,
    cut: CancellationToken,
    gone: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>>
where
    F: Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        let r = tokio::select! {
            r = conn => r.map_err(|e| e.to_string()),
            _ = cut.cancelled() => Ok(()),
        };
        gone.cancel();
        r
    })
}

/// A bodiless request of operation `op` to the agent, answered 200.
async fn ask(mut send: SendRequest<Body>, op: &str) -> Result<Response<Incoming>, String> {
    send.ready().await.map_err(|e| e.to_string())?;
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("https://agent/{op}"))
        .header(HDR_OP, op)
        .body(empty())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("{op} answered {}", resp.status()));
    }
    Ok(resp)
}

/// What the agent announces: its version and the connections it serves.
async fn hello(send: SendRequest<Body>) -> Result<Hello, String> {
    let resp = ask(send, "hello").await?;
    let body = http_body_util::Limited::new(resp.into_body(), 256 * 1024)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice::<Hello>(&body).map_err(|e| format!("hello: {e}"))
}

/// Tell the agent why its link is refused before closing, so its
/// operator sees it (best effort, briefly).
async fn refuse(mut send: SendRequest<Body>, reason: &str) {
    let body = serde_json::json!({"reason": reason}).to_string();
    if let Ok(req) = Request::builder()
        .method(Method::POST)
        .uri("https://agent/refused")
        .header(HDR_OP, "refused")
        .body(
            Full::new(bytes::Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), send.send_request(req)).await;
    }
}

/// Every [`HEARTBEAT`]: whether the agent's certificate was revoked, and
/// a ping; until one of them ends the link, or the link is stopped, lost
/// or replaced.
async fn heartbeats<R, RF>(
    link: &Link,
    stop: &CancellationToken,
    gone: &CancellationToken,
    revoked: R,
) -> LinkEnd
where
    R: Fn() -> RF,
    RF: Future<Output = bool>,
{
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return LinkEnd::Shutdown,
            _ = gone.cancelled() => return LinkEnd::Lost("the connection closed".into()),
            _ = link.cut.cancelled() => return LinkEnd::Replaced,
            _ = tick.tick() => {}
        }
        if revoked().await {
            return LinkEnd::Revoked;
        }
        match tokio::time::timeout(HEARTBEAT_TIMEOUT, ask(link.send.clone(), "ping")).await {
            Ok(Ok(_)) => link.last_heartbeat.store(unix_now(), Ordering::Relaxed),
            Ok(Err(e)) => return LinkEnd::Lost(e),
            // No stream free for the ping (a caller holding every stream
            // the agent allows cut every session on the link this way:
            // review). Whether the agent is there is HTTP/2's own PING's
            // to say (`keep_alive_*` in [`handshake`]: a dead link ends
            // the connection, and `gone` with it); a busy one stays.
            Err(_) => {
                let (agent, peer) = (&link.agent, link.peer);
                tracing::warn!(%agent, %peer, "agent link busy: no heartbeat answer in time; kept while HTTP/2 pings are answered");
            }
        }
    }
}
