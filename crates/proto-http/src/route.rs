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

/// Whether a path holds a `.` or `..` segment in any way a target may read
/// it. Such paths are refused rather than forwarded: a target that
/// normalises them could be walked out of the connection's base path. A
/// segment counts as read percent-decoded (up to three times: some stacks
/// decode twice), split again at `/` and `\\` (an encoded slash that a
/// target decodes before routing, a backslash read as a slash), and with
/// a `;` path parameter cut off (Tomcat reads `..;/` as `../`). An
/// encoded slash between other names (`group%2Fproject`, as GitLab's API
/// takes) still passes.
pub fn has_dot_segment(path: &str) -> bool {
    let is_dot = |part: &str| {
        let name = part.split(';').next().unwrap_or(part);
        name == "." || name == ".."
    };
    path.split('/').any(|seg| {
        let mut reading = std::borrow::Cow::Borrowed(seg);
        for _ in 0..4 {
            if reading.split(['/', '\\']).any(is_dot) {
                return true;
            }
            // Borrowed: nothing was encoded, so nothing more to read
            // (and no allocation on the request path).
            match percent_encoding::percent_decode_str(&reading).decode_utf8_lossy() {
                std::borrow::Cow::Borrowed(_) => return false,
                std::borrow::Cow::Owned(decoded) => reading = std::borrow::Cow::Owned(decoded),
            }
        }
        // Still changing after three decodings: not read as anything sure.
        true
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
        for p in [
            "/../admin",
            "/a/./b",
            "/a/..",
            "/%2e%2e/x",
            "/%2E./x",
            // Review: an encoded slash or a Tomcat path parameter.
            "/secret/%2E%2E%2Fx",
            "/secret/..%2Fx",
            "/secret/..;/x",
            "/secret/..;jsessionid=1/x",
            "/secret/.;/x",
            "/a/..\\x",
            "/a/%5C..%5Cx",
            // Decoded twice.
            "/a/%252e%252e/x",
            "/a/%25252e%25252e%25252fx",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/a/b",
            "/",
            "/a.b/..c/",
            "/.well-known/x",
            "/projects/group%2Fproject/issues",
            "/a;v=1/b",
            "/a/...",
            "/files/%2e%2e.txt",
        ] {
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
