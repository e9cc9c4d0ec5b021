//! Which connection a request is for. Pure: host and path in, the
//! connection name and the path to send upstream out.

/// A routed request: the connection and the rest of the path (always
/// starting with `/`).
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    pub connection: &'a str,
    pub rest: &'a str,
}

/// Route by host name (`<connection>.<domain>`, when a domain is set) or by
/// path prefix (`/c/<connection>/<rest>`). Host routing wins when it
/// matches, so a connection's own paths may start with `/c/`.
pub fn route<'a>(host: Option<&'a str>, path: &'a str, domain: Option<&str>) -> Option<Route<'a>> {
    if let (Some(host), Some(domain)) = (host, domain) {
        let host = strip_port(host);
        if let Some(label) = host
            .strip_suffix(domain)
            .and_then(|h| h.strip_suffix('.'))
            .filter(|l| !l.is_empty() && !l.contains('.'))
        {
            return Some(Route {
                connection: label,
                rest: if path.is_empty() { "/" } else { path },
            });
        }
    }
    let after = path.strip_prefix("/c/")?;
    let (connection, rest) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    if connection.is_empty() {
        return None;
    }
    Some(Route { connection, rest })
}

/// Whether a path holds a `.` or `..` segment (also percent-encoded). Such
/// paths are refused rather than forwarded: a target that normalises them
/// could be walked out of the connection's base path.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    })
}

fn strip_port(host: &str) -> &str {
    // IPv6 literals are never connection host names; only strip a port
    // after a DNS name.
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r<'a>(c: &'a str, rest: &'a str) -> Option<Route<'a>> {
        Some(Route {
            connection: c,
            rest,
        })
    }

    #[test]
    fn path_routing() {
        assert_eq!(
            route(None, "/c/demo-api/hello", None),
            r("demo-api", "/hello")
        );
        assert_eq!(
            route(None, "/c/demo-api/a/b/", None),
            r("demo-api", "/a/b/")
        );
        assert_eq!(route(None, "/c/demo-api", None), r("demo-api", "/"));
        assert_eq!(route(None, "/c/demo-api/", None), r("demo-api", "/"));
        assert_eq!(route(None, "/c/", None), None);
        assert_eq!(route(None, "/c//x", None), None);
        assert_eq!(route(None, "/hello", None), None);
        assert_eq!(route(None, "/", None), None);
    }

    #[test]
    fn dot_segments() {
        for p in ["/../admin", "/a/./b", "/a/..", "/%2e%2e/x", "/%2E./x"] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in ["/a/b", "/", "/a.b/..c/", "/.well-known/x"] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn host_routing() {
        let d = Some("gw.example.com");
        assert_eq!(route(Some("api.gw.example.com"), "/x", d), r("api", "/x"));
        assert_eq!(
            route(Some("api.gw.example.com:8443"), "/x", d),
            r("api", "/x")
        );
        // Not a single label below the domain: fall back to paths.
        assert_eq!(route(Some("a.b.gw.example.com"), "/x", d), None);
        assert_eq!(route(Some("gw.example.com"), "/c/api/x", d), r("api", "/x"));
        assert_eq!(route(Some("evilgw.example.com"), "/x", d), None);
        // No domain configured: host names never route.
        assert_eq!(route(Some("api.gw.example.com"), "/x", None), None);
        assert_eq!(route(Some("[::1]:8443"), "/c/a/b", d), r("a", "/b"));
    }
}
