//! HTTP at Layer 7. The front half authenticates the caller, routes by
//! path (`/c/<connection>/…`) or host, asks policy, and streams the request
//! to the connection's [`Upstream`], the half that holds the credential.

mod error;
mod front;
pub mod headers;
mod metrics;
pub mod route;
mod upstream;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

pub use error::{ProxyError, full, json_response};
pub use front::{ConnInfo, HttpFront};
pub use metrics::HttpMetrics;
pub use upstream::{ForwardError, SetupError, Upstream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type used in both directions.
pub type Body = BoxBody<Bytes, BoxError>;

/// The caller's request body failed (e.g. the caller went away mid-body).
/// A type of its own so that the client error can be traced back to it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CallerBodyError(pub hyper::Error);
