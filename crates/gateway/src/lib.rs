//! Wiring: from a [`Config`] and a [`Store`] to running listeners.

mod admin;
mod agents;
mod api;
pub mod console;
mod demo;
pub mod enrol;
mod instance;
mod limits;
mod listener;
mod oauth;
mod reload;
pub mod roles;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::Config;
use portcullis_http::{HttpFront, HttpMetrics};
use portcullis_identity::Authenticator;
use portcullis_store::Store;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use demo::DEMO_KEY_HEADER;
pub use listener::{Handler, ListenerSettings};
pub use reload::{ReloadError, Reloaded};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("TLS setup for {what}: {source}")]
    Tls {
        what: &'static str,
        source: portcullis_tls::TlsError,
    },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Upstream(#[from] portcullis_http::SetupError),
    #[error(transparent)]
    PgUpstream(#[from] portcullis_postgres::SetupError),
    #[error("demo API key {reference}: {reason}")]
    DemoSecret { reference: String, reason: String },
    #[error("[gateway] metrics_token {reference}: {reason}")]
    MetricsToken { reference: String, reason: String },
    #[error("masking hash key {reference}: {reason}")]
    MaskKey { reference: String, reason: String },
    #[error("masking rules: {0}")]
    Mask(#[from] portcullis_mask::MaskError),
    #[error(transparent)]
    Audit(#[from] portcullis_audit::AuditError),
    #[error("store: {0}")]
    Store(#[from] portcullis_store::StoreError),
    #[error("OIDC: {0}")]
    Oidc(String),
    #[error("SAML: {0}")]
    Saml(String),
    #[error("review webhook: {0}")]
    Webhook(String),
    #[error("recordings: {0}")]
    Recordings(String),
    #[error(transparent)]
    Mcp(#[from] portcullis_mcp::SetupError),
    /// `[postgres] strict_roles`: a read-only connection's database role
    /// could undo read-only, or could not be checked.
    #[error("strict_roles: {0}")]
    Roles(String),
}

/// A gateway that is accepting connections.
pub struct RunningGateway {
    pub https_addr: SocketAddr,
    /// Where agents connect, when `[agent_listener]` is set.
    pub agent_addr: Option<SocketAddr>,
    pub links: Arc<portcullis_link::AgentRegistry>,
    pub admin_addr: Option<SocketAddr>,
    pub demo_addr: Option<SocketAddr>,
    pub postgres_addr: Option<SocketAddr>,
    pub public_url: String,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    audit: portcullis_audit::AuditLog,
    front: HttpFront,
    /// Its merged refusals are written once the last connection ended.
    sessions: portcullis_front::Sessions,
    sink: portcullis_recordings::RecordingSink,
    reloader: Arc<reload::Reloader>,
    /// This run's id and the lock that says it is alive.
    _instance: Arc<instance::Instance>,
}

impl RunningGateway {
    /// Read the config file again and apply what it changes (SIGHUP);
    /// on an error the running config is kept.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.reloader.reload().await
    }

    /// Stop accepting, let in-flight requests finish for up to `grace`,
    /// then drop what is left.
    pub async fn shutdown(self, grace: Duration) {
        self.sessions.gateway_stopping();
        self.shutdown.cancel();
        self.links.cut_all();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
        let _ = tokio::time::timeout(grace, self.front.drain()).await;
        // Refusals counted during the grace period are evidence too (the
        // heartbeat wrote what was counted before it).
        self.sessions.drain_refusals().await;
        // Recordings sealed during the drain still go to the store.
        self.sink.drain(grace).await;
        if let Err(e) = self.audit.checkpoint().await {
            tracing::error!(error = %e, "final audit checkpoint failed");
        }
    }
}

/// How often the config file is checked for a change.
pub const CONFIG_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How often certificate files are checked for a rotation.
pub const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Tokens minted for people carry the name their provider gave them; if
/// providers name people differently from the last start (a namespace
/// added, changed or removed), those tokens are revoked, with an audit
/// entry, so that nobody keeps a name their provider no longer gives.
async fn people_named_as_configured(
    cfg: &Config,
    store: &Store,
    audit: &portcullis_audit::AuditLog,
) -> Result<(), GatewayError> {
    let saml_idp = cfg.saml.as_ref().and_then(console::saml::idp_entity_id);
    let naming = cfg.naming(saml_idp.as_deref());
    let now = portcullis_identity::unix_now();
    if let Some(revoked) = store.record_naming(&naming, now).await? {
        tracing::warn!(
            revoked,
            "identity providers name people differently from the last start: the tokens minted for people are revoked, and they sign in again"
        );
        audit
            .append(&portcullis_audit::AuditEvent::Admin {
                action: "identity_naming_changed".into(),
                detail: serde_json::json!({"naming": naming, "revoked_tokens": revoked}),
            })
            .await?;
    }
    Ok(())
}

/// Agent enrolment, when `[agent_listener]` names its CA's key.
fn enrolment(
    cfg: &Config,
    store: &Store,
    audit: &portcullis_audit::AuditLog,
) -> Result<Option<enrol::Enrolment>, GatewayError> {
    let Some(a) = &cfg.agent_listener else {
        return Ok(None);
    };
    let Some(key) = &a.enrol_ca_key else {
        return Ok(None);
    };
    let ca = portcullis_tls::CertificateAuthority::load(&a.ca_file, key).map_err(|source| {
        GatewayError::Tls {
            what: "the agent enrolment CA",
            source,
        }
    })?;
    Ok(Some(enrol::Enrolment {
        ca: Arc::new(ca),
        validity: a.enrol_validity,
        store: store.clone(),
        audit: audit.clone(),
    }))
}

/// Reloads certificate files for the listeners: the server certificate
/// (shared by all) and each listener's client CA bundle.
struct ListenerCerts {
    certs: Arc<portcullis_tls::ReloadingCert>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    metrics: portcullis_tls::CertMetrics,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl ListenerCerts {
    /// A listener's TLS acceptor: the gateway's certificate and that
    /// listener's client-certificate settings, the CA bundle watched for
    /// changes like the certificate.
    fn acceptor(
        &self,
        cfg: &Config,
        client_auth: &portcullis_config::ClientAuth,
        alpn: &[&[u8]],
        what: &'static str,
    ) -> Result<TlsAcceptor, GatewayError> {
        use portcullis_config::ClientCertMode as M;
        let wrap = |source| GatewayError::Tls { what, source };
        let optional = match client_auth.mode {
            M::Off => None,
            M::Optional => Some(true),
            M::Required => Some(false),
        };
        let clients = match optional {
            None => portcullis_tls::ClientCerts::Off,
            Some(optional) => {
                let path = client_auth.ca_file.as_deref().ok_or_else(|| {
                    wrap(portcullis_tls::TlsError::Policy(
                        "client_auth needs ca_file".into(),
                    ))
                })?;
                let ca = portcullis_tls::ReloadingClientCa::load(
                    path,
                    optional,
                    self.provider.clone(),
                    Some(self.metrics.clone()),
                )
                .map_err(wrap)?;
                self.tracker.spawn(portcullis_tls::watch(
                    ca.clone(),
                    CERT_CHECK_INTERVAL,
                    self.shutdown.clone(),
                ));
                portcullis_tls::ClientCerts::Verified(ca)
            }
        };
        let sc =
            portcullis_tls::listener_config(&cfg.gateway.tls, self.certs.clone(), &clients, alpn)
                .map_err(wrap)?;
        Ok(TlsAcceptor::from(sc))
    }
}

/// The gateway's own CA (`[gateway] internal_ca`), said at start: the one
/// issuer whose certificates name any principal.
fn own_ca(cfg: &Config) -> Result<Option<portcullis_tls::client_cert::OwnCa>, GatewayError> {
    let ca = match portcullis_tls::client_cert::OwnCa::load(&cfg.gateway.internal_ca) {
        Ok(Some(ca)) => {
            tracing::info!(
                path = %cfg.gateway.internal_ca.display(),
                sha256 = ca.fingerprint(),
                "internal CA: its certificates name any principal"
            );
            // A review put a partner's CA alone in the default `ca.pem`:
            // taken as the internal CA, it named any principal, whatever
            // a listener's `namespace` said.
            if !cfg.gateway.internal_ca_set
                && !cfg.gateway.internal_ca.with_file_name("ca.key").exists()
            {
                tracing::warn!(
                    path = %cfg.gateway.internal_ca.display(),
                    "taken as the internal CA by default, though no ca.key is beside it: if this is another CA (a partner's), its certificates name any principal; set [gateway] internal_ca to the gateway's own CA"
                );
            }
            Some(ca)
        }
        Ok(None) => {
            tracing::info!(
                path = %cfg.gateway.internal_ca.display(),
                "no internal CA there: client certificates in the trust domain \"portcullis\" are refused"
            );
            None
        }
        // The default `ca.pem` may be a bundle that is no internal CA
        // (an operator's own CAs, for client_auth): it names nobody.
        Err(e) if !cfg.gateway.internal_ca_set => {
            tracing::warn!(
                path = %cfg.gateway.internal_ca.display(),
                error = %e,
                "not taken as the internal CA: client certificates in the trust domain \"portcullis\" are refused (set [gateway] internal_ca to the gateway's own CA, alone in its file)"
            );
            None
        }
        Err(source) => {
            return Err(GatewayError::Tls {
                what: "the gateway's own CA (internal_ca)",
                source,
            });
        }
    };
    Ok(ca)
}

/// A listener whose bundle holds CAs besides the internal one, without
/// `client_auth.namespace`, refuses their certificates (401): said once at
/// start so the operator who appended a partner CA hears why.
fn warn_unnamed_cas(cfg: &Config, own: Option<&portcullis_tls::client_cert::OwnCa>) {
    for (section, auth) in cfg.client_auths() {
        let key = format!("{section}.client_auth");
        let (Some(bundle), portcullis_tls::ForeignNames::Refused) =
            (&auth.ca_file, &auth.namespace)
        else {
            continue;
        };
        if auth.mode == portcullis_config::ClientCertMode::Off {
            continue;
        }
        match portcullis_tls::client_cert::other_cas(bundle, own) {
            Ok(0) => {}
            // The listener's own load of the bundle reports a bad file.
            Err(e) => {
                tracing::debug!(path = %bundle.display(), error = %e, "CA bundle not counted")
            }
            Ok(n) => tracing::warn!(
                path = %bundle.display(),
                others = n,
                "{key}.ca_file holds CAs other than the internal CA: their certificates name nobody until {key}.namespace is set"
            ),
        }
    }
}

/// The review webhook: its secret resolved and its TLS trust set once.
fn webhook(w: &portcullis_config::Webhook) -> Result<portcullis_approval::Webhook, GatewayError> {
    let secret = w
        .secret
        .resolve()
        .map_err(|reason| GatewayError::Webhook(format!("secret {}: {reason}", w.secret)))?;
    let roots = match &w.ca_file {
        Some(ca) => portcullis_tls::load_roots(ca, true),
        None => Ok(portcullis_tls::system_roots()),
    }
    .map_err(|source| GatewayError::Tls {
        what: "the review webhook",
        source,
    })?;
    let tls = portcullis_tls::client_config(&Default::default(), roots).map_err(|source| {
        GatewayError::Tls {
            what: "the review webhook",
            source,
        }
    })?;
    portcullis_approval::Webhook::new(w.url.clone(), &secret, w.slack, tls)
        .map_err(GatewayError::Webhook)
}

/// The OIDC verifier for `[[oidc]]`, with keys fetched once before the
/// gateway reports ready (a provider that is down is logged, and its
/// tokens are refused until a refresh succeeds).
async fn oidc_verifier(
    cfg: &Config,
) -> Result<Option<portcullis_identity::OidcVerifier>, GatewayError> {
    if cfg.oidc.is_empty() {
        return Ok(None);
    }
    let wrap = |source| GatewayError::Tls {
        what: "OIDC discovery",
        source,
    };
    let mut roots = portcullis_tls::system_roots();
    for o in &cfg.oidc {
        if let Some(ca) = &o.ca_file {
            for c in portcullis_tls::load_cert_chain(ca).map_err(wrap)? {
                roots
                    .add(c)
                    .map_err(|e| GatewayError::Oidc(format!("{}: {e}", ca.display())))?;
            }
        }
    }
    let tls = portcullis_tls::client_config(&Default::default(), roots).map_err(wrap)?;
    let settings = cfg.oidc.iter().map(|o| o.settings.clone()).collect();
    let verifier =
        portcullis_identity::OidcVerifier::new(settings, tls).map_err(GatewayError::Oidc)?;
    for (issuer, e) in verifier.refresh_all().await {
        tracing::error!(%issuer, error = %e, "OIDC provider unreachable; its tokens are refused until its keys can be fetched");
    }
    let every = cfg
        .oidc
        .iter()
        .map(|o| o.refresh_interval)
        .min()
        .unwrap_or(Duration::from_secs(3600));
    verifier.spawn_refresh(every);
    Ok(Some(verifier))
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { what, addr, source })
}

/// Run the quickstart's demo API (an HTTPS target that wants its own
/// key) until `shutdown`. The gateway runs it, or, with
/// `quickstart --agent-demo`, the agent does.
pub async fn serve_demo(
    d: &portcullis_config::DemoConfig,
    policy: &portcullis_tls::TlsPolicy,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Result<SocketAddr, GatewayError> {
    let key = d
        .api_key
        .resolve()
        .map_err(|reason| GatewayError::DemoSecret {
            reference: d.api_key.to_string(),
            reason,
        })?;
    let wrap = |source| GatewayError::Tls {
        what: "the demo API",
        source,
    };
    let chain = portcullis_tls::load_cert_chain(&d.cert).map_err(wrap)?;
    let pkey = portcullis_tls::load_private_key(&d.key).map_err(wrap)?;
    let sc = portcullis_tls::server_config(policy, chain, pkey, &[b"http/1.1"]).map_err(wrap)?;
    let acceptor = TlsAcceptor::from(sc);
    let l = bind(d.listen, "demo API").await?;
    let addr = l.local_addr().map_err(|source| GatewayError::Bind {
        what: "demo API",
        addr: d.listen,
        source,
    })?;
    let handler = demo::DemoApi {
        api_key: Arc::new(key),
    };
    // Its handshakes are not the gateway's: count them apart.
    let own_metrics = portcullis_tls::TlsMetrics::register(&mut Registry::default());
    let settings = Arc::new(ListenerSettings {
        public_url: portcullis_config::url_for(addr),
        handshake_timeout,
        idle_timeout: Duration::from_secs(300),
        max_header_bytes: 16 * 1024,
    });
    let limits = limits::ConnLimits::new(
        "demo",
        usize::MAX,
        usize::MAX,
        limits::ConnMetrics::default(),
    );
    tracker.spawn(listener::serve(
        l,
        acceptor,
        handler,
        settings,
        own_metrics,
        shutdown,
        tracker.clone(),
        limits,
    ));
    tracing::info!(%addr, "demo API listening");
    Ok(addr)
}

/// What every listener's setup shares, built once by [`start`] (as
/// linkerd2-proxy builds one runtime for its stacks).
struct Runtime {
    shutdown: CancellationToken,
    tracker: TaskTracker,
    registry: Registry,
    tls_metrics: portcullis_tls::TlsMetrics,
    conn_metrics: limits::ConnMetrics,
    certs: ListenerCerts,
}

impl Runtime {
    /// The gateway's certificate (watched for rotation) and the metrics.
    fn new(cfg: &Config) -> Result<Self, GatewayError> {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut registry = Registry::default();
        let tls_metrics = portcullis_tls::TlsMetrics::register(&mut registry);
        let conn_metrics = limits::ConnMetrics::register(&mut registry);
        let cert_metrics = portcullis_tls::CertMetrics::register(&mut registry);
        let provider = cfg
            .gateway
            .tls
            .provider()
            .map_err(|source| GatewayError::Tls {
                what: "the gateway listener",
                source,
            })?;
        let bundles = cfg
            .connections
            .iter()
            .filter_map(|c| c.ca_file.clone())
            // (Listeners' client CA bundles report themselves as they load.)
            .chain(cfg.oidc.iter().filter_map(|o| o.ca_file.clone()));
        for path in bundles.collect::<std::collections::BTreeSet<_>>() {
            if let Err(e) = cert_metrics.report_bundle(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot read certificate bundle for its expiry");
            }
        }
        let certs = portcullis_tls::ReloadingCert::load(
            &cfg.gateway.cert,
            &cfg.gateway.key,
            provider.clone(),
            Some(cert_metrics.clone()),
        )
        .map_err(|source| GatewayError::Tls {
            what: "the gateway certificate",
            source,
        })?;
        tracker.spawn(certs.clone().watch(CERT_CHECK_INTERVAL, shutdown.clone()));
        let certs = ListenerCerts {
            certs,
            provider,
            metrics: cert_metrics,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        };
        Ok(Self {
            shutdown,
            tracker,
            registry,
            tls_metrics,
            conn_metrics,
            certs,
        })
    }

    fn settings(&self, cfg: &Config, public_url: String) -> Arc<ListenerSettings> {
        Arc::new(ListenerSettings {
            public_url,
            handshake_timeout: cfg.limits.handshake_timeout,
            idle_timeout: cfg.limits.idle_timeout,
            max_header_bytes: cfg.limits.max_header_bytes,
        })
    }

    /// The connection caps of listener `name` (`[limits]`).
    fn limits(&self, cfg: &Config, name: &'static str) -> Arc<limits::ConnLimits> {
        limits::ConnLimits::new(
            name,
            cfg.limits.max_connections,
            cfg.limits.max_connections_per_peer,
            self.conn_metrics.clone(),
        )
    }

    /// Serve HTTPS with `handler` on `l` (listener `name`).
    fn serve<H: Handler>(
        &self,
        l: TcpListener,
        acceptor: TlsAcceptor,
        handler: H,
        settings: Arc<ListenerSettings>,
        limits: Arc<limits::ConnLimits>,
    ) {
        self.tracker.spawn(listener::serve(
            l,
            acceptor,
            handler,
            settings,
            self.tls_metrics.clone(),
            self.shutdown.clone(),
            self.tracker.clone(),
            limits,
        ));
    }
}

/// What the fronts share, and what the gateway keeps to shut down.
struct Shared {
    ctx: Arc<portcullis_front::FrontContext>,
    audit: portcullis_audit::AuditLog,
    sink: portcullis_recordings::RecordingSink,
    links: Arc<portcullis_link::AgentRegistry>,
}

/// The admission path's parts: masking rules, the audit log (its first
/// entry the config's digest), recordings, approvals, authentication.
async fn shared(
    cfg: &Config,
    store: &Store,
    rt: &mut Runtime,
    me: &instance::Instance,
) -> Result<Shared, GatewayError> {
    let masks = mask_rules(cfg)?;
    let mask_metrics = portcullis_mask::MaskMetrics::register(&mut rt.registry);
    let audit =
        portcullis_audit::AuditLog::open_with(store.clone(), cfg.dir(), cfg.store.write_timeout)
            .await?;
    let digest = std::fs::read(&cfg.source)
        .map(|b| portcullis_tls::sha256_hex(&b))
        .unwrap_or_default();
    audit
        .append(&portcullis_audit::AuditEvent::Admin {
            action: "config_loaded".into(),
            detail: serde_json::json!({"file": cfg.source.display().to_string(), "sha256": digest}),
        })
        .await?;
    people_named_as_configured(cfg, store, &audit).await?;
    let sink = portcullis_recordings::from_config(&cfg.recordings)
        .map_err(|e| GatewayError::Recordings(e.to_string()))?;
    rt.tracker
        .spawn(sink.clone().run_uploads(rt.shutdown.clone()));
    let sessions = portcullis_front::Sessions::new(audit.clone(), sink.clone()).of_gateway(&me.id);
    sessions.register(&mut rt.registry);
    // Sessions the previous run left open when its process died are
    // closed before this one serves (their recordings sealed as far as
    // they got), and those of peers that stopped beating.
    let unowned = me.holds_lock() && store.backend() == portcullis_store::Backend::Sqlite;
    sessions
        .close_cut(
            store,
            me.previous.as_deref(),
            unowned,
            PEER_STALE.as_secs() as i64,
        )
        .await?;
    let webhook = match &cfg.approvals.webhook {
        None => None,
        Some(w) => Some(webhook(w)?),
    };
    let approvals = portcullis_approval::Approvals::new(store.clone(), audit.clone(), webhook);
    let own_ca = own_ca(cfg)?;
    warn_unnamed_cas(cfg, own_ca.as_ref());
    let auth = Authenticator::new(Arc::new(store.cached_tokens())).with_own_ca(own_ca);
    let auth = match oidc_verifier(cfg).await? {
        Some(v) => auth.with_oidc(v),
        None => auth,
    };
    let ctx =
        portcullis_front::FrontContext::new(cfg, auth, masks, mask_metrics, sessions, approvals);
    ctx.budgets.register(&mut rt.registry);
    Ok(Shared {
        ctx: Arc::new(ctx),
        audit,
        sink,
        links: {
            let links = portcullis_link::AgentRegistry::new();
            links.set_streams_per_caller(cfg.limits.max_agent_streams_per_caller);
            links
        },
    })
}

/// `[masking]`'s rules, with the hash key resolved.
fn mask_rules(cfg: &Config) -> Result<Arc<portcullis_mask::RuleSet>, GatewayError> {
    let hash_key = match &cfg.masking.hash_key {
        None => None,
        Some(r) => Some(r.resolve().map_err(|reason| GatewayError::MaskKey {
            reference: r.to_string(),
            reason,
        })?),
    };
    Ok(Arc::new(portcullis_mask::RuleSet::new(
        &cfg.masking.rules,
        hash_key.as_ref().map(|k| k.expose().as_bytes()),
    )?))
}

/// The PostgreSQL listener, when `[postgres]` is set.
async fn start_postgres(
    cfg: &Config,
    rt: &mut Runtime,
    shared: &Shared,
) -> Result<
    Option<(
        SocketAddr,
        Arc<portcullis_front::Current<portcullis_postgres::PgFront>>,
    )>,
    GatewayError,
> {
    let Some(p) = &cfg.postgres else {
        return Ok(None);
    };
    let acceptor = rt.certs.acceptor(
        cfg,
        &p.client_auth,
        &[portcullis_postgres::ALPN],
        "the PostgreSQL listener",
    )?;
    let pg_metrics = portcullis_postgres::PgMetrics::register(&mut rt.registry);
    let pg = portcullis_postgres::PgFront::new(
        shared.ctx.clone(),
        cfg,
        acceptor,
        pg_metrics,
        rt.tls_metrics.clone(),
        shared.links.clone(),
    )?;
    let l = bind(p.listen, "postgres").await?;
    let addr = local_addr(&l, p.listen, "postgres")?;
    let stop = rt.shutdown.clone();
    let current = Arc::new(portcullis_front::Current::new(pg));
    let fronts = current.clone();
    rt.tracker.spawn(listener::accept_loop(
        l,
        rt.shutdown.clone(),
        rt.tracker.clone(),
        rt.limits(cfg, "postgres"),
        move |stream, peer, admission| {
            // The front of the config in force when the caller arrived.
            let pg = fronts.load();
            let stop = stop.clone();
            async move {
                let _permit = match admission {
                    Ok(p) => p,
                    Err(full) => return pg.refuse_busy(stream, peer, full.message()).await,
                };
                // PostgreSQL sessions have no graceful end: they are
                // closed at shutdown.
                tokio::select! {
                    _ = pg.connection(stream, peer) => {}
                    _ = stop.cancelled() => {}
                }
            }
        },
    ));
    tracing::info!(%addr, "PostgreSQL listener");
    Ok(Some((addr, current)))
}

fn local_addr(
    l: &TcpListener,
    wanted: SocketAddr,
    what: &'static str,
) -> Result<SocketAddr, GatewayError> {
    l.local_addr().map_err(|source| GatewayError::Bind {
        what,
        addr: wanted,
        source,
    })
}

/// The agent listener, when `[agent_listener]` is set.
async fn start_agents(
    cfg: &Config,
    rt: &Runtime,
    store: &Store,
    links: &Arc<portcullis_link::AgentRegistry>,
    assignments: &agents::Assignments,
) -> Result<Option<SocketAddr>, GatewayError> {
    let Some(a) = &cfg.agent_listener else {
        return Ok(None);
    };
    let clients = portcullis_config::ClientAuth {
        mode: portcullis_config::ClientCertMode::Required,
        ca_file: Some(a.ca_file.clone()),
        principal_from: vec![
            portcullis_config::CertName::Spiffe,
            portcullis_config::CertName::CommonName,
        ],
        ..Default::default()
    };
    let acceptor = rt.certs.acceptor(
        cfg,
        &clients,
        &[portcullis_link::ALPN],
        "the agent listener",
    )?;
    // The listener's bundle may be the callers' one too, holding partner
    // CAs: only the agents' own CA may name a link (a review found any CA
    // in the bundle could link as any agent and take its traffic).
    let agents_ca = portcullis_tls::client_cert::OwnCa::load_one(&a.ca_file).map_err(|source| {
        GatewayError::Tls {
            what: "the agents' CA (agent_listener.ca_file)",
            source,
        }
    })?;
    let l = bind(a.listen, "agents").await?;
    let addr = local_addr(&l, a.listen, "agents")?;
    let agents = agents::AgentListener {
        agents_ca,
        acceptor,
        assignments: assignments.clone(),
        links: links.clone(),
        store: store.clone(),
        metrics: rt.tls_metrics.clone(),
        handshake_timeout: cfg.limits.handshake_timeout,
    };
    rt.tracker.spawn(agents.serve(
        l,
        rt.shutdown.clone(),
        rt.tracker.clone(),
        rt.limits(cfg, "agents"),
    ));
    tracing::info!(%addr, "agent listener");
    Ok(Some(addr))
}

/// Announce this gateway to the peers sharing the store, every 5 s.
/// Live sessions end within about a second of their credential's
/// revocation or expiry, here or on any gateway sharing the store.
fn start_liveness(rt: &Runtime, store: &Store, shared: &Shared) {
    let (live, store, stop) = (shared.ctx.live.clone(), store.clone(), rt.shutdown.clone());
    rt.tracker.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = live.poll(store, Duration::from_secs(1)) => {}
        }
    });
}

/// A peer whose heartbeat (every 5 s) is older than this, by the store's
/// clock, is taken for dead: its open sessions are closed by whichever
/// gateway sweeps first.
const PEER_STALE: Duration = Duration::from_secs(60);

fn start_heartbeat(
    rt: &Runtime,
    store: &Store,
    sessions: &portcullis_front::Sessions,
    gateway_id: &str,
    public_url: &str,
) {
    let (store, sessions, id, url, stop) = (
        store.clone(),
        sessions.clone(),
        gateway_id.to_owned(),
        public_url.to_owned(),
        rt.shutdown.clone(),
    );
    let started = portcullis_identity::unix_now();
    rt.tracker.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    // Counted refusals are evidence too.
                    sessions.drain_refusals().await;
                    return;
                }
                _ = tick.tick() => {}
            }
            sessions.flush_refusals().await;
            if let Err(e) = store.gateway_heartbeat(&id, &url, started).await {
                tracing::warn!(error = %e, "store heartbeat failed");
            }
            let stale = PEER_STALE.as_secs() as i64;
            if let Err(e) = sessions.close_cut(&store, None, false, stale).await {
                tracing::warn!(error = %e, "closing sessions of stopped gateways failed");
            }
        }
    });
}

/// The admin listener (metrics, health, reviews), when `admin_listen`
/// is set. Takes the metrics registry: every metric is registered by now.
async fn start_admin(
    cfg: &Config,
    rt: &mut Runtime,
    store: &Store,
    shared: &Shared,
    gateway_id: String,
    stack: Arc<portcullis_front::Current<reload::Stack>>,
) -> Result<Option<SocketAddr>, GatewayError> {
    let Some(a) = cfg.gateway.admin_listen else {
        return Ok(None);
    };
    // Client certificates from the gateway listener's CA, asked for but
    // never required: /healthz and /metrics stay open to probes.
    let clients = match cfg.gateway.client_auth.mode {
        portcullis_config::ClientCertMode::Off => Default::default(),
        _ => portcullis_config::ClientAuth {
            mode: portcullis_config::ClientCertMode::Optional,
            ..cfg.gateway.client_auth.clone()
        },
    };
    let acceptor = rt
        .certs
        .acceptor(cfg, &clients, &[b"http/1.1"], "the admin listener")?;
    let al = bind(a, "admin").await?;
    let addr = local_addr(&al, a, "admin")?;
    let handler = admin::Admin {
        registry: Arc::new(std::mem::take(&mut rt.registry)),
        links: shared.links.clone(),
        approvals: shared.ctx.approvals.clone(),
        store: store.clone(),
        sink: shared.sink.clone(),
        audit: shared.audit.clone(),
        id: gateway_id,
        auth: shared.ctx.auth.clone(),
        cert_names: cfg.gateway.client_auth.cert_policy(),
        sessions: shared.ctx.sessions.clone(),
        stack,
        admin_groups: cfg.console.admin_groups.clone(),
        metrics_token: match &cfg.gateway.metrics_token {
            None => None,
            Some(r) => Some(r.resolve().map_err(|reason| GatewayError::MetricsToken {
                reference: r.to_string(),
                reason,
            })?),
        },
    };
    rt.serve(
        al,
        acceptor,
        handler,
        rt.settings(cfg, portcullis_config::url_for(addr)),
        rt.limits(cfg, "admin"),
    );
    tracing::info!(%addr, "admin listener (metrics, health)");
    Ok(Some(addr))
}

/// The OAuth authorization server, when `[oauth]` is configured (it signs
/// people in through an `[[oidc]]` issuer, so that verifier exists).
fn oauth_server(
    cfg: &Config,
    public_url: &str,
    store: &Store,
    shared: &Shared,
    hosts: Vec<String>,
    console: &Arc<console::Console>,
) -> Result<Option<Arc<oauth::OAuthServer>>, GatewayError> {
    let Some(o) = &cfg.oauth else {
        return Ok(None);
    };
    let verifier = shared
        .ctx
        .auth
        .oidc()
        .cloned()
        .ok_or_else(|| GatewayError::Oidc("[oauth] needs an [[oidc]] issuer".into()))?;
    let server = oauth::OAuthServer::new(oauth::Parts {
        cfg: o.clone(),
        public_url: public_url.to_owned(),
        store: store.clone(),
        audit: shared.audit.clone(),
        verifier,
        hosts,
        domain: cfg.gateway.domain.clone(),
        console: console.clone(),
    })
    .map_err(GatewayError::Oidc)?;
    tracing::info!(issuer = %o.issuer, "OAuth authorization server for MCP clients");
    Ok(Some(server))
}

/// The names callers use for the gateway, checked against `Host` by the
/// MCP endpoint (rmcp's DNS-rebinding guard).
fn mcp_hosts(cfg: &Config, public_url: &str, https_addr: SocketAddr) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    if let Some(h) = public_url
        .strip_prefix("https://")
        .and_then(|r| r.split(['/', ':']).next())
        .filter(|h| !h.is_empty())
    {
        hosts.push(h.to_string());
    }
    hosts.push(https_addr.ip().to_string());
    if let Some(d) = &cfg.gateway.domain {
        hosts.push(d.clone());
    }
    hosts
}

/// The web console, with SAML sign-in where the config has it.
fn start_console(
    cfg: &Config,
    store: &Store,
    shared: &Shared,
    public_url: &str,
) -> Result<Arc<console::Console>, GatewayError> {
    let saml = match &cfg.saml {
        None => None,
        Some(s) => Some(
            console::saml::SamlSp::new(s, public_url, store.clone(), shared.audit.clone())
                .map_err(GatewayError::Saml)?,
        ),
    };
    Ok(console::Console::new(
        store.clone(),
        shared.audit.clone(),
        console::Parts {
            cfg: cfg.console.clone(),
            public_url: public_url.to_string(),
            audit_dir: cfg.dir().to_path_buf(),
            sink: shared.sink.clone(),
            saml,
            links: shared.links.clone(),
        },
    ))
}

/// Start every listener the config asks for.
pub async fn start(cfg: &Config, store: Store) -> Result<RunningGateway, GatewayError> {
    let mut rt = Runtime::new(cfg)?;
    // The demo target first, so the gateway's first request can reach it.
    let demo_addr = match &cfg.demo {
        None => None,
        Some(d) => Some(
            serve_demo(
                d,
                &cfg.gateway.tls,
                cfg.limits.handshake_timeout,
                rt.shutdown.clone(),
                rt.tracker.clone(),
            )
            .await?,
        ),
    };
    let me = Arc::new(instance::Instance::claim(cfg));
    let shared = shared(cfg, &store, &mut rt, &me).await?;
    start_liveness(&rt, &store, &shared);
    let http_metrics = HttpMetrics::register(&mut rt.registry);
    let front = HttpFront::new(shared.ctx.clone(), cfg, http_metrics, shared.links.clone())?;
    // Read-only connections' database roles: waited for (and fatal) with
    // `strict_roles`, else checked in the background and logged.
    roles::check_read_only_roles(cfg).await?;
    let postgres = start_postgres(cfg, &mut rt, &shared).await?;
    if let Some((addr, _)) = &postgres {
        front.set_postgres_port(addr.port());
    }
    let (postgres_addr, pg) = postgres.unzip();
    let acceptor = rt.certs.acceptor(
        cfg,
        &cfg.gateway.client_auth,
        &[b"h2", b"http/1.1"],
        "the gateway listener",
    )?;
    let l = bind(cfg.gateway.listen, "gateway").await?;
    let https_addr = local_addr(&l, cfg.gateway.listen, "gateway")?;
    let public_url = cfg
        .gateway
        .public_url
        .clone()
        .unwrap_or_else(|| portcullis_config::url_for(https_addr));
    let assignments = agents::Assignments::from_config(cfg);
    let agent_addr = start_agents(cfg, &rt, &store, &shared.links, &assignments).await?;
    let gateway_id = me.id.clone();
    start_heartbeat(&rt, &store, &shared.ctx.sessions, &gateway_id, &public_url);
    let reload_metrics = reload::ReloadMetrics::register(&mut rt.registry);
    let hosts = mcp_hosts(cfg, &public_url, https_addr);
    let seal = store
        .shared_key(portcullis_mcp::SessionSeal::KEY_NAME)
        .await
        .map_err(GatewayError::Store)?;
    let seal = Arc::new(portcullis_mcp::SessionSeal::new(&seal));
    let mcp = portcullis_mcp::McpEndpoint::new(
        shared.ctx.clone(),
        cfg,
        store.clone(),
        shared.links.clone(),
        hosts.clone(),
        seal.clone(),
    )?;
    let stack = Arc::new(portcullis_front::Current::new(reload::Stack {
        ctx: shared.ctx.clone(),
        http: front.clone(),
        mcp,
    }));
    let admin_addr = start_admin(cfg, &mut rt, &store, &shared, gateway_id, stack.clone()).await?;
    let reloader = Arc::new(reload::Reloader::new(
        cfg,
        stack.clone(),
        pg,
        assignments,
        reload::Parts {
            store: store.clone(),
            links: shared.links.clone(),
            mcp_hosts: hosts.clone(),
            mcp_seal: seal,
        },
        shared.audit.clone(),
        reload_metrics,
    ));
    rt.tracker.spawn(
        reloader
            .clone()
            .watch(CONFIG_CHECK_INTERVAL, rt.shutdown.clone()),
    );
    let console = start_console(cfg, &store, &shared, &public_url)?;
    let main = listener::GatewayFront {
        stack,
        domain: cfg.gateway.domain.clone(),
        enrol: enrolment(cfg, &store, &shared.audit)?,
        oauth: oauth_server(cfg, &public_url, &store, &shared, hosts.clone(), &console)?,
        console,
    };
    rt.serve(
        l,
        acceptor,
        main,
        rt.settings(cfg, public_url.clone()),
        rt.limits(cfg, "https"),
    );
    tracing::info!(addr = %https_addr, url = %public_url, connections = cfg.connections.len(), grants = cfg.grants.len(), "gateway listening");

    Ok(RunningGateway {
        agent_addr,
        links: shared.links,
        https_addr,
        admin_addr,
        demo_addr,
        postgres_addr,
        public_url,
        shutdown: rt.shutdown,
        tracker: rt.tracker,
        audit: shared.audit,
        front,
        sessions: shared.ctx.sessions.clone(),
        sink: shared.sink,
        reloader,
        _instance: me,
    })
}
