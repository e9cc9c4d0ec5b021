//! Server certificates that can be replaced without a restart.
//!
//! [`ReloadingCert`] is the rustls certificate resolver of every listener
//! that presents a given cert/key pair. [`ReloadingCert::check`] re-reads
//! both files and swaps in the new pair when they changed and are valid;
//! a task calls it on an interval ([`ReloadingCert::watch`]). Handshakes in
//! progress keep the `Arc` they resolved, so in-flight connections are
//! untouched; the next handshake gets the new certificate.
//!
//! Why polling rather than inotify (the `notify` crate): certificate tools
//! replace files in many ways (rename over, symlink swap as in Kubernetes
//! secret mounts, write in place). Comparing the files' bytes every couple
//! of seconds catches all of them with two small reads and no platform
//! corner cases, and a half-written pair simply fails to parse and is
//! retried on the next tick.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::TlsError;

/// Warn in the log when a loaded certificate has less than this left.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub path: String,
    pub result: &'static str,
}

/// Expiry and reload counters for every loaded certificate.
#[derive(Clone)]
pub struct CertMetrics {
    pub not_after: Family<CertLabels, Gauge>,
    pub reloads: Family<ReloadLabels, Counter>,
}

impl CertMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            not_after: Family::default(),
            reloads: Family::default(),
        };
        registry.register(
            "portcullis_certificate_not_after_seconds",
            "Expiry (Unix time) of each loaded certificate, by file",
            m.not_after.clone(),
        );
        registry.register(
            "portcullis_certificate_reloads",
            "Certificate reload attempts after a file changed, by file and result",
            m.reloads.clone(),
        );
        m
    }
}

impl CertMetrics {
    /// Export the earliest expiry in a PEM bundle (a CA file of a
    /// connection, a listener's client CA, an identity provider's CA), and
    /// warn when it is near.
    pub fn report_bundle(&self, path: &Path) -> Result<(), TlsError> {
        let chain = crate::load_cert_chain(path)?;
        let mut earliest = i64::MAX;
        for c in &chain {
            earliest = earliest.min(not_after_of(c, path)?);
        }
        self.not_after
            .get_or_create(&CertLabels {
                path: path.display().to_string(),
            })
            .set(earliest);
        let left = earliest - unix_now();
        if left <= 0 {
            tracing::error!(path = %path.display(), not_after = earliest, "a certificate in this bundle has EXPIRED");
        } else if left < EXPIRY_WARNING.as_secs() as i64 {
            tracing::warn!(path = %path.display(), not_after = earliest, "a certificate in this bundle expires soon");
        }
        Ok(())
    }
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' bytes this was built from.
    source: (Vec<u8>, Vec<u8>),
    not_after: i64,
}

/// A certificate/key pair read from files, replaceable at run time.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
    metrics: Option<CertMetrics>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Load the pair now; an error here is a startup error.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
        metrics: Option<CertMetrics>,
    ) -> Result<Arc<Self>, TlsError> {
        let loaded = read_pair(cert_path, key_path, &provider)?;
        let me = Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            current: RwLock::new(loaded),
            metrics,
        };
        me.report();
        Ok(Arc::new(me))
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Expiry of the certificate in use (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.current.read().map(|c| c.not_after).unwrap_or(0)
    }

    /// [`watch`] this certificate.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        watch(self, every, stop).await
    }
}

impl Reloadable for ReloadingCert {
    fn path(&self) -> &Path {
        &self.cert_path
    }

    /// Re-read the files; swap when they changed and form a valid pair.
    /// Returns whether a new certificate is now in use.
    fn check(&self) -> Result<bool, TlsError> {
        let cert = read(&self.cert_path)?;
        let key = read(&self.key_path)?;
        let unchanged = self
            .current
            .read()
            .map(|c| c.source.0 == cert && c.source.1 == key)
            .unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        let result = build(&self.cert_path, &self.key_path, cert, key, &self.provider);
        let label = |result| ReloadLabels {
            path: self.cert_path.display().to_string(),
            result,
        };
        match result {
            Ok(loaded) => {
                let not_after = loaded.not_after;
                if let Ok(mut cur) = self.current.write() {
                    *cur = loaded;
                }
                if let Some(m) = &self.metrics {
                    m.reloads.get_or_create(&label("ok")).inc();
                }
                tracing::info!(path = %self.cert_path.display(), not_after, "server certificate reloaded");
                self.report();
                Ok(true)
            }
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.reloads.get_or_create(&label("error")).inc();
                }
                Err(e)
            }
        }
    }

    fn report(&self) {
        let not_after = self.not_after();
        if let Some(m) = &self.metrics {
            m.not_after
                .get_or_create(&CertLabels {
                    path: self.cert_path.display().to_string(),
                })
                .set(not_after);
        }
        let left = not_after - unix_now();
        if left <= 0 {
            tracing::error!(
                path = %self.cert_path.display(),
                not_after,
                days_ago = -left / 86400,
                "certificate has EXPIRED: callers will refuse it; rotate it (portcullis cert rotate-server, or your PKI)"
            );
        } else if left < EXPIRY_WARNING.as_secs() as i64 {
            tracing::warn!(
                path = %self.cert_path.display(),
                not_after,
                days_left = left / 86400,
                "certificate expires soon: rotate it (portcullis cert rotate-server, or your PKI)"
            );
        }
    }
}

/// Something loaded from a file and swapped in when the file changes: the
/// server certificate, a client CA bundle.
pub trait Reloadable: Send + Sync + 'static {
    /// The file, for logs and metrics.
    fn path(&self) -> &Path;
    /// Re-read; swap when changed and valid. Whether something new is now
    /// in use.
    fn check(&self) -> Result<bool, TlsError>;
    /// Export expiry and warn when it is near.
    fn report(&self);
}

/// Call [`Reloadable::check`] every `every` until `stop`; failures are
/// logged (once per distinct error) and what is in use is kept.
pub async fn watch<R: Reloadable>(r: Arc<R>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        ticks += 1;
        match r.check() {
            Ok(_) => last_error = None,
            Err(e) => {
                // Once per distinct error: a bad file would otherwise log
                // every tick.
                let msg = e.to_string();
                if last_error.as_deref() != Some(&msg) {
                    tracing::warn!(path = %r.path().display(), error = %msg, "reload failed; keeping what is in use");
                    last_error = Some(msg);
                }
            }
        }
        // Re-warn about expiry about once an hour.
        if ticks.is_multiple_of((3600 / every.as_secs().max(1)).max(1)) {
            r.report();
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.key.clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    build(
        cert_path,
        key_path,
        read(cert_path)?,
        read(key_path)?,
        provider,
    )
}

fn build(
    cert_path: &Path,
    key_path: &Path,
    cert: Vec<u8>,
    key: Vec<u8>,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let chain = crate::config::parse_cert_chain(&cert, cert_path)?;
    let der = crate::config::parse_private_key(&key, key_path)?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::BadKey {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let not_after = not_after_of(&chain[0], cert_path)?;
    let certified = CertifiedKey::new(chain, signing);
    // A key from one rotation and a certificate from another must never
    // be served together: the handshake would fail for everyone.
    certified.keys_match().map_err(|e| TlsError::BadKey {
        path: key_path.to_path_buf(),
        reason: format!("does not match {}: {e}", cert_path.display()),
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        source: (cert, key),
        not_after,
    })
}

fn not_after_of(der: &[u8], path: &Path) -> Result<i64, TlsError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(x509.validity().not_after.timestamp())
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertificateAuthority, LeafKind};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    #[test]
    fn reload_swaps_only_valid_changed_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let names = vec!["localhost".to_string()];
        let day = Duration::from_secs(86400);
        let (cert, key) = ca
            .write_leaf(LeafKind::Server, &dir.path().join("s"), &names, day * 30)
            .unwrap();
        let rc = ReloadingCert::load(&cert, &key, provider(), None).unwrap();
        let first = rc.current.read().unwrap().key.clone();
        assert!(!rc.check().unwrap(), "unchanged files are not reloaded");

        // A new pair: swapped in.
        ca.write_leaf(LeafKind::Server, &dir.path().join("s"), &names, day * 60)
            .unwrap();
        assert!(rc.check().unwrap());
        let second = rc.current.read().unwrap().key.clone();
        assert_ne!(first.cert[0], second.cert[0]);
        assert!(rc.not_after() > unix_now() + 59 * 86400);

        // A certificate whose key is elsewhere: refused, old pair kept.
        let other = ca.issue(LeafKind::Server, &names, day).unwrap();
        std::fs::write(&cert, other.cert_pem).unwrap();
        let err = rc.check().unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        assert_eq!(rc.current.read().unwrap().key.cert[0], second.cert[0]);

        // Garbage: refused, old pair kept.
        std::fs::write(&cert, b"not a certificate").unwrap();
        assert!(rc.check().is_err());
        assert_eq!(rc.current.read().unwrap().key.cert[0], second.cert[0]);
    }
}
