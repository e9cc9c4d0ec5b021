//! One link, agent side: the HTTP/2 server the gateway sends sessions to.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_http::BodyState;
use portcullis_link::{
    Body, HDR_CONNECTION, HDR_LINK_ERROR, HDR_OP, HDR_PG_PID, HDR_PG_SECRET, Hello, RemoteError,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// The upstream half of one connection, as the agent runs it.
pub enum Local {
    Http(Box<portcullis_http::Upstream>),
    Postgres(Arc<portcullis_postgres::PgUpstream>),
}

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An answer that is the agent's own failure, not the target's.
pub(crate) fn link_error(status: StatusCode, error: &str, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(&RemoteError {
        error: error.into(),
        message: message.into(),
    })
    .unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(HDR_LINK_ERROR, HeaderValue::from_static("1"));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) async fn serve_link<IO>(
    io: IO,
    locals: Arc<HashMap<String, Local>>,
    hello: Arc<Hello>,
    gateway: Arc<str>,
    stop: CancellationToken,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let svc = service_fn(move |req| {
        let locals = locals.clone();
        let hello = hello.clone();
        let gateway = gateway.clone();
        async move { Ok::<_, Infallible>(handle(req, &locals, &hello, &gateway).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .enable_connect_protocol()
        .initial_stream_window_size(portcullis_link::STREAM_WINDOW)
        .initial_connection_window_size(portcullis_link::LINK_WINDOW)
        .max_concurrent_streams(portcullis_link::AGENT_STREAMS as u32)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r.map_err(|e| e.to_string()),
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            Ok(())
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    locals: &HashMap<String, Local>,
    hello: &Hello,
    gateway: &str,
) -> Response<Body> {
    let op = req
        .headers()
        .get(HDR_OP)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let connection = req
        .headers()
        .get(HDR_CONNECTION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    match op.as_str() {
        "hello" => Response::new(full(serde_json::to_vec(hello).unwrap_or_default())),
        "ping" => Response::new(full("ok")),
        "refused" => {
            let body = req.into_body().collect().await.map(|c| c.to_bytes());
            let reason = body
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["reason"].as_str().map(str::to_string))
                .unwrap_or_default();
            tracing::error!(%reason, "the gateway refused this agent's link");
            Response::new(full("ok"))
        }
        "http" => match locals.get(&connection) {
            Some(Local::Http(u)) => relay_http(req, u, &connection).await,
            _ => unknown(&connection, "http"),
        },
        "pg" => match locals.get(&connection) {
            Some(Local::Postgres(u)) => crate::pg::open(req, u.clone(), &connection, gateway).await,
            _ => unknown(&connection, "postgres"),
        },
        "pg-cancel" => match locals.get(&connection) {
            Some(Local::Postgres(u)) => {
                let num = |h: &str| {
                    req.headers()
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                };
                match (num(HDR_PG_PID), num(HDR_PG_SECRET)) {
                    (Some(pid), Some(secret)) => match u.cancel(pid, secret).await {
                        Ok(()) => Response::new(full("ok")),
                        Err(e) => link_error(StatusCode::BAD_GATEWAY, "upstream", &e.to_string()),
                    },
                    _ => link_error(StatusCode::BAD_REQUEST, "bad_request", "pid and secret"),
                }
            }
            _ => unknown(&connection, "postgres"),
        },
        other => link_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("unknown link operation {other:?}"),
        ),
    }
}

fn unknown(connection: &str, protocol: &str) -> Response<Body> {
    link_error(
        StatusCode::NOT_FOUND,
        "unknown_connection",
        &format!("this agent serves no {protocol} connection named {connection:?}"),
    )
}

async fn relay_http(
    req: Request<Incoming>,
    upstream: &portcullis_http::Upstream,
    connection: &str,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let uri = match upstream.target_uri(&path, parts.uri.query()) {
        Ok(u) => u,
        Err(e) => return link_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    for h in [HDR_OP, HDR_CONNECTION] {
        parts.headers.remove(h);
    }
    parts.uri = uri;
    let out = Request::from_parts(
        parts,
        body.map_err(|e| -> portcullis_link::BoxError { Box::new(e) })
            .boxed(),
    );
    // The agent's target is direct: no link, no caller to count.
    match upstream
        .forward(None, out, &Arc::new(BodyState::default()))
        .await
    {
        Ok(resp) => {
            let resp = resp.map(|b| {
                b.map_err(|e| -> portcullis_link::BoxError { Box::new(e) })
                    .boxed()
            });
            // The credential is added here, so it is scrubbed here: the
            // gateway never knows it (a target echoing it had handed it
            // to callers of agent-served connections).
            let Some(s) = upstream.scrubber() else {
                return resp;
            };
            s.response(resp)
                .unwrap_or_else(|reason| link_error(StatusCode::BAD_GATEWAY, "upstream", &reason))
        }
        Err(portcullis_http::ForwardError::Timeout(_)) => link_error(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the target did not answer in time",
        ),
        Err(e) => {
            tracing::info!(%connection, error = %e, "target request failed");
            link_error(StatusCode::BAD_GATEWAY, "upstream", &e.to_string())
        }
    }
}
