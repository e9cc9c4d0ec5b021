//! Connection workers: one single-threaded runtime per core, each serving
//! the connections handed to it from accept to close.
//!
//! Why not the shared work-stealing runtime: a relayed message wakes the
//! task of its connection, and on the shared runtime that task may sit on
//! the other worker, or be stolen by it, so most messages cost a
//! cross-thread wake-up and a context switch (profiled in
//! docs/performance.md: 60% of the gateway's CPU per PostgreSQL
//! transaction was in the kernel, most of it waking workers). A connection
//! pinned to one thread, with its target's socket registered on the same
//! thread, is woken where it runs, as PgBouncer's and nginx's workers are.
//! Connections are dealt round-robin; a long one cannot be moved, which
//! the per-connection caps bound.
//!
//! The workers live as long as the process: a socket registered on one
//! (a pooled target session, a store connection) may be used by a task on
//! another, and must never outlive the runtime that drives it.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;

/// The process's connection workers.
pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
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
        (!handles.is_empty()).then(|| Workers {
            handles,
            next: AtomicUsize::new(0),
        })
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

    /// Run `task` on the next worker.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[i].spawn(task));
    }
}
