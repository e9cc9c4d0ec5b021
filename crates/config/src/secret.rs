//! Secrets are never written inline in configuration: a key names where
//! the secret lives (`env:NAME` or `file:PATH`) and the value is read when
//! the config is loaded, into a type that will not print itself.

use std::path::{Path, PathBuf};

/// Where a secret lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl SecretRef {
    /// Parse `env:NAME` or `file:PATH`; a relative path is taken from
    /// `base` (the config file's folder).
    pub fn parse(s: &str, base: &Path) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("env:") {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("{s:?} does not name an environment variable"));
            }
            Ok(Self::Env(name.to_string()))
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: needs a path".into());
            }
            Ok(Self::File(base.join(path)))
        } else {
            // Do not echo the value: it may be a secret pasted inline.
            Err("expected a secret reference `env:NAME` or `file:PATH`; \
                 secrets are never written inline"
                .into())
        }
    }

    /// Read the secret. Errors say where it was looked for, never what
    /// was found.
    pub fn resolve(&self) -> Result<Secret, String> {
        let raw = match self {
            Self::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set or not UTF-8"))?,
            Self::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?,
        };
        let value = raw.trim_end_matches(['\r', '\n']).to_string();
        if value.is_empty() {
            return Err(format!("the secret in {self} is empty"));
        }
        Ok(Secret(value))
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(n) => write!(f, "env:{n}"),
            Self::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// A secret value. Its `Debug` and `Display` never show it; the only way
/// to the bytes is [`Secret::expose`], which is easy to grep for.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references_and_refuses_inline_values() {
        let base = Path::new("/etc/p");
        assert_eq!(
            SecretRef::parse("env:KEY_1", base),
            Ok(SecretRef::Env("KEY_1".into()))
        );
        assert_eq!(
            SecretRef::parse("file:k.txt", base),
            Ok(SecretRef::File("/etc/p/k.txt".into()))
        );
        assert_eq!(
            SecretRef::parse("file:/abs", base),
            Ok(SecretRef::File("/abs".into()))
        );
        let err = SecretRef::parse("hunter2-canary", base).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(SecretRef::parse("env:", base).is_err());
        assert!(SecretRef::parse("env:A-B", base).is_err());
    }

    #[test]
    fn resolves_files_without_trailing_newline_and_hides_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "canary-value\n").unwrap();
        let s = SecretRef::File(p).resolve().unwrap();
        assert_eq!(s.expose(), "canary-value");
        assert!(!format!("{s:?}").contains("canary"));
    }

    #[test]
    fn missing_secret_errors_name_the_place_only() {
        let e = SecretRef::Env("PORTCULLIS_TEST_SURELY_UNSET".into())
            .resolve()
            .unwrap_err();
        assert!(e.contains("PORTCULLIS_TEST_SURELY_UNSET"));
    }
}
