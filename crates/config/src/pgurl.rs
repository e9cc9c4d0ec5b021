//! libpq-style `postgres://` URLs, as far as a connection needs them.

/// A parsed `postgres://USER[:PASSWORD]@HOST[:PORT]/DB?sslmode=…&sslrootcert=…`.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<String>,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgUrl")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("sslmode", &self.sslmode)
            .finish()
    }
}

/// Only the two modes that mean something for a gateway: full
/// verification, or plaintext written out. `require`/`verify-ca` would
/// encrypt without knowing to whom, so they are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    VerifyFull,
    Disable,
}

impl PgUrl {
    /// The URL without its password, for configs and messages.
    pub fn without_password(&self) -> String {
        let mut s = format!(
            "postgres://{}@{}:{}/{}",
            encode(&self.user),
            host_for_url(&self.host),
            self.port,
            encode(&self.database)
        );
        let mut q = Vec::new();
        if self.sslmode == SslMode::Disable {
            q.push("sslmode=disable".to_string());
        }
        if let Some(r) = &self.sslrootcert {
            q.push(format!("sslrootcert={}", encode(r)));
        }
        if !q.is_empty() {
            s.push('?');
            s.push_str(&q.join("&"));
        }
        s
    }
}

fn host_for_url(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

/// Parse a URL. Errors never echo the password.
pub fn parse(s: &str) -> Result<PgUrl, String> {
    let rest = s
        .strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"))
        .ok_or("expected a postgres:// URL")?;
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = main
        .split_once('/')
        .ok_or("the URL needs a database: postgres://USER@HOST:PORT/DATABASE")?;
    let (userinfo, hostport) = authority
        .rsplit_once('@')
        .ok_or("the URL needs a user: postgres://USER@HOST:PORT/DATABASE")?;
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (
            decode(u)?,
            Some(decode(p).map_err(|_| "the password is not valid percent-encoding".to_string())?),
        ),
        None => (decode(userinfo)?, None),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unterminated [IPv6] host")?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let port = match port {
        None => 5432,
        Some(p) => p.parse().map_err(|_| format!("invalid port {p:?}"))?,
    };
    if host.is_empty() || user.is_empty() {
        return Err("the URL needs a user and a host".into());
    }
    let database = decode(path)?;
    if database.is_empty() {
        return Err("the URL needs a database name".into());
    }
    let mut sslmode = SslMode::VerifyFull;
    let mut sslrootcert = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                sslmode = match v {
                    "verify-full" => SslMode::VerifyFull,
                    "disable" => SslMode::Disable,
                    other => {
                        return Err(format!(
                            "sslmode={other} is not supported: use verify-full (the default) or, for a plaintext target, disable"
                        ));
                    }
                }
            }
            "sslrootcert" => sslrootcert = Some(decode(v)?),
            other => {
                return Err(format!(
                    "unsupported URL parameter {other:?}; supported: sslmode, sslrootcert"
                ));
            }
        }
    }
    Ok(PgUrl {
        user,
        password,
        host,
        port,
        database,
        sslmode,
        sslrootcert,
    })
}

/// What a URL's user, password and path keep unencoded: RFC 3986's
/// unreserved characters (and `/` between path segments).
const URL_PART: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

fn decode(s: &str) -> Result<String, String> {
    // percent-encoding passes a malformed escape through as text; in a
    // credential that would silently change it, so it is an error here.
    let b = s.as_bytes();
    let malformed = b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !b
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err("invalid percent-encoding in the URL".into());
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "the URL is not UTF-8 after decoding".to_string())
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, URL_PART).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let u = parse("postgres://app%40x:s3cr%2Ft@db.internal:6543/my%20db?sslmode=verify-full&sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(u.user, "app@x");
        assert_eq!(u.password.as_deref(), Some("s3cr/t"));
        assert_eq!((u.host.as_str(), u.port), ("db.internal", 6543));
        assert_eq!(u.database, "my db");
        assert_eq!(u.sslmode, SslMode::VerifyFull);
        assert_eq!(u.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let again = parse(&u.without_password()).unwrap();
        assert_eq!(again.password, None);
        assert_eq!((&again.user, &again.database), (&u.user, &u.database));
        assert!(!format!("{u:?}").contains("s3cr"));
    }

    #[test]
    fn defaults_and_ipv6() {
        let u = parse("postgresql://u@[::1]/d").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.sslmode),
            ("::1", 5432, SslMode::VerifyFull)
        );
        assert_eq!(u.without_password(), "postgres://u@[::1]:5432/d");
    }

    #[test]
    fn weak_modes_and_junk_are_refused_without_echoing_passwords() {
        for bad in [
            "postgres://u:hunter2@h/d?sslmode=require",
            "postgres://u:hunter2@h/d?sslmode=prefer",
            "postgres://u:hunter2@h/d?foo=1",
            "postgres://u:hunter2@h",
            "postgres://h/d",
            "mysql://u@h/d",
            "postgres://u:hunter2@h:99999/d",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
        assert_eq!(
            parse("postgres://u@h/d?sslmode=disable").unwrap().sslmode,
            SslMode::Disable
        );
    }
}
