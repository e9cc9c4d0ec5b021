//! The agent listener: TLS with a required client certificate from the
//! agents' CA; the certificate names the agent (`connector:NAME`, as a
//! SPIFFE ID or CN); the link then runs until the agent leaves, its
//! certificate is revoked, or the gateway stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{Config, Target};
use portcullis_link::{AgentRegistry, Assignment};
use portcullis_tls::{CertName, TlsMetrics};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The principal kind of agent certificates.
pub const AGENT_KIND: &str = "connector:";

type ByAgent = HashMap<String, Vec<Assignment>>;

/// Which connections each agent may serve (from `agent = "NAME"`), as
/// the config in force says: a reload replaces it.
#[derive(Clone)]
pub struct Assignments(Arc<portcullis_front::Current<ByAgent>>);

impl Assignments {
    pub fn from_config(cfg: &Config) -> Self {
        Self(Arc::new(portcullis_front::Current::new(by_agent(cfg))))
    }

    /// Take `cfg`'s assignments; the agents whose assignments changed.
    pub fn replace(&self, cfg: &Config) -> Vec<String> {
        let new = by_agent(cfg);
        let old = self.0.load();
        let mut changed: Vec<String> = old
            .keys()
            .chain(new.keys())
            .filter(|a| old.get(*a) != new.get(*a))
            .cloned()
            .collect();
        changed.sort();
        changed.dedup();
        self.0.store(Arc::new(new));
        changed
    }

    fn of(&self, agent: &str) -> Vec<Assignment> {
        self.0.load().get(agent).cloned().unwrap_or_default()
    }
}

fn by_agent(cfg: &Config) -> ByAgent {
    let mut m: ByAgent = HashMap::new();
    for c in &cfg.connections {
        if let Target::Agent(a) = &c.target {
            m.entry(a.agent.clone()).or_default().push(Assignment {
                name: c.name.clone(),
                protocol: a.protocol.to_string(),
                access: a.access.as_str().to_owned(),
            });
        }
    }
    m
}

/// The agent listener: who may link, and what they may announce.
#[derive(Clone)]
pub(crate) struct AgentListener {
    /// The CA that alone may name a link (`agent_listener.ca_file`).
    pub agents_ca: portcullis_tls::client_cert::OwnCa,
    pub acceptor: TlsAcceptor,
    pub assignments: Assignments,
    pub links: Arc<AgentRegistry>,
    pub store: portcullis_store::Store,
    pub metrics: TlsMetrics,
    pub handshake_timeout: Duration,
}

impl AgentListener {
    /// Accept agents on `listener` until `shutdown`.
    pub(crate) async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        limits: std::sync::Arc<crate::limits::ConnLimits>,
    ) {
        let stop = shutdown.clone();
        crate::listener::accept_loop(
            listener,
            stop,
            tracker,
            limits,
            move |stream, peer, admission| {
                let this = self.clone();
                let shutdown = shutdown.clone();
                async move {
                    // Over a cap: closed (an agent retries with backoff).
                    let Ok(_permit) = admission else { return };
                    this.link(stream, peer, shutdown).await
                }
            },
        )
        .await
    }

    /// One agent's link: its certificate names it (and must not be
    /// revoked), then the link runs until it ends.
    async fn link(
        self,
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        shutdown: CancellationToken,
    ) {
        let accepted = portcullis_tls::accept(
            &self.acceptor,
            stream,
            peer,
            self.handshake_timeout,
            &self.metrics,
        )
        .await;
        let Some((tls, record)) = accepted else {
            return;
        };
        let Some(der) = record.client_cert.clone() else {
            return;
        };
        if !self.agents_ca.issued(&der) {
            tracing::warn!(%peer, "agent certificate not issued by the agents' CA (agent_listener.ca_file); link refused");
            return;
        }
        let fingerprint = portcullis_tls::sha256_hex(&der);
        let principal = match portcullis_tls::client_cert::principal_name(
            &der,
            &[CertName::Spiffe, CertName::CommonName],
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "agent certificate names no agent");
                return;
            }
        };
        let Some(agent) = principal.strip_prefix(AGENT_KIND).map(str::to_string) else {
            tracing::warn!(%peer, %principal, "not an agent certificate (expected connector:NAME); link refused");
            return;
        };
        // Checked at every heartbeat: revoked, or past its own dates (a
        // review kept a link up past the certificate's expiry).
        let expires = portcullis_tls::client_cert::not_after(&der).unwrap_or(0);
        let revoked = {
            let store = self.store.clone();
            move || {
                let store = store.clone();
                let fingerprint = fingerprint.clone();
                async move {
                    if portcullis_identity::unix_now() >= expires {
                        return true;
                    }
                    // A store failure keeps the link (it is logged by the
                    // store); revocation is re-checked next beat.
                    store.is_cert_revoked(&fingerprint).await.unwrap_or(false)
                }
            }
        };
        if revoked().await {
            tracing::warn!(%peer, %agent, "revoked agent certificate; link refused");
            return;
        }
        let allowed = self.assignments.of(&agent);
        portcullis_link::run_link(tls, peer, agent, allowed, self.links, shutdown, revoked).await;
    }
}
