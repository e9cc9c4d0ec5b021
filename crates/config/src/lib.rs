//! The configuration model. `portcullis.toml` is parsed once into typed
//! values; every error names the file, the key, and what would be valid.
//! Relative paths are taken from the config file's folder. Secrets are
//! references (`env:NAME`, `file:PATH`), see [`SecretRef`].

pub mod console;
pub mod oauth;
pub mod pgurl;
mod raw;
pub mod saml;
mod secret;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Uri};
use portcullis_policy::Grant;
use portcullis_tls::TlsPolicy;

pub use portcullis_tls::CertName;
pub use secret::{Secret, SecretRef};

/// A configuration error, phrased for the person editing the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", file.display())]
    Parse { file: PathBuf, message: String },
    #[error("{}: `{key}`: {message}", file.display())]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from.
    pub source: PathBuf,
    pub gateway: GatewayConfig,
    pub limits: Limits,
    pub upstream_tls: TlsPolicy,
    pub store: StoreConfig,
    pub connections: Vec<Connection>,
    pub grants: Vec<Grant>,
    pub demo: Option<DemoConfig>,
    pub postgres: Option<PostgresListener>,
    pub masking: Masking,
    /// `[[oidc]]`: identity providers whose tokens are accepted.
    pub oidc: Vec<OidcIssuer>,
    /// `[agent_listener]`: where agents dial in.
    pub agent_listener: Option<AgentListener>,
    /// `[approvals]`: how reviewers are told.
    pub approvals: Approvals,
    /// `[recordings]`: where recordings are kept.
    pub recordings: Recordings,
    /// `[oauth]`: the gateway as the authorization server of MCP clients.
    pub oauth: Option<oauth::OAuth>,
    /// `[console]`: the web console.
    pub console: console::Console,
    /// `[saml]`: console sign-in through a SAML identity provider.
    pub saml: Option<saml::Saml>,
}

/// `[recordings]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Recordings {
    /// Where sessions write (and, with `file://`, where recordings stay).
    pub spool: PathBuf,
    pub s3: Option<S3Recordings>,
    /// With S3: refuse new sessions when a recording has waited this long…
    pub max_backlog: Duration,
    /// …or when this many bytes wait in the spool (default 10 GiB).
    pub max_spool_bytes: u64,
}

/// `recordings.url = "s3://BUCKET/PREFIX"`.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Recordings {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<SecretRef>,
    pub secret_access_key: Option<SecretRef>,
    pub allow_http: bool,
}

/// `[approvals]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Approvals {
    pub webhook: Option<Webhook>,
}

/// Where new reviews are announced (POST, body signed with HMAC-SHA256).
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub url: String,
    pub secret: SecretRef,
    /// A Slack-compatible incoming-webhook body instead of the generic one.
    pub slack: bool,
    pub ca_file: Option<PathBuf>,
}

/// What a connection's `approval` holds for a person's yes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalMode {
    None,
    /// Just-in-time access: the first use in a window needs approval, the
    /// grant then lasts `session`.
    Session,
    /// Statements of `classes`, HTTP `methods`, MCP `tools`.
    Statements,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    pub mode: ApprovalMode,
    pub classes: Vec<String>,
    pub methods: Vec<String>,
    pub tools: Vec<String>,
    /// Groups whose (human) members may approve.
    pub approvers: Vec<String>,
    /// Distinct approvals needed.
    pub required: u32,
    /// How long a caller waits for the decision.
    pub wait: Duration,
    /// How long a review, and an approval, stays valid.
    pub expires: Duration,
    /// Longest just-in-time grant, and the length of one whose caller
    /// does not ask for less.
    pub session: Duration,
    /// Held SQL writes are previewed (run once and rolled back) for the
    /// reviewer, when that is proven safe.
    pub preview: bool,
    /// How far (rows, per table and count) the counts when the approved
    /// statement runs may be from the counts the reviewer saw.
    pub preview_tolerance: u64,
    /// The preview's `statement_timeout` (its `lock_timeout` is a fifth).
    pub preview_timeout: Duration,
}

/// The listener agents connect to (TLS, client certificate required).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentListener {
    pub listen: SocketAddr,
    /// The CA that issues agent certificates (`connector:NAME`).
    pub ca_file: PathBuf,
    /// That CA's key: set, agents may enrol (a one-time token for a
    /// certificate, `POST /api/v1/agents/enrol`).
    pub enrol_ca_key: Option<PathBuf>,
    /// How long an enrolled agent's certificate is valid.
    pub enrol_validity: Duration,
}

/// How an agent without a certificate gets one.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEnrol {
    /// The gateway's HTTPS URL.
    pub url: String,
    pub token: SecretRef,
}

/// A connection served by an agent: only its name, protocol and access
/// mode are known to the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentTarget {
    pub agent: String,
    /// [`Protocol::Http`] or [`Protocol::Postgres`].
    pub protocol: Protocol,
    pub access: Access,
}

/// A gateway's agent listener, as an agent dials it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAddress {
    pub host: String,
    pub port: u16,
    /// Name the gateway's certificate is checked against.
    pub server_name: String,
}

impl std::fmt::Display for GatewayAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `agent.toml`: what `portcullis agent` serves and where it connects.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub source: PathBuf,
    /// Every gateway the agent keeps a link to.
    pub gateways: Vec<GatewayAddress>,
    /// CA bundle that verifies the gateway.
    pub ca_file: PathBuf,
    /// Exchange a one-time token for `cert`/`key` when they do not exist.
    pub enrol: Option<AgentEnrol>,
    /// The agent's client certificate and key (`connector:NAME`).
    pub cert: PathBuf,
    pub key: PathBuf,
    pub upstream_tls: TlsPolicy,
    pub connections: Vec<Connection>,
    /// The quickstart's demo API, run by the agent (`--agent-demo`).
    pub demo: Option<DemoConfig>,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg = parse_with(text, path, raw::AgentRoot::validate)?;
        cfg.source = path.to_path_buf();
        Ok(cfg)
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })
}

/// Deserialize `text` into `R` and validate it, relative paths resolving
/// next to `path`; every error names the file (and the key).
fn parse_with<R: serde::de::DeserializeOwned, T>(
    text: &str,
    path: &Path,
    validate: impl FnOnce(R, &Path) -> Result<T, (String, String)>,
) -> Result<T, ConfigError> {
    let raw: R = toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: path.to_path_buf(),
        message: parse_message(text, &e),
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    validate(raw, base).map_err(|(key, message)| ConfigError::Invalid {
        file: path.to_path_buf(),
        key,
        message,
    })
}

/// Where a TOML error is and what it is, without the excerpt of the file
/// that `toml`'s own message quotes: a line pasted with a secret in it
/// must not reach the log (or the audit entry of a refused reload).
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_string();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    // The key on that line is no secret, and says more than a column.
    let line_text = text.lines().nth(line - 1).unwrap_or_default();
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        });
    let message = without_values(e.message());
    match key {
        Some(k) => format!("line {line}, `{k}`: {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// A deserializer's message without the values it quotes: serde says
/// `invalid type: string "…", expected a table`, and the string may be a
/// secret pasted in the wrong place. Field names (in backticks, in
/// `unknown field` messages) are kept: they are the config's own words.
fn without_values(message: &str) -> String {
    for kind in ["invalid type", "invalid value", "invalid length"] {
        if let Some(rest) = message.strip_prefix(kind) {
            return match rest.find(", expected") {
                Some(i) => format!("{kind}{}", &rest[i..]),
                None => kind.to_string(),
            };
        }
    }
    // Anything else in double quotes is a value.
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('"', false) => {
                out.push_str("\"…");
                quoted = true;
            }
            ('"', true) => {
                out.push('"');
                quoted = false;
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

/// An OpenID provider the gateway trusts (`[[oidc]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct OidcIssuer {
    pub settings: portcullis_identity::IssuerSettings,
    /// Extra trusted roots for discovery and JWKS, added to the system's.
    pub ca_file: Option<PathBuf>,
    pub refresh_interval: Duration,
    /// What `portcullis login` uses against this issuer.
    pub login: Option<OidcLogin>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OidcLogin {
    /// A public client registered at the provider for the CLI.
    pub client_id: String,
    pub scopes: String,
}

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCertMode {
    #[default]
    Off,
    /// Verified if presented; callers without one use a token.
    Optional,
    /// The handshake fails without a certificate from `ca_file`.
    Required,
}

/// `client_auth` of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub mode: ClientCertMode,
    pub ca_file: Option<PathBuf>,
    pub principal_from: Vec<CertName>,
    /// Principal kinds a certificate from another CA may name.
    pub principal_kinds: Vec<String>,
    /// SPIFFE trust domains accepted beyond the gateway's own.
    pub trust_domains: Vec<String>,
    /// How names from another CA's certificates are written
    /// (`namespace`; unset: such certificates name nobody).
    pub namespace: portcullis_tls::ForeignNames,
}

impl Default for ClientAuth {
    fn default() -> Self {
        Self {
            mode: ClientCertMode::Off,
            ca_file: None,
            principal_from: vec![CertName::Spiffe, CertName::Dns, CertName::CommonName],
            principal_kinds: vec!["agent".into()],
            trust_domains: Vec::new(),
            namespace: Default::default(),
        }
    }
}

impl ClientAuth {
    /// What this listener accepts from client certificates.
    pub fn cert_policy(&self) -> portcullis_tls::CertPolicy {
        portcullis_tls::CertPolicy {
            order: self.principal_from.clone(),
            kinds: self.principal_kinds.clone(),
            trust_domains: self.trust_domains.clone(),
            foreign: self.namespace.clone(),
        }
    }
}

/// `[masking]`: rules applied to what comes back from targets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Masking {
    /// Keys the `hash` action; without one, tokens change per process.
    pub hash_key: Option<SecretRef>,
    pub rules: Vec<portcullis_mask::MaskSpec>,
}

/// The PostgreSQL listener (`[postgres]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresListener {
    pub listen: SocketAddr,
    /// Largest message a caller may send (bytes).
    pub max_message_bytes: usize,
    /// Refuse to start when the database role of a read-only connection
    /// could undo read-only (superuser, owner, write privileges); without
    /// it such roles are only logged. `portcullis doctor` shows the same.
    pub strict_roles: bool,
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// When set, the admin listener's `/metrics` asks for it as a bearer
    /// token (its series name every connection); open otherwise.
    pub metrics_token: Option<SecretRef>,
    /// How callers reach the gateway (used in messages, e.g. the reply to
    /// plaintext); derived from `listen` when absent.
    pub public_url: Option<String>,
    /// With `domain = "gw.example.com"`, `api.gw.example.com` routes to
    /// connection `api`.
    pub domain: Option<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub tls: TlsPolicy,
    pub client_auth: ClientAuth,
    /// The gateway's own CA, alone in this file: the only issuer whose
    /// certificates may name any principal (trust domain `portcullis`,
    /// as `cert issue` makes them).
    pub internal_ca: PathBuf,
    /// Whether `internal_ca` was written in the config (else it is the
    /// default `ca.pem`, which may be some other bundle: then it names no
    /// internal CA, with a warning, rather than stopping the gateway).
    pub internal_ca_set: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections each listener holds at most; more are refused.
    pub max_connections: usize,
    /// Connections one peer address holds at most, per listener.
    pub max_connections_per_peer: usize,
    /// Sessions and requests one principal (the person, for agents
    /// acting for one) holds at once through one agent (an agent serves
    /// 1,000 at most, callers together 920): one caller cannot take every
    /// stream of an agent from the others.
    pub max_agent_streams_per_caller: usize,
    pub max_header_bytes: usize,
    pub max_request_body_bytes: u64,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// The SQLite file (the default store).
    pub path: PathBuf,
    /// A shared PostgreSQL store (`postgres://…`, verified TLS), instead.
    pub url: Option<String>,
    pub password: Option<SecretRef>,
    /// How long a session waits for its audit entry before it is refused.
    pub write_timeout: Duration,
}

impl StoreConfig {
    /// The URL to open: the PostgreSQL one with its password filled in
    /// from its reference, or the SQLite file. Never log it.
    pub fn open_url(&self) -> Result<String, String> {
        let Some(url) = &self.url else {
            return Ok(format!("sqlite://{}?mode=rwc", self.path.display()));
        };
        let Some(pw) = &self.password else {
            return Ok(url.clone());
        };
        let secret = pw.resolve()?;
        // Only RFC 3986's unreserved characters stay as they are.
        const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        let encoded = percent_encoding::utf8_percent_encode(secret.expose(), USERINFO).to_string();
        let (scheme, rest) = url.split_once("://").ok_or("bad store URL")?;
        let (user, host) = rest
            .split_once('@')
            .ok_or("the store URL needs USER@HOST")?;
        Ok(format!("{scheme}://{user}:{encoded}@{host}"))
    }

    /// What to show in logs and errors.
    pub fn describe(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// Whether the gateway speaks TLS to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// TLS with certificate and host-name verification (the default).
    Verify,
    /// Plaintext to the target: only when written out, and logged loudly.
    Disable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub name: String,
    /// Extra trusted roots for this target, added to the system's.
    pub ca_file: Option<PathBuf>,
    /// Connecting (and, for HTTP, waiting for a response head).
    pub timeout: Duration,
    pub target: Target,
    /// Actions held for approval on this connection.
    pub approval: Option<ApprovalRule>,
    /// HTTP: the target reads method overrides (`X-HTTP-Method-Override`,
    /// `?_method=`), and the approval rule looks at the overriding
    /// method. Otherwise an override is refused where the rule holds
    /// methods.
    pub method_overrides: bool,
}

/// The protocol a connection speaks: which front serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Postgres,
    /// An upstream MCP server (Streamable HTTP), or the gateway's own MCP
    /// endpoint.
    Mcp,
}

impl Protocol {
    /// The name used in config files, audit entries and recordings.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Postgres => "postgres",
            Protocol::Mcp => "mcp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a connection reaches, by protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Http(HttpTarget),
    Postgres(PgTarget),
    /// An upstream MCP server (Streamable HTTP), fronted with tool
    /// filtering, pinning and masking.
    Mcp(McpTarget),
    /// Served through a connected agent.
    Agent(AgentTarget),
}

/// `type = "mcp"`: an HTTP target plus which of its tools may be used.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTarget {
    pub http: HttpTarget,
    /// Tool names or `prefix*` patterns; default `["*"]`.
    pub tools_allow: Vec<String>,
    /// Checked after `tools_allow`; a match hides and refuses the tool.
    pub tools_deny: Vec<String>,
}

impl McpTarget {
    /// Whether the configuration lets callers see and call `tool`.
    pub fn allows(&self, tool: &str) -> bool {
        let hit = |p: &String| match p.strip_suffix('*') {
            Some(prefix) => tool.starts_with(prefix),
            None => p == tool,
        };
        self.tools_allow.iter().any(hit) && !self.tools_deny.iter().any(hit)
    }
}

impl Target {
    pub fn protocol(&self) -> Protocol {
        match self {
            Target::Http(_) => Protocol::Http,
            Target::Postgres(_) => Protocol::Postgres,
            Target::Mcp(_) => Protocol::Mcp,
            Target::Agent(a) => a.protocol,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpTarget {
    pub url: Uri,
    pub tls: UpstreamTls,
    pub credential: Option<InjectedCredential>,
}

/// Which statement classes a PostgreSQL connection lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

impl Access {
    /// As config files write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "read-write",
            Access::ReadOnly => "read-only",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PgTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: SecretRef,
    pub tls: UpstreamTls,
    pub access: Access,
    /// Whether `access` was written out (an agent announces only a mode
    /// its config states, and a gateway that disagrees refuses the link).
    pub access_stated: bool,
    /// Keep authenticated upstream sessions and hand them to the next
    /// caller after `DISCARD ALL` (default on).
    pub reuse: bool,
}

/// A header the gateway adds to every request to the target.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectedCredential {
    pub header: HeaderName,
    /// Written before the secret, e.g. `"Bearer "`.
    pub prefix: String,
    pub secret: SecretRef,
}

/// The quickstart's in-process demo API.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub api_key: SecretRef,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read(path)?, path)
    }

    /// Parse `text` as if read from `path` (relative paths resolve next to
    /// it).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg = parse_with(text, path, raw::Root::validate)?;
        cfg.source = path.to_path_buf();
        Ok(cfg)
    }

    /// How the identity providers name people, as text for the store to
    /// compare between starts: a line per provider (who it is, its
    /// namespace, and the claims or attributes names and groups come
    /// from), sorted; empty with no provider. `saml_idp`: the `[saml]`
    /// provider's entity ID, read from its metadata by the caller (a
    /// provider swapped behind the same file names other people).
    pub fn naming(&self, saml_idp: Option<&str>) -> String {
        let oidc = self.oidc.iter().map(|o| {
            let s = &o.settings;
            // Which clients' tokens are people's decides who is a person
            // (unset, as before this key: no text, so nothing revoked).
            let clients = match &s.clients {
                None => String::new(),
                Some(roles) => {
                    let mut agents: Vec<String> = roles
                        .agents
                        .iter()
                        .map(|a| format!("{}={}", a.client, a.subject))
                        .collect();
                    agents.sort();
                    let mut people = roles.people.clone();
                    people.sort();
                    format!(" agents={} people={}", agents.join(","), people.join(","))
                }
            };
            format!(
                "oidc {} namespace={} subject={} groups={}{clients}",
                s.issuer,
                s.namespace.own().unwrap_or(""),
                s.subject_claim,
                s.groups_claim
            )
        });
        let saml = self.saml.iter().map(|s| {
            format!(
                "saml {} namespace={} name={} groups={}",
                saml_idp.unwrap_or("?"),
                s.namespace.own().unwrap_or(""),
                s.name_attribute.as_deref().unwrap_or(""),
                s.groups_attribute
            )
        });
        // Another CA's certificates name people where a listener accepts
        // the kind `user`: the same tokens-for-people hazard as a provider
        // renamed. (Unset names nobody, so it adds no line: upgrading
        // revokes nothing.)
        let certs = self.client_auths().filter_map(|(which, auth)| {
            let ns = match &auth.namespace {
                portcullis_tls::ForeignNames::Refused => return None,
                portcullis_tls::ForeignNames::Bare => "",
                portcullis_tls::ForeignNames::Namespace(ns) => ns,
            };
            let people = auth.mode != ClientCertMode::Off
                && auth.principal_kinds.iter().any(|k| k == "user");
            people.then(|| format!("certificates {which} namespace={ns}"))
        });
        let mut lines: Vec<String> = oidc.chain(saml).chain(certs).collect();
        lines.sort();
        lines.join("\n")
    }

    /// Each listener's client-certificate settings, by the listener's
    /// section (`gateway`, `postgres`).
    pub fn client_auths(&self) -> impl Iterator<Item = (&'static str, &ClientAuth)> {
        std::iter::once(("gateway", &self.gateway.client_auth))
            .chain(self.postgres.iter().map(|p| ("postgres", &p.client_auth)))
    }

    /// Every connection's protocol by name, so that a front can tell a
    /// caller "that connection speaks X" instead of "unknown".
    pub fn protocols(&self) -> std::collections::HashMap<String, Protocol> {
        self.connections
            .iter()
            .map(|c| (c.name.clone(), c.target.protocol()))
            .collect()
    }

    pub fn connection(&self, name: &str) -> Option<&Connection> {
        self.connections.iter().find(|c| c.name == name)
    }

    /// The folder of the config file: where the CA, keys and audit
    /// checkpoints live.
    pub fn dir(&self) -> &Path {
        self.source
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    /// The https URL callers use, for messages and generated files.
    pub fn public_url(&self) -> String {
        self.gateway
            .public_url
            .clone()
            .unwrap_or_else(|| url_for(self.gateway.listen))
    }
}

/// `https://localhost:PORT` for a loopback address (the name the internal
/// certificate carries), else `https://ADDR`.
pub fn url_for(addr: SocketAddr) -> String {
    if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        format!("https://localhost:{}", addr.port())
    } else {
        format!("https://{addr}")
    }
}

type Invalid = (String, String);

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    (key.into(), message.into())
}

fn duration(key: &str, s: &str) -> Result<Duration, Invalid> {
    humantime::parse_duration(s).map_err(|e| {
        invalid(
            key,
            format!("{e}; write a duration such as \"30s\" or \"5m\""),
        )
    })
}

/// Connection names appear in URLs and host names: keep them DNS-label
/// shaped.
fn check_name(key: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{name:?} is not a valid name: use 1-63 lower-case letters, digits and '-'"),
        ))
    }
}

fn unique<'a>(key: &str, seen: &mut HashSet<&'a str>, name: &'a str) -> Result<(), Invalid> {
    if seen.insert(name) {
        Ok(())
    } else {
        Err(invalid(key, format!("{name:?} is defined twice")))
    }
}

#[cfg(test)]
mod tests;
