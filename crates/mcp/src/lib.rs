//! Portcullis as an MCP server: a Streamable HTTP endpoint (`/mcp` on the
//! gateway's TLS listener) whose tools reach the connections the caller
//! has been granted, through the same policy, guardrails, masking,
//! recording and audit as psql or curl.
//!
//! The gateway authenticates the request before it gets here and passes
//! the [`Caller`] along in the request's extensions; rmcp (the official
//! SDK) does the protocol. Each tool call that touches a connection is its
//! own session (protocol `mcp`) in the audit log and the recordings.

mod call;
mod list;
mod pins;
mod proxy;
mod schema;
mod server;
mod sql;
mod tools;
mod web;

use std::collections::HashMap;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use portcullis_config::{Access, Config, Protocol, Target};
use portcullis_front::{FrontContext, Origin};
use portcullis_identity::Principal;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

pub use proxy::SessionSeal;
pub use server::McpServer;

/// Who called, as the gateway established it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub peer: String,
    /// Cancelled when the caller stops waiting for the call (its HTTP
    /// request went away): the call stops, its statement cancelled on
    /// the target, rather than running to its `timeout_ms` for nobody.
    pub gone: tokio_util::sync::CancellationToken,
    /// Whether the caller's connection hung up, for what `gone` misses.
    pub hang_up: portcullis_http::HangUp,
}

impl Caller {
    /// Completes when the caller has gone away: its request was dropped
    /// (rmcp cancels [`Caller::gone`]), or its TCP connection hung up
    /// while hyper was not reading it (an HTTP/1.1 client that pipelined
    /// another request behind the call, then left: a review).
    pub(crate) async fn left(&self) {
        tokio::select! {
            () = self.gone.cancelled() => {}
            () = self.hang_up.left() => {}
        }
    }

    /// Where a tool call or proxied request comes from, for admission.
    pub(crate) fn origin(&self) -> Origin {
        Origin {
            peer: self.peer.clone(),
            front: Protocol::Mcp,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Http(#[from] portcullis_http::SetupError),
    #[error(transparent)]
    Postgres(#[from] portcullis_postgres::SetupError),
}

/// One connection as the tools see it.
pub(crate) struct Conn {
    pub name: String,
    pub kind: Kind,
}

pub(crate) enum Kind {
    Http(Box<portcullis_http::Upstream>),
    Postgres {
        upstream: Arc<portcullis_postgres::PgUpstream>,
        read_only: bool,
    },
    /// An upstream MCP server behind this gateway.
    Mcp {
        upstream: Box<portcullis_http::Upstream>,
        target: Box<portcullis_config::McpTarget>,
    },
}

impl Kind {
    pub fn protocol(&self) -> Protocol {
        match self {
            Kind::Http(_) => Protocol::Http,
            Kind::Postgres { .. } => Protocol::Postgres,
            Kind::Mcp { .. } => Protocol::Mcp,
        }
    }

    /// The agent the connection is reached through, if any.
    pub fn agent(&self) -> Option<String> {
        match self {
            Kind::Http(u) => u.agent().map(str::to_owned),
            Kind::Postgres { upstream, .. } => upstream.agent().map(str::to_owned),
            Kind::Mcp { .. } => None,
        }
    }

    pub fn access(&self) -> &'static str {
        match self {
            Kind::Postgres {
                read_only: true, ..
            } => "read-only",
            _ => "read-write",
        }
    }
}

/// What the tools share.
pub(crate) struct Context {
    pub connections: Vec<Conn>,
    pub by_name: HashMap<String, usize>,
    /// The admission path, masking rules and sessions every front shares.
    pub front: Arc<FrontContext>,
    /// Tool pins.
    pub store: portcullis_store::Store,
    /// Seals the proxied servers' session ids.
    pub seal: Arc<proxy::SessionSeal>,
}

impl Context {
    pub fn get(&self, name: &str) -> Option<&Conn> {
        self.by_name.get(name).map(|&i| &self.connections[i])
    }
}

/// The `/mcp` endpoint, and the proxy to `type = "mcp"` connections.
#[derive(Clone)]
pub struct McpEndpoint {
    service: Arc<StreamableHttpService<McpServer, LocalSessionManager>>,
    ctx: Arc<Context>,
}

impl McpEndpoint {
    /// Build the endpoint for `cfg`'s connections. `hosts` are the names
    /// callers use for the gateway (checked against `Host`, rmcp's
    /// DNS-rebinding guard).
    pub fn new(
        front: Arc<FrontContext>,
        cfg: &Config,
        store: portcullis_store::Store,
        links: Arc<portcullis_link::AgentRegistry>,
        hosts: Vec<String>,
        seal: Arc<SessionSeal>,
    ) -> Result<Self, SetupError> {
        let mut connections = Vec::new();
        for c in &cfg.connections {
            let kind = match &c.target {
                Target::Http(t) => Kind::Http(Box::new(portcullis_http::Upstream::new(
                    c,
                    t,
                    &cfg.upstream_tls,
                )?)),
                Target::Postgres(t) => Kind::Postgres {
                    upstream: Arc::new(portcullis_postgres::PgUpstream::new(
                        c,
                        t,
                        &cfg.upstream_tls,
                    )?),
                    read_only: t.access == Access::ReadOnly,
                },
                Target::Agent(a) if a.protocol == Protocol::Http => {
                    Kind::Http(Box::new(portcullis_http::Upstream::via_agent(
                        c,
                        &a.agent,
                        links.clone(),
                        &cfg.upstream_tls,
                    )?))
                }
                Target::Agent(a) => Kind::Postgres {
                    upstream: Arc::new(portcullis_postgres::PgUpstream::via_agent(
                        c,
                        a,
                        links.clone(),
                        cfg.postgres.as_ref().is_some_and(|p| p.strict_roles),
                    )),
                    read_only: a.access == Access::ReadOnly,
                },
                Target::Mcp(t) => Kind::Mcp {
                    upstream: Box::new(portcullis_http::Upstream::new(
                        c,
                        &t.http,
                        &cfg.upstream_tls,
                    )?),
                    target: Box::new(t.clone()),
                },
            };
            connections.push(Conn {
                name: c.name.clone(),
                kind,
            });
        }
        let by_name = connections
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let ctx = Arc::new(Context {
            connections,
            by_name,
            front,
            store,
            seal,
        });
        let shared = ctx.clone();
        let mut config = StreamableHttpServerConfig::default();
        // Stateless, one JSON answer per request: nothing to resume, and
        // each call is authenticated on its own.
        config.legacy_session_mode = false;
        config.json_response = true;
        config.allowed_hosts = hosts;
        let service = StreamableHttpService::new(
            move || Ok(McpServer::new(ctx.clone())),
            Default::default(),
            config,
        );
        Ok(Self {
            service: Arc::new(service),
            ctx: shared,
        })
    }

    /// Whether `connection` is an upstream MCP server (served by
    /// [`Self::proxy`]).
    pub fn is_mcp_connection(&self, connection: &str) -> bool {
        self.ctx
            .get(connection)
            .is_some_and(|c| matches!(c.kind, Kind::Mcp { .. }))
    }

    /// Relay one request to the MCP connection `connection` (`rest` is the
    /// path after the connection's prefix).
    pub async fn proxy(
        &self,
        req: Request<hyper::body::Incoming>,
        caller: Caller,
        connection: &str,
        rest: &str,
    ) -> Response<Body> {
        proxy::handle(&self.ctx, req, &caller, connection, rest).await
    }

    /// Serve one authenticated request.
    pub async fn handle<B>(&self, mut req: Request<B>, caller: Caller) -> Response<Body>
    where
        B: http_body::Body + Send + 'static,
        B::Error: std::fmt::Display,
    {
        req.extensions_mut().insert(caller);
        let resp = self.service.handle(req).await;
        resp.map(|b| b.map_err(|never| match never {}).boxed())
    }
}

pub type Body = portcullis_http::Body;

#[cfg(test)]
mod tests;
