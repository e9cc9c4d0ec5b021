//! Config reload: connections, grants, approval and masking rules change
//! without a restart, on SIGHUP or when the file changes.
//!
//! A reload is all or nothing. The new file is read and validated, and
//! every part it changes is built (masking rules, each front's upstreams,
//! read-only role checks under `strict_roles`) before anything is
//! replaced; any failure keeps the running config and is logged, counted
//! and audited. Once built, the fronts are swapped (a request or session
//! already under way keeps the ones it started with) and every live
//! session is asked again: one whose grant is gone, or whose connection
//! or masking changed, ends with its protocol's error. Nothing stale.
//!
//! What the listeners are made of (addresses, TLS, identity providers,
//! the store, recordings, limits) is not reloaded: a change there is
//! reported as needing a restart, and the rest of the file still applies.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::Config;
use portcullis_front::{Current, FrontContext, LiveSession};
use portcullis_http::HttpFront;
use portcullis_mcp::McpEndpoint;
use portcullis_postgres::PgFront;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::GatewayError;

/// The fronts of one config generation, as the HTTPS listener serves
/// them.
pub struct Stack {
    pub ctx: Arc<FrontContext>,
    pub http: HttpFront,
    pub mcp: McpEndpoint,
}

/// What every generation's fronts are built with, beside the config.
#[derive(Clone)]
pub(crate) struct Parts {
    pub(crate) store: portcullis_store::Store,
    pub(crate) links: Arc<portcullis_link::AgentRegistry>,
    /// The names callers use for the gateway (the MCP endpoint checks
    /// `Host` against them).
    pub(crate) mcp_hosts: Vec<String>,
    /// Seals the proxied MCP servers' session ids (the store's shared key).
    pub(crate) mcp_seal: Arc<portcullis_mcp::SessionSeal>,
}

/// What a reload builds from, taken before it leaves the async workers.
struct Build {
    old: Arc<Stack>,
    pg: Option<Arc<PgFront>>,
    parts: Parts,
}

/// The fronts of a new config, built and not yet in force.
struct Fronts {
    ctx: Arc<FrontContext>,
    http: HttpFront,
    mcp: McpEndpoint,
    pg: Option<PgFront>,
}

impl Build {
    fn fronts(self, next: &Config) -> Result<Fronts, ReloadError> {
        let masks = crate::mask_rules(next)?;
        let ctx = Arc::new(self.old.ctx.reloaded(next, masks));
        let http = self
            .old
            .http
            .reloaded(ctx.clone(), next)
            .map_err(GatewayError::from)?;
        let Parts {
            store,
            links,
            mcp_hosts,
            mcp_seal,
        } = self.parts;
        let mcp = McpEndpoint::new(ctx.clone(), next, store, links, mcp_hosts, mcp_seal)
            .map_err(GatewayError::from)?;
        let pg = match self.pg {
            Some(pg) => Some(pg.reloaded(ctx.clone(), next).map_err(GatewayError::from)?),
            None => None,
        };
        Ok(Fronts { ctx, http, mcp, pg })
    }
}

/// The config at `path` and the SHA-256 of its bytes.
fn read(path: &Path) -> Result<(Config, String), ReloadError> {
    let bytes = std::fs::read(path).map_err(|source| portcullis_config::ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let sha256 = portcullis_tls::sha256_hex(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| portcullis_config::ConfigError::Parse {
        file: path.to_path_buf(),
        message: "the file is not UTF-8".into(),
    })?;
    Ok((Config::parse(&text, path)?, sha256))
}

/// Run `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReloadError> + Send + 'static,
) -> Result<T, ReloadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))?
}

/// Why a reload was refused (the running config is kept).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] portcullis_config::ConfigError),
    #[error(transparent)]
    Build(#[from] GatewayError),
    /// Who may call and how they are verified changed: applied only by a
    /// restart, and meanwhile nothing else from the file is (a reload
    /// that dropped an identity provider or a CA and kept trusting it
    /// would be worse than none).
    #[error("{} changed: identity and TLS settings apply only at a restart; restart the gateway to apply this file (the running config is kept)", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    /// The task that read or built the new config did not finish.
    #[error("the reload stopped before its config was built: {0}")]
    Task(String),
}

/// What a reload changed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Reloaded {
    pub sha256: String,
    /// What changed: `connection NAME added|removed|changed`, `grants`,
    /// `masking`, ….
    pub changed: Vec<String>,
    /// Sections that changed but only apply at the next start.
    pub restart_needed: Vec<&'static str>,
    /// Live sessions ended because what admitted them no longer holds.
    pub sessions_ended: usize,
    /// Agents whose links were cut to pick up new assignments.
    pub agents_relinked: Vec<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// `portcullis_config_reloads_total{result="ok"|"error"}`.
#[derive(Clone, Default)]
pub(crate) struct ReloadMetrics {
    reloads: Family<ResultLabel, Counter>,
}

impl ReloadMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "portcullis_config_reloads",
            "Config reloads, by result (an error keeps the running config)",
            m.reloads.clone(),
        );
        m
    }

    fn count(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }
}

/// What a reload replaces, and what it needs to build the new parts.
pub(crate) struct Reloader {
    /// The config in force; the lock also makes reloads one at a time.
    running: tokio::sync::Mutex<Config>,
    pub(crate) stack: Arc<Current<Stack>>,
    pub(crate) pg: Option<Arc<Current<PgFront>>>,
    pub(crate) assignments: crate::agents::Assignments,
    pub(crate) parts: Parts,
    pub(crate) audit: portcullis_audit::AuditLog,
    pub(crate) metrics: ReloadMetrics,
}

impl Reloader {
    pub(crate) fn new(
        cfg: &Config,
        stack: Arc<Current<Stack>>,
        pg: Option<Arc<Current<PgFront>>>,
        assignments: crate::agents::Assignments,
        parts: Parts,
        audit: portcullis_audit::AuditLog,
        metrics: ReloadMetrics,
    ) -> Self {
        Self {
            running: tokio::sync::Mutex::new(cfg.clone()),
            stack,
            pg,
            assignments,
            parts,
            audit,
            metrics,
        }
    }

    /// Read the config file again and apply it, or keep the running one
    /// and say why not (logged, counted and audited either way).
    pub(crate) async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let mut running = self.running.lock().await;
        let path = running.source.clone();
        let result = self.apply(&mut running, &path).await;
        match &result {
            Ok(r) => {
                self.metrics.count("ok");
                tracing::info!(
                    file = %path.display(),
                    sha256 = %r.sha256,
                    changed = ?r.changed,
                    restart_needed = ?r.restart_needed,
                    sessions_ended = r.sessions_ended,
                    "config reloaded"
                );
                if !r.restart_needed.is_empty() {
                    tracing::warn!(sections = ?r.restart_needed, "these sections changed but apply only after a restart");
                }
            }
            Err(e) => {
                self.metrics.count("error");
                tracing::error!(file = %path.display(), error = %e, "config reload refused; the running config is kept");
                self.audit_failure(&path, e).await;
            }
        }
        result
    }

    async fn apply(&self, running: &mut Config, path: &Path) -> Result<Reloaded, ReloadError> {
        // Reading, parsing and building (masking rules compile regexes,
        // upstreams load TLS roots) run off the async workers.
        let file = path.to_path_buf();
        let (next, sha256) = blocking(move || read(&file)).await?;
        let identity = identity_changes(running, &next);
        if !identity.is_empty() {
            return Err(ReloadError::NeedsRestart(identity));
        }
        let mut report = Reloaded {
            sha256,
            changed: changes(running, &next),
            restart_needed: restart_needed(running, &next),
            ..Default::default()
        };
        // Build everything before replacing anything.
        let old = self.stack.load();
        let build = Build {
            old: old.clone(),
            pg: self.pg.as_ref().map(|cur| cur.load()),
            parts: self.parts.clone(),
        };
        let (next, Fronts { ctx, http, mcp, pg }) = blocking(move || {
            let fronts = build.fronts(&next)?;
            Ok((next, fronts))
        })
        .await?;
        crate::roles::check_read_only_roles(&next).await?;

        // Swap: upstreams with the admission context that names them.
        if let (Some(cur), Some(pg)) = (&self.pg, pg) {
            cur.store(Arc::new(pg));
        }
        self.stack.store(Arc::new(Stack {
            ctx: ctx.clone(),
            http,
            mcp,
        }));
        report.agents_relinked = self.assignments.replace(&next);
        for agent in &report.agents_relinked {
            self.parts.links.cut(agent);
        }
        let masking_changed = running.masking != next.masking;
        report.sessions_ended = ctx.live.recheck(ctx.generation, |s| {
            still_holds(s, (running, &old.ctx), (&next, &ctx), masking_changed)
        });
        *running = next;
        self.audit_success(path, &report).await;
        Ok(report)
    }

    async fn audit_success(&self, path: &Path, r: &Reloaded) {
        let detail = serde_json::json!({
            "file": path.display().to_string(),
            "sha256": r.sha256,
            "reload": true,
            "changed": r.changed,
            "restart_needed": r.restart_needed,
            "sessions_ended": r.sessions_ended,
            "agents_relinked": r.agents_relinked,
        });
        self.audit_admin("config_loaded", detail).await;
    }

    async fn audit_failure(&self, path: &Path, e: &ReloadError) {
        let detail = serde_json::json!({
            "file": path.display().to_string(),
            // Config errors name the file, line and key, never a value.
            "error": e.to_string(),
        });
        self.audit_admin("config_reload_refused", detail).await;
    }

    async fn audit_admin(&self, action: &str, detail: serde_json::Value) {
        let event = portcullis_audit::AuditEvent::Admin {
            action: action.into(),
            detail,
        };
        if let Err(e) = self.audit.append(&event).await {
            tracing::error!(error = %e, action, "audit entry for the config reload could not be written");
        }
    }

    /// Reload whenever the file's content changes and then stays the same
    /// for one more check (`every`), until `stop`: a file caught half
    /// written (an editor or a tool writing in place) may still parse,
    /// without its last rules. A file that fails is not retried until it
    /// changes again.
    pub(crate) async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let path: PathBuf = self.running.lock().await.source.clone();
        let file = path.clone();
        let mut seen = tokio::task::spawn_blocking(move || digest(&file))
            .await
            .ok()
            .flatten();
        let mut settling: Option<String> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let file = path.clone();
            let now = tokio::task::spawn_blocking(move || digest(&file))
                .await
                .ok()
                .flatten();
            if now.is_none() || now == seen {
                settling = None;
                continue;
            }
            if settling != now {
                settling = now;
                continue;
            }
            settling = None;
            seen = now;
            let _ = self.reload().await;
        }
    }
}

fn digest(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| portcullis_tls::sha256_hex(&b))
}

/// Whether a live session may go on under the new config: the reason it
/// may not, if so.
fn still_holds(
    s: &LiveSession<'_>,
    (old_cfg, old_ctx): (&Config, &FrontContext),
    (new_cfg, new_ctx): (&Config, &FrontContext),
    masking_changed: bool,
) -> Option<String> {
    let name = s.connection;
    let rule = match new_ctx.decide(s.principal, name, s.front) {
        Ok(rule) => rule,
        Err(e) => {
            return Some(format!(
                "access to connection \"{name}\" was withdrawn by a config reload ({e})"
            ));
        }
    };
    // A session counts against the budget of the grant that admitted it,
    // taken when it opened: another grant's, or other limits, are not
    // what it was admitted under.
    let budget = |ctx: &FrontContext, rule: &str| {
        ctx.policy
            .grants()
            .iter()
            .find(|g| g.name == rule)
            .map(|g| g.budgets.clone())
            .unwrap_or_default()
    };
    let old_rule = old_ctx.decide(s.principal, name, s.front).ok();
    let old_budget = old_rule
        .as_deref()
        .map(|r| budget(old_ctx, r))
        .unwrap_or_default();
    let new_budget = budget(new_ctx, &rule);
    let budgeted = !old_budget.is_empty() || !new_budget.is_empty();
    if budgeted && (old_rule.as_deref() != Some(rule.as_str()) || old_budget != new_budget) {
        return Some(format!(
            "the budget of the grant admitting connection \"{name}\" was changed by a config reload"
        ));
    }
    let before = old_cfg.connections.iter().find(|c| c.name == name);
    let after = new_cfg.connections.iter().find(|c| c.name == name);
    if before != after {
        return Some(format!(
            "connection \"{name}\" was changed by a config reload"
        ));
    }
    let masked = |ctx: &FrontContext| ctx.mask_rule(name, s.principal).is_some();
    if masking_changed && (masked(old_ctx) || masked(new_ctx)) {
        return Some(format!(
            "the masking rules for connection \"{name}\" were changed by a config reload"
        ));
    }
    None
}

/// What a reload changes, for the log and the audit entry.
fn changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for c in &new.connections {
        match old.connections.iter().find(|o| o.name == c.name) {
            None => out.push(format!("connection {} added", c.name)),
            Some(o) if o != c => out.push(format!("connection {} changed", c.name)),
            Some(_) => {}
        }
    }
    for o in &old.connections {
        if !new.connections.iter().any(|c| c.name == o.name) {
            out.push(format!("connection {} removed", o.name));
        }
    }
    if old.grants != new.grants {
        out.push("grants".into());
    }
    if old.masking != new.masking {
        out.push("masking".into());
    }
    if old.upstream_tls != new.upstream_tls {
        out.push("upstream_tls".into());
    }
    out
}

/// Who may call and how they are verified: a change refuses the reload.
fn identity_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let pg_auth = |c: &Config| c.postgres.as_ref().map(|p| p.client_auth.clone());
    let mut out = Vec::new();
    if old.oidc != new.oidc {
        out.push("[[oidc]]");
    }
    if old.oauth != new.oauth {
        out.push("[oauth]");
    }
    if old.saml != new.saml {
        out.push("[saml]");
    }
    if old.gateway.internal_ca != new.gateway.internal_ca {
        out.push("gateway.internal_ca");
    }
    if old.gateway.client_auth != new.gateway.client_auth {
        out.push("gateway.client_auth");
    }
    if pg_auth(old) != pg_auth(new) {
        out.push("postgres.client_auth");
    }
    if old.gateway.tls != new.gateway.tls {
        out.push("gateway.tls");
    }
    if old.agent_listener.as_ref().map(|a| &a.ca_file)
        != new.agent_listener.as_ref().map(|a| &a.ca_file)
    {
        out.push("agent_listener.ca_file");
    }
    out
}

/// The sections that changed but are read only at start.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name, same: bool| {
        if !same {
            out.push(name);
        }
    };
    check("gateway", old.gateway == new.gateway);
    check("limits", old.limits == new.limits);
    check("store", old.store == new.store);
    check("demo", old.demo == new.demo);
    check("postgres", old.postgres == new.postgres);
    check("oidc", old.oidc == new.oidc);
    check("agent_listener", old.agent_listener == new.agent_listener);
    check("approvals", old.approvals == new.approvals);
    check("recordings", old.recordings == new.recordings);
    check("console", old.console == new.console);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Config {
        let text = format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
cert = "gw.crt"
key = "gw.key"

[[connections]]
name = "api"
type = "http"
url = "https://127.0.0.1:1"

[[grants]]
name = "testers-api"
principals = ["group:testers"]
connections = ["api"]
{extra}
"#
        );
        Config::parse(&text, Path::new("/tmp/portcullis.toml")).expect("config parses")
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let a = parse("");
        assert!(changes(&a, &a).is_empty());
        assert!(restart_needed(&a, &a).is_empty());
    }

    #[test]
    fn changes_name_each_connection_and_section() {
        let a = parse("");
        let b = parse(
            r#"
[[connections]]
name = "api2"
type = "http"
url = "https://127.0.0.1:2"

[limits]
max_connections = 10
"#,
        );
        assert_eq!(changes(&a, &b), vec!["connection api2 added"]);
        assert_eq!(changes(&b, &a), vec!["connection api2 removed"]);
        assert_eq!(restart_needed(&a, &b), vec!["limits"]);
        assert!(identity_changes(&a, &b).is_empty());
    }

    #[test]
    fn identity_and_tls_changes_are_named() {
        let a = parse("");
        let mut b = a.clone();
        b.gateway.client_auth.mode = portcullis_config::ClientCertMode::Required;
        assert_eq!(identity_changes(&a, &b), vec!["gateway.client_auth"]);
    }
}
