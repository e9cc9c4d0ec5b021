//! Where a recording's segments are compressed, chained and written.
//!
//! A segment that comes due while the session runs is handed on: it waits
//! in its recording's [`Chain`] and a token for it goes to one [`Queue`]
//! whose thread runs at idle priority. Compressing a full megabyte inline
//! cost the request that filled it about 0.3 ms, the whole p99.9 tail at
//! one connection; at normal priority the thread took the core that the
//! caller's or the target's next wake-up was queued for, and the tail
//! stayed (`perf` with scheduler events, 2026-12-06).
//!
//! Nothing waits on that thread. A writer that must see its segments in
//! the file (`flush`, `finish`, `seal`) or whose segments wait too long
//! (the ticker) writes its own waiting segments itself, in order. One
//! that finds too many segments waiting across all recordings does the
//! same, unless the thread has begun its oldest: then it queues behind
//! it, up to `OWN_BEHIND_A_CLAIM` of its own. Whoever begins a segment
//! claims it, so the thread skips what a writer has begun; a writer that
//! must have everything written compresses a segment the thread holds a
//! second time rather than wait (a thread at idle priority, preempted
//! mid-segment on a busy machine, took up to 0.9 s to finish one). Each
//! segment has a number and the file takes only the next one: written
//! twice, a segment lands once; never out of order, never with a hole.
//! Compression happens outside every lock; only the digest and the write
//! are under the chain's `end`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};

use crate::{FailureHook, GENESIS, RecordError};

/// Segments that may wait for the thread, across all recordings (each
/// the size its writer's buffer had: a megabyte or a little more): a
/// bound on their memory. A writer that finds this many writes its own.
pub(crate) const QUEUED_SEGMENTS: usize = 16;
/// Segments of one recording that may wait behind one the thread has
/// begun while the queue is full; past this its writer writes them all.
/// (Writing its own at once, the writer compressed the thread's segment
/// a second time: 10% more CPU per 64 KiB request at 64 connections.)
const OWN_BEHIND_A_CLAIM: usize = 4;

/// Lock, taking over a lock whose holder panicked. Every value behind
/// these locks is changed by whole assignments after the work that could
/// panic, and a panic while writing stops the recording (`serve`).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A recording's file and the end of its chain of segments.
pub(crate) struct Chain {
    path: PathBuf,
    pub(crate) end: Mutex<End>,
    /// Set with `End::failed`: lets each event ask without the lock.
    stopped: AtomicBool,
    /// Segments handed on and not yet in the file, oldest first. One
    /// leaves only under `end`, as the file takes it.
    waiting: Mutex<VecDeque<Waiting>>,
    /// A buffer a written segment no longer needs, for the writer's next:
    /// a fresh one grew by copies and page faults to a megabyte.
    spare: Mutex<Vec<u8>>,
    queue: Option<&'static Queue>,
}

pub(crate) struct End {
    pub(crate) file: std::fs::File,
    pub(crate) prev: [u8; 32],
    /// Bytes of the file that hold whole segments.
    written: u64,
    /// The number of the segment the file takes next.
    next: u64,
    /// Set by the first failure; every later call fails with it.
    failed: Option<String>,
    on_failure: Option<FailureHook>,
}

struct Waiting {
    seq: u64,
    data: Arc<Vec<u8>>,
    since: Instant,
    /// Someone (the thread or the writer) has begun writing it.
    claimed: AtomicBool,
}

/// How much of a recording's waiting segments its writer writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Every one, including one the thread has begun.
    All,
    /// Up to one the thread has begun.
    Unclaimed,
}

impl Chain {
    /// The chain of `file`, whose whole segments end at `written` with
    /// digest `prev`; segments handed on go to `queue`.
    pub(crate) fn new(
        path: PathBuf,
        file: std::fs::File,
        prev: [u8; 32],
        written: u64,
        queue: Option<&'static Queue>,
    ) -> Arc<Self> {
        Arc::new(Self {
            path,
            end: Mutex::new(End {
                file,
                prev,
                written,
                next: 0,
                failed: None,
                on_failure: None,
            }),
            stopped: AtomicBool::new(false),
            waiting: Mutex::new(VecDeque::new()),
            spare: Mutex::new(Vec::new()),
            queue,
        })
    }

    #[cfg(test)]
    pub(crate) fn set_queue(&mut self, queue: &'static Queue) {
        self.queue = Some(queue);
    }

    /// As the thread does when it begins the oldest waiting segment.
    #[cfg(test)]
    pub(crate) fn claim_oldest(&self) {
        if let Some(w) = lock(&self.waiting).front() {
            w.claimed.store(true, Ordering::Release);
        }
    }

    #[cfg(test)]
    pub(crate) fn waiting_here(&self) -> usize {
        lock(&self.waiting).len()
    }

    pub(crate) fn on_failure(&self, hook: FailureHook) {
        lock(&self.end).on_failure = Some(hook);
    }

    pub(crate) fn prev(&self) -> [u8; 32] {
        lock(&self.end).prev
    }

    pub(crate) fn stopped(&self) -> Result<(), RecordError> {
        if !self.stopped.load(Ordering::Acquire) {
            return Ok(());
        }
        let reason = lock(&self.end).failed.clone().unwrap_or_default();
        Err(RecordError::Stopped {
            path: self.path.clone(),
            reason,
        })
    }

    /// Stop the recording for good with `reason`.
    pub(crate) fn fail(&self, reason: String) {
        let mut end = lock(&self.end);
        self.fail_locked(&mut end, reason);
    }

    fn fail_locked(&self, end: &mut End, reason: String) {
        if end.failed.is_some() {
            return;
        }
        tracing::error!(path = %self.path.display(), %reason, "recording stopped; the session ends");
        end.failed = Some(reason.clone());
        self.stopped.store(true, Ordering::Release);
        // What waits will never be written: free it.
        let dropped = std::mem::take(&mut *lock(&self.waiting)).len();
        if let Some(queue) = self.queue {
            queue.waiting.fetch_sub(dropped, Ordering::AcqRel);
        }
        if let Some(hook) = &end.on_failure {
            hook(&reason);
        }
    }

    /// A buffer for the writer's next segment.
    pub(crate) fn take_spare(&self) -> Vec<u8> {
        std::mem::take(&mut *lock(&self.spare))
    }

    /// Keep a written segment's buffer as the spare, if this was its last
    /// holder (the thread and the writer may each hold it while writing).
    fn recycle(&self, data: Arc<Vec<u8>>) {
        if let Ok(data) = Arc::try_unwrap(data) {
            self.keep_spare(data);
        }
    }

    fn keep_spare(&self, mut data: Vec<u8>) {
        data.clear();
        let mut spare = lock(&self.spare);
        if spare.capacity() < data.capacity() {
            *spare = data;
        }
    }

    /// Hand `data` on as segment `seq`: to the queue when there is room,
    /// else written here after this recording's waiting segments. A
    /// failure on the thread is seen by a later call.
    pub(crate) fn hand_on(self: &Arc<Self>, seq: u64, data: Vec<u8>) -> Result<(), RecordError> {
        self.stopped()?;
        let Some(queue) = self.queue else {
            return self.write_here(seq, data);
        };
        if !queue.has_room() {
            let own = lock(&self.waiting).len();
            let how = if own >= OWN_BEHIND_A_CLAIM {
                Drain::All
            } else {
                Drain::Unclaimed
            };
            if self.drain_as(how)? {
                return self.write_here(seq, data);
            }
        }
        lock(&self.waiting).push_back(Waiting {
            seq,
            data: Arc::new(data),
            since: Instant::now(),
            claimed: AtomicBool::new(false),
        });
        queue.waiting.fetch_add(1, Ordering::AcqRel);
        queue.push(Token {
            chain: self.clone(),
            seq,
        });
        Ok(())
    }

    /// Write segment `seq` here, after any still waiting.
    fn write_here(&self, seq: u64, data: Vec<u8>) -> Result<(), RecordError> {
        self.drain()?;
        self.write(seq, &data)?;
        self.keep_spare(data);
        Ok(())
    }

    /// Write every segment still waiting, here, in order.
    pub(crate) fn drain(&self) -> Result<(), RecordError> {
        self.drain_as(Drain::All).map(|_| ())
    }

    /// Write segments still waiting, here, in order, as `how` says;
    /// returns whether none is left.
    fn drain_as(&self, how: Drain) -> Result<bool, RecordError> {
        loop {
            let first = lock(&self.waiting).front().map(|w| {
                (
                    w.seq,
                    w.data.clone(),
                    w.claimed.swap(true, Ordering::AcqRel),
                )
            });
            let Some((seq, data, begun)) = first else {
                self.stopped()?;
                return Ok(true);
            };
            if begun && how == Drain::Unclaimed {
                return Ok(false);
            }
            self.write(seq, &data)?;
            self.recycle(data);
        }
    }

    /// [`Chain::drain`], if the oldest waiting segment has waited `late`
    /// or longer (the thread has had no core for it).
    pub(crate) fn drain_if_late(&self, late: Duration) -> Result<(), RecordError> {
        let oldest = lock(&self.waiting).front().map(|w| w.since);
        match oldest {
            Some(since) if since.elapsed() >= late => self.drain(),
            _ => self.stopped(),
        }
    }

    /// The thread's turn: write segment `seq` unless it is no longer the
    /// oldest waiting (written already) or its writer has begun it.
    fn write_queued(&self, seq: u64) {
        let data = match lock(&self.waiting).front() {
            Some(w) if w.seq == seq && !w.claimed.swap(true, Ordering::AcqRel) => w.data.clone(),
            _ => return,
        };
        // Seen by the next call of the writer.
        let _ = self.write(seq, &data);
        self.recycle(data);
    }

    /// Compress `data` and append it as segment `seq`.
    pub(crate) fn write(&self, seq: u64, data: &[u8]) -> Result<(), RecordError> {
        match crate::compress(data) {
            Ok(frame) => self.append(seq, &frame),
            Err(e) => {
                // Not written is lost: stop rather than leave a hole.
                self.fail(format!("compressing a segment failed: {e}"));
                self.stopped()
            }
        }
    }

    /// Chain `frame` and write it as segment `seq`, if the file takes it
    /// next; one it holds already is not written again. A failed write
    /// stops the recording for good: the file is cut back to its last
    /// whole segment (still readable, its digest still the one the chain
    /// knows), and the session must end.
    fn append(&self, seq: u64, frame: &[u8]) -> Result<(), RecordError> {
        let mut end = lock(&self.end);
        if end.failed.is_some() {
            drop(end);
            return self.stopped();
        }
        if seq < end.next {
            return Ok(());
        }
        if seq > end.next {
            // Every path writes the oldest first; this would be a hole.
            let reason = format!("segment {seq} came before segment {}", end.next);
            self.fail_locked(&mut end, reason);
            drop(end);
            return self.stopped();
        }
        let mut ctx = Context::new(&SHA256);
        ctx.update(&end.prev);
        ctx.update(frame);
        let digest: [u8; 32] = ctx.finish().as_ref().try_into().unwrap_or(GENESIS);
        let mut seg = Vec::with_capacity(frame.len() + 36);
        seg.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        seg.extend_from_slice(&digest);
        seg.extend_from_slice(frame);
        // Handed to the kernel: survives a crash of the process. An fsync
        // per segment (power-loss durability) would cost every HTTP request
        // a disk flush; the audit chain seals the digest either way.
        if let Err(e) = end.file.write_all(&seg) {
            let written = end.written;
            let _ = end.file.set_len(written);
            self.fail_locked(&mut end, format!("a write failed: {e}"));
            drop(end);
            return self.stopped();
        }
        end.written += seg.len() as u64;
        end.prev = digest;
        end.next += 1;
        let mut waiting = lock(&self.waiting);
        let landed = match waiting.front() {
            Some(w) if w.seq == seq => waiting.pop_front(),
            _ => None,
        };
        drop(waiting);
        drop(end);
        if let Some(w) = landed {
            if let Some(queue) = self.queue {
                queue.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            self.recycle(w.data);
        }
        Ok(())
    }

    /// Whether segment `seq` still waits.
    fn waits(&self, seq: u64) -> bool {
        lock(&self.waiting).front().is_some_and(|w| w.seq <= seq)
    }
}

/// A segment the thread may write: which recording, which segment.
struct Token {
    chain: Arc<Chain>,
    seq: u64,
}

/// Tokens for the segment thread, oldest first.
pub(crate) struct Queue {
    tokens: Mutex<VecDeque<Token>>,
    ready: Condvar,
    /// Segments waiting in every chain that hands on to this queue.
    waiting: AtomicUsize,
}

impl Queue {
    pub(crate) fn new() -> Self {
        Self {
            tokens: Mutex::new(VecDeque::with_capacity(QUEUED_SEGMENTS)),
            ready: Condvar::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The queue every writer hands on to, its thread started on first
    /// use; `None` if no thread could be started (each writer then writes
    /// its own segments).
    pub(crate) fn global() -> Option<&'static Queue> {
        static QUEUE: OnceLock<Option<&'static Queue>> = OnceLock::new();
        *QUEUE.get_or_init(|| {
            let queue: &'static Queue = Box::leak(Box::new(Queue::new()));
            std::thread::Builder::new()
                .name("portcullis-recording".into())
                .spawn(move || queue.serve())
                .ok()
                .map(|_| queue)
        })
    }

    fn has_room(&self) -> bool {
        self.waiting.load(Ordering::Acquire) < QUEUED_SEGMENTS
    }

    fn serve(&self) {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
        // Only when a core would otherwise idle. Lowering its own priority
        // needs no privilege; if refused, the thread runs as any other.
        if let Err(e) = thread_priority::set_thread_priority_and_policy(
            thread_priority::thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        ) {
            tracing::debug!(error = ?e, "the recording thread keeps its priority");
        }
        loop {
            self.serve_one(true);
        }
    }

    /// Write the segment of the oldest token, waiting for one if `wait`.
    /// Returns whether there was one. A panic stops that recording (its
    /// end may be half changed) and not the thread.
    pub(crate) fn serve_one(&self, wait: bool) -> bool {
        let mut tokens = lock(&self.tokens);
        let token = loop {
            match tokens.pop_front() {
                Some(token) => break token,
                None if wait => {
                    tokens = self
                        .ready
                        .wait(tokens)
                        .unwrap_or_else(PoisonError::into_inner)
                }
                None => return false,
            }
        };
        drop(tokens);
        let chain = &token.chain;
        let wrote = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            chain.write_queued(token.seq)
        }));
        if wrote.is_err() {
            chain.fail("a panic while writing a segment".into());
        }
        true
    }

    fn push(&self, token: Token) {
        let mut tokens = lock(&self.tokens);
        // Tokens whose segments their writers wrote pile up while the
        // thread gets no core: sweep them so the queue stays bounded.
        if tokens.len() >= 4 * QUEUED_SEGMENTS {
            tokens.retain(|t| t.chain.waits(t.seq));
        }
        tokens.push_back(token);
        drop(tokens);
        self.ready.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn tokens(&self) -> usize {
        lock(&self.tokens).len()
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}
