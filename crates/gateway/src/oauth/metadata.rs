//! Discovery: which resource a URL is, what its metadata says (RFC 9728),
//! what this authorization server supports (RFC 8414), and the
//! `WWW-Authenticate` challenge that points a client at all of it.

use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use portcullis_http::{Body, json_response};
use portcullis_mcp::McpEndpoint;

use super::{AUTHORIZE, OAuthServer, REGISTER, SCOPE, TOKEN, WELL_KNOWN_RESOURCE, json_error};

/// The authority (`host[:port]`) a request was sent to, when it is a
/// well-formed one.
pub(super) fn authority_of<B>(req: &Request<B>) -> Option<Authority> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().to_owned(),
        None => req
            .headers()
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .to_owned(),
    };
    raw.parse::<Authority>()
        .ok()
        .filter(|a| !a.as_str().contains('@'))
}

/// Whom a resource's discovery may tell about it. Discovery comes before
/// any sign-in (a client needs it to sign in at all), so it answers alike
/// for every connection name, one that is an MCP connection or not, or
/// none at all: a review could tell which names existed, and which
/// spoke MCP, from its answers. Only a token request (after sign-in)
/// asks whether the resource is a real MCP connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asker {
    Anyone,
    SignedIn,
}

/// The MCP resource at `host` + `path`: its path prefix (what follows the
/// host in its identifier) and audience key. `None`: not an MCP resource
/// (for [`Asker::Anyone`], not a connection's address at all).
fn resource_at(
    host: &str,
    path: &str,
    mcp: &McpEndpoint,
    domain: Option<&str>,
    asker: Asker,
) -> Option<(String, String)> {
    let path = if path.is_empty() { "/" } else { path };
    if let Some(r) = portcullis_http::route::route(Some(host), path, domain)
        && (asker == Asker::Anyone || mcp.is_mcp_connection(r.connection))
    {
        // Path-routed (`/c/NAME/…`): the prefix names it; host-routed
        // (`NAME.domain`): the host does.
        let prefix = if path.starts_with("/c/") {
            format!("/c/{}", r.connection)
        } else {
            String::new()
        };
        return Some((prefix, format!("mcp/{}", r.connection)));
    }
    let own = portcullis_http::route::route(Some(host), path, domain).is_none();
    (own && (path == "/" || path == crate::listener::MCP_PATH))
        .then(|| (crate::listener::MCP_PATH.to_owned(), "mcp".to_owned()))
}

/// The `WWW-Authenticate` value for a 401 at `path` on `authority`:
/// where the protected resource's metadata is.
pub fn challenge_header(
    authority: Option<&str>,
    path: &str,
    mcp: &McpEndpoint,
    domain: Option<&str>,
    invalid_token: bool,
) -> Option<http::HeaderValue> {
    let authority: Authority = authority?.parse().ok()?;
    let (prefix, _) = resource_at(authority.host(), path, mcp, domain, Asker::Anyone)?;
    let error = if invalid_token {
        ", error=\"invalid_token\""
    } else {
        ""
    };
    let value = format!(
        "Bearer resource_metadata=\"https://{authority}{WELL_KNOWN_RESOURCE}{prefix}\", scope=\"{SCOPE}\"{error}"
    );
    http::HeaderValue::from_str(&value).ok()
}

impl OAuthServer {
    /// `/.well-known/oauth-protected-resource[PATH]`: the metadata of the
    /// MCP resource at PATH on this host (the gateway's `/mcp` for the
    /// bare form, unless the host is a connection's).
    pub(super) fn resource_metadata(
        &self,
        req: &Request<Incoming>,
        path: &str,
        mcp: &McpEndpoint,
    ) -> Response<Body> {
        let Some(authority) = authority_of(req) else {
            return json_error(StatusCode::BAD_REQUEST, "invalid_request", "no Host");
        };
        let Some((prefix, audience)) = resource_at(
            authority.host(),
            path,
            mcp,
            self.domain.as_deref(),
            Asker::Anyone,
        ) else {
            return json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no MCP resource at this path",
            );
        };
        json_response(
            StatusCode::OK,
            &serde_json::json!({
                "resource": format!("https://{authority}{prefix}"),
                "authorization_servers": [self.issuer],
                "scopes_supported": [SCOPE],
                "bearer_methods_supported": ["header"],
                "resource_name": format!("Portcullis {audience}"),
            }),
        )
    }

    /// `/.well-known/oauth-authorization-server`.
    pub(super) fn server_metadata(&self) -> Response<Body> {
        let at = |p: &str| format!("{}{p}", self.issuer);
        json_response(
            StatusCode::OK,
            &serde_json::json!({
                "issuer": self.issuer,
                "authorization_endpoint": at(AUTHORIZE),
                "token_endpoint": at(TOKEN),
                "registration_endpoint": at(REGISTER),
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
                "scopes_supported": [SCOPE],
                "authorization_response_iss_parameter_supported": true,
            }),
        )
    }

    /// The audience key of a `resource` parameter (an absolute https URI
    /// naming an MCP resource of this gateway, RFC 8707 §2), or why not.
    pub(super) fn audience_of(&self, resource: &str, mcp: &McpEndpoint) -> Result<String, String> {
        let uri: http::Uri = resource
            .parse()
            .map_err(|_| "the resource is not an absolute URI".to_owned())?;
        if uri.scheme_str() != Some("https") || uri.query().is_some() || resource.contains('#') {
            return Err("the resource must be an https URI without query or fragment".into());
        }
        let authority = uri
            .authority()
            .filter(|a| !a.as_str().contains('@'))
            .ok_or("the resource names no host")?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let domain = self.domain.as_deref();
        let known = self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
            || domain.is_some_and(|d| {
                host.to_ascii_lowercase()
                    .strip_suffix(d)
                    .is_some_and(|l| l.ends_with('.'))
            });
        if !known {
            return Err("the resource is not served by this gateway".into());
        }
        let path = uri.path().trim_end_matches('/');
        match resource_at(authority.host(), path, mcp, domain, Asker::SignedIn) {
            // The gateway's own endpoint is named by its path, not by the
            // bare origin.
            Some((_, audience)) if audience != "mcp" || path == crate::listener::MCP_PATH => {
                Ok(audience)
            }
            _ => Err("the resource is not an MCP endpoint of this gateway".into()),
        }
    }
}
