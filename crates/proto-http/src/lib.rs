//! HTTP at Layer 7. The front half authenticates the caller, routes by
//! path (`/c/<connection>/…`) or host, asks policy, and streams the request
//! to the connection's [`Upstream`], the half that holds the credential.

mod budget;
mod error;
mod front;
mod hangup;
pub mod headers;
mod masking;
mod metrics;
mod review;
pub mod route;
pub mod scrub;
mod session;
mod tap;
mod upstream;
mod vaults;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

pub use error::{ProxyError, full, json_response};
pub use front::{ConnInfo, HttpFront, linger};
pub use hangup::{HangUp, WatchedSocket};
pub use masking::{MaskFailure, ResponseError, mask_response};
pub use metrics::HttpMetrics;
pub use portcullis_mask::MaskMetrics;
pub use session::ConnSessions;
pub use upstream::{ForwardError, SetupError, Upstream};

/// Every method a request asks its target to see instead of its own
/// (override headers, query parameters and, for a form or JSON body, its
/// fields), upper-cased; `None` where the body names one in a form not
/// read here (a multipart body). For fronts that build the request
/// themselves (the MCP `http_request` tool), the same reading as the
/// proxy's.
pub fn requested_methods(
    headers: &http::HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Option<Vec<String>> {
    let mut found = review::method_overrides(headers, query);
    for m in review::body_overrides(headers, body).ok()? {
        if !found.contains(&m) {
            found.push(m);
        }
    }
    Some(found)
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type used in both directions.
pub type Body = BoxBody<Bytes, BoxError>;

/// What happened to a caller's request body on its way upstream, noted
/// as it streams: when the client then fails, this says whether the
/// caller (gone mid-body) or the size limit was the cause. When the limit
/// is hit, the rest of the caller's body is parked here so the front can
/// drain it before answering 413.
#[derive(Debug, Default)]
pub struct BodyState {
    over_limit: AtomicBool,
    caller_failed: AtomicBool,
    rest: Mutex<Option<Incoming>>,
}

impl BodyState {
    pub fn over_limit(&self) -> bool {
        self.over_limit.load(Ordering::Relaxed)
    }

    pub fn caller_failed(&self) -> bool {
        self.caller_failed.load(Ordering::Relaxed)
    }

    /// The unread rest of a body that went over the limit.
    pub fn take_rest(&self) -> Option<Incoming> {
        self.rest.lock().ok().and_then(|mut r| r.take())
    }

    /// Stream `body` with at most `limit` bytes, noting failures here.
    pub fn watch(self: &Arc<Self>, body: Incoming, limit: u64) -> Body {
        use http_body_util::BodyExt;
        Watched {
            inner: Some(body),
            seen: 0,
            limit,
            state: self.clone(),
        }
        .boxed()
    }
}

/// The body limit was exceeded.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A caller's body with a byte limit, reporting into a [`BodyState`].
/// Written out (rather than `http_body_util::Limited`) because the
/// unread rest must survive the limit being hit.
struct Watched {
    inner: Option<Incoming>,
    seen: u64,
    limit: u64,
    state: Arc<BodyState>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if this.seen > this.limit {
                    this.state.over_limit.store(true, Ordering::Relaxed);
                    if let Ok(mut rest) = this.state.rest.lock() {
                        *rest = this.inner.take();
                    }
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.caller_failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            other => other.map_err(|e| Box::new(e) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}
