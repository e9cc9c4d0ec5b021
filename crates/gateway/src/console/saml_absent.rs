//! This build has no SAML support (the `saml` cargo feature, which links
//! libxmlsec1): a config with `[saml]` is refused at start, so nothing
//! here can be reached.

use std::net::IpAddr;

use http::{Request, Response};
use hyper::body::Incoming;
use portcullis_audit::AuditLog;
use portcullis_config::saml::Saml;
use portcullis_http::Body;
use portcullis_store::Store;

use super::Console;

/// No provider's metadata is read in this build.
pub fn idp_entity_id(_cfg: &Saml) -> Option<String> {
    None
}

/// No value of this type exists.
pub enum SamlSp {}

impl SamlSp {
    pub fn new(
        _cfg: &Saml,
        _public_url: &str,
        _store: Store,
        _audit: AuditLog,
    ) -> Result<Self, String> {
        Err(
            "[saml] needs a portcullis built with SAML support (`cargo build --release --features saml`, \
             which needs libxmlsec1-dev and libclang-dev)"
                .into(),
        )
    }

    pub fn metadata(&self) -> Response<Body> {
        match *self {}
    }

    pub async fn sign_in(&self, _peer: IpAddr) -> Response<Body> {
        match *self {}
    }

    pub async fn acs(
        &self,
        _req: Request<Incoming>,
        _console: &Console,
        _peer: IpAddr,
    ) -> Response<Body> {
        match *self {}
    }
}
