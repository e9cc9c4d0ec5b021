//! A target's TCP socket that can move to the reactor of the thread that
//! uses it.
//!
//! Why: a tokio socket stays registered on the reactor of the runtime that
//! opened it. On the gateway's connection workers (one single-threaded
//! runtime per core) a kept target session opened on one worker and taken
//! by a caller served on the other had every answer from the target go
//! through the first worker's reactor, which then woke the second: an
//! extra wake-up, an `eventfd` write and a context switch per message
//! (strace at one pgbench client; the gateway's system time per select
//! was 38-40 µs with a session of its own worker and 54-55 µs with the
//! other's, 2026-12-05). Moved when it is taken, the session is woken
//! where it runs, as a caller's socket is when a connection is handed to
//! another worker (`listener::hand_over`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that [`Homed::rehome`] can move to the current runtime.
/// Empty only if a move failed half way, when every operation fails.
pub struct Homed(Option<TcpStream>);

impl Homed {
    pub fn new(tcp: TcpStream) -> Self {
        Self(Some(tcp))
    }

    /// Register the socket with the reactor of the runtime this is called
    /// on (the old registration is dropped). Only on an idle stream, with
    /// no read or write pending: a waker left on the old reactor would
    /// never be woken.
    pub fn rehome(&mut self) -> io::Result<()> {
        let tcp = self.0.take().ok_or_else(gone)?;
        self.0 = Some(TcpStream::from_std(tcp.into_std()?)?);
        Ok(())
    }

    fn pinned(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.0.as_mut().map(Pin::new).ok_or_else(gone)
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the target's socket was lost while it moved between threads",
    )
}

impl AsyncRead for Homed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().pinned() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Homed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().pinned() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().pinned() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().pinned() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().pinned() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A socket opened on one runtime and moved to another keeps working
    /// after the first runtime is gone; one not moved does not (its
    /// reactor went with the runtime), which shows the move is what
    /// registered it anew.
    #[test]
    fn a_moved_socket_is_driven_by_its_new_runtime() {
        for moved in [true, false] {
            let first = runtime();
            let (mut stream, peer) = first.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                let (tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
                (
                    Homed::new(tcp.expect("connect")),
                    accepted.expect("accept").0.into_std().expect("std"),
                )
            });
            let second = runtime();
            if moved {
                second.block_on(async { stream.rehome() }).expect("rehome");
            }
            drop(first);
            let echoed = second.block_on(async move {
                let mut peer = TcpStream::from_std(peer).expect("peer");
                stream.write_all(b"ping").await?;
                let mut got = [0u8; 4];
                peer.read_exact(&mut got).await?;
                peer.write_all(&got).await?;
                let mut back = [0u8; 4];
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read_exact(&mut back),
                )
                .await
                .map_err(|_| io::Error::other("timed out"))??;
                Ok::<_, io::Error>(back)
            });
            match moved {
                true => assert_eq!(echoed.expect("moved socket works"), *b"ping"),
                false => assert!(
                    echoed.is_err(),
                    "a socket whose reactor is gone still worked"
                ),
            }
        }
    }
}
