//! Verifying OIDC bearer tokens (JWTs) against an issuer's published keys.
//!
//! This module is pure: a token, the issuer's settings, its key set and the
//! current time in, a [`Principal`] or an [`OidcError`] out. Fetching and
//! caching the keys is [`crate::oidc_keys`]'s job.
//!
//! The order of checks matters and each has its own error, so a refusal
//! says exactly what was wrong: size, shape, algorithm (`none` and
//! symmetric algorithms never pass: a public key set cannot verify an HMAC,
//! and accepting one is the classic algorithm-confusion hole), issuer, key
//! id, signature, then time and audience.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::{AuthMethod, Principal, PrincipalKind};

/// Tokens larger than this are refused before any parsing: real access
/// and ID tokens are 1–3 KiB, and parsing cost should not be the caller's
/// to choose.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Algorithms a configured issuer may use: asymmetric only.
pub const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// An algorithm name from configuration: asymmetric ones only.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| format!("{name:?} is not a JWS algorithm name"))?;
    if !ASYMMETRIC.contains(&alg) {
        return Err(format!(
            "{name:?} is symmetric (or unsupported): an identity provider's tokens are verified \
             with its published public keys; use RS256, PS256, ES256, ES384 or EdDSA"
        ));
    }
    Ok(alg)
}

/// Why an OIDC token was refused. Messages never contain the token or its
/// signature; they may name the issuer, the key id and the algorithm, all
/// of which are public.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("token is {len} bytes, more than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed JWT: {0}")]
    Malformed(&'static str),
    #[error("unsigned tokens (alg \"none\") are never accepted")]
    AlgorithmNone,
    #[error("algorithm {alg:?} is not accepted for issuer {issuer}")]
    AlgorithmNotAllowed { alg: String, issuer: String },
    #[error("issuer {0:?} is not configured")]
    UnknownIssuer(String),
    #[error("token has no key id (kid) and the issuer publishes several keys")]
    MissingKeyId,
    #[error("key id {kid:?} is not among issuer {issuer}'s published keys")]
    UnknownKey { kid: String, issuer: String },
    #[error("key {kid:?} is published for {key_alg}, not {alg:?}")]
    KeyAlgorithmMismatch {
        kid: String,
        key_alg: String,
        alg: String,
    },
    #[error("signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("token audience is not one of this gateway's")]
    WrongAudience,
    #[error("token lacks required claim {0:?}")]
    MissingClaim(String),
    #[error("claim {0:?} has an unusable value")]
    BadClaim(String),
    #[error(
        "client {0:?} is neither among this issuer's agent_clients nor a client people sign in \
         through (people_clients, login_client_id, [oauth] client_id)"
    )]
    UnknownClient(String),
    #[error(
        "client {0:?} is among agent_clients, but the token's sub is not its own: a person \
         signed in through an agent's client is not that agent"
    )]
    NotTheAgent(String),
    #[error(
        "the token names no client (client_id, azp, cid or one aud), which agent_clients needs"
    )]
    NoClient,
    #[error("keys of issuer {0} are unavailable")]
    KeysUnavailable(String),
    #[error("the token's header lists critical extension {0:?}, which is not supported")]
    CriticalHeader(String),
    #[error("the token is typed {0:?}, not as an access or ID token")]
    WrongType(String),
    #[error("key {0:?} is not published for verifying signatures")]
    KeyNotForSigning(String),
}

/// What the gateway trusts an issuer for. Built from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerSettings {
    /// Exactly as in the `iss` claim and the discovery document.
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    /// Claim holding the user's groups (array of strings, or one string
    /// of space-separated names).
    pub groups_claim: String,
    /// Claim naming the human (`sub` by default; `email` or
    /// `preferred_username` read better in audit logs).
    pub subject_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Whose names the issuer's tokens carry.
    pub namespace: crate::Namespace,
    /// Which clients' tokens are agents' and which people's
    /// (`agent_clients`); `None`: a token whose `sub` equals its
    /// `client_id` is an agent's (client credentials), any other a
    /// person's.
    pub clients: Option<ClientRoles>,
}

/// `agent_clients` and the clients people sign in through: a token of any
/// other client is refused.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientRoles {
    /// Each with the `sub` its own tokens carry.
    pub agents: Vec<AgentClient>,
    /// `people_clients`, `login_client_id`, `[oauth] client_id`.
    pub people: Vec<String>,
}

/// A client whose tokens are an agent's: `agent:CLIENT`, for tokens whose
/// `sub` is `subject` (the client's own service account), and no other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentClient {
    pub client: String,
    pub subject: String,
}

/// Peek at the unverified `iss` claim, to choose which issuer's keys to
/// verify with. Nothing read here is trusted until the signature checks.
pub fn unverified_issuer(token: &str) -> Result<String, OidcError> {
    check_size(token)?;
    let (_, payload) = split(token)?;
    match payload.get("iss") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(OidcError::BadClaim("iss".into())),
        None => Err(OidcError::MissingClaim("iss".into())),
    }
}

/// The header's algorithm and key id, checked against the issuer's
/// allowed algorithms.
pub fn header_of(
    token: &str,
    settings: &IssuerSettings,
) -> Result<(Algorithm, Option<String>), OidcError> {
    check_size(token)?;
    let (header, _) = split(token)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        _ => return Err(OidcError::Malformed("header has no alg")),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(OidcError::AlgorithmNone);
    }
    let not_allowed = || OidcError::AlgorithmNotAllowed {
        alg: alg.chars().take(16).collect(),
        issuer: settings.issuer.clone(),
    };
    let parsed: Algorithm = alg.parse().map_err(|_| not_allowed())?;
    if !settings.algorithms.contains(&parsed) || !ASYMMETRIC.contains(&parsed) {
        return Err(not_allowed());
    }
    // RFC 7515 §4.1.11: an extension the verifier does not understand
    // makes the token invalid; this verifier understands none.
    if let Some(crit) = header.get("crit") {
        let first = crit
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("(not a list of names)");
        return Err(OidcError::CriticalHeader(first.chars().take(40).collect()));
    }
    // RFC 8725 §3.11: a token typed as something else (a logout token, a
    // security event, a DPoP proof) is not a credential, whatever it holds.
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if ACCEPTED_TYPES.iter().any(|a| t.eq_ignore_ascii_case(a)) => {}
        Some(t) => {
            let shown: String = t.to_string().chars().take(40).collect();
            return Err(OidcError::WrongType(shown));
        }
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) => Some(k.clone()),
        None => None,
        Some(_) => return Err(OidcError::Malformed("kid is not a string")),
    };
    Ok((parsed, kid))
}

/// `typ` values of the tokens a gateway accepts as credentials: plain JWTs
/// (ID tokens) and OAuth access tokens (RFC 9068).
const ACCEPTED_TYPES: &[&str] = &["JWT", "application/jwt", "at+jwt", "application/at+jwt"];

/// Pick the verification key: by `kid`, or the only key when the token
/// has none. `Ok(None)` means "not published (yet)": the caller may
/// refresh the key set once and retry.
pub fn select_key<'a>(
    keys: &'a JwkSet,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<Option<&'a Jwk>, OidcError> {
    let key = match kid {
        Some(kid) => keys
            .keys
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid)),
        None if keys.keys.len() == 1 => keys.keys.first(),
        None => return Err(OidcError::MissingKeyId),
    };
    let Some(key) = key else { return Ok(None) };
    // RFC 7517 §4.2-4.3: a key published for encryption, or whose
    // operations do not include verifying, does not verify signatures.
    let for_signing = !matches!(
        key.common.public_key_use,
        Some(
            jsonwebtoken::jwk::PublicKeyUse::Encryption | jsonwebtoken::jwk::PublicKeyUse::Other(_)
        )
    ) && key
        .common
        .key_operations
        .as_ref()
        .is_none_or(|ops| ops.contains(&jsonwebtoken::jwk::KeyOperations::Verify));
    if !for_signing {
        return Err(OidcError::KeyNotForSigning(
            kid.unwrap_or_default().chars().take(100).collect(),
        ));
    }
    if let Some(key_alg) = key.common.key_algorithm {
        let key_alg = format!("{key_alg:?}");
        if key_alg != format!("{alg:?}") {
            return Err(OidcError::KeyAlgorithmMismatch {
                kid: kid.unwrap_or_default().to_string(),
                key_alg,
                alg: format!("{alg:?}"),
            });
        }
    }
    Ok(Some(key))
}

/// Verify the token with `key` and turn its claims into a principal.
pub fn verify(
    token: &str,
    settings: &IssuerSettings,
    alg: Algorithm,
    key: &Jwk,
    now: i64,
) -> Result<Principal, OidcError> {
    verify_claims(token, settings, alg, key, now).map(|(p, _)| p)
}

/// [`verify`] for an ID token the gateway asked for itself (signing a
/// person in): `settings.audiences` is the gateway's client id, and the
/// `nonce` must be the one sent with the request, so an ID token issued
/// for another sign-in cannot be replayed into this one.
pub fn verify_id_token(
    token: &str,
    settings: &IssuerSettings,
    alg: Algorithm,
    key: &Jwk,
    now: i64,
    nonce: &str,
) -> Result<Principal, OidcError> {
    let (p, claims) = verify_claims(token, settings, alg, key, now)?;
    match claims.get("nonce").and_then(Value::as_str) {
        Some(n) if !nonce.is_empty() && n == nonce => Ok(p),
        Some(_) => Err(OidcError::BadClaim("nonce".into())),
        None => Err(OidcError::MissingClaim("nonce".into())),
    }
}

fn verify_claims(
    token: &str,
    settings: &IssuerSettings,
    alg: Algorithm,
    key: &Jwk,
    now: i64,
) -> Result<(Principal, Value), OidcError> {
    check_size(token)?;
    let decoding = DecodingKey::from_jwk(key).map_err(|_| OidcError::BadSignature)?;
    let mut v = Validation::new(alg);
    v.leeway = settings.leeway_secs;
    v.validate_exp = false; // checked below against `now`, for testability
    v.validate_nbf = false;
    v.set_issuer(&[&settings.issuer]);
    v.set_audience(&settings.audiences);
    v.set_required_spec_claims(&["iss", "aud", "exp"]);
    let data = jsonwebtoken::decode::<Value>(token, &decoding, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => OidcError::BadSignature,
            K::InvalidAudience => OidcError::WrongAudience,
            K::InvalidIssuer => OidcError::UnknownIssuer(settings.issuer.clone()),
            K::MissingRequiredClaim(c) => OidcError::MissingClaim(c.clone()),
            K::InvalidClaimFormat(c) => OidcError::BadClaim(c.clone()),
            K::InvalidAlgorithm
            | K::InvalidKeyFormat
            | K::InvalidEcdsaKey
            | K::InvalidRsaKey(_) => OidcError::BadSignature,
            _ => OidcError::Malformed("undecodable token"),
        }
    })?;
    let claims = data.claims;
    let leeway = i64::try_from(settings.leeway_secs).unwrap_or(i64::MAX);
    let exp = match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp.saturating_add(leeway) <= now => return Err(OidcError::Expired),
        Some(exp) => exp,
        None => return Err(OidcError::BadClaim("exp".into())),
    };
    if let Some(nbf) = claims.get("nbf") {
        match nbf.as_i64() {
            Some(nbf) if nbf.saturating_sub(leeway) > now => return Err(OidcError::NotYetValid),
            Some(_) => {}
            None => return Err(OidcError::BadClaim("nbf".into())),
        }
    }
    let mut p = principal_from(&claims, settings)?;
    p.via = AuthMethod::Oidc {
        issuer: settings.issuer.clone(),
        expires_at: Some(exp),
    };
    Ok((p, claims))
}

/// The client a token is an agent's, if it is one. Without a list, a
/// token with no human behind it (client credentials: `sub` equals
/// `client_id`) is: a provider that lets a person's `sub` equal a client's
/// id, or anyone register a client, then names agents, and one whose
/// machine tokens carry a `sub` of their own names machines people.
/// With `agent_clients` every token must say which client it was issued
/// to ([`client_of`]), and that client decides: a listed agent client's
/// token is the agent when its `sub` is the client's own (a person signed
/// in through that client is refused, not made the agent: review), a
/// people client's token is a person's, and any other client's token is
/// refused.
fn agent_client<'a>(
    claims: &'a Value,
    sub: &str,
    settings: &IssuerSettings,
) -> Result<Option<&'a str>, OidcError> {
    let Some(roles) = &settings.clients else {
        let client_id = claims.get("client_id").and_then(Value::as_str);
        return Ok(client_id.filter(|c| *c == sub));
    };
    let client = client_of(claims)?;
    let shown = || client.chars().take(100).collect::<String>();
    if let Some(agent) = roles.agents.iter().find(|a| a.client == client) {
        return match agent.subject == sub {
            true => Ok(Some(client)),
            false => Err(OidcError::NotTheAgent(shown())),
        };
    }
    if roles.people.iter().any(|p| p == client) {
        return Ok(None);
    }
    Err(OidcError::UnknownClient(shown()))
}

/// The client a token was issued to: its `client_id` (RFC 9068 access
/// tokens), else `azp`, else `cid` (Okta's access tokens), else its one
/// audience (an ID token's client). A
/// claim that is there but not a non-empty string is refused, never
/// skipped for the next (a review found `client_id: 7` fell through to
/// `azp`).
fn client_of(claims: &Value) -> Result<&str, OidcError> {
    for name in ["client_id", "azp", "cid"] {
        match claims.get(name) {
            None => continue,
            Some(Value::String(s)) if !s.is_empty() => return Ok(s),
            Some(_) => return Err(OidcError::BadClaim(name.into())),
        }
    }
    match claims.get("aud") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
            Value::String(s) if !s.is_empty() => Ok(s),
            _ => Err(OidcError::BadClaim("aud".into())),
        },
        _ => Err(OidcError::NoClient),
    }
}

/// Subject and groups from verified claims ([`agent_client`] tells an
/// agent's token from a person's).
fn principal_from(claims: &Value, settings: &IssuerSettings) -> Result<Principal, OidcError> {
    let sub = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        Some(_) => return Err(OidcError::BadClaim("sub".into())),
        None => return Err(OidcError::MissingClaim("sub".into())),
    };
    let subject = if let Some(client) = agent_client(claims, sub, settings)? {
        // A client the issuer names `claude@alice` must not take the
        // principal of an agent acting for a person: its grants, sessions
        // and approvals.
        if crate::is_delegated(client) {
            return Err(OidcError::BadClaim("sub".into()));
        }
        ("agent", client)
    } else {
        let name = match claims.get(&settings.subject_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.as_str(),
            Some(_) => return Err(OidcError::BadClaim(settings.subject_claim.clone())),
            None => return Err(OidcError::MissingClaim(settings.subject_claim.clone())),
        };
        ("user", name)
    };
    // The name as the issuer gives it must be a whole principal on its
    // own (no `/`), before any namespace is put in front of it.
    let (kind, name) = subject;
    if crate::validate_subject(&format!("{kind}:{name}")).is_err() {
        return Err(OidcError::BadClaim(settings.subject_claim.clone()));
    }
    let subject = settings.namespace.subject(kind, name);
    let groups = match claims.get(&settings.groups_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for g in items {
                match g.as_str() {
                    Some(g) if !g.is_empty() && g.len() <= 256 => out.push(g.to_string()),
                    _ => return Err(OidcError::BadClaim(settings.groups_claim.clone())),
                }
            }
            out
        }
        Some(_) => return Err(OidcError::BadClaim(settings.groups_claim.clone())),
    };
    let dedup: HashSet<&String> = groups.iter().collect();
    let mut groups = dedup
        .into_iter()
        .map(|g| settings.namespace.group(g))
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| OidcError::BadClaim(settings.groups_claim.clone()))?;
    groups.sort();
    Ok(Principal {
        kind: PrincipalKind::of_subject(&subject),
        subject,
        groups,
        via: AuthMethod::Oidc {
            issuer: settings.issuer.clone(),
            expires_at: None,
        },
    })
}

fn check_size(token: &str) -> Result<(), OidcError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(OidcError::TooLarge {
            len: token.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    Ok(())
}

/// Decode header and payload (unverified) as JSON objects.
fn split(token: &str) -> Result<(Value, Value), OidcError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OidcError::Malformed("a JWT has three dot-separated parts"));
    };
    let decode = |part: &str, what: &'static str| -> Result<Value, OidcError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| OidcError::Malformed(what))?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(OidcError::Malformed(what)),
        }
    };
    Ok((
        decode(h, "header is not base64url JSON")?,
        decode(p, "payload is not base64url JSON")?,
    ))
}

/// Whether a bearer string looks like a JWT (rather than a gateway token).
pub fn looks_like_jwt(s: &str) -> bool {
    s.starts_with("eyJ") && s.bytes().filter(|&b| b == b'.').count() == 2
}

#[cfg(test)]
mod tests;
