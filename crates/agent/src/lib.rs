//! `portcullis agent`: runs in the target's network, holds the targets'
//! credentials, dials out to the gateway's agent listener and serves the
//! upstream half of its connections over that link (see
//! `portcullis-link`). The gateway keeps identity, policy, masking,
//! recording and audit; the agent keeps TLS to the target and the
//! credential (the HTTP header, SCRAM for PostgreSQL), through the same
//! `Upstream`/`PgUpstream` types the gateway uses in-process.

mod pg;
mod serve;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{AgentConfig, GatewayAddress, Target};
use portcullis_link::{ALPN, Announced, Hello};
use tokio_util::sync::CancellationToken;

pub use serve::Local;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Http(#[from] portcullis_http::SetupError),
    #[error(transparent)]
    Postgres(#[from] portcullis_postgres::SetupError),
    #[error("TLS: {0}")]
    Tls(#[from] portcullis_tls::TlsError),
    #[error("{0}")]
    Config(String),
}

/// Backoff between reconnection attempts: doubling from [`BACKOFF_MIN`]
/// up to [`BACKOFF_MAX`], each wait jittered to 50–100 % so that many
/// agents do not reconnect in step after a gateway restart.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub fn backoff(attempt: u32, random: u32) -> Duration {
    let exp = BACKOFF_MIN.saturating_mul(1u32 << attempt.min(16));
    let capped = exp.min(BACKOFF_MAX);
    // 50 % .. 100 % of the capped delay.
    let frac = 0.5 + (random % 1000) as f64 / 2000.0;
    capped.mul_f64(frac)
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b)
}

/// The agent: its connections and how to reach the gateway.
pub struct Agent {
    cfg: AgentConfig,
    locals: Arc<HashMap<String, Local>>,
    hello: Arc<Hello>,
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Result<Self, AgentError> {
        let mut locals = HashMap::new();
        let mut announced = Vec::new();
        for c in &cfg.connections {
            let local = match &c.target {
                Target::Http(t) => Local::Http(Box::new(portcullis_http::Upstream::new(
                    c,
                    t,
                    &cfg.upstream_tls,
                )?)),
                Target::Postgres(t) => Local::Postgres(Arc::new(
                    portcullis_postgres::PgUpstream::new(c, t, &cfg.upstream_tls)?,
                )),
                _ => {
                    return Err(AgentError::Config(format!(
                        "connection {:?}: an agent serves http and postgres connections",
                        c.name
                    )));
                }
            };
            // The mode its config states, for the gateway to compare with
            // its own; unstated, the gateway's mode applies (stricter wins).
            let access = match &c.target {
                Target::Postgres(t) if t.access_stated => Some(t.access.as_str().to_owned()),
                _ => None,
            };
            announced.push(Announced {
                name: c.name.clone(),
                protocol: c.target.protocol().to_string(),
                access,
            });
            locals.insert(c.name.clone(), local);
        }
        Ok(Self {
            cfg,
            locals: Arc::new(locals),
            hello: Arc::new(Hello {
                version: env!("CARGO_PKG_VERSION").to_string(),
                connections: announced,
            }),
        })
    }

    /// The client TLS config, read from the files on every connection
    /// attempt so that a renewed certificate is picked up.
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, AgentError> {
        // Only the gateway's CA: with the system's roots too, anyone with
        // a public certificate for the gateway's name who could take the
        // agent's outbound connection became its gateway (review).
        let roots = portcullis_tls::load_roots(&self.cfg.ca_file, false)?;
        let chain = portcullis_tls::load_cert_chain(&self.cfg.cert)?;
        let key = portcullis_tls::load_private_key(&self.cfg.key)?;
        let mut c =
            portcullis_tls::client_config_with_cert(&self.cfg.upstream_tls, roots, chain, key)?;
        c.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(c))
    }

    /// Keep a link to every configured gateway until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let loops = self
            .cfg
            .gateways
            .iter()
            .map(|g| self.run_one(g, stop.clone()));
        futures_util::future::join_all(loops).await;
    }

    /// Keep a link to one gateway: reconnect with jittered exponential
    /// backoff whenever it drops.
    async fn run_one(&self, gateway: &GatewayAddress, stop: CancellationToken) {
        let mut attempt = 0u32;
        loop {
            let started = std::time::Instant::now();
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.link_once(gateway, stop.clone()) => r,
            };
            match result {
                Ok(()) => tracing::info!(%gateway, "link to the gateway closed"),
                Err(e) => tracing::warn!(%gateway, error = %e, "link to the gateway failed"),
            }
            // A link that lived a while resets the backoff.
            if started.elapsed() > Duration::from_secs(10) {
                attempt = 0;
            }
            let wait = backoff(attempt, random_u32());
            attempt = attempt.saturating_add(1);
            tracing::info!(%gateway, retry_in_ms = wait.as_millis() as u64, "reconnecting to the gateway");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn link_once(
        &self,
        gateway: &GatewayAddress,
        stop: CancellationToken,
    ) -> Result<(), String> {
        let tls = self.tls().map_err(|e| e.to_string())?;
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((gateway.host.as_str(), gateway.port)),
        )
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls_pki_types::ServerName::try_from(gateway.server_name.clone())
            .map_err(|_| format!("{:?} is not a valid server name", gateway.server_name))?;
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS: {e}"))?;
        tracing::info!(%gateway, "link established; serving");
        let gateway: Arc<str> = gateway.to_string().into();
        // The link runs as a task of its own, on a worker beside the
        // sessions it spawns. Awaited in place it ran on the thread that
        // started the agent, outside the workers, and every message
        // crossed threads twice (its connection task and its session's
        // task woke each other through the kernel: 40% of the agent's
        // samples were context switches, `perf`, 2026-12-05).
        let link = tokio::spawn(serve::serve_link(
            stream,
            self.locals.clone(),
            self.hello.clone(),
            gateway,
            stop,
        ));
        // Dropped (the agent stops), the link is dropped with it, as it
        // was when awaited in place.
        let mut link = AbortOnDrop(link);
        match (&mut link.0).await {
            Ok(served) => served,
            Err(e) => Err(format!("the link's task ended: {e}")),
        }
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert!(backoff(0, 0) >= BACKOFF_MIN / 2 && backoff(0, 999) <= BACKOFF_MIN);
        assert!(backoff(3, 999) <= BACKOFF_MIN * 8);
        assert!(backoff(3, 0) >= BACKOFF_MIN * 4);
        for a in [10, 20, 40, 1000] {
            assert!(backoff(a, 999) <= BACKOFF_MAX);
            assert!(backoff(a, 0) >= BACKOFF_MAX / 2);
        }
        assert_ne!(backoff(5, 1), backoff(5, 700));
    }
}
