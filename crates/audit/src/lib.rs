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

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use portcullis_store::{AuditRow, SessionRow, Store};

pub use chain::{Checkpoint, Entry, Summary, VerifyError};
pub use event::AuditEvent;

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
    /// (last seq, last hash), as committed.
    head: std::sync::Mutex<(i64, String)>,
}

struct Job {
    event: String,
    session: Option<SessionRow>,
    reply: tokio::sync::oneshot::Sender<Result<i64, String>>,
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

impl AuditLog {
    /// Open the log kept in `store`, with key and checkpoints in `dir`.
    pub async fn open(store: Store, dir: &Path) -> Result<Self, AuditError> {
        let key = load_or_create_key(dir)?;
        let head = store
            .audit_head()
            .await?
            .unwrap_or((0, chain::GENESIS.to_string()));
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let inner = Arc::new(Inner {
            jobs: tx,
            key,
            checkpoints: dir.join(CHECKPOINTS_FILE),
            head: std::sync::Mutex::new(head),
        });
        tokio::spawn(writer(Arc::downgrade(&inner), store, rx));
        Ok(Self { inner })
    }

    /// Append `event`; returns its sequence number once it is committed.
    pub async fn append(&self, event: &AuditEvent) -> Result<i64, AuditError> {
        self.append_with(event, None).await
    }

    /// Append `event` and write `session` to the session index in the
    /// same transaction.
    pub async fn append_with(
        &self,
        event: &AuditEvent,
        session: Option<SessionRow>,
    ) -> Result<i64, AuditError> {
        let value = serde_json::to_value(event).map_err(|e| AuditError::Corrupt {
            seq: 0,
            reason: e.to_string(),
        })?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            event: chain::canonical(&value),
            session,
            reply,
        };
        self.inner
            .jobs
            .send(job)
            .await
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))?
            .map_err(AuditError::Unavailable)
    }

    /// Sign a checkpoint at the current head (at shutdown, for instance).
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        // Let queued appends land first.
        let _ = self.append_probe().await;
        let head = self
            .inner
            .head
            .lock()
            .map(|h| h.clone())
            .unwrap_or((0, String::new()));
        if head.0 > 0 {
            self.inner.write_checkpoint(head.0, &head.1)?;
        }
        Ok(())
    }

    async fn append_probe(&self) -> Result<(), AuditError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        // An empty event string is the writer's "flush" marker.
        let job = Job {
            event: String::new(),
            session: None,
            reply,
        };
        if self.inner.jobs.send(job).await.is_ok() {
            let _ = answer.await;
        }
        Ok(())
    }
}

impl Inner {
    fn write_checkpoint(&self, seq: i64, hash: &str) -> Result<(), AuditError> {
        let c = Checkpoint {
            seq,
            hash: hash.to_string(),
            time_ms: now_ms(),
            signature: hex::encode(self.key.sign(&chain::checkpoint_message(seq, hash))),
        };
        append_line(
            &self.checkpoints,
            &serde_json::to_string(&c).unwrap_or_default(),
        )
    }
}

/// The one writer: drain what is queued, chain it, commit it in one
/// transaction, answer everyone. Another process (the CLI, another
/// gateway) may have appended in between: on a taken sequence number the
/// head is re-read and the batch re-chained.
async fn writer(
    inner: std::sync::Weak<Inner>,
    store: Store,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { break };
        let mut head = inner
            .head
            .lock()
            .map(|h| h.clone())
            .unwrap_or((0, chain::GENESIS.to_string()));
        let mut result: Result<Vec<i64>, String> = Err("not attempted".into());
        for attempt in 0..5 {
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
                result = Ok(seqs);
                break;
            }
            match store.audit_batch(&rows, &sessions).await {
                Ok(()) => {
                    let crossed = (head.0 / CHECKPOINT_EVERY) != (seq / CHECKPOINT_EVERY);
                    head = (seq, prev);
                    if let Ok(mut h) = inner.head.lock() {
                        *h = head.clone();
                    }
                    if crossed && let Err(e) = inner.write_checkpoint(head.0, &head.1) {
                        tracing::error!(error = %e, "audit checkpoint failed");
                    }
                    result = Ok(seqs);
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "audit batch failed; re-reading the head");
                    result = Err(e.to_string());
                    match store.audit_head().await {
                        Ok(h) => head = h.unwrap_or((0, chain::GENESIS.to_string())),
                        Err(e) => {
                            result = Err(e.to_string());
                            break;
                        }
                    }
                }
            }
        }
        match result {
            Ok(seqs) => {
                let mut seqs = seqs.into_iter();
                for j in jobs {
                    let seq = if j.event.is_empty() {
                        0
                    } else {
                        seqs.next().unwrap_or(0)
                    };
                    let _ = j.reply.send(Ok(seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit batch could not be written");
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

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

/// Every entry of the log, oldest first, as stored.
pub async fn entries(store: &Store) -> Result<Vec<Entry>, AuditError> {
    entries_after(store, 0).await
}

/// The entries after sequence number `after`, oldest first.
pub async fn entries_after(store: &Store, mut after: i64) -> Result<Vec<Entry>, AuditError> {
    let mut out = Vec::new();
    loop {
        let rows = store.audit_rows(after, 1000).await?;
        if rows.is_empty() {
            return Ok(out);
        }
        for r in rows {
            after = r.seq;
            let event = serde_json::from_str(&r.event).map_err(|e| AuditError::Corrupt {
                seq: r.seq,
                reason: e.to_string(),
            })?;
            out.push(Entry {
                seq: r.seq,
                time_ms: r.time_ms,
                prev_hash: r.prev_hash,
                hash: r.hash,
                event,
            });
        }
    }
}

/// The checkpoints kept in `dir`.
pub fn checkpoints(dir: &Path) -> Result<Vec<Checkpoint>, AuditError> {
    let path = dir.join(CHECKPOINTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(AuditError::Checkpoints { path, source }),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| AuditError::Corrupt {
                seq: -(i as i64) - 1,
                reason: format!("checkpoint line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// Verify the whole log offline. `public_key` defaults to the one in `dir`.
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
    let mut v = chain::Verifier::default();
    for e in entries(store).await? {
        v.entry(&e)?;
    }
    Ok(v.finish(&checkpoints(dir)?, &pk)?)
}

/// The public key file's path in `dir`.
pub fn public_key_path(dir: &Path) -> PathBuf {
    dir.join(PUB_FILE)
}
