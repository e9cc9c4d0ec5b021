//! A listener's client-certificate authorities, replaceable without a
//! restart (a CA added to or retired from the bundle), the same way as the
//! server certificate ([`crate::ReloadingCert`]): the file is re-read on a
//! tick and a changed, valid bundle is swapped in for the next handshake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use crate::TlsError;
use crate::config::read;
use crate::reload::{CertMetrics, ReloadLabels, Reloadable};

struct Current {
    /// The file's bytes this was built from.
    source: Vec<u8>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// The CA names offered to clients. `root_hint_subjects` must return a
    /// slice borrowed from `self`, which a value behind the lock cannot
    /// give; each bundle's names are leaked once instead (a few hundred
    /// bytes per reload, and reloads follow an operator's edit).
    hints: &'static [DistinguishedName],
}

/// Client certificates verified against a CA bundle that may change.
pub struct ReloadingClientCa {
    path: PathBuf,
    optional: bool,
    provider: Arc<CryptoProvider>,
    current: RwLock<Current>,
    metrics: Option<CertMetrics>,
}

impl std::fmt::Debug for ReloadingClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingClientCa")
            .field("path", &self.path)
            .field("optional", &self.optional)
            .finish_non_exhaustive()
    }
}

impl ReloadingClientCa {
    /// Load the bundle now; an error here is a startup error. `optional`:
    /// a caller without a certificate continues (unauthenticated by TLS).
    pub fn load(
        path: &Path,
        optional: bool,
        provider: Arc<CryptoProvider>,
        metrics: Option<CertMetrics>,
    ) -> Result<Arc<Self>, TlsError> {
        let source = read(path)?;
        let current = build(path, source, optional, &provider)?;
        let me = Self {
            path: path.to_path_buf(),
            optional,
            provider,
            current: RwLock::new(current),
            metrics,
        };
        me.report();
        Ok(Arc::new(me))
    }

    fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.current.read().ok().map(|c| c.verifier.clone())
    }
}

impl Reloadable for ReloadingClientCa {
    fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self) -> Result<bool, TlsError> {
        let source = read(&self.path)?;
        let unchanged = self
            .current
            .read()
            .map(|c| c.source == source)
            .unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        let label = |result| ReloadLabels {
            path: self.path.display().to_string(),
            result,
        };
        match build(&self.path, source, self.optional, &self.provider) {
            Ok(next) => {
                if let Ok(mut cur) = self.current.write() {
                    *cur = next;
                }
                if let Some(m) = &self.metrics {
                    m.reloads.get_or_create(&label("ok")).inc();
                }
                tracing::info!(path = %self.path.display(), "client CA bundle reloaded");
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
        if let Some(m) = &self.metrics
            && let Err(e) = m.report_bundle(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "client CA bundle expiry unknown");
        }
    }
}

fn build(
    path: &Path,
    source: Vec<u8>,
    optional: bool,
    provider: &Arc<CryptoProvider>,
) -> Result<Current, TlsError> {
    let roots = crate::config::roots_from_pem(path, &source)?;
    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let b = if optional {
        b.allow_unauthenticated()
    } else {
        b
    };
    let verifier = b
        .build()
        .map_err(|e| TlsError::Policy(format!("client certificate verifier: {e}")))?;
    let hints: &'static [DistinguishedName] =
        Box::leak(verifier.root_hint_subjects().to_vec().into_boxed_slice());
    Ok(Current {
        source,
        verifier,
        hints,
    })
}

/// Every call goes to the verifier of the bundle in use at that moment.
/// A failed lock (a panic while swapping) refuses the certificate.
impl ClientCertVerifier for ReloadingClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.current.read().map(|c| c.hints).unwrap_or(&[])
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.verifier() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "client CA bundle unavailable".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{CertificateAuthority, LeafKind, TlsPolicy};

    fn leaf(ca: &CertificateAuthority) -> CertificateDer<'static> {
        let issued = ca
            .issue(
                LeafKind::Client,
                &["agent:x".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        crate::config::parse_cert_chain(issued.cert_pem.as_bytes(), Path::new("leaf"))
            .unwrap()
            .remove(0)
    }

    #[test]
    fn a_changed_bundle_is_used_from_the_next_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let (ca_a, _) = CertificateAuthority::load_or_create(&a).unwrap();
        let (ca_b, _) = CertificateAuthority::load_or_create(&b).unwrap();
        let (from_a, from_b) = (leaf(&ca_a), leaf(&ca_b));
        let bundle = dir.path().join("clients.pem");
        std::fs::copy(a.join("ca.pem"), &bundle).unwrap();
        let provider = TlsPolicy::default().provider().unwrap();
        let v = ReloadingClientCa::load(&bundle, false, provider, None).unwrap();
        let now = UnixTime::now();
        assert!(v.client_auth_mandatory());
        assert!(v.verify_client_cert(&from_a, &[], now).is_ok());
        assert!(v.verify_client_cert(&from_b, &[], now).is_err());
        assert!(!v.root_hint_subjects().is_empty());

        assert!(!v.check().unwrap(), "unchanged: nothing to do");
        std::fs::copy(b.join("ca.pem"), &bundle).unwrap();
        assert!(v.check().unwrap());
        assert!(v.verify_client_cert(&from_b, &[], now).is_ok());
        assert!(v.verify_client_cert(&from_a, &[], now).is_err());

        // A broken bundle is refused and the one in use kept.
        std::fs::write(&bundle, "not a certificate").unwrap();
        assert!(v.check().is_err());
        assert!(v.verify_client_cert(&from_b, &[], now).is_ok());
        std::fs::remove_file(&bundle).unwrap();
        assert!(v.check().is_err());
        assert!(v.verify_client_cert(&from_b, &[], now).is_ok());
    }

    #[test]
    fn optional_lets_callers_without_a_certificate_on() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path()).unwrap();
        let provider = TlsPolicy::default().provider().unwrap();
        let v = ReloadingClientCa::load(&dir.path().join("ca.pem"), true, provider, None).unwrap();
        assert!(v.offer_client_auth());
        assert!(!v.client_auth_mandatory());
        let missing = ReloadingClientCa::load(
            &dir.path().join("missing.pem"),
            true,
            TlsPolicy::default().provider().unwrap(),
            None,
        );
        assert!(missing.is_err());
    }
}
