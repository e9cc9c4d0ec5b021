//! The audit log: typed events, appended to a hash chain in the store,
//! with Ed25519-signed checkpoints kept in a file beside it.
//!
//! `append` returns once the entry is durable; callers that must not go
//! on without an entry (a session about to reach its target) treat an
//! error as a refusal: fail closed.

pub mod chain;
mod event;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use portcullis_store::{AuditRow, SessionRow, Store};

pub use chain::{Checkpoint, Entry, Summary, VerifyError};
pub use event::{AuditEvent, OAuthAction};

const KEY_FILE: &str = "audit-signing.key";
const PUB_FILE: &str = "audit-signing.pub";
const CHECKPOINTS_FILE: &str = "audit-checkpoints.jsonl";
/// A checkpoint is signed after this many entries (and at shutdown).
const CHECKPOINT_EVERY: i64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store: {0}")]
    Store(#[from] portcullis_store::StoreError),
    #[error("audit key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("audit checkpoints {path}: {source}")]
    Checkpoints {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit entry {seq} is corrupt: {reason}")]
    Corrupt { seq: i64, reason: String },
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
}

/// How long a caller waits for its entry to be durable before the
/// session is refused: a stalled or full store must give a fast, clear
/// refusal rather than callers hanging on it.
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(800);
/// How long the writer waits on one batch before calling the store
/// unavailable (the callers have given up long before).
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// While the store is failing, how often the writer tries again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The log, shared by every front. Appends go to one writer task that
/// commits whatever has queued up in a single transaction (group commit),
/// so concurrent sessions share round trips to the database; each caller
/// still returns only once its own entry is committed.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: tokio::sync::mpsc::Sender<Job>,
    key: Ed25519KeyPair,
    checkpoints: PathBuf,
    store: Store,
    /// (last seq, last hash), as committed.
    head: std::sync::Mutex<(i64, String)>,
    /// The chain's name (its first entry's hash), once it has one.
    chain: std::sync::Mutex<Option<String>>,
    /// Set while the store refuses or stalls writes; cleared by the first
    /// write that lands (which records the outage itself).
    outage: std::sync::Mutex<Option<Outage>>,
    write_timeout: Duration,
}

/// A period during which the store could not take entries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outage {
    /// Unix milliseconds of the first failure.
    pub since_ms: i64,
    /// The last error, as the store gave it.
    pub reason: String,
    /// Appends that were not answered with a sequence number.
    pub unanswered: u64,
}

struct Job {
    event: String,
    session: Option<SessionRow>,
    /// None for entries the writer makes itself.
    reply: Option<tokio::sync::oneshot::Sender<Result<i64, String>>>,
    /// Written once the store takes writes again if this attempt fails:
    /// a session's end and evidence of a refusal. Never a session start
    /// (a refused session must not be logged as started), never an entry
    /// its caller writes *before* acting and skips the action without
    /// (an enrolment, a delegated token), never the outage entry (made
    /// afresh each attempt).
    owed: bool,
}

/// The most entries the writer keeps for a store that is failing; past
/// it the oldest are dropped (their sessions are closed as cut at the
/// next start).
const MAX_OWED: usize = 100_000;

impl Job {
    fn new(event: &AuditEvent, session: Option<SessionRow>) -> Self {
        let value = serde_json::to_value(event).unwrap_or_default();
        Job {
            event: chain::canonical(&value),
            owed: matches!(
                event,
                AuditEvent::SessionEnd { .. }
                    | AuditEvent::Refusal { .. }
                    | AuditEvent::RefusalsRepeated { .. }
                    | AuditEvent::StatementRefused { .. }
                    | AuditEvent::AuditGap { .. }
            ),
            session,
            reply: None,
        }
    }
}

const MAX_BATCH: usize = 256;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Load the signing key from `dir`, creating it (0600) if absent.
pub fn load_or_create_key(dir: &Path) -> Result<Ed25519KeyPair, AuditError> {
    let path = dir.join(KEY_FILE);
    let key_err = |reason: String| AuditError::Key {
        path: path.clone(),
        reason,
    };
    if !path.exists() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| key_err("generation failed".into()))?;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        use std::io::Write;
        let mut f = o.open(&path).map_err(|e| key_err(e.to_string()))?;
        f.write_all(pkcs8.as_ref())
            .map_err(|e| key_err(e.to_string()))?;
        f.sync_all().map_err(|e| key_err(e.to_string()))?;
    }
    let bytes = std::fs::read(&path).map_err(|e| key_err(e.to_string()))?;
    let key = Ed25519KeyPair::from_pkcs8(&bytes)
        .map_err(|_| key_err("not an Ed25519 PKCS#8 key".into()))?;
    std::fs::write(
        dir.join(PUB_FILE),
        format!("{}\n", hex::encode(key.public_key().as_ref())),
    )
    .map_err(|e| key_err(e.to_string()))?;
    Ok(key)
}

/// Where the chain goes on from: the store's head, unless a signed
/// checkpoint of the same chain names a later entry. Then the store lost
/// entries it had once committed (a power loss under `synchronous =
/// NORMAL`, a restored backup): numbering goes on after the checkpoint,
/// linked to its hash, so no sequence number is ever used twice and
/// `audit verify` reports exactly the missing range.
async fn starting_head(
    store: &Store,
    dir: &Path,
) -> Result<((i64, String), Option<String>, Option<(i64, i64)>), AuditError> {
    let head = store
        .audit_head()
        .await?
        .unwrap_or((0, chain::GENESIS.to_string()));
    let chain = store
        .audit_rows(0, 1)
        .await?
        .first()
        .map(|r| r.hash.clone());
    let Some(chain_id) = &chain else {
        return Ok((head, None, None));
    };
    let signed_later = checkpoints(dir)?
        .into_iter()
        .filter(|c| c.chain.as_ref().is_none_or(|c| c == chain_id) && c.seq > head.0)
        .max_by_key(|c| c.seq);
    Ok(match signed_later {
        None => (head, chain, None),
        Some(c) => {
            tracing::error!(
                store_ends_at = head.0,
                signed_up_to = c.seq,
                "the audit store has lost entries a checkpoint signed; numbering goes on after them (audit verify names the gap)"
            );
            let gap = (head.0, c.seq);
            ((c.seq, c.hash), chain, Some(gap))
        }
    })
}

impl AuditLog {
    /// Open the log kept in `store`, with key and checkpoints in `dir`.
    pub async fn open(store: Store, dir: &Path) -> Result<Self, AuditError> {
        Self::open_with(store, dir, WRITE_TIMEOUT).await
    }

    /// [`Self::open`], waiting at most `write_timeout` for an entry.
    pub async fn open_with(
        store: Store,
        dir: &Path,
        write_timeout: Duration,
    ) -> Result<Self, AuditError> {
        let key = load_or_create_key(dir)?;
        let (head, chain, gap) = starting_head(&store, dir).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let inner = Arc::new(Inner {
            jobs: tx,
            key,
            checkpoints: dir.join(CHECKPOINTS_FILE),
            store: store.clone(),
            head: std::sync::Mutex::new(head),
            chain: std::sync::Mutex::new(chain),
            outage: std::sync::Mutex::new(None),
            write_timeout,
        });
        let first = gap.map(|(store_ends_at, signed_up_to)| {
            Job::new(
                &AuditEvent::AuditGap {
                    store_ends_at,
                    signed_up_to,
                },
                None,
            )
        });
        tokio::spawn(writer(Arc::downgrade(&inner), store, rx, first));
        Ok(Self { inner })
    }

    /// Append `event`; returns its sequence number once it is committed.
    pub async fn append(&self, event: &AuditEvent) -> Result<i64, AuditError> {
        self.append_with(event, None).await
    }

    /// Append `event` and write `session` to the session index in the
    /// same transaction. Waits at most the write timeout: an entry that is
    /// not durable by then is an error (the caller refuses), and if it
    /// opened a session the writer closes that session once the store
    /// takes writes again.
    pub async fn append_with(
        &self,
        event: &AuditEvent,
        session: Option<SessionRow>,
    ) -> Result<i64, AuditError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut job = Job::new(event, session);
        job.reply = Some(reply);
        // While the store is known to be failing, nobody waits on it: a
        // session start is refused at once; anything else (an end, a
        // refusal) is left with the writer, which owes it to the log.
        if let Some(o) = self.outage() {
            self.inner.note_failure(&o.reason);
            if job.owed {
                job.reply = None;
                let _ = self.inner.jobs.try_send(job);
            }
            return Err(AuditError::Unavailable(format!(
                "the audit store has been failing for {} ms: {}",
                (now_ms() - o.since_ms).max(0),
                o.reason
            )));
        }
        let stopped = || AuditError::Unavailable("the audit writer has stopped".into());
        let wait = async {
            self.inner.jobs.send(job).await.map_err(|_| stopped())?;
            answer
                .await
                .map_err(|_| stopped())?
                .map_err(AuditError::Unavailable)
        };
        match tokio::time::timeout(self.inner.write_timeout, wait).await {
            Ok(r) => r,
            Err(_) => {
                self.inner.note_failure(&format!(
                    "the audit store did not take the entry within {} ms",
                    self.inner.write_timeout.as_millis()
                ));
                Err(AuditError::Unavailable(format!(
                    "the audit store did not answer within {} ms",
                    self.inner.write_timeout.as_millis()
                )))
            }
        }
    }

    /// The store's current outage, if writes are failing.
    pub fn outage(&self) -> Option<Outage> {
        self.inner.outage.lock().ok().and_then(|o| o.clone())
    }

    /// Sign a checkpoint at the durable head (at shutdown, for instance).
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        // Let queued appends land first.
        self.flush().await;
        self.inner.checkpoint_durable().await
    }

    async fn flush(&self) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        // An empty event string is the writer's "flush" marker.
        let job = Job {
            event: String::new(),
            session: None,
            reply: Some(reply),
            owed: false,
        };
        if self.inner.jobs.send(job).await.is_ok() {
            let _ = tokio::time::timeout(BATCH_TIMEOUT, answer).await;
        }
    }
}

impl Inner {
    /// Sign the store's head, read back from it: never an entry the
    /// writer believes it committed but the store does not have, and never
    /// one it cannot vouch for. The store's head must be the writer's own,
    /// or chain from it (another gateway sharing the store appended since):
    /// anything else — a shorter store, a different hash at the writer's
    /// head, a tail that does not chain — is logged and not signed, so a
    /// rewrite of the store is never sealed by the gateway's key.
    async fn checkpoint_durable(&self) -> Result<(), AuditError> {
        let Some((seq, hash)) = self.store.audit_head().await? else {
            return Ok(());
        };
        let (ours, our_hash) = self
            .head
            .lock()
            .map(|h| h.clone())
            .unwrap_or((0, chain::GENESIS.to_string()));
        let vouched = if seq < ours {
            Err(format!(
                "the store ends at entry {seq}, the writer wrote up to {ours}"
            ))
        } else if seq - ours > CHECK_BEFORE_SIGNING {
            Err(format!("{} entries past the writer's head", seq - ours))
        } else {
            self.chains_from(ours, &our_hash, seq).await
        };
        if let Err(why) = vouched {
            tracing::error!(%why, "audit checkpoint not signed: the store is not what this gateway wrote");
            return Ok(());
        }
        let chain = match self.chain.lock().ok().and_then(|c| c.clone()) {
            Some(c) => Some(c),
            None => self
                .store
                .audit_rows(0, 1)
                .await?
                .first()
                .map(|r| r.hash.clone()),
        };
        self.write_checkpoint(chain.as_deref(), seq, &hash).await
    }

    /// Whether the store's entries after `from` (whose hash must be
    /// `from_hash`) up to `to` each link to the one before and match their
    /// hashes.
    async fn chains_from(&self, from: i64, from_hash: &str, to: i64) -> Result<(), String> {
        if from > 0 && !landed(&self.store, from, from_hash).await {
            return Err(format!("entry {from} is not the one this gateway wrote"));
        }
        let mut prev = from_hash.to_owned();
        let mut at = from;
        while at < to {
            let rows = self
                .store
                .audit_rows(at, 1000)
                .await
                .map_err(|e| e.to_string())?;
            if rows.is_empty() {
                break;
            }
            for r in rows.into_iter().take_while(|r| r.seq <= to) {
                let hash = chain::entry_hash(r.seq, r.time_ms, &r.prev_hash, &r.event);
                if r.seq != at + 1 || r.prev_hash != prev || hash != r.hash {
                    return Err(format!("entry {} does not chain", r.seq));
                }
                prev = r.hash;
                at = r.seq;
            }
        }
        Ok(())
    }

    async fn write_checkpoint(
        &self,
        chain: Option<&str>,
        seq: i64,
        hash: &str,
    ) -> Result<(), AuditError> {
        let c = Checkpoint {
            seq,
            hash: hash.to_string(),
            time_ms: now_ms(),
            chain: chain.map(str::to_owned),
            signature: hex::encode(self.key.sign(&chain::checkpoint_message(chain, seq, hash))),
        };
        let (path, line) = (
            self.checkpoints.clone(),
            serde_json::to_string(&c).unwrap_or_default(),
        );
        // The line is synced to disk: 0.3-8 ms under load (`strace -T`),
        // which blocked a runtime worker (its queued tasks waited to be
        // stolen) every 64 entries (docs/performance.md, session 11). The
        // writer still waits for it: checkpoints are written in order.
        match tokio::task::spawn_blocking(move || append_line(&path, &line)).await {
            Ok(written) => written,
            Err(e) => Err(AuditError::Checkpoints {
                path: self.checkpoints.clone(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    fn note_failure(&self, reason: &str) {
        if let Ok(mut o) = self.outage.lock() {
            let o = o.get_or_insert_with(|| Outage {
                since_ms: now_ms(),
                reason: String::new(),
                unanswered: 0,
            });
            o.reason = reason.to_owned();
            o.unanswered += 1;
        }
    }
}

/// What the writer does with the next batch.
enum Next {
    Job(Box<Job>),
    /// Time to try the store again (while it is failing).
    Retry,
    Closed,
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<Job>, failing: bool) -> Next {
    if !failing {
        return rx
            .recv()
            .await
            .map_or(Next::Closed, |j| Next::Job(Box::new(j)));
    }
    tokio::select! {
        j = rx.recv() => j.map_or(Next::Closed, |j| Next::Job(Box::new(j))),
        _ = tokio::time::sleep(RETRY_EVERY) => Next::Retry,
    }
}

/// The one writer: drain what is queued, chain it, commit it in one
/// transaction, answer everyone. While the store fails it retries every
/// second, and the first batch that lands records the outage. A session
/// start whose caller stopped waiting (and so refused the session) gets
/// its end entry here, so no session stays open in the index.
async fn writer(
    inner: std::sync::Weak<Inner>,
    store: Store,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    first: Option<Job>,
) {
    // Entries the writer owes (its own, or ends of abandoned starts).
    let mut owed: Vec<Job> = first.into_iter().collect();
    let mut failing = false;
    loop {
        let mut jobs = std::mem::take(&mut owed);
        if jobs.is_empty() || failing {
            match next(&mut rx, failing).await {
                Next::Job(j) => jobs.push(*j),
                Next::Retry => {}
                Next::Closed => break,
            }
        }
        // New jobs are taken whatever is owed, so the queue never backs
        // up behind a long outage.
        for _ in 0..MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { break };
        let outage = inner.outage.lock().ok().and_then(|o| o.clone());
        if let Some(o) = &outage {
            jobs.insert(
                0,
                Job::new(
                    &AuditEvent::AuditOutage {
                        since_ms: o.since_ms,
                        until_ms: now_ms(),
                        reason: o.reason.clone(),
                        unanswered: o.unanswered,
                    },
                    None,
                ),
            );
        }
        // Not cancelled on a timer: a COMMIT dropped in flight may still
        // land, and the writer would then believe a head the store does
        // not have. Callers stop waiting on their own bound instead.
        let result = commit(&inner, &store, &jobs).await;
        match result {
            Ok(seqs) => {
                if outage.is_some()
                    && let Ok(mut o) = inner.outage.lock()
                {
                    *o = None;
                    tracing::info!("the audit store takes writes again");
                }
                owed = answer(jobs, seqs);
                // A caller may have given up while this batch was slow:
                // then the outage is recorded on the next tick, even if
                // no other entry comes.
                failing = inner.outage.lock().map(|o| o.is_some()).unwrap_or(false);
            }
            Err(e) => {
                failing = true;
                tracing::error!(error = %e, "audit batch could not be written");
                inner.note_failure(&e);
                for mut j in jobs {
                    if let Some(r) = j.reply.take() {
                        let _ = r.send(Err(e.clone()));
                    }
                    // Ends and evidence wait for the store; the outage
                    // entry is made afresh each time.
                    if j.owed {
                        owed.push(j);
                    }
                }
                if owed.len() > MAX_OWED {
                    let dropped = owed.len() - MAX_OWED;
                    owed.drain(..dropped);
                    tracing::error!(
                        dropped,
                        "the audit store has failed for long: entries dropped"
                    );
                }
            }
        }
    }
}

/// Tell every caller its sequence number; returns the end entries owed
/// for session starts whose caller was no longer waiting.
fn answer(jobs: Vec<Job>, seqs: Vec<i64>) -> Vec<Job> {
    let mut seqs = seqs.into_iter();
    let mut owed = Vec::new();
    for j in jobs {
        let seq = if j.event.is_empty() {
            0
        } else {
            seqs.next().unwrap_or(0)
        };
        let Some(reply) = j.reply else { continue };
        if reply.send(Ok(seq)).is_err()
            && let Some(row) = j.session.filter(|r| r.ended_at_ms.is_none())
        {
            owed.push(abandoned_end(row));
        }
    }
    owed
}

/// The end of a session whose start landed after its caller gave up.
fn abandoned_end(row: SessionRow) -> Job {
    let ended = SessionRow {
        ended_at_ms: Some(now_ms()),
        outcome: Some("refused".into()),
        recording_digest: None,
        ..row
    };
    Job::new(
        &AuditEvent::SessionEnd {
            session: ended.id.clone(),
            duration_ms: 0,
            bytes_from_caller: 0,
            bytes_to_caller: 0,
            requests: 0,
            outcome: "refused".into(),
            error: Some("audit_unavailable: the start entry was not durable in time; nothing reached the target".into()),
            recording_digest: None,
        },
        Some(ended),
    )
}

/// Chain `jobs` onto the head and commit them. Another process (the CLI,
/// another gateway) may have appended in between: on a taken sequence
/// number the head is re-read and the batch re-chained. Any other error
/// fails the batch at once (retrying a full disk only makes callers wait).
async fn commit(inner: &Inner, store: &Store, jobs: &[Job]) -> Result<Vec<i64>, String> {
    let mut head = inner
        .head
        .lock()
        .map(|h| h.clone())
        .unwrap_or((0, chain::GENESIS.to_string()));
    for attempt in 0..8 {
        let mut rows = Vec::new();
        let mut seqs = Vec::new();
        let (mut seq, mut prev) = head.clone();
        for j in jobs.iter().filter(|j| !j.event.is_empty()) {
            seq += 1;
            let time_ms = now_ms();
            let hash = chain::entry_hash(seq, time_ms, &prev, &j.event);
            rows.push(AuditRow {
                seq,
                time_ms,
                prev_hash: prev.clone(),
                hash: hash.clone(),
                event: j.event.clone(),
            });
            seqs.push(seq);
            prev = hash;
        }
        let sessions: Vec<SessionRow> = jobs.iter().filter_map(|j| j.session.clone()).collect();
        if rows.is_empty() && sessions.is_empty() {
            return Ok(seqs);
        }
        let written = match store.audit_batch(&rows, &sessions).await {
            // A COMMIT can fail after the server applied it (a connection
            // lost on the way back): the store says whether it landed.
            Err(e) if !e.is_conflict() && landed(store, seq, &prev).await => {
                tracing::warn!(error = %e, "an audit batch reported as failed had landed");
                Ok(())
            }
            other => other,
        };
        match written {
            Ok(()) => {
                let crossed = (head.0 / CHECKPOINT_EVERY) != (seq / CHECKPOINT_EVERY);
                if head.0 == 0
                    && let (Some(first), Ok(mut c)) = (rows.first(), inner.chain.lock())
                    && first.seq == 1
                {
                    *c = Some(first.hash.clone());
                }
                if let Ok(mut h) = inner.head.lock() {
                    *h = (seq, prev);
                }
                if crossed && let Err(e) = inner.checkpoint_durable().await {
                    tracing::error!(error = %e, "audit checkpoint failed");
                }
                return Ok(seqs);
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(error = %e, attempt, "audit sequence taken; re-reading the head");
                if attempt > 0 {
                    // Two busy writers that re-read in step can take each
                    // other's number again and again: the loser waits a
                    // random moment (up to 2^attempt ms) before it tries.
                    tokio::time::sleep(jitter(attempt)).await;
                }
                head = store
                    .audit_head()
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or((0, chain::GENESIS.to_string()));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the audit chain's head kept moving (another writer?)".into())
}

/// A random wait below `2^attempt` ms. `RandomState` is seeded from the
/// OS per value, which is random enough to break two writers' step and
/// spares a dependency.
fn jitter(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_micros(r % (1000 << attempt.min(8)))
}

/// Whether entry `seq` is in the store with hash `hash`.
async fn landed(store: &Store, seq: i64, hash: &str) -> bool {
    matches!(
        store.audit_rows(seq - 1, 1).await.as_deref(),
        Ok([row]) if row.seq == seq && row.hash == hash
    )
}

/// Entries past the writer's head that [`Inner::checkpoint_durable`]
/// checks before signing; past this it does not sign.
const CHECK_BEFORE_SIGNING: i64 = 100_000;

fn append_line(path: &Path, line: &str) -> Result<(), AuditError> {
    use std::io::Write;
    let wrap = |source| AuditError::Checkpoints {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(wrap)?;
    f.write_all(format!("{line}\n").as_bytes()).map_err(wrap)?;
    f.sync_all().map_err(wrap)
}

/// Every entry of the log, oldest first, as stored. Holds the whole log
/// in memory: for tests and small logs; [`for_each_entry`] streams.
pub async fn entries(store: &Store) -> Result<Vec<Entry>, AuditError> {
    entries_after(store, 0).await
}

/// The entries after sequence number `after`, oldest first.
pub async fn entries_after(store: &Store, after: i64) -> Result<Vec<Entry>, AuditError> {
    let mut out = Vec::new();
    for_each_entry(store, after, |e| {
        out.push(e);
        Ok(())
    })
    .await?;
    Ok(out)
}

/// Call `f` with each entry after `after`, oldest first, a page at a
/// time: memory stays bounded whatever the length of the log.
pub async fn for_each_entry(
    store: &Store,
    mut after: i64,
    mut f: impl FnMut(Entry) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    loop {
        let rows = store.audit_rows(after, 1000).await?;
        if rows.is_empty() {
            return Ok(());
        }
        for r in rows {
            after = r.seq;
            let event = serde_json::from_str(&r.event).map_err(|e| AuditError::Corrupt {
                seq: r.seq,
                reason: e.to_string(),
            })?;
            f(Entry {
                seq: r.seq,
                time_ms: r.time_ms,
                prev_hash: r.prev_hash,
                hash: r.hash,
                event,
            })?;
        }
    }
}

/// The checkpoints kept in `dir`.
pub fn checkpoints(dir: &Path) -> Result<Vec<Checkpoint>, AuditError> {
    use std::io::BufRead;
    let path = dir.join(CHECKPOINTS_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(AuditError::Checkpoints { path, source }),
    };
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| AuditError::Checkpoints {
            path: path.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|e| AuditError::Corrupt {
                seq: -(i as i64) - 1,
                reason: format!("checkpoint line {}: {e}", i + 1),
            })?,
        );
    }
    Ok(out)
}

/// Verify the whole log offline, a page at a time (memory bounded by the
/// number of checkpoints, not entries). `public_key` defaults to the one
/// in `dir`.
pub async fn verify(
    store: &Store,
    dir: &Path,
    public_key: Option<&[u8]>,
) -> Result<Summary, AuditError> {
    let pk = match public_key {
        Some(k) => k.to_vec(),
        None => {
            let path = dir.join(PUB_FILE);
            let text = std::fs::read_to_string(&path).map_err(|e| AuditError::Key {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            hex::decode(text.trim()).map_err(|_| AuditError::Key {
                path,
                reason: "not hex".into(),
            })?
        }
    };
    let mut v = chain::Verifier::new(checkpoints(dir)?);
    for_each_entry(store, 0, |e| Ok(v.entry(&e)?)).await?;
    Ok(v.finish(&pk)?)
}

/// The public key file's path in `dir`.
pub fn public_key_path(dir: &Path) -> PathBuf {
    dir.join(PUB_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    fn start(id: &str) -> (AuditEvent, SessionRow) {
        let event = AuditEvent::SessionStart {
            session: id.into(),
            principal: "agent:a".into(),
            principal_kind: "agent".into(),
            auth: serde_json::Value::Null,
            connection: "db".into(),
            protocol: "postgres".into(),
            peer: "127.0.0.1:1".into(),
            tls: serde_json::Value::Null,
            rule: "r".into(),
            agent: None,
        };
        let row = SessionRow {
            id: id.into(),
            principal: "agent:a".into(),
            connection: "db".into(),
            protocol: "postgres".into(),
            started_at_ms: 1,
            ended_at_ms: None,
            outcome: None,
            recording_digest: None,
            gateway: None,
        };
        (event, row)
    }

    fn admin(n: usize) -> AuditEvent {
        AuditEvent::Admin {
            action: format!("test {n}"),
            detail: serde_json::Value::Null,
        }
    }

    async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
        for _ in 0..100 {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Another process holds the store's write lock (as a stalled or
    /// locked store would): a session start is refused within the write
    /// timeout, not after the store's own busy wait; when the lock goes,
    /// the start that landed late gets its end entry, the outage is an
    /// entry of its own, and the chain verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_store_refuses_fast_and_closes_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");
        let store = Store::open_sqlite(&db).await.unwrap();
        let log = AuditLog::open_with(store.clone(), dir.path(), Duration::from_millis(300))
            .await
            .unwrap();
        log.append(&admin(1)).await.unwrap();

        let mut other = sqlx::AnyConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let (event, row) = start("s_late");
        let t0 = std::time::Instant::now();
        let refused = log.append_with(&event, Some(row)).await;
        assert!(
            matches!(refused, Err(AuditError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert!(log.outage().is_some());
        sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();

        wait_until("the outage to end", async || log.outage().is_none()).await;
        wait_until("the late session to be closed", async || {
            store
                .sessions()
                .await
                .unwrap()
                .iter()
                .any(|s| s.id == "s_late" && s.outcome.as_deref() == Some("refused"))
        })
        .await;
        let kinds: Vec<String> = entries(&store)
            .await
            .unwrap()
            .iter()
            .map(|e| e.event["kind"].as_str().unwrap_or("").to_owned())
            .collect();
        for k in ["session_start", "session_end", "audit_outage"] {
            assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
        }
        log.checkpoint().await.unwrap();
        verify(&store, dir.path(), None).await.unwrap();
    }

    /// Two gateways on one store append at once from many tasks: each
    /// loses races for the next number to the other and re-chains, and
    /// every append lands, once, in one chain that verifies.
    #[tokio::test]
    async fn two_writers_on_one_store_both_land_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (da, db) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&da).unwrap();
        std::fs::create_dir_all(&db).unwrap();
        let path = dir.path().join("p.db");
        let a = AuditLog::open(Store::open_sqlite(&path).await.unwrap(), &da)
            .await
            .unwrap();
        let b = AuditLog::open(Store::open_sqlite(&path).await.unwrap(), &db)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for (i, log) in [a.clone(), b.clone(), a.clone(), b.clone()]
            .into_iter()
            .enumerate()
        {
            tasks.push(tokio::spawn(async move {
                for n in 0..50 {
                    log.append(&admin(i * 100 + n)).await?;
                }
                Ok::<_, AuditError>(())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let store = Store::open_sqlite(&path).await.unwrap();
        let all = entries(&store).await.unwrap();
        let admins = all.iter().filter(|e| e.event["kind"] == "admin").count();
        assert_eq!(admins, 200);
        let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        verify(&store, &da, None).await.unwrap();
    }

    /// The store lost its last entries after a checkpoint signed them (a
    /// power loss, a restored backup): a restarted log never reuses their
    /// numbers, goes on after the checkpoint, says so in the log, and
    /// `verify` names the missing range rather than calling the store
    /// rewritten.
    #[tokio::test]
    async fn sequence_numbers_are_never_reused_after_a_lost_tail() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");
        let store = Store::open_sqlite(&db).await.unwrap();
        let log = AuditLog::open(store.clone(), dir.path()).await.unwrap();
        for n in 0..10 {
            log.append(&admin(n)).await.unwrap();
        }
        log.checkpoint().await.unwrap();
        drop(log);
        let mut other = sqlx::AnyConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::raw_sql("DELETE FROM audit_log WHERE seq > 7")
            .execute(&mut other)
            .await
            .unwrap();

        let log = AuditLog::open(store.clone(), dir.path()).await.unwrap();
        let seq = log.append(&admin(99)).await.unwrap();
        assert_eq!(seq, 12, "after the gap entry (11), never 8 again");
        let all = entries(&store).await.unwrap();
        assert_eq!(all[7].seq, 11);
        assert_eq!(all[7].event["kind"], "audit_gap");
        assert_eq!(all[7].event["signed_up_to"], 10);
        match verify(&store, dir.path(), None).await {
            Err(AuditError::Verify(VerifyError::Gap {
                seq: 11,
                expected: 8,
            })) => {}
            other => panic!("{other:?}"),
        }
    }
}
