//! The gateway's side: which agents are connected, and the operations the
//! fronts run through them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    Announced, Body, HDR_CONNECTION, HDR_OP, HDR_PG_PARAMS, HDR_PG_PID, HDR_PG_SECRET, LinkError,
    PG_PROTOCOL, RemoteError,
};

/// A session's byte stream over the link (tokio I/O).
pub type TunnelStream = hyper_util::rt::TokioIo<Upgraded>;

/// One connected agent.
pub(crate) struct Link {
    pub id: u64,
    pub agent: String,
    pub version: String,
    pub peer: SocketAddr,
    pub connections: Vec<Announced>,
    pub connected_at: i64,
    pub last_heartbeat: AtomicI64,
    pub send: SendRequest<Body>,
    /// Cancelled to cut the link (revocation, replacement, shutdown).
    pub cut: CancellationToken,
    /// Streams each caller holds through this link now.
    pub held: Mutex<HashMap<String, usize>>,
}

/// The share of an agent's streams one caller may hold by default: the
/// agent serves at most 1,000 at once (`agent::serve`), and a caller
/// holding them all had stalled every other caller on that agent.
pub const DEFAULT_STREAMS_PER_CALLER: usize = 250;

/// Streams an agent serves at once (its HTTP/2 server's limit).
pub const AGENT_STREAMS: usize = 1000;

/// Callers' streams through one agent, all together: the rest stay for
/// the gateway's own (heartbeats, catalog reads, previews, cancels). A
/// stream past the agent's limit is not refused by HTTP/2 but waits, so
/// without this bound four callers at their share made a fifth wait for
/// its whole timeout (a review).
const CALLER_STREAMS: usize = AGENT_STREAMS - 80;

/// The last streams callers may take go only to those holding fewer
/// than [`LIGHT`]: however many streams a few heavy callers want, a
/// newcomer still gets a few.
const RESERVED: usize = 120;
const LIGHT: usize = 4;

/// Why a caller may not open one more stream through an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The caller holds its share.
    Share { held: usize },
    /// Callers together hold what the agent can serve.
    Full,
}

/// Whether `caller`, holding `mine` of the `all` streams callers hold
/// through one agent, may open one more under a share of `max`.
fn admit(all: usize, mine: usize, max: usize) -> Result<(), Refusal> {
    if mine >= max {
        return Err(Refusal::Share { held: mine });
    }
    if all >= CALLER_STREAMS || (all >= CALLER_STREAMS - RESERVED && mine >= LIGHT) {
        return Err(Refusal::Full);
    }
    Ok(())
}

/// One of a caller's streams through an agent, counted until the last
/// clone is dropped (clones let it ride in a response's extensions).
#[derive(Clone)]
pub struct StreamPermit(Arc<Permit>);

struct Permit {
    link: Arc<Link>,
    caller: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut held) = self.link.held.lock()
            && let Some(n) = held.get_mut(&self.caller)
        {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

impl std::fmt::Debug for StreamPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPermit")
            .field("agent", &self.0.link.agent)
            .finish_non_exhaustive()
    }
}

/// A request body that holds its stream's permit until it is dropped.
struct Held {
    inner: Body,
    _permit: StreamPermit,
}

impl hyper::body::Body for Held {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A PostgreSQL session's stream through an agent, with the caller's
/// permit for it: the permit ends with the stream.
pub struct Tunnel {
    io: TunnelStream,
    _permit: Option<StreamPermit>,
}

impl tokio::io::AsyncRead for Tunnel {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tunnel {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What `portcullis agents list` and the admin API show.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AgentInfo {
    pub agent: String,
    pub version: String,
    pub address: String,
    pub connections: Vec<Announced>,
    pub connected_at: i64,
    pub last_heartbeat: i64,
}

pub struct AgentRegistry {
    links: Mutex<HashMap<String, Arc<Link>>>,
    next_id: AtomicU64,
    /// Streams one caller may hold through one agent at once.
    per_caller: std::sync::atomic::AtomicUsize,
    /// Cancel requests in flight through any agent: a caller's own and
    /// those the gateway sends for a caller that left mid-statement. They
    /// are no caller's streams, so they are bounded here, inside the
    /// streams the agent keeps beside callers' (a re-review: a caller
    /// dropping 250 sessions at once would have opened 250 cancels past
    /// the agent's limit, making others wait instead of being refused).
    cancels: tokio::sync::Semaphore,
}

/// Cancel requests in flight through agents at once (see
/// [`AgentRegistry::cancel_pg`]); under the streams the agent keeps
/// beside callers' ([`AGENT_STREAMS`] - `CALLER_STREAMS`).
const CANCELS_IN_FLIGHT: usize = 32;

impl Default for AgentRegistry {
    fn default() -> Self {
        Self {
            links: Mutex::default(),
            next_id: AtomicU64::default(),
            per_caller: DEFAULT_STREAMS_PER_CALLER.into(),
            cancels: tokio::sync::Semaphore::const_new(CANCELS_IN_FLIGHT),
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl AgentRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Streams one caller may hold through one agent at once
    /// (`[limits] max_agent_streams_per_caller`).
    pub fn set_streams_per_caller(&self, n: usize) {
        self.per_caller.store(n.max(1), Ordering::Relaxed);
    }

    /// A permit for one more stream of `caller` through `link`; `None`
    /// caller is the gateway's own (catalog reads, previews), not counted.
    /// `caller` is who answers for the stream (a person for the agents
    /// acting for them: minting agents must not multiply a share).
    fn permit(
        &self,
        link: &Arc<Link>,
        caller: Option<&str>,
    ) -> Result<Option<StreamPermit>, LinkError> {
        let Some(caller) = caller else {
            return Ok(None);
        };
        let max = self.per_caller.load(Ordering::Relaxed);
        let mut held = link.held.lock().map_err(|_| LinkError::Link {
            agent: link.agent.clone(),
            reason: "stream count unavailable".into(),
        })?;
        let all = held.values().sum();
        let n = held.entry(caller.to_owned()).or_insert(0);
        let agent = || link.agent.clone();
        match admit(all, *n, max) {
            Ok(()) => *n += 1,
            Err(Refusal::Share { held }) => {
                return Err(LinkError::Busy {
                    agent: agent(),
                    held,
                });
            }
            Err(Refusal::Full) => return Err(LinkError::Full { agent: agent() }),
        }
        Ok(Some(StreamPermit(Arc::new(Permit {
            link: link.clone(),
            caller: caller.to_owned(),
        }))))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Add a link; an older link of the same agent is cut (the agent
    /// reconnected, or a second instance took over).
    pub(crate) fn register(&self, link: Arc<Link>) {
        let old = self
            .links
            .lock()
            .ok()
            .and_then(|mut m| m.insert(link.agent.clone(), link));
        if let Some(old) = old {
            old.cut.cancel();
        }
    }

    /// Remove the link `id` of `agent` (not a newer one).
    pub(crate) fn remove(&self, agent: &str, id: u64) {
        if let Ok(mut m) = self.links.lock()
            && m.get(agent).is_some_and(|l| l.id == id)
        {
            m.remove(agent);
        }
    }

    /// Which link of `agent` is up now, if one is (a new id after every
    /// reconnect: what was checked through the last one is checked
    /// again).
    pub fn link_id(&self, agent: &str) -> Option<u64> {
        self.links
            .lock()
            .ok()
            .and_then(|m| m.get(agent).map(|l| l.id))
    }

    /// Cut the link of `agent`, if it has one (its assignments changed:
    /// it links again and announces what it serves now).
    pub fn cut(&self, agent: &str) -> bool {
        let link = self.links.lock().ok().and_then(|m| m.get(agent).cloned());
        link.map(|l| l.cut.cancel()).is_some()
    }

    /// Cut every link (gateway shutdown).
    pub fn cut_all(&self) {
        if let Ok(m) = self.links.lock() {
            for l in m.values() {
                l.cut.cancel();
            }
        }
    }

    pub fn list(&self) -> Vec<AgentInfo> {
        let mut v: Vec<AgentInfo> = self
            .links
            .lock()
            .map(|m| {
                m.values()
                    .map(|l| AgentInfo {
                        agent: l.agent.clone(),
                        version: l.version.clone(),
                        address: l.peer.to_string(),
                        connections: l.connections.clone(),
                        connected_at: l.connected_at,
                        last_heartbeat: l.last_heartbeat.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.agent.cmp(&b.agent));
        v
    }

    fn get(&self, agent: &str) -> Result<Arc<Link>, LinkError> {
        self.links
            .lock()
            .ok()
            .and_then(|m| m.get(agent).cloned())
            .ok_or_else(|| LinkError::NotConnected {
                agent: agent.to_string(),
            })
    }

    async fn send(
        &self,
        agent: &str,
        caller: Option<&str>,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<StreamPermit>), LinkError> {
        let link = self.get(agent)?;
        let permit = self.permit(&link, caller)?;
        // The request's body holds the stream open too (a target may
        // answer before reading it): the permit lives until both ended
        // (re-review: uploads to a target that answered 202 at once held
        // every stream of the agent).
        let req = match &permit {
            Some(p) => req.map(|body| {
                Held {
                    inner: body,
                    _permit: p.clone(),
                }
                .boxed()
            }),
            None => req,
        };
        let mut send = link.send.clone();
        if send.ready().await.is_err() {
            // The link just died: say so as "not connected", and drop it.
            link.cut.cancel();
            self.remove(agent, link.id);
            return Err(LinkError::NotConnected {
                agent: agent.to_string(),
            });
        }
        let resp = send.send_request(req).await.map_err(|e| LinkError::Link {
            agent: agent.to_string(),
            reason: e.to_string(),
        })?;
        Ok((resp, permit))
    }

    /// Relay an HTTP request to `connection` through `agent` for
    /// `caller` (counted against its share of the agent's streams while
    /// the returned permit lives: hold it until the answer's body ended).
    /// The request carries an origin-form URI (path and query); the agent
    /// adds its base URL and the credential.
    pub async fn send_http(
        &self,
        agent: &str,
        connection: &str,
        caller: Option<&str>,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<StreamPermit>), LinkError> {
        let h = req.headers_mut();
        h.insert(HDR_OP, http::HeaderValue::from_static("http"));
        h.insert(HDR_CONNECTION, header_value(connection)?);
        // HTTP/2 needs an absolute URI; the authority is the link's own.
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        *req.uri_mut() = format!("https://agent{pq}")
            .parse()
            .map_err(|_| remote(agent, "bad request path"))?;
        *req.version_mut() = http::Version::HTTP_2;
        self.send(agent, caller, req).await
    }

    /// Open a PostgreSQL session on `connection` through `agent`: the
    /// agent connects and authenticates to the target, then the returned
    /// stream carries the target's startup messages (ParameterStatus …,
    /// BackendKeyData, ReadyForQuery) and the session. `caller` is counted
    /// against its share of the agent's streams while the tunnel lives.
    pub async fn open_pg(
        &self,
        agent: &str,
        connection: &str,
        params: &[(String, String)],
        read_only: bool,
        owner: Option<&str>,
        caller: Option<&str>,
    ) -> Result<Tunnel, LinkError> {
        let params = serde_json::to_string(params).map_err(|e| remote(agent, &e.to_string()))?;
        let mut req = Request::builder();
        if let Some(owner) = owner {
            req = req.header(crate::HDR_PG_OWNER, header_value(owner)?);
        }
        let mut req = req
            .method(Method::CONNECT)
            .uri("https://agent/pg")
            .version(http::Version::HTTP_2)
            .header(HDR_OP, "pg")
            .header(HDR_CONNECTION, header_value(connection)?)
            .header(HDR_PG_PARAMS, header_value(&params)?)
            .header(
                crate::HDR_PG_ACCESS,
                if read_only { "read-only" } else { "read-write" },
            )
            .body(empty())
            .map_err(|e| remote(agent, &e.to_string()))?;
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static(PG_PROTOCOL));
        let (resp, permit) = self.send(agent, caller, req).await?;
        if resp.status() != StatusCode::OK {
            return Err(remote_answer(agent, resp).await);
        }
        hyper::upgrade::on(resp)
            .await
            .map(|io| Tunnel {
                io: hyper_util::rt::TokioIo::new(io),
                _permit: permit,
            })
            .map_err(|e| LinkError::Link {
                agent: agent.to_string(),
                reason: e.to_string(),
            })
    }

    /// Ask `agent` to cancel a running query of `connection`.
    pub async fn cancel_pg(
        &self,
        agent: &str,
        connection: &str,
        pid: i32,
        secret: i32,
    ) -> Result<(), LinkError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri("https://agent/pg-cancel")
            .version(http::Version::HTTP_2)
            .header(HDR_OP, "pg-cancel")
            .header(HDR_CONNECTION, header_value(connection)?)
            .header(HDR_PG_PID, pid)
            .header(HDR_PG_SECRET, secret)
            .body(empty())
            .map_err(|e| remote(agent, &e.to_string()))?;
        // Not a caller's stream: bounded apart, waiting for a place (the
        // callers bound the wait with their timeout).
        let _place = self
            .cancels
            .acquire()
            .await
            .map_err(|_| remote(agent, "cancels are closed"))?;
        let (resp, _) = self.send(agent, None, req).await?;
        if resp.status() != StatusCode::OK {
            return Err(remote_answer(agent, resp).await);
        }
        Ok(())
    }
}

fn header_value(s: &str) -> Result<http::HeaderValue, LinkError> {
    http::HeaderValue::from_str(s).map_err(|_| LinkError::Remote {
        agent: String::new(),
        message: "a value cannot be carried in a header".into(),
    })
}

pub(crate) fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

fn remote(agent: &str, message: &str) -> LinkError {
    LinkError::Remote {
        agent: agent.to_string(),
        message: message.to_string(),
    }
}

/// The agent's JSON error answer, as a [`LinkError`].
async fn remote_answer(agent: &str, resp: Response<Incoming>) -> LinkError {
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    match serde_json::from_slice::<RemoteError>(&body) {
        Ok(e) => remote(agent, &e.message),
        Err(_) => remote(agent, &format!("HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_is_refused_at_its_share() {
        assert_eq!(admit(0, 0, 2), Ok(()));
        assert_eq!(admit(1, 1, 2), Ok(()));
        assert_eq!(admit(2, 2, 2), Err(Refusal::Share { held: 2 }));
    }

    #[test]
    fn callers_together_never_take_what_the_agent_keeps_for_the_gateway() {
        // Four callers at a share of 250 would fill all 1,000 streams.
        let mut held = [0usize; 5];
        for c in 0..4 {
            while admit(held.iter().sum(), held[c], DEFAULT_STREAMS_PER_CALLER).is_ok() {
                held[c] += 1;
            }
        }
        let all: usize = held.iter().sum();
        assert!(all <= CALLER_STREAMS, "{held:?}");
        // A fifth caller still gets a few, refused promptly after them.
        let mut fifth = 0;
        while admit(
            held.iter().sum::<usize>() + fifth,
            fifth,
            DEFAULT_STREAMS_PER_CALLER,
        )
        .is_ok()
        {
            fifth += 1;
        }
        assert!(fifth >= 1, "a newcomer got nothing: {held:?}");
        assert!(fifth <= LIGHT);
    }

    #[test]
    fn the_reserve_goes_to_light_callers_and_the_whole_is_bounded() {
        let floor = CALLER_STREAMS - RESERVED;
        assert_eq!(admit(floor, LIGHT, 1000), Err(Refusal::Full));
        assert_eq!(admit(floor, LIGHT - 1, 1000), Ok(()));
        assert_eq!(admit(CALLER_STREAMS, 0, 1000), Err(Refusal::Full));
        // Any number of light callers: the whole stays under the agent's.
        let mut all = floor;
        while admit(all, 0, 1000).is_ok() {
            all += 1;
        }
        assert_eq!(all, CALLER_STREAMS);
    }
}
