//! rustls configurations, always built from a [`TlsPolicy`]'s provider.

use std::path::Path;
use std::sync::Arc;

use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{TlsError, TlsPolicy};

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_cert_chain(&read(path)?, path)
}

/// The certificates of a PEM text (a certificate just issued, say).
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_cert_chain(pem, Path::new("PEM text"))
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_private_key(&read(path)?, path)
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// [`load_cert_chain`] on bytes already read; `path` names them in errors.
pub(crate) fn parse_cert_chain(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// [`load_private_key`] on bytes already read.
pub(crate) fn parse_private_key(
    bytes: &[u8],
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The parse error is deliberately generic: it must not echo key bytes.
    PrivateKeyDer::from_pem_slice(bytes).map_err(|_| TlsError::BadKey {
        path: path.to_path_buf(),
        reason: "expected a PEM PRIVATE KEY block".into(),
    })
}

/// A root store: the system's roots (when `with_system`) plus every
/// certificate in `bundle`.
pub fn load_roots(bundle: &Path, with_system: bool) -> Result<RootCertStore, TlsError> {
    let mut roots = if with_system {
        system_roots()
    } else {
        RootCertStore::empty()
    };
    add_roots(&mut roots, &read(bundle)?, bundle)?;
    Ok(roots)
}

/// The CAs of a PEM bundle already read (`path` names it in errors).
pub(crate) fn roots_from_pem(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    add_roots(&mut roots, pem, path)?;
    Ok(roots)
}

fn add_roots(roots: &mut RootCertStore, pem: &[u8], path: &Path) -> Result<(), TlsError> {
    for cert in parse_cert_chain(pem, path)? {
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// The operating system's trusted roots. Unreadable entries are skipped
/// (and logged): one bad file in /etc/ssl must not take the gateway down.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "skipping an unreadable system root");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "loaded system roots");
    roots
}

/// Whether (and against which roots) a listener verifies client
/// certificates.
#[derive(Clone, Default)]
pub enum ClientCerts {
    #[default]
    Off,
    /// Verified against a CA bundle that is reloaded when it changes
    /// (optional or required, as the verifier says).
    Verified(Arc<crate::ReloadingClientCa>),
}

/// A server config for `policy` with a fixed certificate (tests, the demo
/// target).
pub fn server_config(
    policy: &TlsPolicy,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(policy.provider()?)
        .with_protocol_versions(&policy.versions()?)?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// A listener's server config: the certificate comes from `certs` (so it
/// can be rotated live) and client certificates are asked for as
/// `clients` says.
pub fn listener_config(
    policy: &TlsPolicy,
    certs: Arc<dyn ResolvesServerCert>,
    clients: &ClientCerts,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = policy.provider()?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&policy.versions()?)?;
    let builder = match clients {
        ClientCerts::Off => builder.with_no_client_auth(),
        ClientCerts::Verified(v) => builder.with_client_cert_verifier(v.clone()),
    };
    let mut cfg = builder.with_cert_resolver(certs);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // The server's suite order (strongest first) decides, not a client
    // that lists a weaker suite first (Mozilla's guidelines).
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// A client config for `policy` that verifies servers against `roots`.
pub fn client_config(policy: &TlsPolicy, roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(policy.provider()?)
        .with_protocol_versions(&policy.versions()?)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client config that also presents a client certificate (the agent's,
/// to the gateway).
pub fn client_config_with_cert(
    policy: &TlsPolicy,
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(policy.provider()?)
        .with_protocol_versions(&policy.versions()?)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

/// Lower-case hex SHA-256 of `bytes` (certificate fingerprints).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}
