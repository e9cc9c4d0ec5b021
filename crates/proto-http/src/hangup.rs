//! Whether a caller's TCP peer has hung up, asked of the kernel without
//! reading the connection.
//!
//! hyper learns that an HTTP/1.1 client left only when it reads the
//! connection's end, and it reads no further while a request runs and
//! bytes of a pipelined next request wait in its buffer: a review's MCP
//! client that pipelined a second request behind a long call, then
//! closed, left the call running to its timeout. The listener keeps a
//! duplicate of the socket's descriptor for as long as it serves the
//! connection; long calls poll it (`poll(2)` with `POLLRDHUP`, which
//! reports the peer's FIN or RST whatever is still unread).

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

/// How often a request waiting for its answer asks whether its caller's
/// socket hung up ([`HangUp::left`]).
pub const POLL: Duration = Duration::from_millis(250);

/// A watch on one connection's socket, cheap to clone. The default
/// watches nothing and never reports a hang-up (connections that are not
/// TCP sockets: in-memory tests).
#[derive(Clone, Debug, Default)]
pub struct HangUp(Option<Weak<std::os::fd::OwnedFd>>);

/// The descriptor a [`HangUp`] watches: held by the listener while it
/// serves the connection (a watch that outlived it would otherwise keep
/// the socket open after hyper closed it).
pub struct WatchedSocket(Arc<std::os::fd::OwnedFd>);

impl WatchedSocket {
    /// A duplicate of `socket`'s descriptor, or `None` if the process has
    /// no descriptor left for one (the call is then not watched).
    pub fn of(socket: &impl std::os::fd::AsFd) -> Option<Self> {
        socket
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| Self(Arc::new(fd)))
    }

    pub fn watch(&self) -> HangUp {
        HangUp(Some(Arc::downgrade(&self.0)))
    }
}

impl HangUp {
    /// Whether the peer has closed or reset the connection, or the
    /// listener has stopped serving it.
    pub fn seen(&self) -> bool {
        let Some(weak) = &self.0 else {
            return false;
        };
        let Some(fd) = weak.upgrade() else {
            return true;
        };
        use rustix::event::{PollFd, PollFlags, Timespec};
        let gone = PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR;
        let mut fds = [PollFd::new(&*fd, PollFlags::RDHUP)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&now)) {
            Ok(n) if n > 0 => fds[0].revents().intersects(gone),
            _ => false,
        }
    }

    /// Completes once the peer has hung up ([`Self::seen`]), asked at
    /// each tick of this thread's [`POLL`] ticker (the first ask within
    /// one period); never, for a watch on nothing.
    pub async fn left(&self) {
        if self.0.is_none() {
            return std::future::pending().await;
        }
        let tick = ticks();
        loop {
            tick.notified().await;
            if self.seen() {
                return;
            }
        }
    }
}

/// This thread's ticker: notified every [`POLL`]. One per thread rather
/// than a sleep per request: tokio wakes its driver (a write to its
/// eventfd, and another turn of `epoll_wait`) whenever a timer is set
/// earlier than every timer the driver last parked for, which a 250 ms
/// sleep armed per request was, every other request at one connection
/// (`perf`, docs/performance.md, 2026-12-06 session 8). A ticker always
/// holds an earlier deadline, so neither the waits nor a request's later
/// timers (the target's timeout) wake the driver. A ticker whose runtime
/// has shut down is replaced.
fn ticks() -> Arc<Notify> {
    thread_local! {
        static TICKER: RefCell<Option<(Arc<Notify>, tokio::task::JoinHandle<()>)>> =
            const { RefCell::new(None) };
    }
    TICKER.with(|t| {
        let mut t = t.borrow_mut();
        if let Some((tick, ticker)) = t.as_ref()
            && !ticker.is_finished()
        {
            return tick.clone();
        }
        let tick = Arc::new(Notify::new());
        let weak = Arc::downgrade(&tick);
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(POLL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                // The thread that kept it has ended.
                let Some(tick) = weak.upgrade() else { return };
                tick.notify_waiters();
            }
        });
        *t = Some((tick.clone(), ticker));
        tick
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_peer_that_leaves_is_seen_even_with_bytes_unread() {
        let (mut client, server) = pair();
        let watched = WatchedSocket::of(&server).unwrap();
        let watch = watched.watch();
        assert!(!watch.seen(), "an open connection");
        // Bytes the server has not read: a pipelined request.
        client.write_all(b"POST /mcp HTTP/1.1\r\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!watch.seen(), "unread bytes are not a hang-up");
        client.shutdown(Shutdown::Both).unwrap();
        drop(client);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !watch.seen() {
            assert!(
                std::time::Instant::now() < until,
                "the hang-up was not seen"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// `left` completes within a tick or two of the peer leaving, on
    /// each runtime a thread runs in turn (the first runtime's ticker
    /// ends with it, and the next must start its own, or no wait on that
    /// thread would ever be asked again), and never while it stays.
    #[test]
    fn left_is_seen_on_each_runtime_of_a_thread_and_not_before() {
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, server) = pair();
                let watched = WatchedSocket::of(&server).unwrap();
                let watch = watched.watch();
                let stays = tokio::time::timeout(POLL * 3, watch.left()).await;
                assert!(stays.is_err(), "a peer that stays has not left");
                drop(client);
                let left = tokio::time::timeout(Duration::from_secs(5), watch.left()).await;
                assert!(left.is_ok(), "the hang-up was not seen");
                let never = tokio::time::timeout(POLL * 3, HangUp::default().left()).await;
                assert!(never.is_err(), "a watch on nothing never reports");
            });
        }
    }

    #[test]
    fn a_connection_no_longer_served_is_gone_and_none_is_never() {
        let (_client, server) = pair();
        let watched = WatchedSocket::of(&server).unwrap();
        let watch = watched.watch();
        drop(watched);
        assert!(watch.seen());
        assert!(!HangUp::default().seen());
    }
}
