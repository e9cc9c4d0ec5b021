use std::path::PathBuf;

/// What went wrong while preparing TLS material or settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error(
        "unknown TLS version {0:?}; valid: \"1.2\", \"1.3\" (TLS 1.0 and 1.1 cannot be enabled)"
    )]
    UnknownVersion(String),
    #[error("unknown cipher suite {name:?}; valid: {valid}")]
    UnknownSuite { name: String, valid: String },
    #[error("unknown key-exchange group {name:?}; valid: {valid}")]
    UnknownGroup { name: String, valid: String },
    #[error("{0}")]
    Policy(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("rustls rejected the configuration: {0}")]
    Rustls(#[from] rustls::Error),
}
