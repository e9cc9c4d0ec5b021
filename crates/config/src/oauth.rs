//! `[oauth]`: the gateway as the OAuth 2.1 authorization server for MCP
//! clients (the MCP authorization model). People sign in through one of
//! the `[[oidc]]` issuers; clients register themselves (RFC 7591) with
//! redirect URIs the patterns here allow.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::{Invalid, OidcIssuer, SecretRef, duration, invalid};

/// The longest an OAuth grant lives, whatever `refresh_token_ttl` says:
/// the groups it carries were read at sign-in, and an agent acting for a
/// person should not outlast that person's working day by much (the same
/// bound as a token minted with `portcullis login --agent`).
pub const MAX_GRANT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq)]
pub struct OAuth {
    /// The `[[oidc]]` issuer people sign in with.
    pub issuer: String,
    /// The gateway's own client at that issuer.
    pub client_id: String,
    /// Its secret, for a confidential client (PKCE is used either way).
    pub client_secret: Option<SecretRef>,
    /// Scopes asked of the issuer at sign-in.
    pub scopes: String,
    /// Redirect URIs a registering client may use.
    pub redirect_uris: Vec<RedirectPattern>,
    pub access_token_ttl: Duration,
    /// How long a grant (its chain of refresh tokens) lives, counted from
    /// sign-in; at most [`MAX_GRANT`].
    pub refresh_token_ttl: Duration,
}

/// An allowed redirect URI: exact, or a prefix ending in `*`. A loopback
/// `http` pattern with no port matches any port (RFC 8252 §7.3: a native
/// client listens on whatever port it gets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectPattern(String);

impl RedirectPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let body = s.strip_suffix('*').unwrap_or(s);
        let Some((scheme, rest)) = body.split_once("://") else {
            return Err(format!("{s:?} is not an absolute URI"));
        };
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() {
            return Err(format!("{s:?} names no host"));
        }
        if s[..s.len() - 1].contains('*') {
            return Err(format!("{s:?}: `*` may only end a pattern"));
        }
        match scheme {
            "https" => {}
            "http" if is_loopback_authority(host) => {}
            "http" => return Err(format!("{s:?}: plain http is only allowed to loopback")),
            _ => {
                return Err(format!(
                    "{s:?}: expected an https:// or loopback http:// URI"
                ));
            }
        }
        if s.ends_with('*') && !rest.contains('/') {
            return Err(format!(
                "{s:?}: end the host with `/` before `*` (a prefix must not match other hosts)"
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a client's redirect URI is allowed by this pattern. A URI
    /// a browser would read as another path than it says (dot segments,
    /// also percent-encoded; backslashes; empty segments) is never
    /// allowed, or `https://app/oauth/../open-redirect` would pass a
    /// prefix `https://app/oauth/*`.
    pub fn allows(&self, uri: &str) -> bool {
        if uri.contains(['#', '\\']) || uri.chars().any(|c| !c.is_ascii_graphic()) {
            return false;
        }
        let after_scheme = uri.split_once("://").map_or("", |(_, r)| r);
        let path = after_scheme
            .find('/')
            .map_or("", |i| &after_scheme[i..])
            .split(['?'])
            .next()
            .unwrap_or("");
        let dot = |seg: &str| {
            let s = seg.to_ascii_lowercase().replace("%2e", ".");
            s == "." || s == ".."
        };
        if path.contains("//")
            || path.split('/').any(dot)
            || path.to_ascii_lowercase().contains("%2f")
        {
            return false;
        }
        let uri = without_loopback_port(uri, &self.0);
        match self.0.strip_suffix('*') {
            Some(prefix) => uri.starts_with(prefix),
            None => uri == self.0,
        }
    }
}

/// `uri` with its port removed when both it and `pattern` are loopback
/// http and the pattern names no port; otherwise `uri` as it is.
fn without_loopback_port<'a>(uri: &'a str, pattern: &str) -> std::borrow::Cow<'a, str> {
    let authority = |u: &'a str| -> Option<(&'a str, &'a str)> {
        let rest = u.strip_prefix("http://")?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        Some((&rest[..end], &rest[end..]))
    };
    let pattern_host = pattern
        .strip_prefix("http://")
        .and_then(|r| r.split(['/', '?', '*']).next());
    let Some(pattern_host) = pattern_host.filter(|h| is_loopback_authority(h) && !has_port(h))
    else {
        return uri.into();
    };
    let Some((auth, tail)) = authority(uri) else {
        return uri.into();
    };
    let host = match auth.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => auth,
    };
    if host != pattern_host {
        return uri.into();
    }
    format!("http://{host}{tail}").into()
}

fn has_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        Some((h, _)) => !h.is_empty() && !authority.ends_with(']'),
        None => false,
    }
}

fn is_loopback_authority(authority: &str) -> bool {
    let host = if authority.starts_with('[') {
        authority.split(']').next().map(|h| format!("{h}]"))
    } else {
        authority.split(':').next().map(str::to_owned)
    };
    matches!(host.as_deref(), Some("127.0.0.1" | "localhost" | "[::1]"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOAuth {
    issuer: Option<String>,
    client_id: String,
    client_secret: Option<String>,
    scopes: Option<String>,
    redirect_uris: Option<Vec<String>>,
    access_token_ttl: Option<String>,
    refresh_token_ttl: Option<String>,
}

impl RawOAuth {
    pub(crate) fn validate(&self, oidc: &[OidcIssuer], base: &Path) -> Result<OAuth, Invalid> {
        let issuer = match (&self.issuer, oidc) {
            (Some(i), _) if oidc.iter().any(|o| &o.settings.issuer == i) => i.clone(),
            (Some(i), _) => {
                return Err(invalid(
                    "oauth.issuer",
                    format!("{i:?} is not one of the [[oidc]] issuers"),
                ));
            }
            (None, [only]) => only.settings.issuer.clone(),
            (None, []) => {
                return Err(invalid(
                    "oauth",
                    "people sign in through an [[oidc]] issuer: configure one",
                ));
            }
            (None, _) => {
                return Err(invalid(
                    "oauth.issuer",
                    "several [[oidc]] issuers are configured: name the one people sign in with",
                ));
            }
        };
        if self.client_id.is_empty() {
            return Err(invalid("oauth.client_id", "must not be empty"));
        }
        // People sign in through this client: a token of it is never an
        // agent's.
        let roles = oidc
            .iter()
            .find(|o| o.settings.issuer == issuer)
            .and_then(|o| o.settings.clients.as_ref());
        if roles.is_some_and(|r| r.agents.iter().any(|a| a.client == self.client_id)) {
            return Err(invalid(
                "oauth.client_id",
                "is among the issuer's agent_clients, whose tokens are agents'; people sign in \
                 through this client",
            ));
        }
        let client_secret = match &self.client_secret {
            None => None,
            Some(s) => {
                Some(SecretRef::parse(s, base).map_err(|e| invalid("oauth.client_secret", e))?)
            }
        };
        let defaults = ["http://127.0.0.1/*", "http://localhost/*", "http://[::1]/*"];
        let patterns = match &self.redirect_uris {
            Some(p) => p.clone(),
            None => defaults.iter().map(|s| s.to_string()).collect(),
        };
        let mut redirect_uris = Vec::with_capacity(patterns.len());
        for p in &patterns {
            redirect_uris
                .push(RedirectPattern::parse(p).map_err(|e| invalid("oauth.redirect_uris", e))?);
        }
        let access_token_ttl = duration(
            "oauth.access_token_ttl",
            self.access_token_ttl.as_deref().unwrap_or("10m"),
        )?;
        if access_token_ttl < Duration::from_secs(30)
            || access_token_ttl > Duration::from_secs(3600)
        {
            return Err(invalid(
                "oauth.access_token_ttl",
                "must be between 30s and 1h (access tokens are short-lived; refresh renews them)",
            ));
        }
        let refresh_token_ttl = duration(
            "oauth.refresh_token_ttl",
            self.refresh_token_ttl.as_deref().unwrap_or("24h"),
        )?;
        if refresh_token_ttl < access_token_ttl || refresh_token_ttl > MAX_GRANT {
            return Err(invalid(
                "oauth.refresh_token_ttl",
                "must be at least access_token_ttl and at most 24h",
            ));
        }
        Ok(OAuth {
            issuer,
            client_id: self.client_id.clone(),
            client_secret,
            scopes: self
                .scopes
                .clone()
                .unwrap_or_else(|| "openid email groups".into()),
            redirect_uris,
            access_token_ttl,
            refresh_token_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RedirectPattern {
        RedirectPattern::parse(s).unwrap()
    }

    #[test]
    fn loopback_patterns_match_any_port_and_nothing_else() {
        let lo = p("http://127.0.0.1/*");
        assert!(lo.allows("http://127.0.0.1:33418/callback"));
        assert!(lo.allows("http://127.0.0.1/callback"));
        for bad in [
            "http://127.0.0.1.evil.test/cb",
            "http://127.0.0.1@evil.test/cb",
            "https://127.0.0.1:1/cb",
            "http://localhost:1/cb",
            "http://127.0.0.1:1/cb#frag",
            "http://127.0.0.1:x/cb",
            "http://evil.test/http://127.0.0.1/",
            "http://127.0.0.1:1/cb\u{202e}",
        ] {
            assert!(!lo.allows(bad), "{bad}");
        }
        let v6 = p("http://[::1]/*");
        assert!(v6.allows("http://[::1]:8080/cb"));
        assert!(!v6.allows("http://[::2]:8080/cb"));
    }

    #[test]
    fn exact_and_prefix_patterns() {
        let exact = p("https://claude.ai/api/mcp/auth_callback");
        assert!(exact.allows("https://claude.ai/api/mcp/auth_callback"));
        assert!(!exact.allows("https://claude.ai/api/mcp/auth_callback/x"));
        let prefix = p("https://app.example.com/oauth/*");
        assert!(prefix.allows("https://app.example.com/oauth/cb"));
        assert!(!prefix.allows("https://app.example.com.evil.test/oauth/cb"));
        // Paths a browser reads as another path stay out of a prefix.
        for escape in [
            "https://app.example.com/oauth/../logout?next=https://evil.test/",
            "https://app.example.com/oauth/%2e%2e/redirect",
            "https://app.example.com/oauth/%2E./redirect",
            "https://app.example.com/oauth/x/..\\..\\redirect",
            "https://app.example.com/oauth//evil.test/",
            "https://app.example.com/oauth/a%2f..%2fb",
            "https://app.example.com/oauth/ü",
        ] {
            assert!(!prefix.allows(escape), "{escape}");
        }
        assert!(prefix.allows("https://app.example.com/oauth/cb?x=../y"));
        // A port on the pattern is kept exact.
        let port = p("http://127.0.0.1:9000/cb");
        assert!(port.allows("http://127.0.0.1:9000/cb"));
        assert!(!port.allows("http://127.0.0.1:9001/cb"));
    }

    #[test]
    fn unsafe_patterns_are_refused() {
        for bad in [
            "http://example.com/*",
            "https://example.com*",
            "javascript:alert(1)",
            "https://*.example.com/",
            "custom-scheme://cb",
            "https:///cb",
        ] {
            assert!(RedirectPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
