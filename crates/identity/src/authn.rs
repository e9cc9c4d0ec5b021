//! One entry point for every front: a [`Credential`] in, a [`Principal`]
//! or an [`AuthError`] out. OIDC and mTLS arrive as more credential kinds
//! behind the same call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::OidcVerifier;
use crate::token::{self, TokenHash, TokenRecord};
use crate::{AuthError, Principal};

/// What a caller presented.
pub enum Credential<'a> {
    /// A bearer string (from `Authorization: Bearer`, or a PostgreSQL
    /// password).
    Bearer(&'a str),
    /// A client certificate the TLS handshake verified (leaf, DER), and
    /// where the listener reads the principal's name from.
    Certificate {
        der: &'a [u8],
        names: &'a [portcullis_tls::CertName],
    },
}

pub type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<TokenRecord>, AuthError>> + Send + 'a>>;

/// Where gateway tokens are looked up (the store implements it). Boxed
/// futures keep the trait object-safe.
pub trait TokenStore: Send + Sync {
    fn token_by_hash<'a>(&'a self, hash: &'a TokenHash) -> LookupFuture<'a>;
}

#[derive(Clone)]
pub struct Authenticator {
    tokens: Arc<dyn TokenStore>,
    oidc: Option<OidcVerifier>,
}

impl Authenticator {
    pub fn new(tokens: Arc<dyn TokenStore>) -> Self {
        Self { tokens, oidc: None }
    }

    /// Also accept JWTs from the verifier's issuers.
    pub fn with_oidc(mut self, oidc: OidcVerifier) -> Self {
        self.oidc = (!oidc.is_empty()).then_some(oidc);
        self
    }

    /// Authenticate a credential. Every lookup goes to the store, so a
    /// revocation written by another process takes effect on the next
    /// request.
    pub async fn authenticate(&self, cred: Credential<'_>) -> Result<Principal, AuthError> {
        match cred {
            Credential::Bearer(s) if crate::oidc::looks_like_jwt(s) => match &self.oidc {
                Some(v) => Ok(v.verify(s).await?),
                None => Err(AuthError::OidcNotConfigured),
            },
            Credential::Certificate { der, names } => {
                let subject = portcullis_tls::client_cert::principal_name(der, names)
                    .map_err(|e| AuthError::Certificate(e.to_string()))?;
                Ok(Principal {
                    kind: crate::PrincipalKind::of_subject(&subject),
                    subject,
                    groups: Vec::new(),
                    via: crate::AuthMethod::ClientCertificate {
                        fingerprint: portcullis_tls::sha256_hex(der),
                    },
                })
            }
            Credential::Bearer(s) => {
                let hash = token::parse(s)?;
                let record = self
                    .tokens
                    .token_by_hash(&hash)
                    .await?
                    .ok_or(AuthError::Unknown)?;
                record.principal_at(unix_now())
            }
        }
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Mem(HashMap<[u8; 32], TokenRecord>);

    impl TokenStore for Mem {
        fn token_by_hash<'a>(&'a self, hash: &'a TokenHash) -> LookupFuture<'a> {
            let found = self.0.get(&hash.0).cloned();
            Box::pin(async move { Ok(found) })
        }
    }

    fn block<F: Future>(f: F) -> F::Output {
        // A tiny executor: the futures here never pend.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn known_unknown_and_revoked() {
        let good = token::generate().unwrap();
        let revoked = token::generate().unwrap();
        let rec = |id: &str, revoked_at| TokenRecord {
            id: id.into(),
            subject: "agent:a".into(),
            groups: vec![],
            created_at: 0,
            expires_at: None,
            revoked_at,
        };
        let mut m = HashMap::new();
        m.insert(good.hash.0, rec("g", None));
        m.insert(revoked.hash.0, rec("r", Some(1)));
        let a = Authenticator::new(Arc::new(Mem(m)));
        assert_eq!(
            block(a.authenticate(Credential::Bearer(&good.secret)))
                .unwrap()
                .subject,
            "agent:a"
        );
        assert_eq!(
            block(a.authenticate(Credential::Bearer(&revoked.secret))),
            Err(AuthError::Revoked { id: "r".into() })
        );
        let other = token::generate().unwrap();
        assert_eq!(
            block(a.authenticate(Credential::Bearer(&other.secret))),
            Err(AuthError::Unknown)
        );
        assert!(matches!(
            block(a.authenticate(Credential::Bearer("garbage"))),
            Err(AuthError::Malformed(_))
        ));
    }
}
