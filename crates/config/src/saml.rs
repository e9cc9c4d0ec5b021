//! `[saml]`: the gateway as a SAML 2.0 service provider, for people
//! signing in to the web console through an identity provider that speaks
//! SAML rather than OpenID Connect. The provider is known by its metadata
//! (entity ID, signing certificates, single sign-on endpoint), read from a
//! file at start: a signature is only ever checked against those
//! certificates, never against one the response carries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{Invalid, duration, invalid};

#[derive(Debug, Clone, PartialEq)]
pub struct Saml {
    /// The identity provider's metadata (an `EntityDescriptor`).
    pub idp_metadata: PathBuf,
    /// The gateway's entity ID (the audience assertions must name);
    /// default `PUBLIC_URL/saml/metadata`.
    pub entity_id: Option<String>,
    /// The attribute that names the person; default the `NameID`.
    pub name_attribute: Option<String>,
    /// The attribute whose values are the person's groups.
    pub groups_attribute: String,
    /// How far the provider's clock may be from ours.
    pub clock_skew: Duration,
    /// Whose names its assertions carry (`namespace`, as on `[[oidc]]`).
    pub namespace: portcullis_identity::Namespace,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSaml {
    idp_metadata: String,
    entity_id: Option<String>,
    name_attribute: Option<String>,
    groups_attribute: Option<String>,
    clock_skew: Option<String>,
    namespace: Option<String>,
}

impl RawSaml {
    /// `namespace` as written (see `[[oidc]]`'s).
    pub(crate) fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub(crate) fn validate(&self, base: &Path) -> Result<Saml, Invalid> {
        if self.idp_metadata.trim().is_empty() {
            return Err(invalid(
                "saml.idp_metadata",
                "must name the identity provider's metadata file",
            ));
        }
        let clock_skew = match &self.clock_skew {
            None => Duration::from_secs(60),
            Some(s) => duration("saml.clock_skew", s)?,
        };
        if clock_skew > Duration::from_secs(300) {
            return Err(invalid("saml.clock_skew", "must be at most 5m"));
        }
        if let Some(e) = &self.entity_id
            && e.trim().is_empty()
        {
            return Err(invalid("saml.entity_id", "must not be empty"));
        }
        let name_attribute = self.name_attribute.clone().filter(|a| !a.is_empty());
        let groups_attribute = self
            .groups_attribute
            .clone()
            .unwrap_or_else(|| "groups".into());
        if groups_attribute.is_empty() {
            return Err(invalid("saml.groups_attribute", "must not be empty"));
        }
        let namespace = portcullis_identity::Namespace::from_config(self.namespace.as_deref())
            .map_err(|e| invalid("saml.namespace", e))?;
        Ok(Saml {
            namespace,
            idp_metadata: base.join(&self.idp_metadata),
            entity_id: self.entity_id.clone(),
            name_attribute,
            groups_attribute,
            clock_skew,
        })
    }
}
