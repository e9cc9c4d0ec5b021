//! The connection's own credential, kept out of what the target answers.
//!
//! The gateway adds the credential to each request; a target that echoes
//! requests (`TRACE`, an echo endpoint, an error page quoting the headers
//! it got) hands it back. A review read an API key that way through six
//! connections, masked ones included. Every occurrence of the secret in a
//! response's headers and body is overwritten with `*` of the same length
//! (so lengths and framing stay valid), also where it is split across the
//! body's frames. The request asks for no compression and no byte range
//! (either would hide the secret from the search: code review); a
//! secret the target re-encodes (base64, JSON escapes) is not found. Connections
//! served by an agent are scrubbed by nobody: the gateway does not know
//! their secret.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response};
use http_body::{Frame, SizeHint};

use crate::{Body, BoxError};

/// Secrets shorter than this are not looked for: they would overwrite
/// ordinary text (and such a credential is no secret).
const MIN_SECRET: usize = 8;

/// What to look for.
#[derive(Clone)]
pub struct Scrubber {
    secret: Arc<memchr::memmem::Finder<'static>>,
    len: usize,
}

impl Scrubber {
    pub fn new(secret: &[u8]) -> Option<Self> {
        (secret.len() >= MIN_SECRET).then(|| Self {
            secret: Arc::new(memchr::memmem::Finder::new(secret).into_owned()),
            len: secret.len(),
        })
    }

    /// How many bytes at the end of `buf` could begin the secret.
    fn may_begin(&self, buf: &[u8]) -> usize {
        let needle = self.secret.needle();
        let most = (self.len - 1).min(buf.len());
        (1..=most)
            .rev()
            .find(|&k| buf[buf.len() - k..] == needle[..k])
            .unwrap_or(0)
    }

    /// Overwrite every occurrence in `buf`, overlapping ones included
    /// (all are found before any is overwritten); how many there were.
    pub fn bytes(&self, buf: &mut [u8]) -> usize {
        let mut at = Vec::new();
        let mut from = 0;
        while let Some(i) = self.secret.find(&buf[from..]) {
            at.push(from + i);
            from += i + 1;
        }
        for &i in &at {
            buf[i..i + self.len].fill(b'*');
        }
        at.len()
    }

    /// Overwrite every occurrence in these headers' values.
    pub fn headers(&self, headers: &mut http::HeaderMap) {
        for v in headers.values_mut() {
            if self.secret.find(v.as_bytes()).is_some() {
                let mut b = v.as_bytes().to_vec();
                self.bytes(&mut b);
                // `*` in place of visible bytes: still a valid value.
                *v = HeaderValue::from_bytes(&b).unwrap_or(HeaderValue::from_static("***"));
            }
        }
    }

    /// The response with its headers and body scrubbed.
    pub fn response(&self, resp: Response<Body>) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        self.headers(&mut parts.headers);
        let body = Scrubbed {
            inner: body,
            scrub: self.clone(),
            carry: BytesMut::new(),
            done: false,
            trailers: None,
        };
        Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
    }
}

/// A body with the secret overwritten. Bytes at the end of a frame that
/// could begin the secret wait for the next frame, where it may continue;
/// nothing else waits (an event stream's events are not held back), and a
/// frame without the secret is passed without a copy.
struct Scrubbed {
    inner: Body,
    scrub: Scrubber,
    carry: BytesMut,
    done: bool,
    trailers: Option<Frame<Bytes>>,
}

impl Scrubbed {
    /// What of `data` (after what was held) can go now, scrubbed.
    fn next_data(&mut self, data: Bytes) -> Option<Bytes> {
        let whole = if self.carry.is_empty() && self.scrub.secret.find(&data).is_none() {
            // The common case: nothing to overwrite, nothing copied.
            data
        } else {
            self.carry.extend_from_slice(&data);
            self.scrub.bytes(&mut self.carry);
            self.carry.split().freeze()
        };
        let held = self.scrub.may_begin(&whole);
        self.carry.extend_from_slice(&whole[whole.len() - held..]);
        let out = whole.slice(..whole.len() - held);
        (!out.is_empty()).then_some(out)
    }
}

impl http_body::Body for Scrubbed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                if !this.carry.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(this.carry.split().freeze()))));
                }
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => {
                    this.done = true;
                    this.scrub.bytes(&mut this.carry);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(out) = this.next_data(data) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(mut trailers) => {
                        // After the data: the held bytes go first.
                        this.done = true;
                        this.scrub.bytes(&mut this.carry);
                        if let Some(t) = trailers.trailers_mut() {
                            this.scrub.headers(t);
                        }
                        this.trailers = Some(trailers);
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.carry.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // The same length: what the target's body has left, and what is
        // held.
        let inner = self.inner.size_hint();
        let held = self.carry.len() as u64;
        let mut h = SizeHint::new();
        h.set_lower(inner.lower().saturating_add(held));
        if let Some(u) = inner.upper() {
            h.set_upper(u.saturating_add(held));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body of these frames.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn body_of(chunks: &[&'static [u8]]) -> Body {
        Chunks(chunks.iter().map(|c| Bytes::from_static(c)).collect()).boxed()
    }

    #[tokio::test]
    async fn the_secret_is_overwritten_in_headers_and_across_frames() {
        let s = Scrubber::new(b"sk-CANARY-1234").unwrap();
        let resp = Response::builder()
            .header("x-echo", "Bearer sk-CANARY-1234")
            .body(body_of(&[
                b"{\"key\":\"sk-CA",
                b"NARY-12",
                b"34\",\"sk-CANARY-1234\":1}",
            ]))
            .unwrap();
        let resp = s.response(resp);
        assert_eq!(resp.headers()["x-echo"], "Bearer **************");
        let out = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &out[..],
            b"{\"key\":\"**************\",\"**************\":1}".as_slice()
        );
        assert!(Scrubber::new(b"short").is_none());
        // Overlapping copies leave nothing of either (code review).
        let o = Scrubber::new(b"abababab").unwrap();
        let mut b = b"xabababababy".to_vec();
        assert_eq!(o.bytes(&mut b), 2);
        assert_eq!(&b, b"x**********y");
        // Nothing that could begin the secret waits: an event goes out
        // whole, at once.
        let mut b = Scrubbed {
            inner: body_of(&[]),
            scrub: s.clone(),
            carry: BytesMut::new(),
            done: false,
            trailers: None,
        };
        let event = Bytes::from_static(b"data: {\"n\":1}\n\n");
        assert_eq!(b.next_data(event.clone()), Some(event));
        assert_eq!(
            b.next_data(Bytes::from_static(b"x sk-CAN")).as_deref(),
            Some(&b"x "[..])
        );
        assert_eq!(&b.carry[..], b"sk-CAN");
    }
}
