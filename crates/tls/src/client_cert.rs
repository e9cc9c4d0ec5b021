//! Naming the caller behind a verified client certificate.
//!
//! The handshake has already verified the chain; this only decides which
//! name in the certificate is the principal, in the order the listener's
//! `principal_from` lists: a SPIFFE ID (`spiffe://DOMAIN/KIND/NAME` →
//! `KIND:NAME`), else a DNS name (→ `agent:NAME`), else the subject CN
//! (`KIND:NAME` as is, otherwise `agent:CN`).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The trust domain of SPIFFE IDs in certificates from the internal CA.
pub const SPIFFE_DOMAIN: &str = "portcullis";

/// Where a principal name is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertName {
    Spiffe,
    Dns,
    CommonName,
}

/// Why no principal could be named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertNameError {
    #[error("client certificate does not parse")]
    Unparsable,
    #[error("client certificate has no usable name (looked at: {0})")]
    NoName(String),
    #[error("client certificate names {0}, which this listener does not accept: {1}")]
    NotAccepted(String, String),
}

/// What a listener accepts from client certificates. Certificates from
/// the gateway's own CA carry a SPIFFE ID in its trust domain
/// ([`SPIFFE_DOMAIN`]) and name any principal, as `cert issue` made them.
/// Any other name (a SPIFFE ID from another trust domain, a DNS name, a
/// subject CN) names a principal only if the listener lists its trust
/// domain and its kind: a certificate from another CA in the bundle must
/// not be able to call itself `user:alice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPolicy {
    /// Where the name is read from, in order.
    pub order: Vec<CertName>,
    /// Principal kinds other names may have (`agent`, `service`).
    pub kinds: Vec<String>,
    /// SPIFFE trust domains accepted beyond the gateway's own.
    pub trust_domains: Vec<String>,
}

impl Default for CertPolicy {
    fn default() -> Self {
        Self {
            order: vec![CertName::Spiffe, CertName::Dns, CertName::CommonName],
            kinds: vec!["agent".into()],
            trust_domains: Vec::new(),
        }
    }
}

/// The principal `der` names under `policy` (see [`CertPolicy`]).
pub fn principal_for(der: &[u8], policy: &CertPolicy) -> Result<String, CertNameError> {
    let (principal, domain) = named(der, &policy.order)?;
    if domain.as_deref() == Some(SPIFFE_DOMAIN) {
        return Ok(principal);
    }
    if let Some(d) = &domain
        && !policy.trust_domains.iter().any(|t| t == d)
    {
        return Err(CertNameError::NotAccepted(
            principal,
            format!("SPIFFE trust domain {d:?} is not among the listener's trust_domains"),
        ));
    }
    let kind = principal.split_once(':').map(|(k, _)| k).unwrap_or("");
    if !policy.kinds.iter().any(|k| k == kind) {
        return Err(CertNameError::NotAccepted(
            principal.clone(),
            format!("kind {kind:?} is not among the listener's principal_kinds"),
        ));
    }
    // `agent:NAME@person` is an agent acting for a person (the gateway
    // names it when a person delegates): another CA must not be able to
    // take that principal's grants and sessions. The same rule as
    // `portcullis_identity::is_delegated`, which this crate sits below.
    if kind == "agent" && principal.contains('@') {
        return Err(CertNameError::NotAccepted(
            principal,
            "an agent name with `@` is an agent acting for a person, which only the gateway names"
                .into(),
        ));
    }
    Ok(principal)
}

/// The SPIFFE ID for a principal `KIND:NAME`.
pub fn spiffe_id(principal: &str) -> Option<String> {
    let (kind, name) = principal.split_once(':')?;
    Some(format!("spiffe://{SPIFFE_DOMAIN}/{kind}/{name}"))
}

/// The principal named by `der`, trying `order` in turn, whatever its
/// kind or trust domain (agent links, whose chain is the gateway's own
/// CA; callers go through [`principal_for`]).
pub fn principal_name(der: &[u8], order: &[CertName]) -> Result<String, CertNameError> {
    named(der, order).map(|(p, _)| p)
}

/// The principal and, when it came from a SPIFFE ID, its trust domain.
fn named(der: &[u8], order: &[CertName]) -> Result<(String, Option<String>), CertNameError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| CertNameError::Unparsable)?;
    let sans: Vec<GeneralName<'_>> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    for source in order {
        let found = match source {
            CertName::Spiffe => sans.iter().find_map(|n| match n {
                GeneralName::URI(u) => from_spiffe(u).map(|(p, d)| (p, Some(d))),
                _ => None,
            }),
            CertName::Dns => sans.iter().find_map(|n| match n {
                GeneralName::DNSName(d) if valid_name(d) => Some((format!("agent:{d}"), None)),
                _ => None,
            }),
            CertName::CommonName => cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .and_then(|cn| {
                    if cn.contains(':') {
                        valid_principal(cn).then(|| cn.to_string())
                    } else {
                        valid_name(cn).then(|| format!("agent:{cn}"))
                    }
                })
                .map(|p| (p, None)),
        };
        if let Some(p) = found {
            return Ok(p);
        }
    }
    Err(CertNameError::NoName(
        order
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

/// `spiffe://DOMAIN/KIND/NAME` → (`KIND:NAME`, `DOMAIN`); whether the
/// domain is trusted is [`principal_for`]'s question.
fn from_spiffe(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    let (kind, name) = path.split_once('/')?;
    let p = format!("{kind}:{name}");
    (valid_name(kind) && valid_name(domain) && valid_principal(&p)).then(|| (p, domain.to_string()))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 120
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

fn valid_principal(s: &str) -> bool {
    match s.split_once(':') {
        Some((k, n)) => {
            valid_name(k)
                && !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c))
                && s.len() <= 128
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut p = CertificateParams::default();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    const ALL: &[CertName] = &[CertName::Spiffe, CertName::Dns, CertName::CommonName];

    #[test]
    fn spiffe_first_then_dns_then_cn() {
        let c = cert(
            Some("agent:from-cn"),
            vec![
                SanType::DnsName("bot.example.com".try_into().unwrap()),
                SanType::URI("spiffe://corp/agent/deployer".try_into().unwrap()),
            ],
        );
        assert_eq!(principal_name(&c, ALL).unwrap(), "agent:deployer");
        assert_eq!(
            principal_name(&c, &[CertName::Dns]).unwrap(),
            "agent:bot.example.com"
        );
        assert_eq!(
            principal_name(&c, &[CertName::CommonName]).unwrap(),
            "agent:from-cn"
        );
        let c = cert(Some("build-box"), vec![]);
        assert_eq!(principal_name(&c, ALL).unwrap(), "agent:build-box");
        let c = cert(Some("user:alice"), vec![]);
        assert_eq!(principal_name(&c, ALL).unwrap(), "user:alice");
    }

    #[test]
    fn odd_names_are_not_principals() {
        let c = cert(
            Some("has space"),
            vec![SanType::URI(
                "spiffe://corp/just-one-segment".try_into().unwrap(),
            )],
        );
        assert!(matches!(
            principal_name(&c, ALL),
            Err(CertNameError::NoName(_))
        ));
        assert_eq!(principal_name(b"junk", ALL), Err(CertNameError::Unparsable));
    }

    #[test]
    fn spiffe_id_round_trips() {
        let id = spiffe_id("agent:ci").unwrap();
        assert_eq!(id, "spiffe://portcullis/agent/ci");
        assert_eq!(
            from_spiffe(&id).unwrap(),
            ("agent:ci".to_string(), "portcullis".to_string())
        );
    }

    #[test]
    fn other_cas_name_only_listed_kinds_and_trust_domains() {
        let policy = CertPolicy::default();
        // The gateway's own trust domain: any kind, as `cert issue` made it.
        let own = cert(
            None,
            vec![SanType::URI(
                "spiffe://portcullis/user/alice".try_into().unwrap(),
            )],
        );
        assert_eq!(principal_for(&own, &policy).unwrap(), "user:alice");
        // Another trust domain: refused unless listed.
        let corp = cert(
            None,
            vec![SanType::URI(
                "spiffe://corp/agent/deployer".try_into().unwrap(),
            )],
        );
        assert!(matches!(
            principal_for(&corp, &policy),
            Err(CertNameError::NotAccepted(..))
        ));
        let listed = CertPolicy {
            trust_domains: vec!["corp".into()],
            ..CertPolicy::default()
        };
        assert_eq!(principal_for(&corp, &listed).unwrap(), "agent:deployer");
        // A CN naming a person: only if the listener accepts that kind.
        let cn_user = cert(Some("user:alice"), vec![]);
        let e = principal_for(&cn_user, &policy).unwrap_err();
        assert!(e.to_string().contains("principal_kinds"), "{e}");
        let users = CertPolicy {
            kinds: vec!["agent".into(), "user".into()],
            ..CertPolicy::default()
        };
        assert_eq!(principal_for(&cn_user, &users).unwrap(), "user:alice");
        // A delegated agent's form (`agent:NAME@person`) from another CA:
        // refused however it is named; the gateway's own CA may.
        for named in [
            cert(Some("claude@alice"), vec![]),
            cert(Some("agent:claude@alice"), vec![]),
        ] {
            let e = principal_for(&named, &users).unwrap_err();
            assert!(e.to_string().contains("acting for a person"), "{e}");
        }
        let own_delegated = cert(
            None,
            vec![SanType::URI(
                "spiffe://portcullis/agent/claude@alice".try_into().unwrap(),
            )],
        );
        assert_eq!(
            principal_for(&own_delegated, &policy).unwrap(),
            "agent:claude@alice"
        );
        assert_eq!(
            principal_for(&cert(Some("build-box"), vec![]), &policy).unwrap(),
            "agent:build-box"
        );
    }
}
