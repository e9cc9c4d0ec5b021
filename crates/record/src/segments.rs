//! Where a recording's segments are compressed, chained and written.
//!
//! A segment that comes due while the session runs is handed on: it waits
//! in its writer's [`Segments`] while one thread at idle priority
//! compresses it. Compressing a full megabyte inline cost the request that
//! filled it about 0.3 ms, the whole p99.9 tail at one connection; at
//! normal priority the thread took the core that the caller's or the
//! target's next wake-up was queued for, and the tail stayed (`perf` with
//! scheduler events, 2026-12-06).
//!
//! The thread only compresses: it shares no lock with any writer, so a
//! writer never waits on it however little CPU it gets (a first version
//! whose thread also chained and wrote, under the recording's lock, held
//! writers up to 0.9 s on a busy machine). The writer chains and writes
//! each frame itself, in order, with its next event or at its ticker's
//! look (a digest and a write, some 20 µs for a compressed
//! megabyte of JSON). A writer that must see everything in the file
//! (`flush`, `finish`, `seal`), whose oldest segment has waited too long,
//! or that finds too many segments waiting across all recordings, does
//! not wait: it compresses what is not ready itself. Whoever begins a
//! segment claims it, so the thread skips what a writer has begun; a
//! writer finding the queue full queues behind a segment the thread has
//! begun (up to `OWN_BEHIND_A_CLAIM` of its own) rather than compress it
//! a second time. The thread holds only a weak handle on a segment, so one
//! its writer wrote costs nothing while the thread is starved.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};

use crate::{FailureHook, GENESIS, RecordError};

/// Segments that may wait for the thread, across all recordings (each
/// the size its writer's buffer had: a megabyte or a little more): a
/// bound on their memory. A writer that finds this many writes its own.
pub(crate) const QUEUED_SEGMENTS: usize = 16;
/// Segments of one recording that may wait behind one the thread has
/// begun while the queue is full; past this its writer compresses them
/// all. (Compressing its own at once, a writer compressed the thread's
/// segment a second time: 10% more CPU per 64 KiB request.)
const OWN_BEHIND_A_CLAIM: usize = 4;
/// Segments sent to the thread and not yet taken by it, written or not.
/// The thread holds only a weak handle on each, so one its writer wrote
/// costs the queue a few bytes; this bounds those too.
pub(crate) const SENT_NOT_TAKEN: usize = 1024;

/// A segment handed to the thread.
struct Segment {
    data: Vec<u8>,
    /// Someone (the thread or the writer) has begun compressing it.
    claimed: AtomicBool,
    /// Its frame, or why it could not be made, once the thread is done.
    frame: OnceLock<Result<Vec<u8>, String>>,
}

struct Waiting {
    segment: Arc<Segment>,
    since: Instant,
}

/// How far a writer goes with its waiting segments.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Land {
    /// Those the thread has compressed, up to the first it has not.
    Ready,
    /// Also those the thread has not begun, up to one it has.
    Unclaimed,
    /// Every one: what the thread has not finished is compressed here.
    All,
}

/// A recording's file and the end of its chain, with the segments handed
/// on and not yet written. Owned by the writer alone.
pub(crate) struct Segments {
    path: PathBuf,
    pub(crate) file: std::fs::File,
    prev: [u8; 32],
    /// Bytes of the file that hold whole segments.
    written: u64,
    /// Set by the first failure; every later call fails with it.
    failed: Option<String>,
    on_failure: Option<FailureHook>,
    waiting: VecDeque<Waiting>,
    /// A buffer a written segment no longer needs, for the writer's next:
    /// a fresh one grew by copies and page faults to a megabyte.
    spare: Vec<u8>,
    queue: Option<&'static Queue>,
}

impl Segments {
    /// The chain of `file`, whose whole segments end at `written` with
    /// digest `prev`; segments are handed on to `queue`.
    pub(crate) fn new(
        path: PathBuf,
        file: std::fs::File,
        prev: [u8; 32],
        written: u64,
        queue: Option<&'static Queue>,
    ) -> Self {
        Self {
            path,
            file,
            prev,
            written,
            failed: None,
            on_failure: None,
            waiting: VecDeque::new(),
            spare: Vec::new(),
            queue,
        }
    }

    #[cfg(test)]
    pub(crate) fn set_queue(&mut self, queue: &'static Queue) {
        self.queue = Some(queue);
    }

    pub(crate) fn on_failure(&mut self, hook: FailureHook) {
        self.on_failure = Some(hook);
    }

    /// The digest of what the file holds.
    pub(crate) fn prev(&self) -> [u8; 32] {
        self.prev
    }

    pub(crate) fn stopped(&self) -> Result<(), RecordError> {
        match &self.failed {
            None => Ok(()),
            Some(reason) => Err(RecordError::Stopped {
                path: self.path.clone(),
                reason: reason.clone(),
            }),
        }
    }

    /// Stop the recording for good with `reason` (the first one given
    /// stays); returns the error every later call gets.
    pub(crate) fn fail(&mut self, reason: String) -> RecordError {
        if self.failed.is_none() {
            self.stop(reason);
        }
        RecordError::Stopped {
            path: self.path.clone(),
            reason: self.failed.clone().unwrap_or_default(),
        }
    }

    fn stop(&mut self, reason: String) {
        tracing::error!(path = %self.path.display(), %reason, "recording stopped; the session ends");
        // Set before the hook runs: a hook that panics is not told twice.
        self.failed = Some(reason.clone());
        if let Some(hook) = &self.on_failure {
            hook(&reason);
        }
        // What waits will never be written: free it.
        self.forget_waiting();
    }

    fn forget_waiting(&mut self) {
        let n = self.waiting.len();
        self.waiting.clear();
        if let Some(queue) = self.queue {
            queue.waiting.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// A buffer for the writer's next segment.
    pub(crate) fn take_spare(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.spare)
    }

    fn keep_spare(&mut self, mut data: Vec<u8>) {
        if self.spare.capacity() < data.capacity() {
            data.clear();
            self.spare = data;
        }
    }

    /// Hand `data` on as the next segment, after writing those before it
    /// that are ready. A failure is this call's or a later one's.
    pub(crate) fn hand_on(&mut self, data: Vec<u8>) -> Result<(), RecordError> {
        self.land(Land::Ready)?;
        let Some(queue) = self.queue else {
            return self.write_here(data);
        };
        if !queue.has_room() {
            let how = if self.waiting.len() >= OWN_BEHIND_A_CLAIM {
                Land::All
            } else {
                Land::Unclaimed
            };
            if self.land(how)? {
                return self.write_here(data);
            }
        }
        let segment = Arc::new(Segment {
            data,
            claimed: AtomicBool::new(false),
            frame: OnceLock::new(),
        });
        queue.send(Arc::downgrade(&segment));
        queue.waiting.fetch_add(1, Ordering::AcqRel);
        self.waiting.push_back(Waiting {
            segment,
            since: Instant::now(),
        });
        Ok(())
    }

    /// Write the frames the thread has finished, oldest first (cheap when
    /// none waits: asked on every event).
    pub(crate) fn land_ready(&mut self) -> Result<(), RecordError> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        self.land(Land::Ready).map(|_| ())
    }

    /// Write what is ready; and everything, if the oldest segment has
    /// waited `late` or longer (the thread has had no core for it).
    pub(crate) fn catch_up(&mut self, late: Duration) -> Result<(), RecordError> {
        self.land(Land::Ready)?;
        match self.waiting.front() {
            Some(w) if w.since.elapsed() >= late => self.land(Land::All).map(|_| ()),
            _ => self.stopped(),
        }
    }

    /// Write every waiting segment, then `data` as the last: all are in
    /// the file on return.
    pub(crate) fn write_now(&mut self, data: &[u8]) -> Result<(), RecordError> {
        self.land(Land::All)?;
        if data.is_empty() {
            return Ok(());
        }
        let frame = self.compress_here(data)?;
        self.append(&frame)
    }

    fn write_here(&mut self, data: Vec<u8>) -> Result<(), RecordError> {
        self.write_now(&data)?;
        self.keep_spare(data);
        Ok(())
    }

    /// Write waiting segments, oldest first, as far as `how` says;
    /// returns whether none is left.
    fn land(&mut self, how: Land) -> Result<bool, RecordError> {
        self.stopped()?;
        while let Some(w) = self.waiting.front() {
            let segment = w.segment.clone();
            let frame = match (segment.frame.get(), how) {
                (Some(Ok(frame)), _) => Cow::Borrowed(frame.as_slice()),
                (_, Land::Ready) => return Ok(false),
                // The thread could not (a panic): compressed here, where a
                // failure stops the recording.
                (Some(Err(_)), _) => Cow::Owned(self.compress_here(&segment.data)?),
                (None, _) => {
                    // Claimed only by one who goes on to compress it.
                    let begun = segment.claimed.swap(true, Ordering::AcqRel);
                    if begun && how == Land::Unclaimed {
                        return Ok(false);
                    }
                    Cow::Owned(self.compress_here(&segment.data)?)
                }
            };
            self.append(&frame)?;
            self.landed(segment);
        }
        Ok(true)
    }

    /// The oldest waiting segment is in the file.
    fn landed(&mut self, segment: Arc<Segment>) {
        self.waiting.pop_front();
        if let Some(queue) = self.queue {
            queue.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        // The thread may still hold it for a moment: then no spare.
        if let Ok(segment) = Arc::try_unwrap(segment) {
            self.keep_spare(segment.data);
        }
    }

    fn compress_here(&mut self, data: &[u8]) -> Result<Vec<u8>, RecordError> {
        // Not written is lost: stop rather than leave a hole.
        crate::compress(data).map_err(|e| self.fail(format!("compressing a segment failed: {e}")))
    }

    /// Chain `frame` onto the file. A failed write stops the recording for
    /// good: the file is cut back to its last whole segment (still
    /// readable, its digest still the one the chain knows), and the
    /// session must end.
    fn append(&mut self, frame: &[u8]) -> Result<(), RecordError> {
        self.stopped()?;
        let mut ctx = Context::new(&SHA256);
        ctx.update(&self.prev);
        ctx.update(frame);
        let digest: [u8; 32] = ctx.finish().as_ref().try_into().unwrap_or(GENESIS);
        let mut seg = Vec::with_capacity(frame.len() + 36);
        seg.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        seg.extend_from_slice(&digest);
        seg.extend_from_slice(frame);
        // Handed to the kernel: survives a crash of the process. An fsync
        // per segment (power-loss durability) would cost every HTTP request
        // a disk flush; the audit chain seals the digest either way.
        if let Err(e) = self.file.write_all(&seg) {
            let _ = self.file.set_len(self.written);
            return Err(self.fail(format!("a write failed: {e}")));
        }
        self.written += seg.len() as u64;
        self.prev = digest;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn waiting_here(&self) -> usize {
        self.waiting.len()
    }

    /// As if the thread had failed to compress the oldest waiting segment.
    #[cfg(test)]
    pub(crate) fn fail_oldest_frame(&self) {
        if let Some(w) = self.waiting.front() {
            w.segment.claimed.store(true, Ordering::Release);
            let _ = w.segment.frame.set(Err("a panic while compressing".into()));
        }
    }

    /// As the thread does when it begins the oldest waiting segment.
    #[cfg(test)]
    pub(crate) fn claim_oldest(&self) {
        if let Some(w) = self.waiting.front() {
            w.segment.claimed.store(true, Ordering::Release);
        }
    }
}

impl Drop for Segments {
    /// A writer dropped without `finish` or `seal` (the gateway shutting
    /// down) still writes the frames the thread made; the rest no longer
    /// count against the queue.
    fn drop(&mut self) {
        let _ = self.land(Land::Ready);
        self.forget_waiting();
    }
}

/// The segment thread's inbox.
pub(crate) struct Queue {
    inbox: Sender<Weak<Segment>>,
    /// The thread's end; a test's queue has no thread and serves by hand.
    outbox: Mutex<Receiver<Weak<Segment>>>,
    /// Segments waiting in every writer that hands on to this queue.
    waiting: AtomicUsize,
    /// Segments sent and not yet taken by the thread.
    sent: AtomicUsize,
}

impl Queue {
    pub(crate) fn new() -> Self {
        let (inbox, outbox) = std::sync::mpsc::channel();
        Self {
            inbox,
            outbox: Mutex::new(outbox),
            waiting: AtomicUsize::new(0),
            sent: AtomicUsize::new(0),
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
            && self.sent.load(Ordering::Acquire) < SENT_NOT_TAKEN
    }

    /// Offer the thread `segment`. The receiver lives in the queue, which
    /// lives for the process, so a send does not fail; if one did, the
    /// segment would still wait with its writer, who writes it at the
    /// latest when it is late.
    fn send(&self, segment: Weak<Segment>) {
        // Counted first: the thread may take it before `send` returns.
        self.sent.fetch_add(1, Ordering::AcqRel);
        if self.inbox.send(segment).is_err() {
            self.sent.fetch_sub(1, Ordering::AcqRel);
        }
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
        while self.serve_one(true) {}
    }

    /// Compress the oldest segment handed on, waiting for one if `wait`.
    /// Returns whether there was one.
    pub(crate) fn serve_one(&self, wait: bool) -> bool {
        let next = {
            let outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
            if wait {
                outbox.recv().ok()
            } else {
                outbox.try_recv().ok()
            }
        };
        let Some(segment) = next else {
            return false;
        };
        self.sent.fetch_sub(1, Ordering::AcqRel);
        // Gone: its writer wrote it (or stopped) before the thread came.
        let Some(segment) = segment.upgrade() else {
            return true;
        };
        if !segment.claimed.swap(true, Ordering::AcqRel) {
            // A panic is the segment's failure, not the thread's end.
            let frame = std::panic::catch_unwind(|| crate::compress(&segment.data))
                .unwrap_or_else(|_| Err(std::io::Error::other("a panic while compressing")))
                .map_err(|e| e.to_string());
            let _ = segment.frame.set(frame);
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(crate) fn sent(&self) -> usize {
        self.sent.load(Ordering::Acquire)
    }
}
