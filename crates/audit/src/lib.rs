//! The audit log: typed events, appended to a hash chain in the store,
//! with Ed25519-signed checkpoints kept in a file beside it.
//!
//! `append` returns once the entry is durable; callers that must not go
//! on without an entry (a session about to reach its target) treat an
//! error as a refusal: fail closed.

pub mod chain;
mod event;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use portcullis_store::{AuditRow, Store};
use tokio::sync::Mutex;

pub use chain::{Checkpoint, Entry, Summary, VerifyError};
pub use event::AuditEvent;
pub use session::{Closing, OpenSession, Opening, Sessions};

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
    #[error("recording: {0}")]
    Recording(String),
}

/// The log, shared by every front.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    key: Ed25519KeyPair,
    checkpoints: PathBuf,
    /// (last seq, last hash): one writer at a time keeps the chain linear.
    head: Mutex<(i64, String)>,
}

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
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                key,
                checkpoints: dir.join(CHECKPOINTS_FILE),
                head: Mutex::new(head),
            }),
        })
    }

    /// Append `event`; returns its sequence number once it is durable.
    pub async fn append(&self, event: &AuditEvent) -> Result<i64, AuditError> {
        let value = serde_json::to_value(event).map_err(|e| AuditError::Corrupt {
            seq: 0,
            reason: e.to_string(),
        })?;
        let canonical = chain::canonical(&value);
        let mut head = self.inner.head.lock().await;
        // Another process (the CLI revoking a token, another gateway) may
        // have appended since: on a taken sequence number, re-read the head
        // and link to it instead.
        let mut attempt = 0;
        let (seq, hash) = loop {
            let seq = head.0 + 1;
            let time_ms = now_ms();
            let hash = chain::entry_hash(seq, time_ms, &head.1, &canonical);
            let row = AuditRow {
                seq,
                time_ms,
                prev_hash: head.1.clone(),
                hash: hash.clone(),
                event: canonical.clone(),
            };
            match self.inner.store.audit_insert(&row).await {
                Ok(()) => break (seq, hash),
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "audit head moved; re-reading it");
                    *head = self
                        .inner
                        .store
                        .audit_head()
                        .await?
                        .unwrap_or((0, chain::GENESIS.to_string()));
                }
                Err(e) => return Err(e.into()),
            }
        };
        *head = (seq, hash.clone());
        if seq % CHECKPOINT_EVERY == 0 {
            self.write_checkpoint(seq, &hash)?;
        }
        Ok(seq)
    }

    /// Sign a checkpoint at the current head (at shutdown, for instance).
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        let head = self.inner.head.lock().await;
        if head.0 > 0 {
            self.write_checkpoint(head.0, &head.1)?;
        }
        Ok(())
    }

    fn write_checkpoint(&self, seq: i64, hash: &str) -> Result<(), AuditError> {
        let c = Checkpoint {
            seq,
            hash: hash.to_string(),
            time_ms: now_ms(),
            signature: hex::encode(self.inner.key.sign(&chain::checkpoint_message(seq, hash))),
        };
        append_line(
            &self.inner.checkpoints,
            &serde_json::to_string(&c).unwrap_or_default(),
        )
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
    let mut out = Vec::new();
    let mut after = 0;
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
