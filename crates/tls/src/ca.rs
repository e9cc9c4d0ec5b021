//! The internal certificate authority kept in the data folder. It signs the
//! gateway's server certificate (and, later, client certificates for mTLS
//! and agents). Its key never leaves the data folder.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const CA_VALIDITY_DAYS: i64 = 3650;

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    Server,
    Client,
}

/// A freshly issued leaf certificate with its key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    // The key is a secret: never in a Debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").finish_non_exhaustive()
    }
}

pub struct CertificateAuthority {
    cert_pem: String,
    cert_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// Load the CA from `dir`, or create it there if neither file exists.
    /// Returns whether it was created. One file without the other is an
    /// error: we never silently replace half of a CA.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), TlsError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((Self::load(&cert_path, &key_path)?, false)),
            (false, false) => Ok((Self::create(&cert_path, &key_path)?, true)),
            (true, false) => Err(TlsError::BadKey {
                path: key_path,
                reason: "the CA certificate exists but its key is missing".into(),
            }),
            (false, true) => Err(TlsError::NoCertificate { path: cert_path }),
        }
    }

    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::BadKey {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| TlsError::BadCertificate {
                path: cert_path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            cert_pem,
            cert_path: cert_path.to_path_buf(),
            issuer,
        })
    }

    fn create(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Portcullis internal CA");
        dn.push(DnType::OrganizationName, "Portcullis");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        // Key first, with 0600: a crash in between leaves no usable
        // half-CA (load_or_create refuses a key without its certificate).
        write_private(key_path, key.serialize_pem().as_bytes())?;
        write_public(cert_path, cert.pem().as_bytes())?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_path: cert_path.to_path_buf(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Issue a leaf certificate for `names` (DNS names or IP addresses; for
    /// a client certificate the first name is also the common name).
    pub fn issue(
        &self,
        kind: LeafKind,
        names: &[String],
        validity: std::time::Duration,
    ) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(kind, names, validity)?.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Sign the public key of a certificate signing request (PEM; its
    /// signature is checked, proving the requester holds the key) as a
    /// leaf for `names`. Only the key is taken from the request: names,
    /// usages and validity are the CA's to decide.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        kind: LeafKind,
        names: &[String],
        validity: std::time::Duration,
    ) -> Result<String, TlsError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            TlsError::BadCertificate {
                path: PathBuf::from("certificate signing request"),
                reason: e.to_string(),
            }
        })?;
        // (`check_request` is the same parse without the signing.)
        let cert = leaf_params(kind, names, validity)?.signed_by(&csr.public_key, &self.issuer)?;
        Ok(cert.pem())
    }
    /// Issue a leaf and write it as `<prefix>.pem` and `<prefix>.key` (the
    /// key 0600), replacing what is there.
    pub fn write_leaf(
        &self,
        kind: LeafKind,
        prefix: &Path,
        names: &[String],
        validity: std::time::Duration,
    ) -> Result<(PathBuf, PathBuf), TlsError> {
        let issued = self.issue(kind, names, validity)?;
        let cert = prefix.with_extension("pem");
        let key = prefix.with_extension("key");
        write_private(&key, issued.key_pem.as_bytes())?;
        write_public(&cert, issued.cert_pem.as_bytes())?;
        Ok((cert, key))
    }

    /// Issue a server certificate and write it as `<stem>.pem` / `<stem>.key`
    /// in `dir`, unless a valid pair exists there already (kept as is).
    /// Returns whether a new pair was written.
    pub fn ensure_server_cert(
        &self,
        dir: &Path,
        stem: &str,
        names: &[String],
        validity: std::time::Duration,
    ) -> Result<bool, TlsError> {
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        if cert_path.exists() && key_path.exists() && !expires_within(&cert_path, 30)? {
            return Ok(false);
        }
        let issued = self.issue(LeafKind::Server, names, validity)?;
        write_private(&key_path, issued.key_pem.as_bytes())?;
        write_public(&cert_path, issued.cert_pem.as_bytes())?;
        Ok(true)
    }
}

/// Whether the first certificate in `path` expires within `days`.
fn expires_within(path: &Path, days: i64) -> Result<bool, TlsError> {
    let chain = crate::load_cert_chain(path)?;
    let first = chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: path.to_path_buf(),
    })?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(first).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let not_after = x509.validity().not_after.timestamp();
    let limit = OffsetDateTime::now_utc().unix_timestamp() + days * 86_400;
    Ok(not_after < limit)
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Write a certificate (0644).
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    fs::write(path, bytes).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Write a file readable by its owner only, created with that mode so that
/// there is no window in which it is world-readable.
/// Write a private key (0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let wrap = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(wrap)?;
    f.write_all(bytes).map_err(wrap)?;
    f.sync_all().map_err(wrap)
}

/// A new key pair and a certificate signing request for it (PEM): what an
/// agent sends to enrol, keeping the key.
pub fn key_and_request() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    let pem = csr.pem().map_err(|e| TlsError::BadCertificate {
        path: PathBuf::from("certificate signing request"),
        reason: e.to_string(),
    })?;
    Ok((key.serialize_pem(), pem))
}

/// Whether `csr_pem` is a certificate signing request whose signature
/// matches its key (what [`CertificateAuthority::sign_request`] checks).
pub fn check_request(csr_pem: &str) -> Result<(), TlsError> {
    rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(|e| TlsError::BadCertificate {
            path: PathBuf::from("certificate signing request"),
            reason: e.to_string(),
        })
}

/// The parameters of a leaf for `names` (DNS names or IP addresses; for a
/// client certificate the first name is also the common name).
fn leaf_params(
    kind: LeafKind,
    names: &[String],
    validity: std::time::Duration,
) -> Result<CertificateParams, TlsError> {
    let mut params = match kind {
        LeafKind::Server => CertificateParams::new(names.to_vec())?,
        // A client's names are principals (`agent:ci`): carried as
        // the CN and as a SPIFFE ID, never as DNS names.
        LeafKind::Client => {
            let mut p = CertificateParams::default();
            for n in names {
                if let Some(id) = crate::client_cert::spiffe_id(n) {
                    p.subject_alt_names
                        .push(rcgen::SanType::URI(id.as_str().try_into()?));
                }
            }
            p
        }
    };
    let mut dn = DistinguishedName::new();
    if let Some(first) = names.first() {
        dn.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match kind {
        LeafKind::Server => ExtendedKeyUsagePurpose::ServerAuth,
        LeafKind::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::seconds(validity.as_secs() as i64);
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use std::time::Duration as StdDuration;

    #[test]
    fn creates_then_reuses_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (ca1, created1) = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let (ca2, created2) = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert!(created1);
        assert!(!created2);
        assert_eq!(ca1.cert_pem(), ca2.cert_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(CA_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn refuses_a_half_ca() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path()).unwrap();
        fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        assert!(CertificateAuthority::load_or_create(dir.path()).is_err());
    }

    #[test]
    fn issued_server_cert_verifies_against_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        assert!(
            ca.ensure_server_cert(
                dir.path(),
                "server",
                &names,
                StdDuration::from_secs(86400 * 365)
            )
            .unwrap()
        );
        // Second call keeps the pair.
        assert!(
            !ca.ensure_server_cert(
                dir.path(),
                "server",
                &names,
                StdDuration::from_secs(86400 * 365)
            )
            .unwrap()
        );
        let roots = crate::load_roots(&dir.path().join(CA_CERT), false).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        let chain = crate::load_cert_chain(&dir.path().join("server.pem")).unwrap();
        let now = rustls_pki_types::UnixTime::now();
        for name in ["localhost", "127.0.0.1"] {
            let sn = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&chain[0], &[], &sn, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let wrong = rustls_pki_types::ServerName::try_from("example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&chain[0], &[], &wrong, &[], now)
                .is_err()
        );
    }
}

#[cfg(test)]
mod sign_request_tests {
    use super::*;

    #[test]
    fn a_request_gets_the_cas_names_on_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        // The request asks for more than it may have; only its key counts.
        let mut asked = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        asked.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let pem = ca
            .sign_request(
                &csr,
                LeafKind::Client,
                &["connector:dc1".to_string()],
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
        let der = crate::config::parse_cert_chain(pem.as_bytes(), Path::new("x"))
            .unwrap()
            .remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert!(!cert.is_ca());
        assert_eq!(
            crate::client_cert::principal_name(&der, &[crate::CertName::Spiffe]).unwrap(),
            "connector:dc1"
        );
        assert_eq!(
            crate::client_cert::principal_name(&der, &[crate::CertName::CommonName]).unwrap(),
            "connector:dc1"
        );
        assert!(crate::client_cert::principal_name(&der, &[crate::CertName::Dns]).is_err());

        // A request whose signature does not match its key is refused.
        let mut bad = csr.clone();
        let at = bad.len() / 2;
        bad.replace_range(at..at + 1, if &bad[at..at + 1] == "A" { "B" } else { "A" });
        assert!(
            ca.sign_request(
                &bad,
                LeafKind::Client,
                &["connector:dc1".into()],
                std::time::Duration::from_secs(60)
            )
            .is_err()
        );
        assert!(
            ca.sign_request(
                "junk",
                LeafKind::Client,
                &["connector:dc1".into()],
                std::time::Duration::from_secs(60)
            )
            .is_err()
        );
    }
}
