//! Naming the caller behind a verified client certificate.
//!
//! The handshake has already verified the chain; this only decides which
//! name in the certificate is the principal, in the order the listener's
//! `principal_from` lists: a SPIFFE ID (`spiffe://DOMAIN/KIND/NAME` →
//! `KIND:NAME`), else a DNS name (→ `agent:NAME`), else the subject CN
//! (`KIND:NAME` as is, otherwise `agent:CN`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::TlsError;
use crate::reload::unix_now;

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
    /// How names from another CA's certificates are written.
    pub foreign: ForeignNames,
}

impl Default for CertPolicy {
    fn default() -> Self {
        Self {
            order: vec![CertName::Spiffe, CertName::Dns, CertName::CommonName],
            kinds: vec!["agent".into()],
            trust_domains: Vec::new(),
            foreign: ForeignNames::default(),
        }
    }
}

/// How a listener writes the principal a certificate from a CA other than
/// the gateway's own names (`client_auth.namespace`). A partner CA in the
/// bundle writes what it likes into a CN or a DNS name: without a
/// namespace its `deployer` would be the internal CA's `agent:deployer`,
/// with that agent's grants, approvals and kept sessions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ForeignNames {
    /// `namespace` unset: such certificates name nobody, so a CA added
    /// to the bundle (it is reloaded live) cannot take an internal name.
    #[default]
    Refused,
    /// `namespace = ""`: bare names, the same principals as the internal
    /// CA's, on purpose.
    Bare,
    /// `KIND:NS/NAME`. No certificate can write a `/` into a name, so
    /// only this listener's other CAs name principals under `NS/`.
    Namespace(String),
}

/// The gateway's own CA (`[gateway] internal_ca`, the CA `cert issue`
/// signs with): the one issuer whose certificates may use the trust
/// domain [`SPIFFE_DOMAIN`] and so name any principal. The handshake
/// verifies a client certificate against the listener's whole bundle,
/// which may hold other CAs; a SPIFFE ID's domain is only text the issuer
/// wrote, so which CA signed the certificate is checked again here.
#[derive(Clone)]
pub struct OwnCa {
    verifier: Arc<dyn ClientCertVerifier>,
    fingerprint: String,
    /// The CA certificate's validity, Unix seconds: webpki does not check
    /// a trust anchor's dates, and a CA past its time (retired, its key
    /// perhaps kept carelessly) must not name anyone.
    valid: std::ops::RangeInclusive<i64>,
}

impl std::fmt::Debug for OwnCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnCa")
    }
}

impl OwnCa {
    /// The CA certificate in the PEM file at `path`, which must hold it
    /// alone: a file that also holds another CA (a partner's, appended to
    /// a bundle) cannot say which is the gateway's. `Ok(None)` when there
    /// is no such file (then no certificate may use the domain).
    pub fn load(path: &Path) -> Result<Option<Self>, TlsError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::load_one(path).map(Some)
    }

    /// [`OwnCa::load`] of a file that must exist.
    pub fn load_one(path: &Path) -> Result<Self, TlsError> {
        let mut certs = crate::config::load_cert_chain(path)?;
        if certs.len() > 1 {
            return Err(TlsError::BadCertificate {
                path: path.to_path_buf(),
                reason: format!(
                    "holds {} certificates; the gateway's own CA must be alone in its file \
                     (keep other CAs in a separate bundle for client_auth.ca_file)",
                    certs.len()
                ),
            });
        }
        let first = certs.pop().ok_or_else(|| TlsError::NoCertificate {
            path: path.to_path_buf(),
        })?;
        let fingerprint = crate::sha256_hex(&first);
        let valid = match X509Certificate::from_der(&first) {
            Ok((_, c)) => c.validity().not_before.timestamp()..=c.validity().not_after.timestamp(),
            Err(e) => {
                return Err(TlsError::BadCertificate {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        if !valid.contains(&unix_now()) {
            return Err(TlsError::BadCertificate {
                path: path.to_path_buf(),
                reason: "the CA certificate is outside its validity period".into(),
            });
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add(first).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::Policy(format!("internal CA verifier: {e}")))?;
        Ok(Self {
            verifier,
            fingerprint,
            valid,
        })
    }

    /// The SHA-256 of the CA certificate, in hex (for the log at start).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether the CA signed `der` itself (no intermediate), and it is a
    /// valid client certificate now.
    pub fn issued(&self, der: &[u8]) -> bool {
        self.valid.contains(&unix_now())
            && self
                .verifier
                .verify_client_cert(&CertificateDer::from(der), &[], UnixTime::now())
                .is_ok()
    }

    /// Whether the CA signed `der` itself, at any time: checked at a
    /// moment inside the certificate's own validity, so that an expired
    /// certificate of this CA is still known for one of its (a review
    /// found an internal certificate expiring on a kept-alive connection
    /// fell through to another CA's namespace, and its name with it).
    fn signed(&self, der: &[u8]) -> bool {
        let Some(span) = validity(der) else {
            return false;
        };
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            span.start().saturating_add(1).max(0) as u64,
        ));
        self.verifier
            .verify_client_cert(&CertificateDer::from(der), &[], at)
            .is_ok()
    }
}

/// When a certificate stops being valid (its `notAfter`), Unix seconds:
/// a session it opened ends then.
pub fn not_after(der: &[u8]) -> Option<i64> {
    validity(der).map(|v| *v.end())
}

/// A certificate's validity, Unix seconds.
fn validity(der: &[u8]) -> Option<std::ops::RangeInclusive<i64>> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    Some(c.validity().not_before.timestamp()..=c.validity().not_after.timestamp())
}

/// How many certificates in the PEM bundle at `path` are not `own`.
pub fn other_cas(path: &Path, own: Option<&OwnCa>) -> Result<usize, TlsError> {
    let certs = crate::config::load_cert_chain(path)?;
    Ok(certs
        .iter()
        .filter(|c| own.is_none_or(|o| crate::sha256_hex(c) != o.fingerprint))
        .count())
}

/// The principal `der` names under `policy` (see [`CertPolicy`]); `own`:
/// the gateway's own CA, when it has one. In order: the name the
/// certificate gives, its dates, who issued it ([`issued_by_own`]), what
/// that issuer may name ([`accepted`]), and how the name is written
/// ([`written`]).
pub fn principal_for(
    der: &[u8],
    policy: &CertPolicy,
    own: Option<&OwnCa>,
) -> Result<String, CertNameError> {
    let (principal, domain) = named(der, &policy.order)?;
    // The handshake checked the dates once; a kept-alive connection asks
    // again on every request, and its certificate may have expired since.
    if !validity(der).is_some_and(|v| v.contains(&unix_now())) {
        return Err(CertNameError::NotAccepted(
            principal,
            "the certificate is outside its validity period".into(),
        ));
    }
    let ours = match issued_by_own(der, own) {
        Ok(ours) => ours,
        Err(why) => return Err(CertNameError::NotAccepted(principal, why)),
    };
    if domain.as_deref() == Some(SPIFFE_DOMAIN) {
        if ours {
            return Ok(principal);
        }
        // Another CA in the bundle wrote the gateway's own trust domain:
        // it would name any principal (`user:alice`, `agent:x@alice`).
        return Err(CertNameError::NotAccepted(
            principal,
            format!(
                "the SPIFFE trust domain {SPIFFE_DOMAIN:?} is the gateway's own CA's \
                 (internal_ca), which did not issue this certificate"
            ),
        ));
    }
    if let Err(why) = accepted(&principal, domain.as_deref(), policy) {
        return Err(CertNameError::NotAccepted(principal, why));
    }
    written(principal, ours, &policy.foreign)
}

/// Whether the gateway's own CA signed `der` (by signature alone: an
/// expired certificate of its is still its), refusing one from an internal
/// CA past its own dates.
fn issued_by_own(der: &[u8], own: Option<&OwnCa>) -> Result<bool, String> {
    match own {
        Some(ca) if ca.signed(der) => match ca.valid.contains(&unix_now()) {
            true => Ok(true),
            false => Err(
                "the internal CA (internal_ca) that issued it is outside its validity period"
                    .into(),
            ),
        },
        _ => Ok(false),
    }
}

/// Whether a name outside the gateway's trust domain may be taken: a
/// SPIFFE ID's trust domain and the principal's kind listed, and never an
/// agent acting for a person.
fn accepted(principal: &str, domain: Option<&str>, policy: &CertPolicy) -> Result<(), String> {
    if let Some(d) = domain
        && !policy.trust_domains.iter().any(|t| t == d)
    {
        return Err(format!(
            "SPIFFE trust domain {d:?} is not among the listener's trust_domains"
        ));
    }
    let kind = principal.split_once(':').map(|(k, _)| k).unwrap_or("");
    if !policy.kinds.iter().any(|k| k == kind) {
        return Err(format!(
            "kind {kind:?} is not among the listener's principal_kinds"
        ));
    }
    // `agent:NAME@person` is an agent acting for a person (the gateway
    // names it when a person delegates): another CA must not be able to
    // take that principal's grants and sessions. The same rule as
    // `portcullis_identity::is_delegated`, which this crate sits below.
    if kind == "agent" && principal.contains('@') {
        return Err(
            "an agent name with `@` is an agent acting for a person, which only the gateway names"
                .into(),
        );
    }
    Ok(())
}

/// The principal as the listener writes it: the internal CA's as named,
/// another CA's under `foreign`.
fn written(principal: String, ours: bool, foreign: &ForeignNames) -> Result<String, CertNameError> {
    if ours {
        return Ok(principal);
    }
    match foreign {
        ForeignNames::Bare => Ok(principal),
        ForeignNames::Namespace(ns) => {
            let (kind, name) = principal.split_once(':').unwrap_or(("", &principal));
            Ok(format!("{kind}:{ns}/{name}"))
        }
        ForeignNames::Refused => Err(CertNameError::NotAccepted(
            principal,
            "the certificate is from a CA other than the gateway's own (internal_ca), and this \
             listener names such certificates only under client_auth.namespace (a namespace \
             of their own, or \"\" for the same names as the internal CA's)"
                .into(),
        )),
    }
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

    /// The gateway's own CA and another, each in a folder of `dir`, and a
    /// client certificate each issued for `names`.
    fn two_cas(dir: &Path, names: &[&str]) -> (OwnCa, Vec<u8>, Vec<u8>) {
        let issue = |sub: &str| {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).unwrap();
            let (ca, _) = crate::CertificateAuthority::load_or_create(&d).unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let pem = ca
                .issue(
                    crate::LeafKind::Client,
                    &names,
                    std::time::Duration::from_secs(3600),
                )
                .unwrap()
                .cert_pem;
            crate::pem_certificates(pem.as_bytes())
                .unwrap()
                .remove(0)
                .to_vec()
        };
        let (own, other) = (issue("own"), issue("other"));
        let ca = OwnCa::load(&dir.join("own/ca.pem")).unwrap().unwrap();
        (ca, own, other)
    }

    /// A review found that any CA in a listener's bundle could write the
    /// gateway's own trust domain into a SPIFFE ID and name any principal
    /// (`user:alice`, `agent:claude@alice`): the domain is only honoured
    /// on a certificate the gateway's own CA signed.
    #[test]
    fn only_the_gateways_own_ca_names_principals_in_its_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let policy = CertPolicy {
            kinds: vec!["agent".into(), "user".into()],
            trust_domains: vec![SPIFFE_DOMAIN.into()],
            ..CertPolicy::default()
        };
        for name in ["user:alice", "agent:claude@alice", "agent:deployer"] {
            let (ca, own, other) =
                two_cas(&dir.path().join(name.replace([':', '@'], "-")), &[name]);
            assert_eq!(principal_for(&own, &policy, Some(&ca)).unwrap(), name);
            // Even with the domain listed and the kind accepted.
            let e = principal_for(&other, &policy, Some(&ca)).unwrap_err();
            assert!(e.to_string().contains("internal_ca"), "{e}");
            // No own CA: nobody's certificate uses the domain.
            assert!(principal_for(&own, &policy, None).is_err());
        }
        assert!(OwnCa::load(&dir.path().join("none.pem")).unwrap().is_none());
        // A review found an expired or not yet valid CA still named
        // anyone (webpki does not check a trust anchor's dates).
        for (from, to) in [((2020, 1, 1), (2021, 1, 1)), ((2090, 1, 1), (2091, 1, 1))] {
            let mut p = CertificateParams::default();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
            let key = KeyPair::generate().unwrap();
            let path = dir.path().join(format!("ca-{}.pem", from.0));
            std::fs::write(&path, p.self_signed(&key).unwrap().pem()).unwrap();
            let e = OwnCa::load(&path).unwrap_err();
            assert!(e.to_string().contains("validity"), "{e}");
        }
        let (mut aged, own, _) = two_cas(&dir.path().join("aged"), &["user:alice"]);
        assert!(aged.issued(&own));
        aged.valid = 0..=1;
        assert!(!aged.issued(&own));
        // A review put a partner CA first in the file: with two, which is
        // the gateway's cannot be told, so the file is refused.
        let both = dir.path().join("both.pem");
        let pem = |d: &str| std::fs::read_to_string(dir.path().join(d).join("own/ca.pem")).unwrap();
        std::fs::write(&both, pem("user-alice") + &pem("agent-deployer")).unwrap();
        let e = OwnCa::load(&both).unwrap_err();
        assert!(e.to_string().contains("holds 2 certificates"), "{e}");
        // A self-signed certificate naming the domain, as before.
        let forged = cert(
            None,
            vec![SanType::URI(
                "spiffe://portcullis/user/alice".try_into().unwrap(),
            )],
        );
        let (ca, _, _) = two_cas(&dir.path().join("forged"), &["agent:x"]);
        assert!(principal_for(&forged, &policy, Some(&ca)).is_err());
    }

    #[test]
    fn other_cas_name_only_listed_kinds_and_trust_domains() {
        let policy = CertPolicy {
            foreign: ForeignNames::Bare,
            ..CertPolicy::default()
        };
        // Another trust domain: refused unless listed.
        let corp = cert(
            None,
            vec![SanType::URI(
                "spiffe://corp/agent/deployer".try_into().unwrap(),
            )],
        );
        assert!(matches!(
            principal_for(&corp, &policy, None),
            Err(CertNameError::NotAccepted(..))
        ));
        let listed = CertPolicy {
            trust_domains: vec!["corp".into()],
            ..policy.clone()
        };
        assert_eq!(
            principal_for(&corp, &listed, None).unwrap(),
            "agent:deployer"
        );
        // A CN naming a person: only if the listener accepts that kind.
        let cn_user = cert(Some("user:alice"), vec![]);
        let e = principal_for(&cn_user, &policy, None).unwrap_err();
        assert!(e.to_string().contains("principal_kinds"), "{e}");
        let users = CertPolicy {
            kinds: vec!["agent".into(), "user".into()],
            ..policy.clone()
        };
        assert_eq!(principal_for(&cn_user, &users, None).unwrap(), "user:alice");
        // A delegated agent's form (`agent:NAME@person`) from another CA:
        // refused however it is named; the gateway's own CA may.
        for named in [
            cert(Some("claude@alice"), vec![]),
            cert(Some("agent:claude@alice"), vec![]),
        ] {
            let e = principal_for(&named, &users, None).unwrap_err();
            assert!(e.to_string().contains("acting for a person"), "{e}");
        }
        assert_eq!(
            principal_for(&cert(Some("build-box"), vec![]), &policy, None).unwrap(),
            "agent:build-box"
        );
    }

    /// A partner CA in the bundle once named its `deployer` as the internal
    /// CA's `agent:deployer`, with that agent's grants: its names now go
    /// under the listener's namespace, or name nobody without one.
    #[test]
    fn other_cas_name_only_under_the_listeners_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let (own, _, _) = two_cas(dir.path(), &["agent:x"]);
        // A client certificate from the CA in `sub` with the CN `cn` and
        // the names `sans`, valid until `until` (a year).
        let issue_until = |sub: &str, cn: &str, sans: Vec<SanType>, until: i32| {
            let read = |f: &str| std::fs::read_to_string(dir.path().join(sub).join(f)).unwrap();
            let key = KeyPair::from_pem(&read("ca.key")).unwrap();
            let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem"), key).unwrap();
            let mut p = CertificateParams::default();
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(until, 1, 1);
            p.distinguished_name.push(DnType::CommonName, cn);
            p.subject_alt_names = sans;
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            p.signed_by(&KeyPair::generate().unwrap(), &issuer)
                .unwrap()
                .der()
                .to_vec()
        };
        let issue = |sub: &str, cn: &str, sans: Vec<SanType>| issue_until(sub, cn, sans, 2090);
        let policy = |foreign: ForeignNames| CertPolicy {
            kinds: vec!["agent".into(), "user".into()],
            trust_domains: vec!["corp".into()],
            foreign,
            ..CertPolicy::default()
        };
        let partner = policy(ForeignNames::Namespace("partner".into()));
        let refused = policy(ForeignNames::Refused);
        let bare = policy(ForeignNames::Bare);
        // `deployer` by its CN alone, by a DNS name, and by a SPIFFE ID in
        // a listed trust domain.
        let dns = SanType::DnsName("deployer".try_into().unwrap());
        let spiffe = SanType::URI("spiffe://corp/agent/deployer".try_into().unwrap());
        for sans in [vec![], vec![dns], vec![spiffe]] {
            let theirs = issue("other", "deployer", sans.clone());
            let mine = issue("own", "deployer", sans);
            assert!(own.issued(&mine) && !own.issued(&theirs));
            let name = |der: &[u8], p: &CertPolicy, ca: Option<&OwnCa>| principal_for(der, p, ca);
            assert_eq!(
                name(&theirs, &partner, Some(&own)).unwrap(),
                "agent:partner/deployer"
            );
            let e = name(&theirs, &refused, Some(&own)).unwrap_err();
            assert!(e.to_string().contains("client_auth.namespace"), "{e}");
            assert_eq!(name(&theirs, &bare, Some(&own)).unwrap(), "agent:deployer");
            // The internal CA's certificate keeps its bare name, however
            // it names the agent and whatever the listener's namespace.
            for p in [&partner, &refused, &bare] {
                assert_eq!(name(&mine, p, Some(&own)).unwrap(), "agent:deployer");
            }
            // Without an internal CA every certificate is another CA's.
            assert_eq!(
                name(&mine, &partner, None).unwrap(),
                "agent:partner/deployer"
            );
            assert!(name(&mine, &refused, None).is_err());
        }
        // The kind and `@` rules hold under a namespace too.
        let person = issue("other", "user:alice", vec![]);
        assert_eq!(
            principal_for(&person, &partner, Some(&own)).unwrap(),
            "user:partner/alice"
        );
        let agents_only = CertPolicy {
            foreign: ForeignNames::Namespace("partner".into()),
            ..CertPolicy::default()
        };
        let e = principal_for(&person, &agents_only, Some(&own)).unwrap_err();
        assert!(e.to_string().contains("principal_kinds"), "{e}");
        let delegated = issue("other", "agent:claude@alice", vec![]);
        let e = principal_for(&delegated, &partner, Some(&own)).unwrap_err();
        assert!(e.to_string().contains("acting for a person"), "{e}");
        // A review found an internal certificate that had expired (on a
        // kept-alive connection, whose handshake saw it valid) named the
        // partner's `agent:partner/deployer`: an expired certificate names
        // nobody, whoever issued it, and so does a certificate of an
        // internal CA past its own dates.
        for sub in ["own", "other"] {
            let expired = issue_until(sub, "deployer", vec![], 2021);
            let e = principal_for(&expired, &partner, Some(&own)).unwrap_err();
            assert!(e.to_string().contains("validity"), "{e}");
        }
        let mut aged = OwnCa::load_one(&dir.path().join("own/ca.pem")).unwrap();
        aged.valid = 0..=1;
        let mine = issue("own", "deployer", vec![]);
        let e = principal_for(&mine, &partner, Some(&aged)).unwrap_err();
        assert!(e.to_string().contains("internal_ca"), "{e}");
        // What the gateway counts at start to warn of a bundle whose other
        // CAs name nobody.
        let pem = |sub: &str| std::fs::read_to_string(dir.path().join(sub).join("ca.pem")).unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, pem("own") + &pem("other")).unwrap();
        assert_eq!(other_cas(&bundle, Some(&own)).unwrap(), 1);
        assert_eq!(other_cas(&bundle, None).unwrap(), 2);
        assert_eq!(
            other_cas(&dir.path().join("own/ca.pem"), Some(&own)).unwrap(),
            0
        );
    }
}
