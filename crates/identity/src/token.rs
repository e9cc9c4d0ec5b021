//! Gateway-issued tokens.
//!
//! A token is `pcl_` followed by 32 random bytes in unpadded base64url
//! (43 characters). It is shown once; the gateway keeps only its SHA-256.
//! A plain hash (no salt, no slow KDF) is right here because the token is
//! 256 bits of randomness: nothing to brute-force, and a lookup by hash
//! keeps verification to one indexed read.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{AuthMethod, Principal, PrincipalKind};

pub const PREFIX: &str = "pcl_";
const SECRET_BYTES: usize = 32;
const ENCODED_LEN: usize = 43;

/// Why a caller was not authenticated. Messages are safe to show the
/// caller: they never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("malformed credential: {0}")]
    Malformed(&'static str),
    #[error("unknown token")]
    Unknown,
    #[error("token {id} has expired")]
    Expired { id: String },
    #[error("token {id} has been revoked")]
    Revoked { id: String },
    #[error("credential store unavailable")]
    Unavailable,
    #[error("OIDC token refused: {0}")]
    Oidc(#[from] crate::OidcError),
    #[error("OIDC tokens are not accepted here: no issuer is configured")]
    OidcNotConfigured,
    #[error("{0}")]
    Certificate(String),
    /// An OAuth access token presented anywhere but the resource it was
    /// issued for (RFC 8707): a token for `/mcp` opens nothing else.
    #[error("token {id} was issued for {audience} and is not accepted here")]
    WrongAudience { id: String, audience: String },
}

/// SHA-256 of a token: what the store keeps and looks up by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The token's public id: the first 6 bytes of its hash, in hex. It can
    /// be shown, logged and used to revoke without revealing the token.
    pub fn id(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({})", self.id())
    }
}

/// A newly generated token. `secret` is shown to the user once.
pub struct NewToken {
    pub secret: String,
    pub hash: TokenHash,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

pub fn generate() -> Result<NewToken, AuthError> {
    let mut raw = [0u8; SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| AuthError::Unavailable)?;
    let secret = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
    let hash = hash_of(&secret);
    Ok(NewToken { secret, hash })
}

fn hash_of(secret: &str) -> TokenHash {
    let d = digest(&SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    TokenHash(out)
}

/// Check the token's shape and hash it. Shape errors are reported without
/// echoing the input.
pub fn parse(presented: &str) -> Result<TokenHash, AuthError> {
    let body = presented
        .strip_prefix(PREFIX)
        .ok_or(AuthError::Malformed("gateway tokens start with `pcl_`"))?;
    if body.len() != ENCODED_LEN {
        return Err(AuthError::Malformed("gateway token has the wrong length"));
    }
    if !body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(AuthError::Malformed("gateway token has invalid characters"));
    }
    Ok(hash_of(presented))
}

/// A token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub subject: String,
    pub groups: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// The person who minted this token for an agent, if one did.
    pub on_behalf_of: Option<String>,
    /// The one resource this token is accepted at (an OAuth access
    /// token's audience, as a [`crate::Resource::key`]); `None`: every
    /// front.
    pub audience: Option<String>,
}

impl TokenRecord {
    /// The principal this record stands for, if it is usable at `now`
    /// (unix seconds) and presented at `at`.
    pub fn principal_at(&self, now: i64, at: crate::Resource<'_>) -> Result<Principal, AuthError> {
        if self.revoked_at.is_some() {
            return Err(AuthError::Revoked {
                id: self.id.clone(),
            });
        }
        if self.expires_at.is_some_and(|t| t <= now) {
            return Err(AuthError::Expired {
                id: self.id.clone(),
            });
        }
        if let Some(audience) = &self.audience
            && at.key().as_deref() != Some(audience.as_str())
        {
            return Err(AuthError::WrongAudience {
                id: self.id.clone(),
                audience: audience.clone(),
            });
        }
        // A token minted for an agent is its namespaced principal, even
        // if minted before namespacing (its record holds the bare name).
        let subject = match &self.on_behalf_of {
            Some(person) => crate::delegated_subject(&self.subject, person),
            None => self.subject.clone(),
        };
        Ok(Principal {
            kind: PrincipalKind::of_subject(&subject),
            subject,
            groups: self.groups.clone(),
            via: AuthMethod::GatewayToken {
                token_id: self.id.clone(),
                on_behalf_of: self.on_behalf_of.clone(),
                audience: self.audience.clone(),
            },
        })
    }
}

/// Extract the bearer credential from an `Authorization` header value.
pub fn bearer(header: Option<&[u8]>) -> Result<&str, AuthError> {
    let raw = header.ok_or(AuthError::Missing)?;
    let text = std::str::from_utf8(raw).map_err(|_| AuthError::Malformed("not UTF-8"))?;
    let (scheme, rest) = text
        .split_once(' ')
        .ok_or(AuthError::Malformed("expected `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("expected the Bearer scheme"));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_to_their_hash() {
        let t = generate().unwrap();
        assert!(t.secret.starts_with(PREFIX));
        assert_eq!(t.secret.len(), PREFIX.len() + ENCODED_LEN);
        assert_eq!(parse(&t.secret).unwrap(), t.hash);
        assert_ne!(generate().unwrap().secret, t.secret);
    }

    #[test]
    fn malformed_tokens_are_refused_without_echo() {
        let t = generate().unwrap();
        let cases = [
            "nope".to_string(),
            t.secret[..20].to_string(),
            format!("{}!", &t.secret[..t.secret.len() - 1]),
            format!("xyz_{}", &t.secret[4..]),
        ];
        for c in cases {
            let e = parse(&c).unwrap_err();
            assert!(matches!(e, AuthError::Malformed(_)), "{c}");
            assert!(!e.to_string().contains(&c), "error echoes the token");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = generate().unwrap();
        assert!(!format!("{t:?}").contains(&t.secret[4..]));
    }

    fn record() -> TokenRecord {
        TokenRecord {
            id: "abc".into(),
            subject: "agent:ci".into(),
            groups: vec!["ci".into()],
            created_at: 0,
            expires_at: Some(100),
            revoked_at: None,
            on_behalf_of: None,
            audience: None,
        }
    }

    #[test]
    fn expiry_and_revocation() {
        let r = record();
        let p = r.principal_at(99, crate::Resource::Other).unwrap();
        assert_eq!(p.kind, PrincipalKind::Agent);
        assert_eq!(
            r.principal_at(100, crate::Resource::Other),
            Err(AuthError::Expired { id: "abc".into() })
        );
        let revoked = TokenRecord {
            revoked_at: Some(50),
            ..record()
        };
        assert_eq!(
            revoked.principal_at(10, crate::Resource::Other),
            Err(AuthError::Revoked { id: "abc".into() })
        );
    }

    #[test]
    fn a_delegated_token_is_its_namespaced_agent() {
        // Minted before namespacing: the record holds the bare name.
        let old = TokenRecord {
            subject: "agent:deployer".into(),
            on_behalf_of: Some("user:alice".into()),
            ..record()
        };
        assert_eq!(
            old.principal_at(1, crate::Resource::Other).unwrap().subject,
            "agent:deployer@alice"
        );
        let new = TokenRecord {
            subject: "agent:deployer@alice".into(),
            ..old.clone()
        };
        assert_eq!(
            new.principal_at(1, crate::Resource::Other).unwrap().subject,
            "agent:deployer@alice"
        );
        assert_eq!(
            record()
                .principal_at(1, crate::Resource::Other)
                .unwrap()
                .subject,
            "agent:ci"
        );
    }

    #[test]
    fn an_audience_bound_token_opens_only_its_resource() {
        use crate::Resource;
        let bound = TokenRecord {
            audience: Some("mcp/docs".into()),
            ..record()
        };
        let p = bound.principal_at(1, Resource::Mcp(Some("docs"))).unwrap();
        assert!(
            matches!(&p.via, AuthMethod::GatewayToken { audience: Some(a), .. } if a == "mcp/docs")
        );
        for elsewhere in [
            Resource::Other,
            Resource::Mcp(None),
            Resource::Mcp(Some("doc")),
            Resource::Mcp(Some("docs/x")),
        ] {
            assert!(
                matches!(
                    bound.principal_at(1, elsewhere),
                    Err(AuthError::WrongAudience { .. })
                ),
                "{elsewhere:?}"
            );
        }
        // A token without an audience is accepted everywhere, as before.
        assert!(record().principal_at(1, Resource::Mcp(None)).is_ok());
        // Expiry still comes first.
        assert!(matches!(
            bound.principal_at(100, Resource::Mcp(Some("docs"))),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some(b"Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(Some(b"bearer  abc ")).unwrap(), "abc");
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert!(matches!(
            bearer(Some(b"Basic abc")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            bearer(Some(b"Bearer")),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(bearer(Some(b"Bearer ")), Err(AuthError::Missing));
    }
}
