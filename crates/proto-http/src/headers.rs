//! Header hygiene between caller and target. Pure functions over
//! `HeaderMap`s.

use http::HeaderMap;
use http::header::{self, HeaderName};

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross a proxy.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP) {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

/// Headers of a caller's request as they may go to the target: without
/// hop-by-hop headers, without the caller's credentials, without a header
/// that could impersonate the injected credential, and without `Host`
/// (the client sets the target's).
pub fn request_to_upstream(h: &mut HeaderMap, injected: Option<&HeaderName>) {
    strip_hop_by_hop(h);
    h.remove(header::AUTHORIZATION);
    h.remove(header::HOST);
    if let Some(name) = injected {
        h.remove(name);
    }
    // Only the gateway says who the client is.
    h.remove("forwarded");
    h.remove("x-forwarded-for");
    h.remove("x-forwarded-proto");
    h.remove("x-forwarded-host");
    // Headers some stacks route by instead of the path (IIS rewrite
    // behind Symfony or Zend reads `X-Original-URL`; others take a prefix
    // from the proxy): they would walk a request out of the connection's
    // base path, which the gateway checks on the path alone (review).
    for h2 in [
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
        "x-forwarded-path",
        "x-original-uri",
    ] {
        h.remove(h2);
    }
    // Said to the gateway (a just-in-time duration), not to the target.
    h.remove(crate::review::SESSION_HEADER);
    without_gateway_cookies(h);
}

/// The prefix of the gateway's own cookies (the OAuth sign-in's browser
/// binding). Path-routed targets share the gateway's origin, so the
/// cookie's `__Host-` scope does not keep them apart: the gateway does.
pub const GATEWAY_COOKIE_PREFIX: &str = "__Host-portcullis";

/// The value of cookie `name` in a request's `Cookie` headers (HTTP/2
/// may split them).
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Cookie` without the gateway's own cookies.
fn without_gateway_cookies(h: &mut HeaderMap) {
    let values: Vec<_> = h.get_all(header::COOKIE).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    let kept: Vec<String> = values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with(GATEWAY_COOKIE_PREFIX))
        .map(str::to_owned)
        .collect();
    h.remove(header::COOKIE);
    if let Ok(v) = http::HeaderValue::from_str(&kept.join("; "))
        && !kept.is_empty()
    {
        h.insert(header::COOKIE, v);
    }
}

/// What every target's response says to a browser: render in a unique
/// origin of your own. Path-routed targets share the gateway's origin
/// (its console, its sign-in pages), so a target's page, script or
/// upload must not run as the gateway; host-routed ones are the same
/// site. Scripts and forms still run, without the gateway's cookies or
/// storage.
pub const TARGET_SANDBOX: &str = "sandbox allow-scripts allow-forms allow-popups allow-downloads";

/// Headers of the target's response as they may go back to the caller:
/// no hop-by-hop headers, no cookie in the gateway's own name, and a
/// sandbox for whatever a browser would render.
pub fn response_to_caller(h: &mut HeaderMap) {
    strip_hop_by_hop(h);
    h.append(
        header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(TARGET_SANDBOX),
    );
    if h.contains_key(header::SET_COOKIE) {
        let prefix = GATEWAY_COOKIE_PREFIX.to_ascii_lowercase();
        let kept: Vec<_> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| {
                !v.as_bytes()
                    .trim_ascii_start()
                    .to_ascii_lowercase()
                    .starts_with(prefix.as_bytes())
            })
            .cloned()
            .collect();
        h.remove(header::SET_COOKIE);
        for v in kept {
            h.append(header::SET_COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_gateways_own_cookies_never_cross_the_proxy() {
        let mut req = map(&[
            ("cookie", "a=1; __Host-portcullis-oauth=victim"),
            ("cookie", "__Host-portcullis-x=y"),
            ("cookie", "b=2"),
        ]);
        request_to_upstream(&mut req, None);
        let sent: Vec<_> = req.get_all(header::COOKIE).iter().collect();
        assert_eq!(sent, ["a=1; b=2"]);
        let mut only = map(&[("cookie", "__Host-portcullis-oauth=v")]);
        request_to_upstream(&mut only, None);
        assert!(!only.contains_key(header::COOKIE));
        let mut resp = map(&[
            (
                "set-cookie",
                "__Host-portcullis-oauth=planted; Path=/; Secure",
            ),
            ("set-cookie", "__HOST-PORTCULLIS-console=x; Path=/; Secure"),
            ("set-cookie", "session=ok; Path=/"),
        ]);
        response_to_caller(&mut resp);
        let back: Vec<_> = resp.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(back, ["session=ok; Path=/"]);
        // Whatever a browser renders from a target runs in its own origin.
        let csp: Vec<_> = resp
            .get_all(header::CONTENT_SECURITY_POLICY)
            .iter()
            .collect();
        assert_eq!(csp, [TARGET_SANDBOX]);
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn caller_credentials_and_hop_by_hop_are_removed() {
        let mut h = map(&[
            ("authorization", "Bearer pcl_secret"),
            ("x-api-key", "forged"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("host", "gateway"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-original-url", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("x-forwarded-prefix", "/.."),
            ("accept", "application/json"),
        ]);
        request_to_upstream(&mut h, Some(&HeaderName::from_static("x-api-key")));
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn response_keeps_end_to_end_headers() {
        let mut h = map(&[
            ("content-type", "text/plain"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "a=b"),
        ]);
        response_to_caller(&mut h);
        assert!(h.contains_key("content-type") && h.contains_key("set-cookie"));
        assert!(!h.contains_key("transfer-encoding"));
    }
}
