//! Reading frames off a byte stream: the only place the parsers meet I/O.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::frame::{self, FrameError, Message, Startup};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the peer closed the connection in the middle of a message")]
    TruncatedMessage,
}

/// What [`FrameReader::next_or_large`] read.
#[derive(Debug)]
pub enum Frame {
    Whole(Message),
    /// The head of a large message; `len` body bytes follow.
    Large {
        tag: u8,
        len: usize,
    },
}

/// A buffered frame reader.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            max,
        }
    }

    /// A message already buffered, without reading.
    pub fn buffered(&mut self) -> Result<Option<Message>, FrameError> {
        frame::parse_message(&mut self.buf, self.max)
    }

    /// The next message; `None` on a clean end of stream between messages.
    pub async fn next(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            if let Some(m) = frame::parse_message(&mut self.buf, self.max)? {
                return Ok(Some(m));
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::TruncatedMessage)
                };
            }
        }
    }

    /// The next message, or, for a message of one of `tags` whose body is
    /// longer than `over`, only its head: the body is then read with
    /// [`Self::body_chunk`] and passed on as it arrives, so a large COPY
    /// row never sits whole in memory.
    pub async fn next_or_large(
        &mut self,
        tags: &[u8],
        over: usize,
    ) -> Result<Option<Frame>, ReadError> {
        loop {
            if self.buf.len() >= 5 && tags.contains(&self.buf[0]) {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let body = (len as usize).saturating_sub(4);
                // Lengths outside the limits are parse_message's to refuse.
                if len >= 4 && len as usize <= self.max && body > over {
                    let tag = self.buf[0];
                    let _ = self.buf.split_to(5);
                    return Ok(Some(Frame::Large { tag, len: body }));
                }
            }
            if let Some(m) = frame::parse_message(&mut self.buf, self.max)? {
                return Ok(Some(Frame::Whole(m)));
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::TruncatedMessage)
                };
            }
        }
    }

    /// Up to `max` (and at most `remaining`) bytes of the body of a
    /// [`Frame::Large`] being passed on.
    pub async fn body_chunk(
        &mut self,
        remaining: usize,
        max: usize,
    ) -> Result<bytes::Bytes, ReadError> {
        if self.buf.is_empty() && self.fill().await? == 0 {
            return Err(ReadError::TruncatedMessage);
        }
        let n = remaining.min(max).min(self.buf.len());
        Ok(self.buf.split_to(n).freeze())
    }

    /// The next startup packet; `None` on a clean end of stream.
    pub async fn startup(&mut self) -> Result<Option<Startup>, ReadError> {
        loop {
            if let Some(s) = frame::parse_startup(&mut self.buf)? {
                return Ok(Some(s));
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::TruncatedMessage)
                };
            }
        }
    }

    /// Whether unread bytes are buffered (after an SSLRequest there must be
    /// none: bytes sent before the TLS handshake would be trusted as if
    /// they had come through it).
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Change the message size limit (startup packets are small; the
    /// session's messages may be larger).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Bytes read and not yet returned as a message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The reader and whatever it has buffered beyond the last frame.
    pub fn into_parts(self) -> (R, bytes::BytesMut) {
        (self.inner, self.buf)
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8 * 1024);
        }
        self.inner.read_buf(&mut self.buf).await
    }
}
