//! Named TLS profiles. A profile is the whole set of negotiable parameters:
//! versions, cipher suites and key-exchange groups. Knobs are not scattered
//! over listeners; a listener names a profile (or spells out `custom`).
//!
//! rustls itself implements neither TLS 1.0/1.1 nor any non-AEAD or
//! non-ECDHE suite, so those can never be enabled, whatever the config says.

use std::sync::Arc;

use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use serde::Deserialize;

use crate::TlsError;

/// The profile names accepted in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsProfile {
    /// TLS 1.3 only.
    Modern,
    /// TLS 1.2 and 1.3, ECDHE key exchange and AEAD suites only.
    #[default]
    Intermediate,
    /// Versions, suites and groups spelled out.
    Custom,
}

/// A TLS policy as written in configuration (`[gateway.tls]`,
/// `[upstream_tls]`, per connection `tls`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsPolicy {
    #[serde(default)]
    pub profile: TlsProfile,
    /// Only with `profile = "custom"`: "1.2", "1.3".
    pub versions: Option<Vec<String>>,
    /// Only with `profile = "custom"`: IANA-style names such as
    /// `TLS13_AES_128_GCM_SHA256` or `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`.
    pub cipher_suites: Option<Vec<String>>,
    /// Only with `profile = "custom"`: `X25519`, `secp256r1`, `secp384r1`,
    /// `X25519MLKEM768`.
    pub groups: Option<Vec<String>>,
}

impl TlsPolicy {
    pub fn named(profile: TlsProfile) -> Self {
        Self {
            profile,
            ..Self::default()
        }
    }

    /// The protocol versions this policy allows.
    pub fn versions(&self) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
        match self.profile {
            TlsProfile::Modern => Ok(vec![&rustls::version::TLS13]),
            TlsProfile::Intermediate => Ok(vec![&rustls::version::TLS13, &rustls::version::TLS12]),
            TlsProfile::Custom => {
                let names = self.versions.as_deref().unwrap_or_default();
                if names.is_empty() {
                    return Err(TlsError::Policy(
                        "profile \"custom\" needs `versions` (e.g. [\"1.3\"])".into(),
                    ));
                }
                names
                    .iter()
                    .map(|v| match v.trim_start_matches("TLSv") {
                        "1.3" => Ok(&rustls::version::TLS13),
                        "1.2" => Ok(&rustls::version::TLS12),
                        _ => Err(TlsError::UnknownVersion(v.clone())),
                    })
                    .collect()
            }
        }
    }

    /// The crypto provider restricted to this policy's suites and groups.
    pub fn provider(&self) -> Result<Arc<CryptoProvider>, TlsError> {
        let base = aws_lc_rs::default_provider();
        if self.profile != TlsProfile::Custom {
            for (key, set) in [
                ("versions", self.versions.is_some()),
                ("cipher_suites", self.cipher_suites.is_some()),
                ("groups", self.groups.is_some()),
            ] {
                if set {
                    return Err(TlsError::Policy(format!(
                        "`{key}` is only valid with profile = \"custom\""
                    )));
                }
            }
        }
        let versions = self.versions()?;
        let tls12_allowed = versions
            .iter()
            .any(|v| v.version == rustls::ProtocolVersion::TLSv1_2);
        let cipher_suites: Vec<SupportedCipherSuite> = match &self.cipher_suites {
            None => base
                .cipher_suites
                .iter()
                .copied()
                .filter(|s| tls12_allowed || s.tls13().is_some())
                .collect(),
            Some(names) => names
                .iter()
                .map(|n| find_suite(&base, n))
                .collect::<Result<_, _>>()?,
        };
        let kx_groups: Vec<&'static dyn SupportedKxGroup> = match &self.groups {
            None => base.kx_groups.clone(),
            Some(names) => names
                .iter()
                .map(|n| find_group(n))
                .collect::<Result<_, _>>()?,
        };
        if cipher_suites.is_empty() {
            return Err(TlsError::Policy("the policy leaves no cipher suite".into()));
        }
        if kx_groups.is_empty() {
            return Err(TlsError::Policy(
                "the policy leaves no key-exchange group".into(),
            ));
        }
        for v in &versions {
            let usable = cipher_suites.iter().any(|s| s.version() == *v);
            if !usable {
                return Err(TlsError::Policy(format!(
                    "version {:?} is enabled but none of the chosen cipher suites belongs to it",
                    v.version
                )));
            }
        }
        Ok(Arc::new(CryptoProvider {
            cipher_suites,
            kx_groups,
            ..base
        }))
    }
}

fn suite_name(s: &SupportedCipherSuite) -> String {
    format!("{:?}", s.suite())
}

fn find_suite(base: &CryptoProvider, name: &str) -> Result<SupportedCipherSuite, TlsError> {
    aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .chain(base.cipher_suites.iter())
        .find(|s| suite_name(s).eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| TlsError::UnknownSuite {
            name: name.to_string(),
            valid: aws_lc_rs::ALL_CIPHER_SUITES
                .iter()
                .map(suite_name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn group_name(g: &&'static dyn SupportedKxGroup) -> String {
    format!("{:?}", g.name())
}

fn find_group(name: &str) -> Result<&'static dyn SupportedKxGroup, TlsError> {
    aws_lc_rs::ALL_KX_GROUPS
        .iter()
        .find(|g| group_name(g).eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| TlsError::UnknownGroup {
            name: name.to_string(),
            valid: aws_lc_rs::ALL_KX_GROUPS
                .iter()
                .map(group_name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::ProtocolVersion;

    fn custom(v: &[&str], s: Option<&[&str]>, g: Option<&[&str]>) -> TlsPolicy {
        let own = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        TlsPolicy {
            profile: TlsProfile::Custom,
            versions: Some(own(v)),
            cipher_suites: s.map(own),
            groups: g.map(own),
        }
    }

    #[test]
    fn modern_is_tls13_only() {
        let p = TlsPolicy::named(TlsProfile::Modern);
        let versions: Vec<_> = p.versions().unwrap().iter().map(|v| v.version).collect();
        assert_eq!(versions, vec![ProtocolVersion::TLSv1_3]);
        let prov = p.provider().unwrap();
        assert!(prov.cipher_suites.iter().all(|s| s.tls13().is_some()));
    }

    #[test]
    fn intermediate_allows_12_and_13_with_aead_ecdhe_only() {
        let p = TlsPolicy::default();
        assert_eq!(p.profile, TlsProfile::Intermediate);
        assert_eq!(p.versions().unwrap().len(), 2);
        for s in &p.provider().unwrap().cipher_suites {
            let n = suite_name(s);
            assert!(
                n.starts_with("TLS13_") || n.starts_with("TLS_ECDHE_"),
                "{n}"
            );
            assert!(n.contains("GCM") || n.contains("CHACHA20_POLY1305"), "{n}");
        }
    }

    #[test]
    fn old_versions_cannot_be_enabled() {
        for v in ["1.0", "1.1", "TLSv1.1", "ssl3"] {
            let err = custom(&[v], None, None).versions().unwrap_err();
            assert!(matches!(err, TlsError::UnknownVersion(_)), "{v}: {err}");
        }
    }

    #[test]
    fn non_aead_suites_cannot_be_named() {
        let err = custom(&["1.2"], Some(&["TLS_RSA_WITH_AES_128_CBC_SHA"]), None)
            .provider()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown cipher suite"), "{msg}");
        assert!(
            msg.contains("TLS13_AES_128_GCM_SHA256"),
            "lists valid names: {msg}"
        );
    }

    #[test]
    fn custom_picks_exactly_what_it_names() {
        let p = custom(
            &["1.3"],
            Some(&["TLS13_CHACHA20_POLY1305_SHA256"]),
            Some(&["x25519"]),
        );
        let prov = p.provider().unwrap();
        assert_eq!(prov.cipher_suites.len(), 1);
        assert_eq!(prov.kx_groups.len(), 1);
    }

    #[test]
    fn custom_rejects_version_without_suite() {
        let p = custom(&["1.2", "1.3"], Some(&["TLS13_AES_128_GCM_SHA256"]), None);
        assert!(
            p.provider()
                .unwrap_err()
                .to_string()
                .contains("none of the chosen")
        );
    }

    #[test]
    fn knobs_need_custom() {
        let p = TlsPolicy {
            profile: TlsProfile::Modern,
            groups: Some(vec!["X25519".into()]),
            ..Default::default()
        };
        assert!(
            p.provider()
                .unwrap_err()
                .to_string()
                .contains("only valid with")
        );
    }

    #[test]
    fn unknown_group_lists_valid_ones() {
        let msg = custom(&["1.3"], None, Some(&["brainpool"]))
            .provider()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("X25519"), "{msg}");
    }
}
