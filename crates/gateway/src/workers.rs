//! Connection workers: one single-threaded runtime per core, each serving
//! the connections it accepts from accept to close.
//!
//! Why not the shared work-stealing runtime: a relayed message wakes the
//! task of its connection, and on the shared runtime that task may sit on
//! the other worker, or be stolen by it, so most messages cost a
//! cross-thread wake-up and a context switch (profiled in
//! docs/performance.md: 60% of the gateway's CPU per PostgreSQL
//! transaction was in the kernel, most of it waking workers). A connection
//! pinned to one thread, with its target's socket registered on the same
//! thread, is woken where it runs, as PgBouncer's and nginx's workers are.
//! Each worker accepts from the listening sockets itself, so an idle one
//! takes a connection first (see `listener::accept_loop`); a long one
//! cannot be moved, which the per-connection caps bound.
//!
//! The workers live as long as the process: a socket registered on one
//! (a pooled target session, a store connection) may be used by a task on
//! another, and must never outlive the runtime that drives it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;

/// The process's connection workers.
pub(crate) struct Workers {
    handles: Vec<Handle>,
    /// Connections each serves now.
    live: Vec<AtomicUsize>,
}

/// A connection counted on its worker until dropped.
pub(crate) struct Serving {
    worker: &'static Workers,
    i: usize,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.worker.live[self.i].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where worker `here` serves a connection it accepted, given how many
/// each serves: itself, unless it serves two more than the least loaded.
/// The kernel wakes every worker for a connection and the first to call
/// `accept` takes it, so a burst (64 keep-alive connections opened at
/// once) lands on whichever worker was awake; kept there, it made one
/// worker serve most of them (an A/B: p99 10 ms to 25 ms).
fn place(live: &[usize], here: usize) -> usize {
    let mine = live.get(here).copied().unwrap_or(0);
    match live.iter().enumerate().min_by_key(|&(_, n)| *n) {
        Some((least, &n)) if mine >= n + 2 => least,
        _ => here,
    }
}

static WORKERS: OnceLock<Option<Workers>> = OnceLock::new();

/// How many workers: `PORTCULLIS_CONNECTION_THREADS`, else one per core;
/// 0 serves connections on the shared runtime.
fn wanted() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(v) = std::env::var("PORTCULLIS_CONNECTION_THREADS") else {
        return cores;
    };
    match v.trim().parse::<usize>() {
        Ok(n) if n <= MAX => n,
        _ => {
            tracing::warn!(value = %v, "PORTCULLIS_CONNECTION_THREADS is not a number from 0 to {MAX}; using one per core");
            cores
        }
    }
}

/// More threads than this only add wake-ups.
const MAX: usize = 1024;

impl Workers {
    /// The process's workers, started on first use; `None` when there are
    /// none (configured so, or a thread could not be started: the shared
    /// runtime then serves every connection, as it always can).
    pub(crate) fn get() -> Option<&'static Workers> {
        WORKERS.get_or_init(|| Self::start(wanted())).as_ref()
    }

    fn start(n: usize) -> Option<Workers> {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            match Self::thread(i) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a connection worker; using the shared runtime");
                    break;
                }
            }
        }
        let live = handles.iter().map(|_| AtomicUsize::new(0)).collect();
        (!handles.is_empty()).then_some(Workers { handles, live })
    }

    /// A thread driving a single-threaded runtime until the process ends.
    fn thread(i: usize) -> std::io::Result<Handle> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name(format!("portcullis-conn-{i}"))
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        Ok(handle)
    }

    /// How many workers there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Each worker's runtime.
    pub(crate) fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// The worker to serve a connection worker `here` accepted (see
    /// [`place`]), with the connection counted there.
    pub(crate) fn place(&'static self, here: usize) -> (usize, Serving) {
        let live: Vec<usize> = self
            .live
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect();
        let i = place(&live, here);
        self.live[i].fetch_add(1, Ordering::Relaxed);
        (i, Serving { worker: self, i })
    }
}

#[cfg(test)]
mod tests {
    use super::place;

    #[test]
    fn a_worker_keeps_what_it_accepts_until_it_serves_two_more() {
        assert_eq!(place(&[0, 0], 0), 0);
        assert_eq!(place(&[1, 0], 0), 0);
        assert_eq!(place(&[2, 0], 0), 1);
        assert_eq!(place(&[5, 4], 0), 0);
        assert_eq!(place(&[3, 9, 1], 1), 2);
        assert_eq!(place(&[7], 0), 0);
    }
}
