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
    /// what the listener accepts from it (where the name is read, which
    /// kinds and trust domains).
    Certificate {
        der: &'a [u8],
        names: &'a portcullis_tls::CertPolicy,
    },
}

pub type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<TokenRecord>, AuthError>> + Send + 'a>>;

/// Where gateway tokens are looked up (the store implements it). Boxed
/// futures keep the trait object-safe.
pub trait TokenStore: Send + Sync {
    fn token_by_hash<'a>(&'a self, hash: &'a TokenHash) -> LookupFuture<'a>;
    /// Store a token a person minted for an agent; returns its id.
    fn mint<'a>(&'a self, m: &'a Mint<'a>) -> MintFuture<'a>;
    /// Whether a client certificate (SHA-256 hex) has been revoked.
    fn cert_revoked<'a>(&'a self, fingerprint: &'a str) -> RevokedFuture<'a>;
}

pub type RevokedFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, AuthError>> + Send + 'a>>;

/// A mint's outcome: the token's id, or why it was not stored
/// ([`DelegateError::TooMany`], or the store's failure as
/// [`DelegateError::Auth`]).
pub type MintFuture<'a> = Pin<Box<dyn Future<Output = Result<String, DelegateError>> + Send + 'a>>;

/// A delegated token to store (its hash only).
pub struct Mint<'a> {
    pub hash: TokenHash,
    pub subject: &'a str,
    pub groups: &'a [String],
    pub created_at: i64,
    pub expires_at: i64,
    pub on_behalf_of: &'a str,
}

/// The longest a delegated token may live: an agent acting for a person
/// should not outlast that person's working day by much.
pub const MAX_DELEGATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Why a person could not mint a token for an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegateError {
    #[error(
        "only a person signed in with the identity provider or to the console can mint tokens for agents (this caller is {0})"
    )]
    NotAPerson(String),
    #[error("{0:?} is not an agent principal (expected agent:NAME, without @)")]
    NotAnAgent(String),
    #[error("a delegated token may live at most {max_hours} hours")]
    TooLong { max_hours: u64 },
    /// The person already holds as many live tokens for agents as one
    /// may: the store's bound, so that minting cannot grow it without end.
    #[error(
        "you already hold {max} live tokens for agents, the most a person may: \
         revoke one (in the console, or POST /api/v1/tokens/ID/revoke) or let one expire"
    )]
    TooMany { max: i64 },
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// A token minted for an agent; `secret` is shown to the person once.
pub struct Delegated {
    pub secret: String,
    pub id: String,
    pub expires_at: i64,
    /// The token's principal: the agent namespaced under its person.
    pub subject: String,
}

#[derive(Clone)]
pub struct Authenticator {
    tokens: Arc<dyn TokenStore>,
    oidc: Option<OidcVerifier>,
    /// The only CA whose certificates may name any principal.
    own_ca: Option<portcullis_tls::client_cert::OwnCa>,
}

impl Authenticator {
    pub fn new(tokens: Arc<dyn TokenStore>) -> Self {
        Self {
            tokens,
            oidc: None,
            own_ca: None,
        }
    }

    /// The gateway's own CA (`[gateway] internal_ca`): certificates it
    /// signed name any principal; without it, none uses its trust domain.
    pub fn with_own_ca(mut self, ca: Option<portcullis_tls::client_cert::OwnCa>) -> Self {
        self.own_ca = ca;
        self
    }

    /// The OIDC verifier, when issuers are configured (the gateway's own
    /// sign-in of people uses its keys and HTTP client).
    pub fn oidc(&self) -> Option<&OidcVerifier> {
        self.oidc.as_ref()
    }

    /// Also accept JWTs from the verifier's issuers.
    pub fn with_oidc(mut self, oidc: OidcVerifier) -> Self {
        self.oidc = (!oidc.is_empty()).then_some(oidc);
        self
    }

    /// Mint a token for `agent` acting for `person`: the token carries the
    /// person's groups (at minting time) and names the person, so every
    /// session it opens is recorded with both identities.
    pub async fn delegate(
        &self,
        person: &Principal,
        agent: &str,
        ttl: std::time::Duration,
    ) -> Result<Delegated, DelegateError> {
        // A person fresh from the identity provider, or in a console
        // session (which only a sign-in, through the provider or an
        // operator's one-time link, opens): never a token an agent holds.
        let signed_in = match &person.via {
            crate::AuthMethod::Oidc { .. } => true,
            crate::AuthMethod::GatewayToken {
                on_behalf_of: None,
                audience: Some(a),
                ..
            } => crate::Resource::Console.key().as_deref() == Some(a.as_str()),
            _ => false,
        };
        if person.kind != crate::PrincipalKind::Human || !signed_in {
            return Err(DelegateError::NotAPerson(person.subject.clone()));
        }
        // `agent:NAME`, never already namespaced (`agent:x@bob` would be
        // someone else's).
        if crate::validate_subject(agent).is_err()
            || !agent.starts_with("agent:")
            || crate::is_delegated(agent)
        {
            return Err(DelegateError::NotAnAgent(agent.chars().take(128).collect()));
        }
        // Namespaced under the person: grants written for a bare
        // `agent:NAME` never cover it, and approvals are bound to it.
        let agent = &crate::delegated_subject(agent, &person.subject);
        if crate::validate_principal(agent).is_err() {
            return Err(DelegateError::NotAnAgent(agent.chars().take(128).collect()));
        }
        if ttl > MAX_DELEGATION || ttl.is_zero() {
            return Err(DelegateError::TooLong {
                max_hours: MAX_DELEGATION.as_secs() / 3600,
            });
        }
        let t = token::generate()?;
        let now = unix_now();
        let expires_at = now + ttl.as_secs() as i64;
        let id = self
            .tokens
            .mint(&Mint {
                hash: t.hash,
                subject: agent,
                groups: &person.groups,
                created_at: now,
                expires_at,
                on_behalf_of: &person.subject,
            })
            .await?;
        Ok(Delegated {
            secret: t.secret,
            id,
            expires_at,
            subject: agent.clone(),
        })
    }

    /// Authenticate a credential presented at `at`. Every lookup asks the
    /// token store, which must answer as of now: a revocation written by
    /// another process takes effect on the next request (the gateway's
    /// cache in front of the store keeps that promise: see
    /// `portcullis_store::CachedTokens`).
    pub async fn authenticate(
        &self,
        cred: Credential<'_>,
        at: crate::Resource<'_>,
    ) -> Result<Principal, AuthError> {
        match cred {
            Credential::Bearer(s) if crate::oidc::looks_like_jwt(s) => match &self.oidc {
                // Boxed: the verifier's future (a key fetch) is large, and
                // the gateway's token path would carry it on every request
                // (`portcullis_front::cold`).
                Some(v) => Ok(Box::pin(v.verify(s)).await?),
                None => Err(AuthError::OidcNotConfigured),
            },
            Credential::Certificate { der, names } => {
                let subject =
                    portcullis_tls::client_cert::principal_for(der, names, self.own_ca.as_ref())
                        .map_err(|e| AuthError::Certificate(e.to_string()))?;
                if subject.starts_with("connector:") {
                    return Err(AuthError::Certificate(
                        "an agent link certificate cannot be used to call connections".into(),
                    ));
                }
                let fingerprint = portcullis_tls::sha256_hex(der);
                if self.tokens.cert_revoked(&fingerprint).await? {
                    return Err(AuthError::Certificate(format!(
                        "client certificate {} has been revoked",
                        &fingerprint[..16]
                    )));
                }
                Ok(Principal {
                    kind: crate::PrincipalKind::of_subject(&subject),
                    subject,
                    groups: Vec::new(),
                    via: crate::AuthMethod::ClientCertificate {
                        fingerprint,
                        expires_at: portcullis_tls::client_cert::not_after(der),
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
                record.principal_at(unix_now(), at)
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
        fn mint<'a>(&'a self, m: &'a Mint<'a>) -> MintFuture<'a> {
            let id = m.hash.id();
            Box::pin(async move { Ok(id) })
        }
        fn cert_revoked<'a>(&'a self, _fp: &'a str) -> RevokedFuture<'a> {
            Box::pin(async move { Ok(false) })
        }
    }

    #[test]
    fn only_signed_in_people_delegate_to_agents_for_a_bounded_time() {
        let a = Authenticator::new(Arc::new(Mem(HashMap::new())));
        let person = |subject: &str, via| Principal {
            subject: subject.into(),
            kind: crate::PrincipalKind::of_subject(subject),
            groups: vec!["dba".into()],
            via,
        };
        let oidc = || crate::AuthMethod::Oidc {
            issuer: "https://i".into(),
            expires_at: None,
        };
        let alice = person("user:alice", oidc());
        let hour = std::time::Duration::from_secs(3600);
        let d = block(a.delegate(&alice, "agent:claude", hour)).unwrap();
        assert!(d.secret.starts_with("pcl_"));
        assert!(matches!(
            block(a.delegate(&person("agent:ci", oidc()), "agent:x", hour)),
            Err(DelegateError::NotAPerson(_))
        ));
        let via_token = crate::AuthMethod::GatewayToken {
            token_id: "t".into(),
            on_behalf_of: None,
            audience: None,
        };
        assert!(matches!(
            block(a.delegate(&person("user:bob", via_token), "agent:x", hour)),
            Err(DelegateError::NotAPerson(_))
        ));
        // A console session may; a token for another audience, or one an
        // agent holds for a person, may not.
        let via = |audience: &str, on_behalf_of: Option<&str>| crate::AuthMethod::GatewayToken {
            token_id: "t".into(),
            on_behalf_of: on_behalf_of.map(str::to_owned),
            audience: Some(audience.into()),
        };
        assert!(
            block(a.delegate(&person("user:bob", via("console", None)), "agent:x", hour)).is_ok()
        );
        for (aud, obo) in [("mcp", None), ("console", Some("user:bob"))] {
            assert!(matches!(
                block(a.delegate(&person("user:bob", via(aud, obo)), "agent:x", hour)),
                Err(DelegateError::NotAPerson(_))
            ));
        }
        assert!(matches!(
            block(a.delegate(&alice, "user:mallory", hour)),
            Err(DelegateError::NotAnAgent(_))
        ));
        assert!(matches!(
            block(a.delegate(&alice, "agent:claude", hour * 25)),
            Err(DelegateError::TooLong { .. })
        ));
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
            on_behalf_of: None,
            audience: None,
        };
        let mut m = HashMap::new();
        m.insert(good.hash.0, rec("g", None));
        m.insert(revoked.hash.0, rec("r", Some(1)));
        let a = Authenticator::new(Arc::new(Mem(m)));
        assert_eq!(
            block(a.authenticate(Credential::Bearer(&good.secret), crate::Resource::Other))
                .unwrap()
                .subject,
            "agent:a"
        );
        assert_eq!(
            block(a.authenticate(Credential::Bearer(&revoked.secret), crate::Resource::Other)),
            Err(AuthError::Revoked { id: "r".into() })
        );
        let other = token::generate().unwrap();
        assert_eq!(
            block(a.authenticate(Credential::Bearer(&other.secret), crate::Resource::Other)),
            Err(AuthError::Unknown)
        );
        assert!(matches!(
            block(a.authenticate(Credential::Bearer("garbage"), crate::Resource::Other)),
            Err(AuthError::Malformed(_))
        ));
    }
}
