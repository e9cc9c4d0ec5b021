//! Bytes returned under a grant's bytes budget. A response's body is
//! taken from the budget before it goes out: all of a declared length
//! (refused whole with 429 when less is left), or all that is left for a
//! body that streams, cut with an error where it would cross and the
//! rest given back when it ends. The request itself already ran: what
//! is bounded is what the caller takes away.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use portcullis_policy::budget::Measure;

use crate::session::LiveSession;
use crate::{Body, BoxError, ProxyError};

/// `resp` metered against the session's bytes budget, when its grant
/// has one.
pub(crate) async fn meter(
    resp: Response<Body>,
    live: &Arc<LiveSession>,
) -> Result<Response<Body>, ProxyError> {
    let Some(b) = budget(live) else {
        return Ok(resp);
    };
    let allowed = portcullis_front::cold(async {
        match resp.body().size_hint().exact() {
            Some(n) => b.take_exactly(Measure::Bytes, n).await,
            None => b.reserve(Measure::Bytes).await,
        }
    })
    .await
    .map_err(ProxyError::Budget)?;
    let (parts, body) = resp.into_parts();
    let metered = Metered {
        inner: body,
        allowed,
        seen: 0,
        live: Some(live.clone()),
    };
    Ok(Response::from_parts(parts, metered.boxed()))
}

/// The session's budget when it counts bytes.
fn budget(live: &LiveSession) -> Option<&portcullis_front::Budget> {
    live.budget
        .get()
        .and_then(Option::as_ref)
        .filter(|b| b.counts(Measure::Bytes))
}

/// A response body counted against what was taken for it.
struct Metered {
    inner: Body,
    /// What was taken: `None` when no limit binds (lifted), and what
    /// passes is counted when it ends instead.
    allowed: Option<u64>,
    seen: u64,
    /// Taken when it ends: the give-back (or count) runs once.
    live: Option<Arc<LiveSession>>,
}

impl Metered {
    /// Give back what was taken and not used (or count what passed,
    /// unbound), off the body's poll.
    fn settle(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        let (allowed, seen) = (self.allowed, self.seen);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let Some(b) = budget(&live) else {
                return;
            };
            match allowed {
                Some(n) => b.refund(Measure::Bytes, n.saturating_sub(seen)).await,
                None => b.spend(Measure::Bytes, None, seen).await,
            }
        });
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.live.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if this.allowed.is_some_and(|a| this.seen + n > a) {
                    // Cut where it crosses, with an error: the caller's
                    // client sees a body that did not end (never one
                    // silently shorter).
                    let why = (this.live.as_deref())
                        .and_then(budget)
                        .map(|b| b.cut(Measure::Bytes, None).to_string())
                        .unwrap_or_default();
                    this.settle();
                    return Poll::Ready(Some(Err(format!("response cut: {why}").into())));
                }
                this.seen += n;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.settle();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.settle();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.live.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.settle();
    }
}
