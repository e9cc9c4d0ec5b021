//! The agent listener: TLS with a required client certificate from the
//! agents' CA; the certificate names the agent (`connector:NAME`, as a
//! SPIFFE ID or CN); the link then runs until the agent leaves, its
//! certificate is revoked, or the gateway stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{Config, Target};
use portcullis_link::AgentRegistry;
use portcullis_tls::{CertName, TlsMetrics};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The principal kind of agent certificates.
pub const AGENT_KIND: &str = "connector:";

/// Which connections each agent may serve (from `agent = "NAME"`).
#[derive(Clone, Default)]
pub struct Assignments(Arc<HashMap<String, Vec<(String, String)>>>);

impl Assignments {
    pub fn from_config(cfg: &Config) -> Self {
        let mut m: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for c in &cfg.connections {
            if let Target::Agent(a) = &c.target {
                m.entry(a.agent.clone())
                    .or_default()
                    .push((c.name.clone(), a.protocol.to_string()));
            }
        }
        Self(Arc::new(m))
    }

    fn of(&self, agent: &str) -> Vec<(String, String)> {
        self.0.get(agent).cloned().unwrap_or_default()
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    assignments: Assignments,
    links: Arc<AgentRegistry>,
    store: portcullis_store::Store,
    metrics: TlsMetrics,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let stop = shutdown.clone();
    crate::listener::accept_loop(listener, stop, tracker, move |stream, peer| {
        let acceptor = acceptor.clone();
        let assignments = assignments.clone();
        let links = links.clone();
        let store = store.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        async move {
            let Some((tls, record)) =
                portcullis_tls::accept(&acceptor, stream, peer, handshake_timeout, &metrics).await
            else {
                return;
            };
            let Some(der) = record.client_cert.clone() else {
                return;
            };
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
            let revoked = {
                let store = store.clone();
                let fingerprint = fingerprint.clone();
                move || {
                    let store = store.clone();
                    let fingerprint = fingerprint.clone();
                    async move {
                        // A store failure keeps the link (it is logged by
                        // the store); revocation is re-checked next beat.
                        store.is_cert_revoked(&fingerprint).await.unwrap_or(false)
                    }
                }
            };
            if revoked().await {
                tracing::warn!(%peer, %agent, "revoked agent certificate; link refused");
                return;
            }
            portcullis_link::run_link(
                tls,
                peer,
                agent.clone(),
                assignments.of(&agent),
                links,
                shutdown,
                revoked,
            )
            .await;
        }
    })
    .await
}
