//! The credentials cache: `$XDG_CONFIG_HOME/portcullis/credentials.json`
//! (or `~/.config/…`), one entry per gateway, written 0600 in a 0700
//! folder through a temporary file and a rename, so a crash never leaves
//! a half-written or world-readable file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};

use super::oauth::{Endpoints, TokenSet};

/// Refresh this long before the token's expiry.
const REFRESH_MARGIN: i64 = 60;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub issuer: String,
    pub client_id: String,
    pub token_endpoint: String,
    /// What is sent to the gateway (a JWT).
    pub bearer: String,
    pub refresh_token: Option<String>,
    /// Unix seconds; `None` when the provider did not say.
    pub expires_at: Option<i64>,
}

impl Entry {
    pub fn from_tokens(ep: &Endpoints, client_id: &str, t: &TokenSet) -> anyhow::Result<Self> {
        let bearer = t
            .bearer()
            .ok_or_else(|| {
                anyhow!(
                    "{} returned neither a JWT access token nor an ID token; the gateway verifies JWTs",
                    ep.issuer
                )
            })?
            .to_string();
        Ok(Self {
            issuer: ep.issuer.clone(),
            client_id: client_id.to_string(),
            token_endpoint: ep.token_endpoint.clone(),
            bearer,
            refresh_token: t.refresh_token.clone(),
            expires_at: t
                .expires_in
                .map(|s| portcullis_identity::unix_now() + s as i64),
        })
    }

    pub fn refreshed(&self, t: &TokenSet) -> anyhow::Result<Self> {
        let ep = Endpoints {
            issuer: self.issuer.clone(),
            token_endpoint: self.token_endpoint.clone(),
            authorization_endpoint: None,
            device_authorization_endpoint: None,
        };
        Self::from_tokens(&ep, &self.client_id, t)
    }

    pub fn expires_soon(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|e| e - REFRESH_MARGIN <= now)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Cache {
    gateways: BTreeMap<String, Entry>,
}

impl Cache {
    pub fn path() -> anyhow::Result<PathBuf> {
        let base = match std::env::var_os("XDG_CONFIG_HOME") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(
                std::env::var_os("HOME")
                    .ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?,
            )
            .join(".config"),
        };
        Ok(base.join("portcullis").join("credentials.json"))
    }

    pub fn load() -> anyhow::Result<Self> {
        let path = Self::path()?;
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is not a credentials cache", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn get(&self, gateway: &str) -> Option<&Entry> {
        self.gateways.get(gateway)
    }

    pub fn put(&mut self, gateway: &str, e: Entry) {
        self.gateways.insert(gateway.to_string(), e);
    }

    pub fn remove(&mut self, gateway: &str) -> bool {
        self.gateways.remove(gateway).is_some()
    }

    pub fn save(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = Self::path()?;
        let dir = path.parent().ok_or_else(|| anyhow!("no parent folder"))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(".credentials.json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_margin() {
        let e = Entry {
            issuer: "i".into(),
            client_id: "c".into(),
            token_endpoint: "t".into(),
            bearer: "b".into(),
            refresh_token: None,
            expires_at: Some(1000),
        };
        assert!(!e.expires_soon(900));
        assert!(e.expires_soon(950));
        assert!(
            !Entry {
                expires_at: None,
                ..e
            }
            .expires_soon(i64::MAX)
        );
    }
}
