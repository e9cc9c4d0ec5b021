//! TLS for Portcullis: named profiles, the internal certificate authority,
//! rustls configurations for both directions, and the handshake record.
//!
//! Only the aws-lc-rs provider is used, and every config is built with
//! `builder_with_provider` so that a second provider elsewhere in the
//! dependency tree can never be picked up by accident.

mod accept;
mod ca;
mod client_ca;
pub mod client_cert;
mod config;
mod error;
pub mod metrics;
mod profile;
mod record;
mod reload;

pub use accept::accept;
pub use ca::{
    CertificateAuthority, IssuedCert, LeafKind, check_request, key_and_request, write_private,
    write_public,
};
pub use client_ca::ReloadingClientCa;
pub use client_cert::{CertName, CertPolicy, ForeignNames};
pub use config::{
    ClientCerts, client_config, client_config_with_cert, listener_config, load_cert_chain,
    load_private_key, load_roots, pem_certificates, server_config, sha256_hex, system_roots,
};
pub use error::TlsError;
pub use metrics::TlsMetrics;
pub use profile::{TlsPolicy, TlsProfile};
pub use record::HandshakeRecord;
pub use reload::{CertMetrics, EXPIRY_WARNING, Reloadable, ReloadingCert, watch};

/// Install aws-lc-rs as the process-wide default provider. Call it first
/// thing in `main`: a library that asks rustls for "the default" then gets
/// ours instead of panicking when two providers are linked.
pub fn install_default_provider() {
    // Err means one is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
