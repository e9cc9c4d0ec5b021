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
/// decode twice, and IIS also reads `%u002e`), split again at `/` and `\\`
/// (an encoded slash that a target decodes before routing, a backslash
/// read as a slash, and their full-width forms), with a `;` path
/// parameter or a NUL and what follows cut off (Tomcat reads `..;/` as
/// `../`; C code stops at NUL), trailing blanks dropped, and full-width
/// or leader dots read as dots (NFKC folds them). An overlong UTF-8 form
/// (`%c0%ae`, which old decoders read as `.`) is refused outright: no
/// valid text holds one. An encoded slash between other names
/// (`group%2Fproject`, as GitLab's API takes) still passes. Written by
/// hand: no crate states what traversal readings targets use.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let mut reading = std::borrow::Cow::Borrowed(seg);
        for _ in 0..4 {
            if reading.split(is_slash).any(is_dot) {
                return true;
            }
            match decode(&reading) {
                // Nothing was encoded, so nothing more to read (and no
                // allocation on the request path).
                Decoded::Same => return false,
                Decoded::Overlong => return true,
                Decoded::Changed(decoded) => reading = std::borrow::Cow::Owned(decoded),
            }
        }
        // Still changing after three decodings: not read as anything sure.
        true
    })
}

fn is_slash(c: char) -> bool {
    // Full-width and small forms fold to `/` and `\\` under NFKC.
    // U+2215 (division slash) is read as `/` by Windows' best fit.
    matches!(
        c,
        '/' | '\\' | '\u{FF0F}' | '\u{FF3C}' | '\u{FE68}' | '\u{2215}'
    )
}

fn is_dot(part: &str) -> bool {
    let name = part.split([';', '\0']).next().unwrap_or(part);
    let name = name.trim_end_matches([' ', '\t']);
    if name.is_ascii() {
        return name == "." || name == "..";
    }
    let mut dots = 0;
    for c in name.chars() {
        dots += match c {
            '.' | '\u{FF0E}' | '\u{2024}' | '\u{FE52}' => 1,
            '\u{2025}' | '\u{FE30}' => 2,
            _ => return false,
        };
    }
    (1..=2).contains(&dots)
}

enum Decoded {
    Same,
    Overlong,
    Changed(String),
}

/// One reading of `%XX` and IIS's `%uXXXX`.
fn decode(s: &str) -> Decoded {
    let s = decode_iis(s);
    let bytes: std::borrow::Cow<'_, [u8]> = percent_encoding::percent_decode_str(&s).into();
    match (&s, bytes) {
        (std::borrow::Cow::Borrowed(_), std::borrow::Cow::Borrowed(_)) => Decoded::Same,
        (_, bytes) if has_overlong(&bytes) => Decoded::Overlong,
        (_, bytes) => Decoded::Changed(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

/// `%uXXXX` as the UTF-16 unit IIS reads it as (a surrogate as U+FFFD).
fn decode_iis(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains("%u") && !s.contains("%U") {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut changed = false;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let unit = after
            .strip_prefix(['u', 'U'])
            .and_then(|h| h.get(..4))
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        match unit {
            Some(u) => {
                out.push(char::from_u32(u).unwrap_or('\u{FFFD}'));
                rest = &after[5..];
                changed = true;
            }
            None => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    if changed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Whether decoded bytes hold an overlong UTF-8 sequence (a character
/// encoded in more bytes than it needs), which old decoders accepted.
fn has_overlong(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| {
        matches!(w[0], 0xC0 | 0xC1)
            || (w[0] == 0xE0 && (0x80..0xA0).contains(&w[1]))
            || (w[0] == 0xF0 && (0x80..0x90).contains(&w[1]))
    }) || bytes.last().is_some_and(|b| matches!(b, 0xC0 | 0xC1))
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
            // Legacy readings: overlong UTF-8, IIS's %u, NUL, blanks,
            // full-width and leader dots and slashes.
            "/a/%c0%ae%c0%ae/x",
            "/a/..%c0%afx",
            "/a/%e0%80%ae./x",
            "/a/%f0%80%80%ae/x",
            "/a/%u002e%u002e/x",
            "/a/%U002E./x",
            "/a/..%u2215x",
            "/a/%u002E%u002E%u002fx",
            "/a/..%00/x",
            "/a/..%00.jpg",
            "/a/..%20/x",
            "/a/%ef%bc%8e%ef%bc%8e/x",
            "/a/%e2%80%a5/x",
            // Re-review: U+FE30 reads as `..` under NFKC.
            "/a/%ef%b8%b0/x",
            "/a/..%ef%bc%8fx",
            "/a/..%ef%bc%bcx",
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
            "/a/%u0041b",
            "/a/100%25/x",
            "/a/%uZZZZ/x",
            "/a/caf%c3%a9/x",
            "/a/%e2%80%a6/x",
            "/a/%ef%bc%8e%ef%bc%8e%ef%bc%8e/x",
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
