//! `POST /oauth/register`: dynamic client registration (RFC 7591). Anyone
//! may register (that is what lets `claude mcp add` work with no set-up),
//! so what a registration can do is narrow: public clients only, redirect
//! URIs from the operator's allow-list, names and counts bounded. A
//! client is nothing until a person consents to it.

use std::collections::HashMap;
use std::net::IpAddr;

use portcullis_front::unidentified::network;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use portcullis_audit::OAuthAction;
use portcullis_http::{Body, json_response};
use portcullis_store::OAuthClientRow;
use serde::Deserialize;

use super::{OAuthEntry, OAuthServer, body, json_error, secret, unix_now};

/// Registered clients, at most (unauthenticated registration must not
/// fill the store).
const MAX_CLIENTS: i64 = 10_000;
/// Registrations no person consented to, at most: past it the oldest
/// are forgotten, so a flood cannot hold the cap (a person's client
/// registers and is consented to within minutes).
pub(super) const MAX_UNCONSENTED: i64 = 1_000;
/// Registrations one address may make per window: a person's tools
/// register a handful of times, a flood from one place is refused.
pub(super) const PER_PEER: u32 = 20;
const WINDOW_SECS: i64 = 600;
/// Networks remembered at most; past it the oldest is forgotten (the
/// overall bound keeps a window's networks far below it, so this only
/// bounds memory should the factors change).
const MAX_PEERS: usize = 10_000;
/// What all networks together may do in a window, as a multiple of what
/// one may: a review flooded registrations from 501 loopback addresses,
/// 20 each, and filled the store's cap of clients.
const OVERALL_FACTOR: u32 = 30;
/// What one IPv6 /48 may do, as a multiple of what one /64 may: one
/// free /48 holds 65,536 /64s, which alone took the overall bound and
/// kept everyone else from signing in (code review).
const BLOCK_FACTOR: u32 = 4;

/// Sign-ins one address may start per window (each keeps a row in the
/// store until it expires).
pub(super) const SIGN_INS_PER_PEER: u32 = 60;

/// Requests per network in the current window, at most `limit`, and
/// from all networks together at most `limit * OVERALL_FACTOR`.
pub(crate) struct PerPeer {
    limit: u32,
    seen: std::sync::Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Window start and count, per network.
    networks: HashMap<IpAddr, (i64, u32)>,
    /// The same per IPv6 block ([`block`]); an IPv4 network is no
    /// block's part, and is not counted twice.
    blocks: HashMap<IpAddr, (i64, u32)>,
    overall: (i64, u32),
}

impl PerPeer {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            limit,
            seen: Default::default(),
        }
    }

    pub(crate) fn allow(&self, peer: IpAddr, now: i64) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        let seen = &mut *seen;
        if now - seen.overall.0 >= WINDOW_SECS {
            seen.overall = (now, 0);
        }
        if seen.overall.1 >= self.limit.saturating_mul(OVERALL_FACTOR) {
            return false;
        }
        let (key, block) = (network(peer), block(peer));
        if let Some(b) = block
            && window(&mut seen.blocks, b, now).1 >= self.limit.saturating_mul(BLOCK_FACTOR)
        {
            return false;
        }
        let counted = window(&mut seen.networks, key, now);
        if counted.1 >= self.limit {
            return false;
        }
        counted.1 += 1;
        if let Some(b) = block {
            window(&mut seen.blocks, b, now).1 += 1;
        }
        seen.overall.1 += 1;
        true
    }
}

/// The window of `key` in `map` at `now` (a new one when the last ended),
/// the oldest forgotten when the map is full.
fn window(map: &mut HashMap<IpAddr, (i64, u32)>, key: IpAddr, now: i64) -> &mut (i64, u32) {
    if map.len() >= MAX_PEERS && !map.contains_key(&key) {
        map.retain(|_, (start, _)| now - *start < WINDOW_SECS);
        if map.len() >= MAX_PEERS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (start, _))| *start)
                .map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
    }
    let entry = map.entry(key).or_insert((now, 0));
    if now - entry.0 >= WINDOW_SECS {
        *entry = (now, 0);
    }
    entry
}

/// The block an address's network belongs to: an IPv6 /48 (what one
/// site, or one free tunnel, is given). An IPv4 address is its own
/// network and in no block (counting it twice had kept two entries per
/// address: left for later last stop).
fn block(peer: IpAddr) -> Option<IpAddr> {
    match network(peer) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(IpAddr::V6(std::net::Ipv6Addr::new(
                s[0], s[1], s[2], 0, 0, 0, 0, 0,
            )))
        }
        _ => None,
    }
}

const MAX_REDIRECTS: usize = 10;
const MAX_NAME: usize = 100;

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    redirect_uris: Vec<String>,
    client_name: Option<String>,
    #[serde(default)]
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    response_types: Option<Vec<String>>,
}

impl OAuthServer {
    pub(super) async fn register(&self, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        if !self.registrations.allow(peer, unix_now()) {
            // Read what the client is still sending, or it sees a reset
            // stream instead of the refusal.
            portcullis_http::linger(req.into_body()).await;
            return json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                &format!(
                    "at most {PER_PEER} registrations per {} minutes from one network, and {} from all of them",
                    WINDOW_SECS / 60,
                    PER_PEER * OVERALL_FACTOR
                ),
            );
        }
        if req.method() != Method::POST {
            return json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "POST the client's metadata as JSON",
            );
        }
        let Some(bytes) = body(req).await else {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_client_metadata",
                "the metadata is too large",
            );
        };
        let m: Metadata = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client_metadata",
                    &format!("expected JSON client metadata: {e}"),
                );
            }
        };
        let name = match self.check(&m) {
            Ok(name) => name,
            Err((error, description)) => {
                return json_error(StatusCode::BAD_REQUEST, error, &description);
            }
        };
        self.sweep_now_and_then();
        match self.store.oauth_make_room(MAX_UNCONSENTED).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                forgotten = n,
                "OAuth registrations no person consented to were forgotten to make room"
            ),
            Err(e) => return unavailable(&e),
        }
        match self.store.oauth_live_clients().await {
            Ok(n) if n >= MAX_CLIENTS => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "too many registered clients; an operator can revoke unused ones",
                );
            }
            Ok(_) => {}
            Err(e) => return unavailable(&e),
        }
        let Ok((random, _)) = secret() else {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "no randomness",
            );
        };
        let id = format!(
            "{}-{}",
            slug(&name),
            &random[..8].to_ascii_lowercase().replace(['-', '_'], "x")
        );
        let row = OAuthClientRow {
            id: id.clone(),
            name: name.clone(),
            redirect_uris: m.redirect_uris.clone(),
            created_at: unix_now(),
            revoked_at: None,
        };
        if let Err(e) = self.store.insert_oauth_client(&row).await {
            return unavailable(&e);
        }
        let mut entry = OAuthEntry::new(OAuthAction::ClientRegistered, &id);
        entry.reason = Some(format!(
            "name {name:?}, redirect_uris {:?}",
            m.redirect_uris
        ));
        if self.audit(entry).await.is_err() {
            // Not usable without its entry: revoke what was just stored.
            let _ = self.store.revoke_oauth_client(&id, unix_now()).await;
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the audit log is unavailable",
            );
        }
        tracing::info!(client_id = %id, name = ?name, "OAuth client registered");
        json_response(
            StatusCode::CREATED,
            &serde_json::json!({
                "client_id": id,
                "client_id_issued_at": row.created_at,
                "client_name": name,
                "redirect_uris": m.redirect_uris,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                // Public clients only: the gateway issues no client
                // secrets; PKCE binds a code to the client that asked.
                "token_endpoint_auth_method": "none",
            }),
        )
    }

    /// The client's name, when its metadata is acceptable; else the
    /// RFC 7591 error and why.
    fn check(&self, m: &Metadata) -> Result<String, (&'static str, String)> {
        let bad_meta = |d: &str| ("invalid_client_metadata", d.to_owned());
        if m.redirect_uris.is_empty() || m.redirect_uris.len() > MAX_REDIRECTS {
            return Err((
                "invalid_redirect_uri",
                format!("register between 1 and {MAX_REDIRECTS} redirect URIs"),
            ));
        }
        for uri in &m.redirect_uris {
            if uri.len() > 2000 || !self.cfg.redirect_uris.iter().any(|p| p.allows(uri)) {
                let allowed: Vec<&str> =
                    self.cfg.redirect_uris.iter().map(|p| p.as_str()).collect();
                return Err((
                    "invalid_redirect_uri",
                    format!(
                        "{:?} is not allowed by this gateway (allowed: {})",
                        uri.chars().take(200).collect::<String>(),
                        allowed.join(", ")
                    ),
                ));
            }
        }
        if let Some(g) = &m.grant_types
            && g.iter()
                .any(|g| g != "authorization_code" && g != "refresh_token")
        {
            return Err(bad_meta(
                "grant_types: only authorization_code and refresh_token are supported",
            ));
        }
        if let Some(r) = &m.response_types
            && r.iter().any(|r| r != "code")
        {
            return Err(bad_meta("response_types: only code is supported"));
        }
        let name = m.client_name.clone().unwrap_or_else(|| "MCP client".into());
        // Letters and digits of any script, spaces and ASCII punctuation:
        // no control, format or bidi characters that could reorder what
        // the consent page says around the name.
        let shown = |c: char| c.is_alphanumeric() || c == ' ' || c.is_ascii_punctuation();
        if name.trim().is_empty() || name.chars().count() > MAX_NAME || !name.chars().all(shown) {
            return Err(bad_meta(&format!(
                "client_name: 1 to {MAX_NAME} letters, digits, spaces and punctuation"
            )));
        }
        Ok(name)
    }
}

fn unavailable(e: &portcullis_store::StoreError) -> Response<Body> {
    tracing::error!(error = %e, "OAuth store operation failed");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the store is unavailable",
    )
}

/// A principal-safe label from a client's chosen name: lowercase ASCII
/// letters and digits, other runs as one `-`, at most 24 characters. The
/// random suffix of the id, not this label, is what identifies a client.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 24 {
            break;
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "client".into()
    } else {
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_per_address_are_bounded() {
        let r = PerPeer::new(PER_PEER);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..PER_PEER {
            assert!(r.allow(a, 100));
        }
        assert!(!r.allow(a, 100));
        assert!(r.allow(b, 100), "another address is not affected");
        assert!(r.allow(a, 100 + WINDOW_SECS), "a new window");
    }

    /// Review: 20 registrations from each of 501 loopback addresses
    /// filled the store's cap of clients.
    #[test]
    fn many_addresses_are_bounded_by_network_and_overall() {
        let r = PerPeer::new(PER_PEER);
        // Loopback is one host, an IPv6 /64 one network.
        let allowed = (0..2000)
            .filter(|i| r.allow(IpAddr::from([127, 66, (i / 256) as u8, (i % 256) as u8]), 0))
            .count();
        assert_eq!(allowed, PER_PEER as usize);
        let r = PerPeer::new(PER_PEER);
        let allowed = (0..2000u16)
            .filter(|i| r.allow(IpAddr::from([0x2001, 0xdb8, 0, 1, *i, 0, 0, 1]), 0))
            .count();
        assert_eq!(allowed, PER_PEER as usize);
        // Many /64s of one /48 (code review): four networks' worth.
        let r = PerPeer::new(PER_PEER);
        let allowed = (0..2000u16)
            .filter(|i| r.allow(IpAddr::from([0x2001, 0xdb8, 7, *i, 1, 0, 0, 1]), 0))
            .count();
        assert_eq!(allowed, (PER_PEER * BLOCK_FACTOR) as usize);
        // Many networks: at most the overall bound per window.
        let r = PerPeer::new(PER_PEER);
        let allowed = (0..5000u32)
            .filter(|i| r.allow(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), 0))
            .count();
        assert_eq!(allowed, (PER_PEER * OVERALL_FACTOR) as usize);
        // IPv4 networks are kept once, in no block.
        let seen = r.seen.lock().unwrap();
        assert_eq!((seen.networks.len(), seen.blocks.len()), (600, 0));
        drop(seen);
        assert!(r.allow("192.0.2.1".parse().unwrap(), WINDOW_SECS));
        // A refused request does not count (a network over its limit
        // cannot use up the overall bound).
        let r = PerPeer::new(2);
        for _ in 0..1000 {
            r.allow("10.0.0.1".parse().unwrap(), 0);
        }
        assert!(r.allow("10.0.0.2".parse().unwrap(), 0));
    }

    #[test]
    fn slugs_are_principal_safe() {
        assert_eq!(slug("Claude Code"), "claude-code");
        assert_eq!(slug("  ../../etc  "), "etc");
        assert_eq!(slug("ü@:x"), "x");
        assert_eq!(slug("!!!"), "client");
        assert!(slug(&"a".repeat(200)).len() <= 24);
        for s in ["Claude Code", "x y", "!!!"] {
            let subject = format!("agent:{}-abcdefgh@alice", slug(s));
            assert!(
                portcullis_identity::validate_subject(&subject).is_ok(),
                "{subject}"
            );
        }
    }
}
