//! Where finished recordings go. Sessions always record into a local
//! spool folder (the recording format flushes every second, so a crash
//! loses at most a second). With the default `file://` sink the spool *is*
//! the store. With an `s3://` sink every finished recording is uploaded
//! (object_store, retried with backoff) and removed from the spool once
//! stored; if the oldest recording has waited longer than `max_backlog`,
//! [`RecordingSink::healthy`] says so and the fronts refuse new sessions
//! rather than keep recordings they may not be able to store. Any gateway
//! reads any recording: from its spool, else from the bucket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Extension of recording files.
pub const EXT: &str = "rec";

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("object store: {0}")]
    Store(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no recording {0}")]
    NotFound(String),
}

/// S3-compatible settings (secrets already resolved).
pub struct S3Settings {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Plain http to the endpoint (loopback tests, a local MinIO).
    pub allow_http: bool,
}

struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Recording id → when it was queued, and its size.
    pending: Mutex<BTreeMap<String, (Instant, u64)>>,
    max_backlog: Duration,
    /// The spool's bound: queued bytes beyond this refuse new sessions.
    max_spool_bytes: u64,
    wake: Notify,
}

/// The sink `[recordings]` describes (secrets resolved now).
pub fn from_config(r: &portcullis_config::Recordings) -> Result<RecordingSink, SinkError> {
    let Some(s3) = &r.s3 else {
        return Ok(RecordingSink::local(r.spool.clone()));
    };
    let resolve = |s: &Option<portcullis_config::SecretRef>| -> Result<Option<String>, SinkError> {
        s.as_ref()
            .map(|r| {
                r.resolve()
                    .map(|v| v.expose().to_string())
                    .map_err(|e| SinkError::Store(format!("credential {r}: {e}")))
            })
            .transpose()
    };
    RecordingSink::s3(
        r.spool.clone(),
        &S3Settings {
            bucket: s3.bucket.clone(),
            prefix: s3.prefix.clone(),
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            access_key_id: resolve(&s3.access_key_id)?,
            secret_access_key: resolve(&s3.secret_access_key)?,
            allow_http: s3.allow_http,
        },
        r.max_backlog,
        r.max_spool_bytes,
    )
}

/// Write and remove a scratch file in the spool.
fn probe(spool: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = spool.join(".probe");
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    result
}

/// Where recordings are kept; cheap to clone.
#[derive(Clone)]
pub struct RecordingSink {
    spool: PathBuf,
    remote: Option<Arc<Remote>>,
    /// Set when a recording could not be written to the spool (a full
    /// disk); cleared once a probe write succeeds again.
    fault: Arc<Mutex<Option<SpoolFault>>>,
}

struct SpoolFault {
    reason: String,
    last_probe: Instant,
    /// A probe is running.
    probing: bool,
}

/// How much a probe writes to see whether the spool takes writes again:
/// about what a busy session writes in its first seconds.
const PROBE_BYTES: usize = 256 << 10;
const PROBE_EVERY: Duration = Duration::from_secs(1);

impl RecordingSink {
    /// Recordings stay in `dir` (the embedded default).
    pub fn local(dir: PathBuf) -> Self {
        Self {
            spool: dir,
            remote: None,
            fault: Arc::default(),
        }
    }

    /// Recordings go to an S3-compatible bucket through `spool`.
    pub fn s3(
        spool: PathBuf,
        s: &S3Settings,
        max_backlog: Duration,
        max_spool_bytes: u64,
    ) -> Result<Self, SinkError> {
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_allow_http(s.allow_http);
        if let Some(e) = &s.endpoint {
            b = b.with_endpoint(e);
        }
        if let (Some(k), Some(v)) = (&s.access_key_id, &s.secret_access_key) {
            b = b.with_access_key_id(k).with_secret_access_key(v);
        }
        let store = b.build().map_err(|e| SinkError::Store(e.to_string()))?;
        Ok(Self {
            spool,
            fault: Arc::default(),
            remote: Some(Arc::new(Remote {
                store: Arc::new(store),
                prefix: s.prefix.trim_matches('/').to_string(),
                pending: Mutex::new(BTreeMap::new()),
                max_backlog,
                max_spool_bytes,
                wake: Notify::new(),
            })),
        })
    }

    /// Where sessions write their recordings.
    pub fn spool(&self) -> &Path {
        &self.spool
    }

    fn object(&self, remote: &Remote, id: &str) -> ObjectPath {
        let name = format!("{id}.{EXT}");
        if remote.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", remote.prefix))
        }
    }

    /// A recording is complete: queue it for upload.
    pub fn finished(&self, id: &str) {
        if let Some(r) = &self.remote {
            let size = std::fs::metadata(self.spool.join(format!("{id}.{EXT}")))
                .map(|m| m.len())
                .unwrap_or(0);
            if let Ok(mut p) = r.pending.lock() {
                p.entry(id.to_string())
                    .or_insert_with(|| (Instant::now(), size));
            }
            r.wake.notify_one();
        }
    }

    /// Recordings waiting for upload, and how long the oldest has waited.
    pub fn backlog(&self) -> (usize, Option<Duration>) {
        let Some(r) = &self.remote else {
            return (0, None);
        };
        let p = r.pending.lock().map(|p| p.clone()).unwrap_or_default();
        let oldest = p.values().map(|(t, _)| *t).min().map(|t| t.elapsed());
        (p.len(), oldest)
    }

    /// Bytes of recordings waiting for upload.
    pub fn backlog_bytes(&self) -> u64 {
        self.remote
            .as_ref()
            .and_then(|r| {
                r.pending
                    .lock()
                    .ok()
                    .map(|p| p.values().map(|(_, b)| b).sum())
            })
            .unwrap_or(0)
    }

    /// A recording could not be written to the spool: new sessions are
    /// refused (and `/status` fails) until the spool takes writes again.
    pub fn spool_failed(&self, reason: &str) {
        if let Ok(mut f) = self.fault.lock() {
            *f = Some(SpoolFault {
                reason: reason.to_owned(),
                last_probe: Instant::now(),
                probing: false,
            });
        }
    }

    /// While the spool is marked failed, try a write (at most once a
    /// second, on the blocking pool: a hung disk must not stall the async
    /// workers); a probe that lands clears the mark.
    fn spool_writable(&self) -> Result<(), String> {
        let Ok(mut guard) = self.fault.lock() else {
            return Ok(());
        };
        let Some(f) = guard.as_mut() else {
            return Ok(());
        };
        let reason = format!("the recordings spool cannot be written ({})", f.reason);
        if f.last_probe.elapsed() >= PROBE_EVERY && !f.probing {
            f.last_probe = Instant::now();
            f.probing = true;
            let (spool, fault) = (self.spool.clone(), self.fault.clone());
            let run = move || {
                let ok = probe(&spool).is_ok();
                if let Ok(mut g) = fault.lock() {
                    match (ok, g.as_mut()) {
                        (true, _) => {
                            tracing::info!(spool = %spool.display(), "the recordings spool takes writes again");
                            *g = None;
                        }
                        (false, Some(f)) => f.probing = false,
                        (false, None) => {}
                    }
                }
            };
            drop(guard);
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(run)),
                Err(_) => run(),
            }
        }
        Err(reason)
    }

    /// `Err` when the spool cannot be written, or recordings have waited
    /// too long for the store: new sessions are refused until then.
    pub fn healthy(&self) -> Result<(), String> {
        self.spool_writable()?;
        let Some(r) = &self.remote else {
            return Ok(());
        };
        let bytes = self.backlog_bytes();
        match self.backlog() {
            (n, Some(oldest)) if oldest > r.max_backlog => Err(format!(
                "{n} recording(s) could not be stored for {}s (limit {}s)",
                oldest.as_secs(),
                r.max_backlog.as_secs()
            )),
            (n, _) if bytes > r.max_spool_bytes => Err(format!(
                "{n} recording(s), {bytes} bytes, wait for the store (spool limit {} bytes)",
                r.max_spool_bytes
            )),
            _ => Ok(()),
        }
    }

    /// Upload queued recordings until `stop`, retrying with backoff;
    /// recordings left in the spool by an earlier run are queued first.
    pub async fn run_uploads(self, stop: CancellationToken) {
        let Some(r) = self.remote.clone() else {
            return;
        };
        if let Ok(entries) = std::fs::read_dir(&self.spool) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(id) = name.strip_suffix(&format!(".{EXT}")) {
                    // Those still being written are queued by their seal.
                    let idle = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(5))
                        .unwrap_or(false);
                    if idle {
                        self.finished(id);
                    }
                }
            }
        }
        let mut delay = Duration::from_millis(500);
        let mut last_error: Option<String> = None;
        loop {
            let next = r.pending.lock().ok().and_then(|p| {
                p.iter()
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(id, _)| id.clone())
            });
            let Some(id) = next else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = r.wake.notified() => continue,
                }
            };
            match self.upload(&r, &id).await {
                Ok(()) => {
                    if let Ok(mut p) = r.pending.lock() {
                        p.remove(&id);
                    }
                    if last_error.take().is_some() {
                        tracing::info!("recording uploads resumed");
                    }
                    delay = Duration::from_millis(500);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(&msg) {
                        tracing::warn!(recording = %id, error = %msg, "recording upload failed; retrying");
                        last_error = Some(msg);
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn upload(&self, r: &Remote, id: &str) -> Result<(), SinkError> {
        let path = self.spool.join(format!("{id}.{EXT}"));
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            // Already uploaded and removed (a restart raced us).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(SinkError::Io { path, source }),
        };
        r.store
            .put(&self.object(r, id), bytes::Bytes::from(bytes).into())
            .await
            .map_err(|e| SinkError::Store(e.to_string()))?;
        // Stored: the spool's copy can go.
        let _ = tokio::fs::remove_file(&path).await;
        tracing::debug!(recording = %id, "recording uploaded");
        Ok(())
    }

    /// A local file holding recording `id`: the spool's, or a copy fetched
    /// from the bucket into `scratch`.
    pub async fn fetch(&self, id: &str, scratch: &Path) -> Result<PathBuf, SinkError> {
        let local = self.spool.join(format!("{id}.{EXT}"));
        if local.exists() {
            return Ok(local);
        }
        let Some(r) = &self.remote else {
            return Err(SinkError::NotFound(id.to_string()));
        };
        let got = r
            .store
            .get(&self.object(r, id))
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => SinkError::NotFound(id.to_string()),
                other => SinkError::Store(other.to_string()),
            })?;
        let bytes = got
            .bytes()
            .await
            .map_err(|e| SinkError::Store(e.to_string()))?;
        let out = scratch.join(format!("{id}.{EXT}"));
        tokio::fs::write(&out, &bytes)
            .await
            .map_err(|source| SinkError::Io {
                path: out.clone(),
                source,
            })?;
        Ok(out)
    }

    /// Wait (up to `grace`) for queued uploads, at shutdown.
    pub async fn drain(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.backlog().0 > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_sink_keeps_files_and_is_always_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let sink = RecordingSink::local(dir.path().to_path_buf());
        std::fs::write(dir.path().join("s1.rec"), b"x").unwrap();
        sink.finished("s1");
        assert!(sink.healthy().is_ok());
        assert_eq!(sink.backlog(), (0, None));
        let p = sink.fetch("s1", dir.path()).await.unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"x");
        assert!(matches!(
            sink.fetch("nope", dir.path()).await,
            Err(SinkError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn an_unreachable_store_builds_a_backlog_then_reports_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let s = S3Settings {
            bucket: "b".into(),
            prefix: "p".into(),
            // Nothing listens on port 1.
            endpoint: Some("http://127.0.0.1:1".into()),
            region: "us-east-1".into(),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            allow_http: true,
        };
        let sink = RecordingSink::s3(
            dir.path().to_path_buf(),
            &s,
            Duration::from_millis(300),
            1 << 30,
        )
        .unwrap();
        std::fs::write(dir.path().join("s1.rec"), b"x").unwrap();
        sink.finished("s1");
        assert!(sink.healthy().is_ok());
        let stop = CancellationToken::new();
        let task = tokio::spawn(sink.clone().run_uploads(stop.clone()));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(sink.backlog().0, 1);
        assert!(sink.healthy().unwrap_err().contains("could not be stored"));
        // The spool keeps the file while the store is away.
        assert!(dir.path().join("s1.rec").exists());
        stop.cancel();
        let _ = task.await;
    }

    #[test]
    fn the_spool_is_bounded_in_bytes_too() {
        let dir = tempfile::tempdir().unwrap();
        let s = S3Settings {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: Some("http://127.0.0.1:1".into()),
            region: "us-east-1".into(),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            allow_http: true,
        };
        let sink = RecordingSink::s3(dir.path().to_path_buf(), &s, Duration::from_secs(3600), 100)
            .unwrap();
        std::fs::write(dir.path().join("a.rec"), vec![0u8; 60]).unwrap();
        sink.finished("a");
        assert!(sink.healthy().is_ok());
        std::fs::write(dir.path().join("b.rec"), vec![0u8; 60]).unwrap();
        sink.finished("b");
        assert_eq!(sink.backlog_bytes(), 120);
        assert!(sink.healthy().unwrap_err().contains("spool limit"));
    }
}
