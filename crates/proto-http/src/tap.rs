//! A body that records what passes through it, and runs a finaliser when
//! it ends (or is dropped): how an HTTP session's recording and its
//! session-end audit entry cover bodies that stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use portcullis_record::Recorder;

use crate::{Body, BoxError};

type Finaliser = Box<dyn FnOnce(u64) + Send + Sync>;

pub struct Tap {
    inner: Body,
    recorder: Recorder,
    /// The request's number in its session.
    request: Option<u64>,
    from_caller: bool,
    bytes: Arc<AtomicU64>,
    on_end: Option<Finaliser>,
}

impl Tap {
    pub fn new(inner: Body, recorder: Recorder, request: Option<u64>, from_caller: bool) -> Self {
        Self {
            inner,
            recorder,
            request,
            from_caller,
            bytes: Arc::default(),
            on_end: None,
        }
    }

    /// The count of bytes that have passed so far, to read later.
    pub fn counted(&self) -> Arc<AtomicU64> {
        self.bytes.clone()
    }

    /// Run `f(bytes seen)` once, when the body ends or is dropped.
    pub fn on_end(mut self, f: impl FnOnce(u64) + Send + Sync + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    fn end(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes.load(Ordering::Relaxed));
        }
    }
}

impl http_body::Body for Tap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    // Fail closed: a body that cannot be recorded stops.
                    let recorded = this.recorder.body(this.request, this.from_caller, data);
                    if let Err(e) = recorded {
                        this.end();
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.end();
    }
}
