//! Session recordings.
//!
//! A recording is a file of segments. Each segment is a zstd frame of
//! JSON lines (one [`Record`] per line; since version 2 an HTTP body is a
//! [`RawBody`] line followed by its bytes) with its length and a digest
//! that chains it to the previous segment: `digest = SHA-256(prev || frame)`.
//! The writer buffers events and writes a segment at least every second
//! and at the end, so a crash loses at most the last second, and what was
//! written stays readable (a torn last segment is ignored). The last
//! digest goes into the session-end audit entry.
//!
//! A segment that comes due while the session runs (its buffer full, or
//! the second up) is compressed by a thread of its own at idle priority
//! and chained and written by the writer with its next event, or at its
//! tick when the session is idle; [`Writer::finish`] and [`Writer::seal`]
//! write whatever still waits ([`segments`] says why nothing waits on
//! that thread). An idle session's frame can so wait up to a second more
//! before it is written.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

mod segments;
use segments::{Queue, Segments};

/// A recording's first bytes. Version 2 may hold bodies as raw bytes
/// ([`RawBody`]); version 1 files are still read, and resumed as version 1.
const MAGIC: &[u8; 8] = b"PCLREC2\n";
const MAGIC_V1: &[u8; 8] = b"PCLREC1\n";
const GENESIS: [u8; 32] = [0; 32];
/// A segment is written at least this often while events arrive.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// ... and when this many bytes of events are buffered.
const FLUSH_BYTES: usize = 1 << 20;
/// The most a segment may hold, decompressed (reader side bound).
const MAX_SEGMENT: usize = 64 << 20;
/// A segment handed on that has waited this long is compressed and
/// written by its writer at the next tick (the segment thread has had no
/// core for it): a crash then loses at most about a second more.
const LATE: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("recording {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("recording {path}: not a Portcullis recording")]
    NotARecording { path: PathBuf },
    #[error("recording {path}: segment {segment} does not match its digest (edited)")]
    Digest { path: PathBuf, segment: usize },
    /// An earlier write failed (a full disk): the recording was cut back
    /// to its last whole segment and takes nothing more.
    #[error("recording {path} stopped: {reason}")]
    Stopped { path: PathBuf, reason: String },
    #[error("recording {path}: segment {segment}: {reason}")]
    Corrupt {
        path: PathBuf,
        segment: usize,
        reason: String,
    },
}

/// One recorded event, with its time since the session started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub t_us: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// What can happen in a session. Values are what the caller saw (after
/// masking); credentials are never recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    SessionStart {
        session: String,
        principal: String,
        connection: String,
        protocol: String,
    },
    /// `request` numbers the requests of a session (an HTTP session is a
    /// caller's connection, whose HTTP/2 streams interleave); absent in
    /// recordings of one request.
    HttpRequest {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<u64>,
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: Option<String>,
    },
    HttpResponse {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<u64>,
        status: u16,
        headers: Vec<(String, String)>,
        body: Option<String>,
    },
    /// A piece of a body, in order (`from_caller`: request, else response).
    HttpBody {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<u64>,
        from_caller: bool,
        data: String,
    },
    PgQuery {
        sql: String,
    },
    PgParse {
        statement: String,
        sql: String,
    },
    /// Parameter values as text (binary ones as `\x` hex); None is NULL.
    PgBind {
        portal: String,
        statement: String,
        params: Vec<Option<String>>,
    },
    PgExecute {
        portal: String,
    },
    PgRowDescription {
        columns: Vec<String>,
    },
    PgDataRow {
        cells: Vec<Option<String>>,
    },
    PgCommandComplete {
        tag: String,
    },
    PgError {
        code: String,
        message: String,
    },
    PgNotice {
        message: String,
    },
    /// COPY data as it passed (`from_caller`: COPY FROM STDIN, else COPY
    /// TO STDOUT as the caller saw it, masked); text, binary as `\x` hex.
    PgCopyData {
        from_caller: bool,
        data: String,
    },
    /// A function called through the protocol's fast path ('F'), by OID,
    /// with its arguments as text (binary ones as `\x` hex).
    PgFunctionCall {
        oid: u32,
        args: Vec<Option<String>>,
    },
    /// What a fast-path function call returned; None is NULL.
    PgFunctionResult {
        value: Option<String>,
    },
    /// Something the caller sent that the gateway refused, as it was sent
    /// (the target saw a placeholder, or nothing).
    Refused {
        statement: String,
        code: String,
        reason: String,
    },
    SessionEnd {
        outcome: String,
    },
}

/// Called once when a recording stops taking writes (the spool's health).
pub type FailureHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Writes one session's recording.
pub struct Writer {
    path: PathBuf,
    segs: Segments,
    buf: Vec<u8>,
    started: Instant,
    last_flush: Instant,
    /// Segments in the file when the writer began, plus those written or
    /// handed on since (numbers an error).
    segments: usize,
    /// Bodies go in as raw bytes (a version 2 file).
    raw_bodies: bool,
}

impl Writer {
    pub fn create(dir: &Path, session: &str) -> Result<Self, RecordError> {
        let path = dir.join(format!("{session}.rec"));
        let io = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        // The directory is made only when it is missing (the first
        // session, or one removed while the gateway runs): made before
        // every file, it was two more system calls per session.
        let mut file = match o.open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io)?;
                o.open(&path).map_err(io)?
            }
            opened => opened.map_err(io)?,
        };
        if let Err(e) = file.write_all(MAGIC) {
            // Not even the header fits: leave no empty file behind.
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(io(e));
        }
        Ok(Self {
            segs: Segments::new(
                path.clone(),
                file,
                GENESIS,
                MAGIC.len() as u64,
                Queue::global(),
            ),
            path,
            buf: Vec::new(),
            started: Instant::now(),
            last_flush: Instant::now(),
            segments: 0,
            raw_bodies: true,
        })
    }

    /// Reopen a recording a process left unfinished (it died): a torn
    /// last segment is cut off, and what is appended chains onto the last
    /// whole one, so the recording can be sealed as far as it got.
    pub fn resume(path: &Path) -> Result<Self, RecordError> {
        let io = |source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        };
        let data = std::fs::read(path).map_err(io)?;
        // Only the last record's time is needed: none is kept.
        let kept = Kept {
            max_records: 0,
            ..Kept::all()
        };
        let scan = scan(path, &data, true, kept)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io)?;
        file.set_len(scan.end as u64).map_err(io)?;
        let mut file = file;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        let elapsed = Duration::from_micros(scan.records.last_t_us);
        let now = Instant::now();
        Ok(Self {
            segs: Segments::new(
                path.to_path_buf(),
                file,
                scan.prev,
                scan.end as u64,
                Queue::global(),
            ),
            path: path.to_path_buf(),
            buf: Vec::new(),
            started: now.checked_sub(elapsed).unwrap_or(now),
            last_flush: now,
            segments: scan.segments,
            raw_bodies: scan.raw_bodies,
        })
    }

    /// Call `hook` when a write first fails.
    pub fn on_failure(mut self, hook: FailureHook) -> Self {
        self.segs.on_failure(hook);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stopped(&self) -> Result<(), RecordError> {
        self.segs.stopped()
    }

    /// Buffer an event; writes a segment when one is due.
    pub fn event(&mut self, event: Event) -> Result<(), RecordError> {
        self.stopped()?;
        let r = Record {
            t_us: self.started.elapsed().as_micros() as u64,
            event,
        };
        self.line(&r, None)
    }

    /// Buffer an HTTP head ([`Head`]) with its `headers`.
    pub fn head(&mut self, head: Head<'_>, headers: &[(&str, &[u8])]) -> Result<(), RecordError> {
        self.stopped()?;
        let t_us = self.started.elapsed().as_micros() as u64;
        let headers = HeadersLine(headers);
        let line = match head {
            Head::Request {
                request,
                method,
                path,
            } => HeadLine {
                t_us,
                kind: "http_request",
                request,
                method: Some(method),
                path: Some(path),
                status: None,
                headers,
                body: None,
            },
            Head::Response { request, status } => HeadLine {
                t_us,
                kind: "http_response",
                request,
                method: None,
                path: None,
                status: Some(status),
                headers,
                body: None,
            },
        };
        self.line(&line, None)
    }

    /// Buffer `value` as a JSON line, then the raw bytes `after` it (a
    /// body's, and their newline), and hand on a segment when one is due.
    fn line(&mut self, value: &impl Serialize, after: Option<&[u8]>) -> Result<(), RecordError> {
        serde_json::to_writer(&mut self.buf, value).map_err(|e| RecordError::Corrupt {
            path: self.path.clone(),
            segment: self.segments,
            reason: e.to_string(),
        })?;
        self.buf.push(b'\n');
        if let Some(bytes) = after {
            self.buf.extend_from_slice(bytes);
            self.buf.push(b'\n');
        }
        if self.buf.len() >= FLUSH_BYTES || self.last_flush.elapsed() >= FLUSH_EVERY {
            self.hand_on()?;
        } else {
            // A frame the thread has finished goes in with the next event,
            // not the next segment: what was relayed and is not yet in the
            // file stays about one segment, as when segments were written
            // inline (waiting for the next segment doubled it: a filling
            // spool lost some 30 answers per session instead of 16).
            self.segs.land_ready()?;
        }
        Ok(())
    }

    /// Buffer a piece of a body: a [`RawBody`] line, then its bytes as
    /// they are (in a version 1 file, as [`Event::HttpBody`]). As JSON text
    /// each body was copied into a `String` and escaped a byte at a time,
    /// about a fifth of the gateway's CPU on 64 KiB responses (`perf`,
    /// 2026-12-03); a faster escaper of our own was slower still on JSON
    /// bodies, where every few bytes is a quote.
    pub fn body(
        &mut self,
        request: Option<u64>,
        from_caller: bool,
        data: &[u8],
    ) -> Result<(), RecordError> {
        if !self.raw_bodies {
            return self.event(Event::HttpBody {
                request,
                from_caller,
                data: text_of(data),
            });
        }
        self.stopped()?;
        let t_us = self.started.elapsed().as_micros() as u64;
        // A piece at most `FLUSH_BYTES` long, each whole in one segment:
        // one body read whole (a held or masked one) of 64 MiB would
        // otherwise make a segment the reader refuses, and with it the
        // whole recording (found in review).
        // An empty body is one empty piece.
        let empty = data.is_empty().then_some(&[][..]);
        for piece in data.chunks(FLUSH_BYTES).chain(empty) {
            let header = RawBody {
                raw: piece.len(),
                t_us,
                request,
                from_caller,
            };
            self.line(&header, Some(piece))?;
        }
        Ok(())
    }

    /// Hand segments on to `queue` (a test's, with no thread).
    #[cfg(test)]
    fn on_queue(mut self, queue: &'static Queue) -> Self {
        self.segs.set_queue(queue);
        self
    }

    /// Hand buffered events on as a segment, compressed by the segment
    /// thread and written by this writer in order at its next call that
    /// writes (see [`segments`]). A failed write is this call's or a later
    /// one's.
    pub fn hand_on(&mut self) -> Result<(), RecordError> {
        self.stopped()?;
        self.last_flush = Instant::now();
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, self.segs.take_spare());
        self.segments += 1;
        self.segs.hand_on(data)
    }

    /// Write the segments handed on that are ready, and all of them if
    /// they have waited longer than they should (the ticker's look).
    pub fn catch_up(&mut self) -> Result<(), RecordError> {
        self.segs.catch_up(LATE)
    }

    /// Write buffered events as a segment, after those handed on before
    /// it: all are in the file on return. A failed write stops the
    /// recording for good: the file is cut back to its last whole segment
    /// (still readable, its digest still the one the chain knows), and
    /// the session must end.
    pub fn flush(&mut self) -> Result<(), RecordError> {
        self.stopped()?;
        self.last_flush = Instant::now();
        if !self.buf.is_empty() {
            self.segments += 1;
        }
        self.segs.write_now(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Flush and return the final digest (hex).
    pub fn finish(mut self) -> Result<String, RecordError> {
        self.flush()?;
        Ok(self.digest_so_far())
    }

    /// The digest of what is in the file (hex), for a recording that
    /// stopped: what the session's end entry seals.
    pub fn digest_so_far(&self) -> String {
        hex::encode(self.segs.prev())
    }

    /// Flush what is left and return the digest of what the file holds,
    /// with the reason the recording stopped early, if it did.
    pub fn seal(mut self) -> (String, Option<String>) {
        let failed = self.flush().err().map(|e| match e {
            RecordError::Stopped { reason, .. } => reason,
            other => other.to_string(),
        });
        (self.digest_so_far(), failed)
    }
}

/// One zstd frame (level 1) of `data`. The compression context is kept
/// per thread: creating one allocates about a megabyte, which cost more
/// than compressing a short session's recording.
fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|c| {
        let mut c = c.try_borrow_mut().map_err(std::io::Error::other)?;
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(1)?);
        }
        match c.as_mut() {
            Some(z) => z.compress(data),
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}

/// A writer shared by a session's tasks, with a ticker that writes a
/// segment every second even when the session is idle.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Option<Writer>>>,
    /// The recording's file, for the error of a call after the seal.
    path: Arc<PathBuf>,
}

impl Recorder {
    pub fn start(writer: Writer) -> Self {
        let path = Arc::new(writer.path().to_path_buf());
        let inner = Arc::new(Mutex::new(Some(writer)));
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(w) = weak.upgrade() else { break };
                let Ok(mut g) = w.lock() else { break };
                match g.as_mut() {
                    Some(w) => {
                        if let Err(e) = w.hand_on().and_then(|()| w.catch_up()) {
                            // Said once: the session's own next call fails too.
                            tracing::error!(error = %e, "recording flush failed");
                            break;
                        }
                    }
                    None => break,
                }
            }
        });
        Self { inner, path }
    }

    /// Record an event. An error means the recording cannot continue: the
    /// caller ends the session (fail closed).
    pub fn event(&self, event: Event) -> Result<(), RecordError> {
        self.with_writer(|w| w.event(event))
    }

    /// Record an HTTP head ([`Writer::head`]).
    pub fn head(&self, head: Head<'_>, headers: &[(&str, &[u8])]) -> Result<(), RecordError> {
        self.with_writer(|w| w.head(head, headers))
    }

    /// `f` on the writer. After the seal there is none, and what a task
    /// still running would record is refused rather than dropped in
    /// silence (a body streaming on fails instead of passing unrecorded).
    fn with_writer(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<(), RecordError>,
    ) -> Result<(), RecordError> {
        match self.writer().as_mut() {
            Some(w) => f(w),
            None => Err(RecordError::Stopped {
                path: self.path.as_ref().clone(),
                reason: "the recording is sealed".into(),
            }),
        }
    }

    /// The writer's lock. One whose holder panicked (an event half
    /// buffered) stops the recording: taking no more events in silence
    /// would drop them, and its buffer may end mid-line.
    fn writer(&self) -> std::sync::MutexGuard<'_, Option<Writer>> {
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut g = poisoned.into_inner();
            if let Some(w) = g.as_mut() {
                let _ = w.segs.fail("a panic while recording".into());
            }
            g
        })
    }

    /// Record a piece of a body ([`Writer::body`]): as
    /// [`Recorder::event`] with [`Event::HttpBody`], without copying it.
    pub fn body(
        &self,
        request: Option<u64>,
        from_caller: bool,
        data: &[u8],
    ) -> Result<(), RecordError> {
        self.with_writer(|w| w.body(request, from_caller, data))
    }

    /// Finish the recording; returns the final digest.
    pub fn finish(&self) -> Option<Result<String, RecordError>> {
        let w = self.writer().take()?;
        Some(w.finish())
    }

    /// Finish the recording as far as it got: the digest of what the file
    /// holds, and why it stopped early if it did (see [`Writer::seal`]).
    pub fn seal(&self) -> Option<(String, Option<String>)> {
        let w = self.writer().take()?;
        Some(w.seal())
    }
}

/// Read a recording: every complete segment, verified against the chain.
/// Returns the records and the last digest.
pub fn read(path: &Path) -> Result<(Vec<Record>, String), RecordError> {
    let data = std::fs::read(path).map_err(|source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let s = scan(path, &data, false, Kept::all())?;
    Ok((s.records.records, hex::encode(s.prev)))
}

/// A recording's first records, as many as fit in `max_records` and
/// `max_bytes` (each record's size as JSON), with how many it holds in all
/// and its last digest: every segment is still verified and counted, but
/// only what is kept stays in memory (the console shows a recording in
/// the gateway's own process).
pub fn read_first(path: &Path, max_records: usize, max_bytes: usize) -> Result<First, RecordError> {
    let data = std::fs::read(path).map_err(|source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let kept = Kept {
        max_records,
        max_bytes,
        ..Kept::all()
    };
    let s = scan(path, &data, false, kept)?;
    Ok(First {
        records: s.records.records,
        total: s.records.total,
        digest: hex::encode(s.prev),
    })
}

/// What [`read_first`] returns.
pub struct First {
    pub records: Vec<Record>,
    /// Records in the whole recording.
    pub total: usize,
    pub digest: String,
}

/// The records a scan keeps: the first ones, up to a count and a size.
struct Kept {
    records: Vec<Record>,
    total: usize,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
    /// The time of the last record seen, kept or not.
    last_t_us: u64,
}

impl Kept {
    fn all() -> Self {
        Self {
            records: Vec::new(),
            total: 0,
            bytes: 0,
            max_records: usize::MAX,
            max_bytes: usize::MAX,
            last_t_us: 0,
        }
    }

    fn keep(&mut self, r: Record) {
        self.total += 1;
        self.last_t_us = r.t_us;
        if self.records.len() >= self.max_records || self.bytes >= self.max_bytes {
            return;
        }
        if self.max_bytes != usize::MAX {
            let size = serde_json::to_vec(&r).map_or(usize::MAX, |v| v.len());
            if self.bytes.saturating_add(size) > self.max_bytes {
                // Nothing after it is kept either: the first records, in order.
                self.bytes = self.max_bytes;
                return;
            }
            self.bytes += size;
        }
        self.records.push(r);
    }
}

/// What a recording's bytes hold.
struct Scan {
    records: Kept,
    prev: [u8; 32],
    segments: usize,
    /// Where the last whole segment ends.
    end: usize,
    /// A version 2 file.
    raw_bodies: bool,
}

/// With `zero_tail`, a last stretch of zero bytes (space a power loss
/// left allocated but unwritten) ends the recording like a torn segment;
/// reading for replay stays strict.
fn scan(path: &Path, data: &[u8], zero_tail: bool, mut records: Kept) -> Result<Scan, RecordError> {
    let raw_bodies = match data.get(..MAGIC.len()) {
        Some(m) if m == MAGIC => true,
        Some(m) if m == MAGIC_V1 => false,
        _ => {
            return Err(RecordError::NotARecording {
                path: path.to_path_buf(),
            });
        }
    };
    let mut at = MAGIC.len();
    let mut prev = GENESIS;
    let mut segment = 0;
    while data.len() >= at + 36 {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap_or_default()) as usize;
        let digest: [u8; 32] = data[at + 4..at + 36].try_into().unwrap_or(GENESIS);
        let Some(frame) = data.get(at + 36..at + 36 + len) else {
            // Torn last segment (crash while writing): stop here.
            break;
        };
        let mut ctx = Context::new(&SHA256);
        ctx.update(&prev);
        ctx.update(frame);
        if ctx.finish().as_ref() != digest {
            if zero_tail && data[at..].iter().all(|&b| b == 0) {
                break;
            }
            return Err(RecordError::Digest {
                path: path.to_path_buf(),
                segment,
            });
        }
        let corrupt = |reason: String| RecordError::Corrupt {
            path: path.to_path_buf(),
            segment,
            reason,
        };
        let mut text = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(frame)
            .map_err(|e| corrupt(e.to_string()))?
            .take(MAX_SEGMENT as u64)
            .read_to_end(&mut text)
            .map_err(|e| corrupt(e.to_string()))?;
        records_of(&text, raw_bodies, &mut records).map_err(corrupt)?;
        prev = digest;
        at += 36 + len;
        segment += 1;
    }
    Ok(Scan {
        records,
        prev,
        segments: segment,
        end: at,
        raw_bodies,
    })
}

/// The line before a body kept as raw bytes: the body's length (the
/// `raw` key comes first, so such a line starts `{"raw":`, and a record's
/// starts `{"t_us":`), then the [`Event::HttpBody`] it stands for. The
/// bytes follow the line, then a newline.
#[derive(Serialize, Deserialize)]
struct RawBody {
    raw: usize,
    t_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<u64>,
    from_caller: bool,
}

/// The records of one segment's text: JSON lines, and [`RawBody`] lines
/// each followed by its bytes (skipped by their length, never read as
/// lines: a body cannot forge a record).
fn records_of(text: &[u8], raw_bodies: bool, records: &mut Kept) -> Result<(), String> {
    let mut rest = text;
    while !rest.is_empty() {
        let (line, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(n) => (&rest[..n], &rest[n + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = after;
        if line.is_empty() {
            continue;
        }
        if !(raw_bodies && line.starts_with(b"{\"raw\":")) {
            records.keep(serde_json::from_slice(line).map_err(|e| e.to_string())?);
            continue;
        }
        let h: RawBody = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        let (Some(data), Some(b'\n')) = (rest.get(..h.raw), rest.get(h.raw)) else {
            return Err(format!("a body of {} bytes runs past its segment", h.raw));
        };
        records.keep(Record {
            t_us: h.t_us,
            event: Event::HttpBody {
                request: h.request,
                from_caller: h.from_caller,
                data: text_of(data),
            },
        });
        rest = &rest[h.raw + 1..];
    }
    Ok(())
}

/// Bytes as recorded text: UTF-8 as it is, anything else with U+FFFD
/// for what is not. Validating first takes the standard library's
/// word-at-a-time path; `from_utf8_lossy` alone walks byte by byte (it
/// was 8% of the gateway's CPU on 64 KiB response bodies).
pub fn text_of(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Headers that never go into a recording.
const REDACTED: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// A header's value as a recording keeps it: `[redacted]` for the
/// headers that carry credentials, else its text.
fn recorded_value<'v>(name: &str, value: &'v [u8]) -> std::borrow::Cow<'v, str> {
    // Compared in place: a lower-cased copy of every name was an
    // allocation per header on every request and answer.
    if REDACTED.iter().any(|s| name.eq_ignore_ascii_case(s)) {
        "[redacted]".into()
    } else {
        match std::str::from_utf8(value) {
            Ok(text) => text.into(),
            Err(_) => String::from_utf8_lossy(value),
        }
    }
}

/// Headers as a recording keeps them (credentials redacted).
pub fn redact_headers<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Vec<(String, String)> {
    headers
        .map(|(k, v)| (k.to_string(), recorded_value(k, v).into_owned()))
        .collect()
}

/// An HTTP request's or response's head, borrowed, for
/// [`Recorder::head`]: written exactly as the [`Record`] of an
/// [`Event::HttpRequest`] or [`Event::HttpResponse`] without a body, but
/// without first copying every header name and value into two `String`s
/// (most of recording a head: `perf`, 1 KiB keep-alive requests).
#[derive(Debug, Clone, Copy)]
pub enum Head<'a> {
    Request {
        request: Option<u64>,
        method: &'a str,
        path: &'a str,
    },
    Response {
        request: Option<u64>,
        status: u16,
    },
}

/// A [`Head`] with its headers and time, serialised as a [`Record`] is.
#[derive(Serialize)]
struct HeadLine<'a> {
    t_us: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    headers: HeadersLine<'a>,
    body: Option<()>,
}

/// Headers serialised as `redact_headers` would return them.
struct HeadersLine<'a>(&'a [(&'a str, &'a [u8])]);

impl Serialize for HeadersLine<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (name, value) in self.0 {
            seq.serialize_element(&(name, recorded_value(name, value)))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_events() -> Vec<Event> {
        vec![
            Event::SessionStart {
                session: "s".into(),
                principal: "agent:a".into(),
                connection: "db".into(),
                protocol: "postgres".into(),
            },
            Event::HttpRequest {
                request: Some(2),
                method: "GET".into(),
                path: "/x".into(),
                headers: vec![("a".into(), "b".into())],
                body: Some("{}".into()),
            },
            Event::HttpResponse {
                request: None,
                status: 200,
                headers: vec![],
                body: None,
            },
            Event::PgQuery {
                sql: "select 1".into(),
            },
            Event::PgParse {
                statement: "s1".into(),
                sql: "select $1".into(),
            },
            Event::PgBind {
                portal: "".into(),
                statement: "s1".into(),
                params: vec![Some("7".into()), None],
            },
            Event::PgExecute { portal: "".into() },
            Event::PgRowDescription {
                columns: vec!["a".into()],
            },
            Event::PgDataRow {
                cells: vec![Some("1".into()), None],
            },
            Event::PgCommandComplete {
                tag: "SELECT 1".into(),
            },
            Event::PgError {
                code: "42501".into(),
                message: "no".into(),
            },
            Event::PgNotice {
                message: "n".into(),
            },
            Event::PgCopyData {
                from_caller: true,
                data: "1\tGrace\n".into(),
            },
            Event::PgFunctionCall {
                oid: 764,
                args: vec![Some("/etc/passwd".into()), None],
            },
            Event::PgFunctionResult {
                value: Some("16401".into()),
            },
            Event::SessionEnd {
                outcome: "caller_closed".into(),
            },
        ]
    }

    #[test]
    fn every_event_round_trips_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "s1").unwrap();
        let events = all_events();
        for (i, e) in events.iter().enumerate() {
            w.event(e.clone()).unwrap();
            if i % 4 == 0 {
                w.flush().unwrap();
            }
        }
        let path = w.path().to_path_buf();
        let digest = w.finish().unwrap();
        let (records, last) = read(&path).unwrap();
        assert_eq!(
            records.iter().map(|r| r.event.clone()).collect::<Vec<_>>(),
            events
        );
        assert_eq!(last, digest);
        assert!(records.windows(2).all(|w| w[0].t_us <= w[1].t_us));
    }

    /// Bodies as raw bytes read back as the events they stand for, in
    /// order among the others, whatever they hold: newlines, a line that
    /// looks like a record or a raw header, bytes that are not UTF-8.
    #[test]
    fn raw_bodies_read_back_as_body_events_and_cannot_forge_records() {
        let bodies: Vec<&[u8]> = vec![
            b"",
            b"{\"items\": [1, 2]}",
            b"\n{\"t_us\":0,\"type\":\"pg_query\",\"sql\":\"forged\"}\n",
            b"{\"raw\":3,\"t_us\":0,\"from_caller\":true}\nabc\n",
            b"\xff\xfe not utf-8 \xc3",
            b"\n\n",
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "raw").unwrap();
        let mut expected = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let e = Event::PgQuery {
                sql: format!("select {i}"),
            };
            w.event(e.clone()).unwrap();
            expected.push(e);
            w.body(Some(i as u64), i % 2 == 0, body).unwrap();
            expected.push(Event::HttpBody {
                request: Some(i as u64),
                from_caller: i % 2 == 0,
                data: text_of(body),
            });
            if i % 3 == 0 {
                w.flush().unwrap();
            }
        }
        w.body(None, false, b"last").unwrap();
        expected.push(Event::HttpBody {
            request: None,
            from_caller: false,
            data: "last".into(),
        });
        let path = w.path().to_path_buf();
        let digest = w.finish().unwrap();
        let (records, last) = read(&path).unwrap();
        assert_eq!(
            records.into_iter().map(|r| r.event).collect::<Vec<_>>(),
            expected
        );
        assert_eq!(last, digest);
    }

    /// The first records within a count and a size, the rest counted,
    /// the digest the same as a whole read's.
    #[test]
    fn read_first_keeps_the_first_records_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "first").unwrap();
        for i in 0..50u64 {
            w.body(Some(i), true, &vec![b'x'; 1000]).unwrap();
            if i % 7 == 0 {
                w.flush().unwrap();
            }
        }
        let path = w.path().to_path_buf();
        let digest = w.finish().unwrap();
        let few = read_first(&path, 10, usize::MAX).unwrap();
        assert_eq!((few.records.len(), few.total), (10, 50));
        assert_eq!(few.digest, digest);
        let small = read_first(&path, 1000, 5_500).unwrap();
        assert_eq!((small.records.len(), small.total), (5, 50));
        let (all, _) = read(&path).unwrap();
        assert_eq!(small.records[..], all[..5]);
    }

    /// A raw header whose length runs past its segment, or whose bytes
    /// are not followed by the newline, is a corrupt segment.
    #[test]
    fn a_raw_body_that_overruns_its_segment_is_corrupt() {
        let mut records = Kept::all();
        assert!(
            records_of(
                b"{\"raw\":10,\"t_us\":0,\"from_caller\":true}\nshort\n",
                true,
                &mut records
            )
            .is_err()
        );
        assert!(
            records_of(
                b"{\"raw\":2,\"t_us\":0,\"from_caller\":true}\nabc\n",
                true,
                &mut records
            )
            .is_err()
        );
        assert!(
            records_of(
                b"{\"raw\":3,\"t_us\":0,\"from_caller\":true}\nabc\n",
                true,
                &mut records
            )
            .is_ok()
        );
        assert_eq!(records.records.len(), 1);
        // In a version 1 file such a line is only JSON, and not a record.
        assert!(
            records_of(
                b"{\"raw\":3,\"t_us\":0,\"from_caller\":true}\nabc\n",
                false,
                &mut records
            )
            .is_err()
        );
    }

    /// Bodies of any bytes and sizes (past a segment's bound too), with
    /// other events and flushes at arbitrary points between them: every
    /// piece reads back in order, and the pieces of a body are the body.
    #[test]
    fn raw_bodies_round_trip_at_any_flush_point_and_any_size() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "sizes").unwrap();
        let alphabet = b"\n{}\"raw:,\\ a\xff\xc3\xa9";
        let mut sent: Vec<Vec<u8>> = Vec::new();
        for round in 0..60 {
            let len = match round {
                7 => FLUSH_BYTES,
                8 => 2 * FLUSH_BYTES + 5,
                _ => (next() % 300) as usize,
            };
            let body: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            w.body(Some(round), true, &body).unwrap();
            sent.push(body);
            if next() % 4 == 0 {
                w.flush().unwrap();
            }
            if next() % 5 == 0 {
                w.event(Event::PgQuery { sql: "x".into() }).unwrap();
            }
        }
        let path = w.path().to_path_buf();
        w.finish().unwrap();
        let (records, _) = read(&path).unwrap();
        for (round, body) in sent.iter().enumerate() {
            let pieces: Vec<&str> = records
                .iter()
                .filter_map(|r| match &r.event {
                    Event::HttpBody { request, data, .. } if *request == Some(round as u64) => {
                        Some(data.as_str())
                    }
                    _ => None,
                })
                .collect();
            let whole: Vec<u8> = body
                .chunks(FLUSH_BYTES)
                .flat_map(|c| text_of(c).into_bytes())
                .collect();
            assert_eq!(pieces.concat().into_bytes(), whole, "round {round}");
            assert_eq!(
                pieces.len(),
                body.len().div_ceil(FLUSH_BYTES).max(1),
                "round {round}"
            );
        }
    }

    /// A version 1 file (bodies as JSON text) still reads, and resumed it
    /// stays version 1: its bodies go in as text.
    #[test]
    fn version_1_recordings_still_read_and_resume_as_version_1() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "v1").unwrap();
        w.raw_bodies = false;
        w.body(Some(1), true, b"{\"a\": \"b\"}\n").unwrap();
        w.flush().unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..8].copy_from_slice(MAGIC_V1);
        std::fs::write(&path, &bytes).unwrap();
        let mut w = Writer::resume(&path).unwrap();
        assert!(!w.raw_bodies);
        w.body(Some(2), false, b"two").unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], MAGIC_V1);
        let (records, _) = read(&path).unwrap();
        let bodies: Vec<_> = records.into_iter().map(|r| r.event).collect();
        assert_eq!(
            bodies,
            vec![
                Event::HttpBody {
                    request: Some(1),
                    from_caller: true,
                    data: "{\"a\": \"b\"}\n".into(),
                },
                Event::HttpBody {
                    request: Some(2),
                    from_caller: false,
                    data: "two".into(),
                },
            ]
        );
    }

    #[test]
    fn edits_are_caught_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "s2").unwrap();
        for e in all_events() {
            w.event(e).unwrap();
            w.flush().unwrap();
        }
        let path = w.path().to_path_buf();
        w.finish().unwrap();
        let good = std::fs::read(&path).unwrap();

        let mut edited = good.clone();
        let last = edited.len() - 3;
        edited[last] ^= 0xff;
        std::fs::write(&path, &edited).unwrap();
        assert!(matches!(read(&path), Err(RecordError::Digest { .. })));

        // A crash mid-segment: everything before it still reads.
        std::fs::write(&path, &good[..good.len() - 5]).unwrap();
        let (records, _) = read(&path).unwrap();
        assert_eq!(records.len(), all_events().len() - 1);
    }

    #[test]
    fn a_recording_left_unfinished_is_sealed_as_far_as_it_got() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "s3").unwrap();
        let events = all_events();
        for e in &events[..3] {
            w.event(e.clone()).unwrap();
            w.flush().unwrap();
        }
        let path = w.path().to_path_buf();
        // The process dies mid-segment: a torn tail.
        drop(w);
        let mut torn = std::fs::read(&path).unwrap();
        torn.extend_from_slice(&[0, 0, 0, 99, 1, 2, 3]);
        std::fs::write(&path, &torn).unwrap();
        let mut w = Writer::resume(&path).unwrap();
        w.event(Event::SessionEnd {
            outcome: "cut_by_restart".into(),
        })
        .unwrap();
        let digest = w.finish().unwrap();
        let (records, last) = read(&path).unwrap();
        assert_eq!(last, digest);
        assert_eq!(records.len(), 4);
        assert_eq!(
            records[3].event,
            Event::SessionEnd {
                outcome: "cut_by_restart".into()
            }
        );
        assert!(records[3].t_us >= records[2].t_us);
    }

    #[test]
    fn a_zero_filled_tail_is_cut_off_when_resuming_but_an_edit_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "s5").unwrap();
        w.event(all_events()[0].clone()).unwrap();
        w.flush().unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let good = std::fs::read(&path).unwrap();
        let mut zeroed = good.clone();
        zeroed.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &zeroed).unwrap();
        let w = Writer::resume(&path).unwrap();
        assert_eq!(w.seal().1, None);
        assert_eq!(read(&path).unwrap().0.len(), 1);
        // Anything but zeros after a bad digest is an edit: not repaired.
        let mut edited = good.clone();
        let last = edited.len() - 1;
        edited[last] ^= 0x55;
        edited.extend_from_slice(&[0u8; 64]);
        std::fs::write(&path, &edited).unwrap();
        assert!(matches!(
            Writer::resume(&path),
            Err(RecordError::Digest { .. })
        ));
    }

    /// A write that fails (a full disk; here a file opened read-only) stops
    /// the recording: later events fail, the hook is told once, and what
    /// was written before still reads with its digest.
    #[test]
    fn a_failed_write_stops_the_recording_and_keeps_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "s4").unwrap();
        w.event(all_events()[0].clone()).unwrap();
        w.flush().unwrap();
        let good = w.digest_so_far();
        let path = w.path().to_path_buf();
        let (mut w, told) = counting_failures(w);
        w.segs.file = std::fs::File::open(&path).unwrap();
        w.event(all_events()[1].clone()).unwrap();
        assert!(matches!(w.flush(), Err(RecordError::Stopped { .. })));
        assert!(matches!(
            w.event(all_events()[2].clone()),
            Err(RecordError::Stopped { .. })
        ));
        assert_eq!(told.load(std::sync::atomic::Ordering::SeqCst), 1);
        let (records, last) = read(&path).unwrap();
        assert_eq!((records.len(), last), (1, good));
    }

    /// Segments handed on by many recordings at once (more than the
    /// queue takes, so writers also write their own) land in each one's
    /// order, and `finish` writes what still waits.
    #[test]
    fn segments_handed_on_land_in_order_behind_a_full_queue() {
        let dir = tempfile::tempdir().unwrap();
        let events = all_events();
        let writers: Vec<_> = (0..6)
            .map(|n| {
                let dir = dir.path().to_path_buf();
                let events = events.clone();
                std::thread::spawn(move || {
                    let mut w = Writer::create(&dir, &format!("many{n}")).unwrap();
                    let mut wrote = Vec::new();
                    for i in 0..40 {
                        let e = events[(i + n) % events.len()].clone();
                        w.event(e.clone()).unwrap();
                        wrote.push(e);
                        // A body that fills a segment on its own now and then.
                        if i % 7 == 3 {
                            let body = vec![b'a' + (i % 26) as u8; FLUSH_BYTES + i];
                            w.body(Some(i as u64), true, &body).unwrap();
                            wrote.extend(body.chunks(FLUSH_BYTES).map(|p| Event::HttpBody {
                                request: Some(i as u64),
                                from_caller: true,
                                data: text_of(p),
                            }));
                        }
                        if i % 13 == 5 {
                            w.flush().unwrap();
                        } else {
                            w.hand_on().unwrap();
                        }
                    }
                    let path = w.path().to_path_buf();
                    (path, wrote, w.finish().unwrap())
                })
            })
            .collect();
        for t in writers {
            let (path, wrote, digest) = t.join().unwrap();
            let read = sealed_events(&path, &digest);
            assert_eq!(read, wrote);
        }
    }

    /// The events of the recording at `path` that `finish` sealed with
    /// `digest`, checking the file's last digest is that one.
    fn sealed_events(path: &Path, digest: &str) -> Vec<Event> {
        let (records, last) = read(path).unwrap();
        assert_eq!(last, digest);
        records.into_iter().map(|r| r.event).collect()
    }

    /// `w` with a failure hook that counts how often it is told.
    fn counting_failures(w: Writer) -> (Writer, Arc<std::sync::atomic::AtomicUsize>) {
        let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = told.clone();
        let w = w.on_failure(Arc::new(move |_| {
            t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        (w, told)
    }

    /// A queue with no thread, which only a test's `serve_one` moves.
    fn still_queue() -> &'static Queue {
        Box::leak(Box::new(Queue::new()))
    }

    /// A frame the thread compressed is written by its writer with the
    /// next event (or tick) after the thread is done; a write failing then stops
    /// the recording as one failing inline does: that call fails, `seal`
    /// says why, the hook is told once, the file keeps what was written,
    /// and nothing of it still counts as waiting.
    #[test]
    fn frames_from_the_thread_are_written_by_their_writer() {
        let dir = tempfile::tempdir().unwrap();
        let queue = still_queue();
        let mut w = Writer::create(dir.path(), "behind")
            .unwrap()
            .on_queue(queue);
        let path = w.path().to_path_buf();
        w.event(all_events()[0].clone()).unwrap();
        w.hand_on().unwrap();
        assert!(queue.serve_one(false));
        assert_eq!(read(&path).unwrap().0.len(), 0);
        w.catch_up().unwrap();
        assert_eq!(read(&path).unwrap().0.len(), 1);
        assert_eq!(queue.waiting(), 0);
        let good = w.digest_so_far();
        let (mut w, told) = counting_failures(w);
        w.segs.file = std::fs::File::open(&path).unwrap();
        w.event(all_events()[1].clone()).unwrap();
        w.hand_on().unwrap();
        assert!(queue.serve_one(false));
        // The next event writes the thread's frame, and fails with it.
        assert!(matches!(
            w.event(all_events()[2].clone()),
            Err(RecordError::Stopped { .. })
        ));
        assert!(matches!(w.hand_on(), Err(RecordError::Stopped { .. })));
        assert_eq!(queue.waiting(), 0);
        assert!(matches!(
            w.event(all_events()[3].clone()),
            Err(RecordError::Stopped { .. })
        ));
        let (digest, why) = w.seal();
        assert!(why.unwrap().contains("a write failed"));
        assert_eq!(digest, good);
        assert_eq!(told.load(std::sync::atomic::Ordering::SeqCst), 1);
        let (records, last) = read(&path).unwrap();
        assert_eq!((records.len(), last), (1, good));
    }

    /// With the thread given no core at all, a writer that finds too many
    /// segments waiting writes its own, in order: the waiting segments stay
    /// bounded and nothing waits on the thread. When the thread comes
    /// back, it compresses nothing a writer has begun.
    #[test]
    fn a_starved_thread_leaves_each_writer_to_write_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let queue = still_queue();
        let mut w = Writer::create(dir.path(), "starved")
            .unwrap()
            .on_queue(queue);
        let events = all_events();
        let mut wrote = Vec::new();
        for i in 0..10 * (segments::QUEUED_SEGMENTS + 1) {
            let e = events[i % events.len()].clone();
            w.event(e.clone()).unwrap();
            wrote.push(e);
            w.hand_on().unwrap();
            assert!(queue.waiting() <= segments::QUEUED_SEGMENTS);
        }

        let path = w.path().to_path_buf();
        let digest = w.finish().unwrap();
        let read_back = sealed_events(&path, &digest);
        assert_eq!(read_back, wrote);
        while queue.serve_one(false) {}
        assert_eq!(read(&path).unwrap().1, digest);
    }

    /// With the queue full, a writer whose oldest segment the thread has
    /// begun queues behind it rather than compress it a second time, up
    /// to a few of its own; past that it writes them all, in order.
    #[test]
    fn a_writer_queues_behind_a_segment_the_thread_has_begun() {
        let dir = tempfile::tempdir().unwrap();
        let queue = still_queue();
        let events = all_events();
        let mut mine = Writer::create(dir.path(), "mine").unwrap().on_queue(queue);
        let mut other = Writer::create(dir.path(), "other").unwrap().on_queue(queue);
        mine.event(events[0].clone()).unwrap();
        mine.hand_on().unwrap();
        mine.segs.claim_oldest();
        while queue.waiting() < segments::QUEUED_SEGMENTS {
            other.event(events[1].clone()).unwrap();
            other.hand_on().unwrap();
        }
        let path = mine.path().to_path_buf();
        for (n, e) in events.iter().enumerate().take(4).skip(1) {
            mine.event(e.clone()).unwrap();
            mine.hand_on().unwrap();
            assert_eq!(mine.segs.waiting_here(), n + 1);
            assert_eq!(read(&path).unwrap().0.len(), 0);
        }
        mine.event(events[4].clone()).unwrap();
        mine.hand_on().unwrap();
        assert_eq!(mine.segs.waiting_here(), 0);
        assert_eq!(read(&path).unwrap().0.len(), 5);
        while queue.serve_one(false) {}
        let digest = mine.finish().unwrap();
        let read_back = sealed_events(&path, &digest);
        assert_eq!(read_back, events[..5].to_vec());
    }

    /// What a starved thread has been sent and not taken stays bounded
    /// too: past the bound, writers stop sending and write their own.
    #[test]
    fn a_starved_thread_is_sent_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let queue = still_queue();
        let mut w = Writer::create(dir.path(), "unsent")
            .unwrap()
            .on_queue(queue);
        let n = 2 * segments::SENT_NOT_TAKEN * (segments::QUEUED_SEGMENTS + 1)
            / segments::QUEUED_SEGMENTS;
        for _ in 0..n {
            w.event(all_events()[0].clone()).unwrap();
            w.hand_on().unwrap();
            assert!(queue.sent() <= segments::SENT_NOT_TAKEN);
        }
        assert_eq!(queue.sent(), segments::SENT_NOT_TAKEN);
        let path = w.path().to_path_buf();
        w.finish().unwrap();
        assert_eq!(read(&path).unwrap().0.len(), n);
    }

    /// A flush writes its own waiting segments itself, not waiting for the
    /// thread; the other recording's stay for the thread and their writer.
    #[test]
    fn a_flush_writes_its_own_waiting_segments() {
        let dir = tempfile::tempdir().unwrap();
        let queue = still_queue();
        let events = all_events();
        let mut mine = Writer::create(dir.path(), "mine").unwrap().on_queue(queue);
        let mut other = Writer::create(dir.path(), "other").unwrap().on_queue(queue);
        for (i, e) in events.iter().enumerate().take(6) {
            let w = if i % 2 == 0 { &mut mine } else { &mut other };
            w.event(e.clone()).unwrap();
            w.hand_on().unwrap();
        }
        mine.flush().unwrap();
        assert_eq!(queue.waiting(), 3);
        // The thread compresses the other's; its writer writes them.
        while queue.serve_one(false) {}
        assert_eq!(queue.waiting(), 3);
        other.catch_up().unwrap();
        assert_eq!(queue.waiting(), 0);
        for (w, first) in [(mine, 0), (other, 1)] {
            let path = w.path().to_path_buf();
            let digest = w.finish().unwrap();
            let read_back = sealed_events(&path, &digest);
            let expected: Vec<_> = events
                .iter()
                .skip(first)
                .step_by(2)
                .take(3)
                .cloned()
                .collect();
            assert_eq!(read_back, expected);
        }
    }

    /// A segment the thread has begun and not finished is compressed
    /// again by a writer that must have it in the file, which does not
    /// wait; it lands once, and the thread's late frame is not used.
    #[test]
    fn a_segment_the_thread_is_slow_with_is_written_once_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let queue = still_queue();
        let mut w = Writer::create(dir.path(), "slow").unwrap().on_queue(queue);
        let path = w.path().to_path_buf();
        w.event(all_events()[0].clone()).unwrap();
        w.hand_on().unwrap();
        w.segs.claim_oldest();
        w.event(all_events()[1].clone()).unwrap();
        w.flush().unwrap();
        assert_eq!(read(&path).unwrap().0.len(), 2);
        assert_eq!(queue.waiting(), 0);
        // The thread comes to it late: claimed, so not compressed again.
        assert!(queue.serve_one(false));
        w.catch_up().unwrap();
        let digest = w.finish().unwrap();
        let read_back = sealed_events(&path, &digest);
        assert_eq!(read_back, all_events()[..2].to_vec());
    }

    /// Segments that wait too long for the thread are written at the
    /// ticker's next look: a crash loses little more than it would have.
    #[test]
    fn late_segments_are_caught_up_by_their_writer() {
        let dir = tempfile::tempdir().unwrap();
        let queue = still_queue();
        let mut w = Writer::create(dir.path(), "late").unwrap().on_queue(queue);
        w.event(all_events()[0].clone()).unwrap();
        w.hand_on().unwrap();
        w.segs.catch_up(Duration::from_secs(3600)).unwrap();
        assert_eq!(queue.waiting(), 1);
        w.segs.catch_up(Duration::ZERO).unwrap();
        assert_eq!(queue.waiting(), 0);
        assert_eq!(read(w.path()).unwrap().0.len(), 1);
    }

    /// A segment the thread could not compress (a panic) is compressed by
    /// its writer; and a writer dropped without a seal still writes the
    /// frames the thread made.
    #[test]
    fn a_frame_the_thread_failed_is_made_here_and_a_dropped_writer_lands_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let queue = still_queue();
        let mut w = Writer::create(dir.path(), "redo").unwrap().on_queue(queue);
        let path = w.path().to_path_buf();
        w.event(all_events()[0].clone()).unwrap();
        w.hand_on().unwrap();
        w.segs.fail_oldest_frame();
        w.event(all_events()[1].clone()).unwrap();
        w.flush().unwrap();
        let digest = w.digest_so_far();
        assert_eq!(sealed_events(&path, &digest), all_events()[..2].to_vec());
        w.event(all_events()[2].clone()).unwrap();
        w.hand_on().unwrap();
        while queue.serve_one(false) {}
        drop(w);
        assert_eq!(read(&path).unwrap().0.len(), 3);
        assert_eq!(queue.waiting(), 0);
    }

    /// Once sealed, a recorder refuses what it is still given: an event
    /// after the seal fails rather than go unrecorded.
    #[tokio::test]
    async fn a_sealed_recorder_refuses_events() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::start(Writer::create(dir.path(), "sealed").unwrap());
        r.event(all_events()[0].clone()).unwrap();
        let late = r.clone();
        assert_eq!(r.seal().unwrap().1, None);
        assert!(matches!(
            late.body(Some(1), false, b"after"),
            Err(RecordError::Stopped { reason, .. }) if reason == "the recording is sealed"
        ));
        assert!(late.seal().is_none());
    }

    /// A panic while the recorder's lock is held stops the recording:
    /// later events fail rather than go unrecorded, and the seal says why.
    #[tokio::test]
    async fn a_panic_while_recording_stops_the_recording() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::start(Writer::create(dir.path(), "panic").unwrap());
        r.event(all_events()[0].clone()).unwrap();
        let held = r.clone();
        let panicked = std::thread::spawn(move || {
            let _g = held.inner.lock();
            panic!("while recording");
        })
        .join();
        assert!(panicked.is_err());
        assert!(matches!(
            r.event(all_events()[1].clone()),
            Err(RecordError::Stopped { .. })
        ));
        let (_, why) = r.seal().unwrap();
        assert_eq!(why.as_deref(), Some("a panic while recording"));
    }

    /// The segment thread asks for idle priority (`SCHED_IDLE`, policy 5
    /// in the 41st field of its `stat`): at normal priority it kept the
    /// core a caller's next wake-up was queued for.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_segment_thread_runs_at_idle_priority() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "idle").unwrap();
        w.event(all_events()[0].clone()).unwrap();
        w.hand_on().unwrap();
        w.flush().unwrap();
        let policies: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                // Thread names are cut to 15 bytes.
                (comm.trim() == "portcullis-reco").then_some(())?;
                let stat = std::fs::read_to_string(t.join("stat")).ok()?;
                // Fields after the name, which ends at the last ')'.
                let rest = &stat[stat.rfind(')')? + 2..];
                rest.split(' ').nth(41 - 3).map(str::to_owned)
            })
            .collect();
        assert_eq!(policies, ["5"]);
    }

    #[test]
    fn text_is_kept_as_it_is_and_other_bytes_are_replaced() {
        assert_eq!(text_of("h\u{e9}llo \"x\"".as_bytes()), "h\u{e9}llo \"x\"");
        assert_eq!(text_of(b"a\xffb\xc3"), "a\u{fffd}b\u{fffd}");
        assert_eq!(text_of(b""), "");
    }

    #[test]
    fn secrets_in_headers_are_redacted() {
        let h = redact_headers(
            [
                ("Authorization", &b"Bearer pcl_x"[..]),
                ("accept", &b"*/*"[..]),
            ]
            .into_iter(),
        );
        assert_eq!(h[0].1, "[redacted]");
        assert_eq!(h[1].1, "*/*");
    }

    /// The recordings' directory is made when missing: at the first
    /// session, and again when removed while the gateway runs.
    #[test]
    fn a_missing_directory_is_made() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        Writer::create(&dir, "one").unwrap().finish().unwrap();
        std::fs::remove_dir_all(root.path().join("a")).unwrap();
        Writer::create(&dir, "two").unwrap().finish().unwrap();
        assert!(dir.join("two.rec").exists());
        // A file of that name is still never overwritten.
        assert!(Writer::create(&dir, "two").is_err());
    }

    /// A borrowed head is written byte for byte as the owned event is,
    /// and reads back as it.
    #[test]
    fn a_borrowed_head_is_the_owned_event() {
        let headers: [(&str, &[u8]); 5] = [
            ("Authorization", b"Bearer pcl_x"),
            ("x-API-key", b"k"),
            ("accept", b"*/*"),
            ("x-odd", b"caf\xc3\xa9 \xff\"quoted\"\n"),
            ("set-cookie", b"a=b"),
        ];
        let owned = redact_headers(headers.iter().copied());
        let cases = [
            (
                Head::Request {
                    request: Some(7),
                    method: "POST",
                    path: "/c/x/y?q=\"1\"",
                },
                Event::HttpRequest {
                    request: Some(7),
                    method: "POST".into(),
                    path: "/c/x/y?q=\"1\"".into(),
                    headers: owned.clone(),
                    body: None,
                },
            ),
            (
                Head::Response {
                    request: None,
                    status: 404,
                },
                Event::HttpResponse {
                    request: None,
                    status: 404,
                    headers: owned.clone(),
                    body: None,
                },
            ),
        ];
        for (head, event) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut wa = Writer::create(dir.path(), "a").unwrap();
            let mut wb = Writer::create(dir.path(), "b").unwrap();
            wa.head(head, &headers).unwrap();
            wb.event(event.clone()).unwrap();
            // The same bytes but for the time, which leads the line.
            let after_time = |buf: &[u8]| {
                let text = String::from_utf8(buf.to_vec()).unwrap();
                text.split_once(',').unwrap().1.to_string()
            };
            assert_eq!(after_time(&wa.buf), after_time(&wb.buf));
            assert!(wa.buf.starts_with(b"{\"t_us\":"));
            wa.finish().unwrap();
            let (records, _) = read(&dir.path().join("a.rec")).unwrap();
            assert_eq!(records.last().unwrap().event, event);
        }
    }
}
