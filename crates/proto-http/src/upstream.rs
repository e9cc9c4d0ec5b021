//! The upstream half of the HTTP protocol: TLS to the target (verified by
//! default) and the injected credential. This is the only code that reads
//! a target's secret; the outbound agent will run this same half.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_config::{Connection, HttpTarget, UpstreamTls};
use portcullis_tls::TlsPolicy;

use crate::{Body, BodyState};

/// Why an upstream could not be set up (at startup: fail closed).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("connection {connection:?}: {reason}")]
    Tls { connection: String, reason: String },
    #[error("connection {connection:?}: credential {reference}: {reason}")]
    Secret {
        connection: String,
        reference: String,
        reason: String,
    },
}

/// Why one forwarded request failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the target did not answer within {:.1}s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the request body is over the limit")]
    BodyTooLarge,
    #[error("{0}")]
    CallerBody(String),
    #[error("{0}")]
    Upstream(String),
    #[error("agent {0:?} is not connected")]
    AgentUnavailable(String),
    /// The caller holds its share of the agent's streams already.
    #[error("{0}")]
    Busy(String),
}

/// Idle connections kept per target after a burst. Without a bound the
/// pool kept every connection a burst opened (205 after 256 concurrent
/// 64 KiB requests) for the idle timeout, each holding its read buffer:
/// resident memory stayed at twice the fresh figure. (Capping the read
/// buffer at 64 KiB as well cost 17% more CPU per 64 KiB response at one
/// connection, so hyper's default of ~400 KiB stays.)
///
/// Each connection worker's pool keeps [`idle_per_pool`]: this shared
/// out among the cores, but from 16 to 64 each. A share of 64 among the
/// workers (32 each on two cores) was too small: a worker serving more
/// callers than its share closed a connection for every one it opened,
/// since hyper's client dials
/// whenever no idle connection is at hand and drops a returning one when
/// the idle list is full. At 64 keep-alive callers that was 1,400-2,000
/// TLS handshakes with the target in 8 s where 64 were needed, and 10% of
/// the requests a second (docs/performance.md, session 10). 64 in every
/// pool, as nginx's `keepalive` is per worker process, was too large on
/// many cores: 4,160 idle sockets per connection entry on 64 (review).
const IDLE_ACROSS_POOLS: usize = 512;

/// What each pool keeps: [`IDLE_ACROSS_POOLS`] shared out among this
/// machine's cores, from 16 to 64 (64 on up to eight cores; 16 on 32 or
/// more, about 1,000 across 64 pools).
pub(crate) fn idle_per_pool() -> usize {
    idle_on(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// What the work-stealing runtime's one pool keeps (the agent; the
/// gateway without connection workers): it serves every caller, so it
/// takes no share of [`IDLE_ACROSS_POOLS`], whose 16 on many cores would
/// close what more than 16 callers at once need; 64, as it always kept.
const IDLE_SHARED: usize = 64;

fn idle_on(cores: usize) -> usize {
    (IDLE_ACROSS_POOLS / cores.max(1)).clamp(16, 64)
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// A target's connection pools: one per thread that sends to it from a
/// single-threaded runtime (a connection worker), and one shared by the
/// threads of a work-stealing runtime (the agent; the gateway with
/// `PORTCULLIS_CONNECTION_THREADS=0`). A pooled connection is driven by
/// a task on the thread that opened it, and a request sent from another
/// thread costs a cross-thread wake-up each way: on connection workers, a
/// caller on the other worker than the pooled connection's cost ~35 µs of
/// CPU more per 1 KiB request (124 against 162 µs in an A/B). Where tasks
/// move between threads anyway, pools per thread only split the idle
/// bound: the agent at 64 connections lost 27% (docs/performance.md).
struct Pools {
    /// A client of its own for a pool, keeping at most this many idle
    /// connections per target.
    build: Box<dyn Fn(usize) -> HttpsClient + Send + Sync>,
    /// `None`: the work-stealing runtimes' pool.
    by_thread: std::sync::Mutex<Vec<(Option<std::thread::ThreadId>, HttpsClient)>>,
}

impl Pools {
    fn new(build: impl Fn(usize) -> HttpsClient + Send + Sync + 'static) -> Self {
        Self {
            build: Box::new(build),
            by_thread: Default::default(),
        }
    }

    /// The pool for this thread.
    fn client(&self) -> HttpsClient {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let pinned =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
        let key = pinned.then(|| std::thread::current().id());
        let mut pools = self.by_thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = pools.iter().find(|(t, _)| *t == key) {
            return c.clone();
        }
        let idle = if pinned { idle_per_pool() } else { IDLE_SHARED };
        let c = (self.build)(idle);
        pools.push((key, c.clone()));
        c
    }
}

pub struct Upstream {
    name: String,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    pools: Pools,
    credential: Option<(HeaderName, HeaderValue)>,
    /// Keeps the credential's secret out of the target's answers.
    scrubber: Option<crate::scrub::Scrubber>,
    timeout: Duration,
    /// Served through an agent: (agent name, the gateway's links).
    via: Option<(String, Arc<portcullis_link::AgentRegistry>)>,
    /// The target reads method overrides (see `Connection`).
    method_overrides: bool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(
        conn: &Connection,
        target: &HttpTarget,
        policy: &TlsPolicy,
    ) -> Result<Self, SetupError> {
        let tls_err = |reason: String| SetupError::Tls {
            connection: conn.name.clone(),
            reason,
        };
        let roots = match &conn.ca_file {
            Some(bundle) => {
                portcullis_tls::load_roots(bundle, true).map_err(|e| tls_err(e.to_string()))?
            }
            None => portcullis_tls::system_roots(),
        };
        let tls =
            portcullis_tls::client_config(policy, roots).map_err(|e| tls_err(e.to_string()))?;

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(conn.timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = match target.tls {
            UpstreamTls::Verify => builder.https_only(),
            UpstreamTls::Disable => {
                tracing::warn!(
                    connection = %conn.name,
                    url = %target.url,
                    "PLAINTEXT to the target: tls = \"disable\" is set for this connection"
                );
                builder.https_or_http()
            }
        }
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
        let pools = Pools::new(move |idle| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(idle)
                .build(connector.clone())
        });

        let mut scrubber = None;
        let credential = match &target.credential {
            None => None,
            Some(c) => {
                let secret_err = |reason: String| SetupError::Secret {
                    connection: conn.name.clone(),
                    reference: c.secret.to_string(),
                    reason,
                };
                let secret = c.secret.resolve().map_err(secret_err)?;
                let mut value =
                    HeaderValue::try_from(format!("{}{}", c.prefix, secret.expose()))
                        .map_err(|_| secret_err("the secret is not a valid header value".into()))?;
                // Keeps the value out of HPACK tables and Debug output.
                value.set_sensitive(true);
                scrubber = crate::scrub::Scrubber::new(secret.expose().as_bytes());
                Some((c.header.clone(), value))
            }
        };

        let (scheme, authority) = match (target.url.scheme(), target.url.authority()) {
            (Some(s), Some(a)) => (s.clone(), a.clone()),
            _ => return Err(tls_err("the URL needs a scheme and a host".into())),
        };
        Ok(Self {
            name: conn.name.clone(),
            scheme,
            authority,
            base_path: target.url.path().trim_end_matches('/').to_string(),
            pools,
            credential,
            scrubber,
            timeout: conn.timeout,
            via: None,
            method_overrides: conn.method_overrides,
        })
    }

    /// The gateway's half for a connection an agent serves: requests go
    /// through the agent's link; the agent holds the URL and credential.
    pub fn via_agent(
        conn: &Connection,
        agent: &str,
        links: Arc<portcullis_link::AgentRegistry>,
        policy: &TlsPolicy,
    ) -> Result<Self, SetupError> {
        let tls =
            portcullis_tls::client_config(policy, rustls::RootCertStore::empty()).map_err(|e| {
                SetupError::Tls {
                    connection: conn.name.clone(),
                    reason: e.to_string(),
                }
            })?;
        // Never dialled: the link carries the requests.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(HttpConnector::new());
        Ok(Self {
            name: conn.name.clone(),
            scheme: Scheme::HTTPS,
            authority: Authority::from_static("agent.invalid"),
            base_path: String::new(),
            pools: Pools::new(move |_| {
                Client::builder(TokioExecutor::new()).build(connector.clone())
            }),
            credential: None,
            scrubber: None,
            timeout: conn.timeout,
            via: Some((agent.to_string(), links)),
            method_overrides: conn.method_overrides,
        })
    }

    /// The agent serving this connection, if one does.
    pub fn agent(&self) -> Option<&str> {
        self.via.as_ref().map(|(a, _)| a.as_str())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the target reads method overrides.
    pub fn method_overrides(&self) -> bool {
        self.method_overrides
    }

    /// What keeps the credential's secret out of answers (none for a
    /// connection served by an agent, or without a credential).
    pub fn scrubber(&self) -> Option<&crate::scrub::Scrubber> {
        self.scrubber.as_ref()
    }

    pub fn injected_header(&self) -> Option<&HeaderName> {
        self.credential.as_ref().map(|(n, _)| n)
    }

    /// The target URI for a caller's `rest` path and query.
    pub fn target_uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let pq = match query {
            Some(q) => format!("{}{}?{}", self.base_path, rest, q),
            None => format!("{}{}", self.base_path, rest),
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(pq)?)
            .build()
    }

    /// Send a prepared request (URI from [`Self::target_uri`], headers
    /// already cleaned) with the credential added, for `caller` (through
    /// an agent, a stream counted against the caller's share: the answer
    /// carries its [`portcullis_link::StreamPermit`] in its extensions, to
    /// hold until the body ended). Times out waiting for the response
    /// head; the body then streams without a deadline.
    pub async fn forward(
        &self,
        caller: Option<&str>,
        mut req: Request<Body>,
        body_state: &BodyState,
    ) -> Result<Response<Incoming>, ForwardError> {
        if let Some((agent, links)) = &self.via {
            return self.forward_via(agent, links, caller, req).await;
        }
        // Whatever the caller spoke, ALPN decides what the target gets.
        *req.version_mut() = Version::HTTP_11;
        if let Some((name, value)) = &self.credential {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        if self.scrubber.is_some() {
            // A compressed or partial answer would hide the secret from
            // the scrubber (code review): the whole text is asked for.
            let h = req.headers_mut();
            h.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            h.remove(http::header::RANGE);
            h.remove(http::header::IF_RANGE);
        }
        match tokio::time::timeout(self.timeout, self.pools.client().request(req)).await {
            Err(_) => Err(ForwardError::Timeout(self.timeout)),
            Ok(Ok(resp)) => Ok(resp),
            // Our own body's failure explains the client error best; with
            // HTTP/2 to the target it is not in the error's source chain.
            Ok(Err(_)) if body_state.over_limit() => Err(ForwardError::BodyTooLarge),
            Ok(Err(_)) if body_state.caller_failed() => Err(ForwardError::CallerBody(
                "the caller stopped sending the body".into(),
            )),
            Ok(Err(e)) => Err(classify(&e, self.authority.host())),
        }
    }
}

impl Upstream {
    async fn forward_via(
        &self,
        agent: &str,
        links: &portcullis_link::AgentRegistry,
        caller: Option<&str>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ForwardError> {
        use portcullis_link::LinkError;
        let sent = tokio::time::timeout(
            self.timeout,
            links.send_http(agent, &self.name, caller, req),
        );
        let resp = match sent.await {
            Err(_) => return Err(ForwardError::Timeout(self.timeout)),
            Ok(Err(LinkError::NotConnected { agent })) => {
                return Err(ForwardError::AgentUnavailable(agent));
            }
            Ok(Err(e @ (LinkError::Busy { .. } | LinkError::Full { .. }))) => {
                return Err(ForwardError::Busy(e.to_string()));
            }
            Ok(Err(e)) => return Err(ForwardError::Upstream(e.to_string())),
            Ok(Ok((mut r, permit))) => {
                if let Some(p) = permit {
                    r.extensions_mut().insert(p);
                }
                r
            }
        };
        if !resp.headers().contains_key(portcullis_link::HDR_LINK_ERROR) {
            return Ok(resp);
        }
        // The agent's own failure (target down, untrusted…), not the
        // target's answer.
        use http_body_util::BodyExt;
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let e: Option<portcullis_link::RemoteError> = serde_json::from_slice(&body).ok();
        Err(match e {
            Some(e) if e.error == "upstream_timeout" => ForwardError::Timeout(self.timeout),
            Some(e) => ForwardError::Upstream(format!("via agent {agent:?}: {}", e.message)),
            None => ForwardError::Upstream(format!("agent {agent:?} failed")),
        })
    }
}

/// Every cause of `err`, outermost first. Follows `source()` and also
/// looks inside `io::Error`s, whose `source()` skips the error they wrap
/// (and hyper-rustls nests one io::Error in another).
fn causes<'a>(err: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut stack = vec![err];
    while let Some(e) = stack.pop() {
        if out.len() > 32 {
            break;
        }
        out.push(e);
        if let Some(s) = e.source() {
            stack.push(s);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            stack.push(inner);
        }
    }
    out
}

/// Turn a client error into what the caller should be told.
fn classify(err: &hyper_util::client::legacy::Error, host: &str) -> ForwardError {
    let all = causes(err);
    for e in &all {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return ForwardError::Upstream(describe_tls(t, host));
        }
    }
    for e in &all {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return ForwardError::Upstream("the target refused the connection".into());
                }
                std::io::ErrorKind::TimedOut => {
                    return ForwardError::Upstream("connecting to the target timed out".into());
                }
                _ => {}
            }
        }
    }
    if err.is_connect() {
        ForwardError::Upstream(format!("cannot connect to the target: {}", describe(&all)))
    } else {
        ForwardError::Upstream(format!("the target failed: {}", describe(&all)))
    }
}

/// What failed, in words the gateway chose. The errors' own text can hold
/// the target's (an HTTP/2 GOAWAY's debug data is printed with it), which
/// would reach the caller neither masked nor scrubbed (review).
fn describe(all: &[&(dyn StdError + 'static)]) -> String {
    for e in all {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            let what = if h.is_parse() || h.is_parse_status() {
                "it sent a malformed response"
            } else if h.is_incomplete_message() {
                "it closed the connection before the response was complete"
            } else if h.is_timeout() {
                "it did not answer in time"
            } else if h.is_body_write_aborted() {
                "it stopped reading the request body"
            } else if h.is_canceled() || h.is_closed() {
                "it closed the connection"
            } else {
                "the exchange broke off"
            };
            return what.into();
        }
    }
    for e in all {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return format!("the connection failed ({:?})", io.kind());
        }
    }
    "the exchange broke off".into()
}

fn describe_tls(e: &rustls::Error, host: &str) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the target's certificate is not trusted (unknown issuer); \
             add its CA to the connection's `ca_file`"
                .into()
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            format!("the target's certificate is not valid for host {host:?}")
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the target's certificate has expired".into()
        }
        other => format!("TLS with the target failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    /// 64 a pool up to eight cores (two: 128 in all, where 64 shared out
    /// had closed connections under 64 callers); about 512 in all up to
    /// 32; then 16 a pool.
    #[test]
    fn idle_connections_kept_by_core_count() {
        let each: Vec<(usize, usize)> = [1, 2, 8, 16, 32, 64, 128]
            .into_iter()
            .map(|c| (c, super::idle_on(c)))
            .collect();
        assert_eq!(
            each,
            [
                (1, 64),
                (2, 64),
                (8, 64),
                (16, 32),
                (32, 16),
                (64, 16),
                (128, 16)
            ]
        );
        assert_eq!(super::idle_on(0), 64);
    }
}
