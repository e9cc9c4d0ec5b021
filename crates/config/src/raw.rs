//! The file's shape, exactly as written, and its validation into the typed
//! model. Unknown keys are errors, so a typo never silently does nothing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use http::{HeaderName, Uri};
use portcullis_identity::oidc::{AgentClient, ClientRoles};
use portcullis_policy::Grant;
use portcullis_tls::{ForeignNames, TlsPolicy};
use serde::Deserialize;

use crate::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Root {
    gateway: RawGateway,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    upstream_tls: TlsPolicy,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    connections: Vec<RawConnection>,
    #[serde(default)]
    grants: Vec<RawGrant>,
    demo: Option<RawDemo>,
    postgres: Option<RawPostgres>,
    #[serde(default)]
    masking: RawMasking,
    #[serde(default)]
    oidc: Vec<RawOidc>,
    agent_listener: Option<RawAgentListener>,
    #[serde(default)]
    approvals: RawApprovals,
    #[serde(default)]
    recordings: RawRecordings,
    oauth: Option<crate::oauth::RawOAuth>,
    #[serde(default)]
    console: crate::console::RawConsole,
    saml: Option<crate::saml::RawSaml>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRecordings {
    url: Option<String>,
    spool: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    allow_http: Option<bool>,
    max_backlog: Option<String>,
    max_spool_bytes: Option<u64>,
}

impl RawRecordings {
    fn validate(&self, base: &Path) -> Result<Recordings, Invalid> {
        let spool = base.join(self.spool.as_deref().unwrap_or("recordings"));
        let max_backlog = duration(
            "recordings.max_backlog",
            self.max_backlog.as_deref().unwrap_or("5m"),
        )?;
        let max_spool_bytes = self.max_spool_bytes.unwrap_or(10 << 30);
        let url = self.url.as_deref().unwrap_or("file://recordings");
        let s3_only = [
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
            ("allow_http", self.allow_http.is_some()),
            ("max_spool_bytes", self.max_spool_bytes.is_some()),
        ];
        if let Some(dir) = url.strip_prefix("file://") {
            if let Some((k, _)) = s3_only.iter().find(|(_, set)| *set) {
                return Err(invalid(format!("recordings.{k}"), "only with an s3:// url"));
            }
            return Ok(Recordings {
                spool: base.join(dir),
                s3: None,
                max_backlog,
                max_spool_bytes,
            });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(invalid(
                "recordings.url",
                "file://DIR or s3://BUCKET/PREFIX",
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(
                "recordings.url",
                "s3://BUCKET/PREFIX needs a bucket",
            ));
        }
        let secret = |k: &str, v: &Option<String>| -> Result<Option<SecretRef>, Invalid> {
            v.as_deref()
                .map(|r| {
                    SecretRef::parse(r, base).map_err(|e| invalid(format!("recordings.{k}"), e))
                })
                .transpose()
        };
        let endpoint = self.endpoint.clone();
        let allow_http = self.allow_http.unwrap_or(false);
        if let Some(e) = &endpoint
            && e.starts_with("http://")
            && !allow_http
        {
            return Err(invalid(
                "recordings.endpoint",
                "plaintext http:// to the object store needs `allow_http = true` written out",
            ));
        }
        Ok(Recordings {
            spool,
            max_backlog,
            max_spool_bytes,
            s3: Some(S3Recordings {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                endpoint,
                region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
                access_key_id: secret("access_key_id", &self.access_key_id)?,
                secret_access_key: secret("secret_access_key", &self.secret_access_key)?,
                allow_http,
            }),
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    webhook: Option<String>,
    webhook_secret: Option<String>,
    webhook_format: Option<String>,
    webhook_ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentListener {
    listen: SocketAddr,
    ca_file: String,
    /// The key of `ca_file`'s CA: with it, agents may exchange a one-time
    /// enrolment token for their certificate.
    enrol_ca_key: Option<String>,
    enrol_validity: Option<String>,
}

/// `agent.toml`, the configuration of `portcullis agent`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentRoot {
    agent: RawAgentSection,
    #[serde(default)]
    upstream_tls: TlsPolicy,
    #[serde(default)]
    connections: Vec<RawConnection>,
    demo: Option<RawDemo>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentSection {
    gateway: OneOrMany,
    server_name: Option<String>,
    ca_file: String,
    cert: String,
    key: String,
    enrol: Option<RawEnrol>,
}

/// Where and with what an agent without a certificate gets one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnrol {
    /// The gateway's HTTPS URL (its main listener).
    url: String,
    /// The one-time token, by reference (`file:`, `env:`).
    token: String,
}

/// One gateway or several: with several gateways behind a load balancer,
/// an agent keeps a link to each, so callers find it wherever they land.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl AgentRoot {
    pub(crate) fn validate(self, base: &Path) -> Result<AgentConfig, Invalid> {
        let a = &self.agent;
        let list = match &a.gateway {
            OneOrMany::One(g) => vec![g.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        if list.is_empty() {
            return Err(invalid("agent.gateway", "name at least one gateway"));
        }
        let mut gateways = Vec::new();
        for g in &list {
            let (host, port) = g
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| {
                    invalid(
                        "agent.gateway",
                        format!("{g:?}: expected HOST:PORT of a gateway's agent listener, e.g. gw.example.com:8444"),
                    )
                })?;
            gateways.push(GatewayAddress {
                host: host.to_string(),
                port,
                server_name: a.server_name.clone().unwrap_or_else(|| host.to_string()),
            });
        }
        self.upstream_tls
            .provider()
            .map_err(|e| invalid("upstream_tls", e.to_string()))?;
        let mut names = HashSet::new();
        let mut connections = Vec::new();
        for (i, c) in self.connections.iter().enumerate() {
            let key = |k: &str| format!("connections[{i}].{k}");
            check_name(&key("name"), &c.name)?;
            unique(&key("name"), &mut names, &c.name)?;
            if c.agent.is_some() {
                return Err(invalid(
                    key("agent"),
                    "an agent serves its connections itself; `agent` belongs in the gateway's config",
                ));
            }
            let conn = c.validate(&key, base)?;
            if matches!(conn.target, Target::Mcp(_)) {
                return Err(invalid(
                    key("type"),
                    "agents serve \"http\" and \"postgres\" connections",
                ));
            }
            connections.push(conn);
        }
        let demo = match self.demo {
            None => None,
            Some(d) => Some(DemoConfig {
                listen: d.listen,
                cert: base.join(&d.cert),
                key: base.join(&d.key),
                api_key: SecretRef::parse(&d.api_key, base)
                    .map_err(|e| invalid("demo.api_key", e))?,
            }),
        };
        let enrol = match &a.enrol {
            None => None,
            Some(e) => {
                if !e.url.starts_with("https://") {
                    return Err(invalid(
                        "agent.enrol.url",
                        "must be the gateway's https:// URL",
                    ));
                }
                Some(AgentEnrol {
                    url: e.url.trim_end_matches('/').to_string(),
                    token: SecretRef::parse(&e.token, base)
                        .map_err(|err| invalid("agent.enrol.token", err))?,
                })
            }
        };
        Ok(AgentConfig {
            source: Default::default(),
            gateways,
            enrol,
            ca_file: base.join(&a.ca_file),
            cert: base.join(&a.cert),
            key: base.join(&a.key),
            upstream_tls: self.upstream_tls,
            connections,
            demo,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Option<Vec<String>>,
    groups_claim: Option<String>,
    subject_claim: Option<String>,
    leeway: Option<String>,
    ca_file: Option<String>,
    refresh_interval: Option<String>,
    login_client_id: Option<String>,
    login_scopes: Option<String>,
    /// Unset: bare names; `""`: bare names, shared on purpose with the
    /// other bare issuers; a name: that namespace.
    namespace: Option<String>,
    /// The clients whose tokens are agents' (unset: `sub == client_id`).
    agent_clients: Option<Vec<RawAgentClient>>,
    /// With `agent_clients`: the clients people sign in through, beyond
    /// `login_client_id` and `[oauth] client_id`.
    people_clients: Option<Vec<String>>,
}

/// An entry of `agent_clients`: a client whose own tokens carry its id as
/// `sub`, or a client and the `sub` of its service account.
#[derive(Debug)]
enum RawAgentClient {
    Named(String),
    Bound(RawBoundAgent),
}

/// By hand rather than `#[serde(untagged)]`: an untagged enum answers a
/// misspelt key with "did not match any variant", where this passes the
/// table to [`RawBoundAgent`] and its error names the key.
impl<'de> Deserialize<'de> for RawAgentClient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = RawAgentClient;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a client id, or { client = \"…\", subject = \"…\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawAgentClient::Named(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                RawBoundAgent::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawAgentClient::Bound)
            }
        }
        d.deserialize_any(Entry)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoundAgent {
    client: String,
    subject: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientAuth {
    mode: String,
    ca_file: Option<String>,
    principal_from: Option<Vec<String>>,
    principal_kinds: Option<Vec<String>>,
    #[serde(default)]
    trust_domains: Vec<String>,
    /// Unset: another CA's certificates name nobody; `""`: bare names,
    /// as the internal CA's; a name: `KIND:NAMESPACE/NAME`.
    namespace: Option<String>,
}

impl RawClientAuth {
    fn validate(&self, key: &str, base: &Path) -> Result<ClientAuth, Invalid> {
        let mode = match self.mode.as_str() {
            "off" => ClientCertMode::Off,
            "optional" => ClientCertMode::Optional,
            "required" => ClientCertMode::Required,
            other => {
                return Err(invalid(
                    format!("{key}.mode"),
                    format!("{other:?}: expected \"off\", \"optional\" or \"required\""),
                ));
            }
        };
        let ca_file = self.ca_file.as_deref().map(|p| base.join(p));
        if mode != ClientCertMode::Off && ca_file.is_none() {
            return Err(invalid(
                format!("{key}.ca_file"),
                "client certificates need the CA bundle that issues them (the internal CA is ca.pem)",
            ));
        }
        let mut principal_from = Vec::new();
        for name in self
            .principal_from
            .clone()
            .unwrap_or_else(|| vec!["spiffe".into(), "dns".into(), "cn".into()])
        {
            principal_from.push(match name.as_str() {
                "spiffe" => CertName::Spiffe,
                "dns" => CertName::Dns,
                "cn" => CertName::CommonName,
                other => {
                    return Err(invalid(
                        format!("{key}.principal_from"),
                        format!("{other:?}: expected \"spiffe\", \"dns\" or \"cn\""),
                    ));
                }
            });
        }
        if principal_from.is_empty() {
            return Err(invalid(
                format!("{key}.principal_from"),
                "list at least one source",
            ));
        }
        let principal_kinds = self
            .principal_kinds
            .clone()
            .unwrap_or_else(|| vec!["agent".into()]);
        for k in principal_kinds.iter().chain(&self.trust_domains) {
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(
                    format!("{key}.principal_kinds"),
                    format!(
                        "{k:?}: kinds and trust domains are plain names (letters, digits, - _ .)"
                    ),
                ));
            }
        }
        let namespace = match self.namespace.as_deref() {
            None => ForeignNames::Refused,
            Some("") => ForeignNames::Bare,
            Some(ns) => {
                portcullis_identity::validate_namespace(ns)
                    .map_err(|e| invalid(format!("{key}.namespace"), e))?;
                ForeignNames::Namespace(ns.to_string())
            }
        };
        Ok(ClientAuth {
            mode,
            ca_file,
            principal_from,
            principal_kinds,
            trust_domains: self.trust_domains.clone(),
            namespace,
        })
    }
}

impl RawOidc {
    /// `agent_clients`: each a name an agent may have (no `@`: that is an
    /// agent acting for a person; no `/`), and not a client people sign
    /// in through (`login_client_id`, `people_clients`), whose tokens are
    /// people's; `people_clients` only beside it.
    fn agent_clients(&self, key: &dyn Fn(&str) -> String) -> Result<Option<ClientRoles>, Invalid> {
        let Some(list) = &self.agent_clients else {
            if self.people_clients.is_some() {
                return Err(invalid(
                    key("people_clients"),
                    "only with agent_clients (without it, every token that is not an agent's is a person's)",
                ));
            }
            return Ok(None);
        };
        let mut people: Vec<String> = self.people_clients.clone().unwrap_or_default();
        people.extend(self.login_client_id.clone());
        let mut agents = Vec::with_capacity(list.len());
        for entry in list {
            let (client, subject) = match entry {
                RawAgentClient::Named(c) => (c, c),
                RawAgentClient::Bound(b) => (&b.client, &b.subject),
            };
            let name = format!("agent:{client}");
            if portcullis_identity::validate_subject(&name).is_err()
                || portcullis_identity::is_delegated(&name)
                || client.contains(':')
            {
                return Err(invalid(
                    key("agent_clients"),
                    format!("{client:?} is not a name an agent may have (letters, digits, - _ .)"),
                ));
            }
            if subject.is_empty() {
                return Err(invalid(
                    key("agent_clients"),
                    format!("{client:?}: an empty subject"),
                ));
            }
            if people.contains(client) {
                return Err(invalid(
                    key("agent_clients"),
                    format!(
                        "{client:?} is a client people sign in through (login_client_id or people_clients)"
                    ),
                ));
            }
            agents.push(AgentClient {
                client: client.clone(),
                subject: subject.clone(),
            });
        }
        Ok(Some(ClientRoles { agents, people }))
    }

    fn validate(&self, key: &dyn Fn(&str) -> String, base: &Path) -> Result<OidcIssuer, Invalid> {
        if !self.issuer.starts_with("https://") {
            return Err(invalid(key("issuer"), "must be an https:// URL"));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(invalid(
                key("audiences"),
                "list the audience(s) this gateway accepts (the `aud` of its tokens)",
            ));
        }
        let names = self
            .algorithms
            .clone()
            .unwrap_or_else(|| vec!["RS256".into(), "ES256".into(), "PS256".into()]);
        let mut algorithms = Vec::new();
        for a in &names {
            algorithms.push(
                portcullis_identity::oidc::parse_algorithm(a)
                    .map_err(|e| invalid(key("algorithms"), e))?,
            );
        }
        if algorithms.is_empty() {
            return Err(invalid(key("algorithms"), "list at least one algorithm"));
        }
        let leeway = duration(&key("leeway"), self.leeway.as_deref().unwrap_or("60s"))?;
        // Clock skew, not a token lifetime: past this, expired tokens are
        // simply accepted.
        if leeway > Duration::from_secs(600) {
            return Err(invalid(
                key("leeway"),
                "must be at most 10m (clock skew, not a lifetime)",
            ));
        }
        let clients = self.agent_clients(key)?;
        let refresh_interval = duration(
            &key("refresh_interval"),
            self.refresh_interval.as_deref().unwrap_or("1h"),
        )?;
        if refresh_interval < Duration::from_secs(10) {
            return Err(invalid(key("refresh_interval"), "must be at least 10s"));
        }
        Ok(OidcIssuer {
            settings: portcullis_identity::IssuerSettings {
                issuer: self.issuer.clone(),
                audiences: self.audiences.clone(),
                algorithms,
                groups_claim: self.groups_claim.clone().unwrap_or_else(|| "groups".into()),
                subject_claim: self.subject_claim.clone().unwrap_or_else(|| "sub".into()),
                leeway_secs: leeway.as_secs(),
                namespace: portcullis_identity::Namespace::from_config(self.namespace.as_deref())
                    .map_err(|e| invalid(key("namespace"), e))?,
                clients,
            },
            ca_file: self.ca_file.as_deref().map(|p| base.join(p)),
            refresh_interval,
            login: self.login_client_id.clone().map(|client_id| OidcLogin {
                client_id,
                scopes: self
                    .login_scopes
                    .clone()
                    .unwrap_or_else(|| "openid offline_access".into()),
            }),
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMasking {
    hash_key: Option<String>,
    #[serde(default)]
    rules: Vec<portcullis_mask::MaskSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    listen: SocketAddr,
    client_auth: Option<RawClientAuth>,
    #[serde(default = "default_max_message")]
    max_message_bytes: usize,
    /// Refuse to start when a read-only connection's role is not least
    /// privilege (see `portcullis doctor`).
    #[serde(default)]
    strict_roles: bool,
}

fn default_max_message() -> usize {
    16 * 1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    metrics_token: Option<String>,
    public_url: Option<String>,
    domain: Option<String>,
    cert: String,
    key: String,
    #[serde(default)]
    tls: TlsPolicy,
    client_auth: Option<RawClientAuth>,
    internal_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_header_bytes: usize,
    max_request_body_bytes: u64,
    handshake_timeout: String,
    idle_timeout: String,
    max_connections: usize,
    max_connections_per_peer: usize,
    max_agent_streams_per_caller: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_request_body_bytes: 10 * 1024 * 1024,
            handshake_timeout: "10s".into(),
            idle_timeout: "5m".into(),
            max_connections: 10_000,
            max_connections_per_peer: 1_000,
            max_agent_streams_per_caller: 250,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    path: String,
    url: Option<String>,
    password: Option<String>,
    write_timeout: Option<String>,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            path: "portcullis.db".into(),
            url: None,
            password: None,
            write_timeout: None,
        }
    }
}

impl RawStore {
    fn validate(&self, base: &Path) -> Result<StoreConfig, Invalid> {
        let path = base.join(&self.path);
        let write_timeout = duration(
            "store.write_timeout",
            self.write_timeout.as_deref().unwrap_or("800ms"),
        )?;
        if write_timeout.is_zero() || write_timeout > std::time::Duration::from_secs(30) {
            return Err(invalid(
                "store.write_timeout",
                "between 1ms and 30s (a caller waits this long before a session is refused)",
            ));
        }
        let Some(url) = &self.url else {
            if self.password.is_some() {
                return Err(invalid("store.password", "only with a postgres:// `url`"));
            }
            return Ok(StoreConfig {
                path,
                url: None,
                password: None,
                write_timeout,
            });
        };
        if let Some(p) = url.strip_prefix("sqlite://") {
            return Ok(StoreConfig {
                path: base.join(p.split('?').next().unwrap_or(p)),
                url: None,
                password: None,
                write_timeout,
            });
        }
        if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(invalid(
                "store.url",
                "sqlite://PATH or postgres://USER@HOST:PORT/DB",
            ));
        }
        let mut parsed = crate::pgurl::parse(url).map_err(|e| invalid("store.url", e))?;
        if let Some(root) = &parsed.sslrootcert {
            parsed.sslrootcert = Some(base.join(root).display().to_string());
        }
        if parsed.password.is_some() {
            return Err(invalid(
                "store.url",
                "the password may not be written in the URL; give `store.password = \"env:NAME\"` or \"file:PATH\"",
            ));
        }
        // Verified TLS only: the store holds every token hash and the audit chain.
        if parsed.sslmode != crate::pgurl::SslMode::VerifyFull {
            return Err(invalid(
                "store.url",
                "the store is reached over verified TLS: use sslmode=verify-full (the default)",
            ));
        }
        let password = match &self.password {
            Some(p) => Some(SecretRef::parse(p, base).map_err(|e| invalid("store.password", e))?),
            None => None,
        };
        // Spelled out for the driver, whose own default is not verify-full.
        let mut normalized = parsed.without_password();
        normalized.push(if normalized.contains('?') { '&' } else { '?' });
        normalized.push_str("sslmode=verify-full");
        Ok(StoreConfig {
            path,
            url: Some(normalized),
            password,
            write_timeout,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    url: String,
    tls: Option<String>,
    ca_file: Option<String>,
    timeout: Option<String>,
    credential: Option<RawCredential>,
    password: Option<String>,
    access: Option<String>,
    reuse: Option<bool>,
    tools_allow: Option<Vec<String>>,
    tools_deny: Option<Vec<String>>,
    agent: Option<String>,
    approval: Option<RawApproval>,
    method_overrides: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    mode: String,
    #[serde(default)]
    classes: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    tools: Vec<String>,
    approvers: Vec<String>,
    required: Option<u32>,
    wait: Option<String>,
    expires: Option<String>,
    session: Option<String>,
    preview: Option<bool>,
    preview_tolerance: Option<u64>,
    preview_timeout: Option<String>,
}

impl RawApproval {
    fn validate(&self, key: &dyn Fn(&str) -> String) -> Result<ApprovalRule, Invalid> {
        let k = |f: &str| key(&format!("approval.{f}"));
        let mode = match self.mode.as_str() {
            "none" => ApprovalMode::None,
            "session" => ApprovalMode::Session,
            "statements" => ApprovalMode::Statements,
            other => {
                return Err(invalid(
                    k("mode"),
                    format!("{other:?}: expected \"none\", \"session\" or \"statements\""),
                ));
            }
        };
        for c in &self.classes {
            if !["write", "ddl", "admin", "unknown", "read"].contains(&c.as_str()) {
                return Err(invalid(
                    k("classes"),
                    format!("{c:?}: statement classes are read, write, ddl, admin, unknown"),
                ));
            }
        }
        let methods: Vec<String> = self
            .methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        for m in &methods {
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                return Err(invalid(
                    k("methods"),
                    format!("{m:?} is not an HTTP method"),
                ));
            }
        }
        if mode == ApprovalMode::Statements
            && self.classes.is_empty()
            && methods.is_empty()
            && self.tools.is_empty()
        {
            return Err(invalid(
                k("classes"),
                "mode = \"statements\" needs `classes` (SQL), `methods` (HTTP) or `tools` (MCP) to know what to hold",
            ));
        }
        if self.approvers.is_empty() {
            return Err(invalid(
                k("approvers"),
                "name the group(s) whose members may approve",
            ));
        }
        let required = self.required.unwrap_or(1);
        if !(1..=10).contains(&required) {
            return Err(invalid(
                k("required"),
                "between 1 and 10 distinct approvers",
            ));
        }
        let preview_timeout = duration(
            &k("preview_timeout"),
            self.preview_timeout.as_deref().unwrap_or("2s"),
        )?;
        if preview_timeout > Duration::from_secs(60) || preview_timeout < Duration::from_millis(100)
        {
            return Err(invalid(
                k("preview_timeout"),
                "between 100ms and 60s: the preview runs while the caller waits",
            ));
        }
        Ok(ApprovalRule {
            mode,
            classes: self.classes.clone(),
            methods,
            tools: self.tools.clone(),
            approvers: self.approvers.clone(),
            required,
            wait: duration(&k("wait"), self.wait.as_deref().unwrap_or("60s"))?,
            expires: duration(&k("expires"), self.expires.as_deref().unwrap_or("1h"))?,
            session: duration(&k("session"), self.session.as_deref().unwrap_or("1h"))?,
            preview: self.preview.unwrap_or(true),
            preview_tolerance: self.preview_tolerance.unwrap_or(0),
            preview_timeout,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    header: String,
    #[serde(default)]
    prefix: String,
    secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    name: Option<String>,
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    connections: Vec<String>,
    #[serde(default)]
    budgets: Vec<RawBudget>,
}

/// One limit of a grant's budget: exactly one measure, with its number.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    rows: Option<u64>,
    bytes: Option<u64>,
    writes: Option<u64>,
    requests: Option<u64>,
    tool_calls: Option<u64>,
    tables: Option<u64>,
    per: String,
    method: Option<String>,
    tool: Option<String>,
}

impl RawBudget {
    fn validate(
        &self,
        key: &dyn Fn(&str) -> String,
    ) -> Result<portcullis_policy::budget::Limit, Invalid> {
        use portcullis_policy::budget::{Limit, Measure, Window};
        let given: Vec<(Measure, u64)> = [
            (Measure::Rows, self.rows),
            (Measure::Bytes, self.bytes),
            (Measure::Writes, self.writes),
            (Measure::Requests, self.requests),
            (Measure::ToolCalls, self.tool_calls),
            (Measure::Tables, self.tables),
        ]
        .into_iter()
        .filter_map(|(m, n)| n.map(|n| (m, n)))
        .collect();
        let [(measure, limit)] = given[..] else {
            return Err(invalid(
                key("rows"),
                "name exactly one of rows, bytes, writes, requests, tool_calls, tables, with its limit",
            ));
        };
        let per = match self.per.as_str() {
            "session" => Window::Session,
            "hour" => Window::Hour,
            "day" => Window::Day,
            other => {
                return Err(invalid(
                    key("per"),
                    format!("{other:?}: expected \"session\", \"hour\" or \"day\""),
                ));
            }
        };
        let only = match (measure, &self.method, &self.tool) {
            (_, Some(_), Some(_)) => {
                return Err(invalid(key("method"), "name a method or a tool, not both"));
            }
            (Measure::Requests, Some(m), None) => {
                let m = m.to_ascii_uppercase();
                if http::Method::from_bytes(m.as_bytes()).is_err() {
                    return Err(invalid(
                        key("method"),
                        format!("{m:?} is not an HTTP method"),
                    ));
                }
                Some(m)
            }
            (Measure::ToolCalls, None, Some(t)) => Some(t.clone()),
            (_, Some(_), None) => {
                return Err(invalid(key("method"), "`method` only goes with `requests`"));
            }
            (_, None, Some(_)) => {
                return Err(invalid(key("tool"), "`tool` only goes with `tool_calls`"));
            }
            (_, None, None) => None,
        };
        Ok(Limit {
            measure,
            per,
            limit,
            only,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemo {
    listen: SocketAddr,
    cert: String,
    key: String,
    api_key: String,
}

/// Headers a credential may not be injected as: hop-by-hop headers are
/// stripped in transit, and these would change framing or routing.
const FORBIDDEN_CREDENTIAL_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
];

impl Root {
    /// One section at a time, in the order a reader meets them; each
    /// error names its key.
    pub(crate) fn validate(self, base: &Path) -> Result<Config, Invalid> {
        let path = |p: &str| base.join(p);
        self.check_gateway()?;
        let limits = self.limits.validate()?;
        let (connections, names) = self.connections(base)?;
        let grants = self.grants(&names)?;
        let masking = self.masking(&names, base)?;
        let demo = match &self.demo {
            None => None,
            Some(d) => Some(d.validate(base)?),
        };
        let mut issuers = HashSet::new();
        let mut oidc = Vec::with_capacity(self.oidc.len());
        for (i, o) in self.oidc.iter().enumerate() {
            let key = |k: &str| format!("oidc[{i}].{k}");
            unique(&key("issuer"), &mut issuers, &o.issuer)?;
            oidc.push(o.validate(&key, base)?);
        }
        self.namespaces_apart()?;
        let metrics_token = self
            .gateway
            .metrics_token
            .as_deref()
            .map(|s| SecretRef::parse(s, base))
            .transpose()
            .map_err(|e| invalid("gateway.metrics_token", e))?;
        let gateway_client_auth = match &self.gateway.client_auth {
            Some(c) => c.validate("gateway.client_auth", base)?,
            None => ClientAuth::default(),
        };
        let postgres = match &self.postgres {
            None => None,
            Some(p) => Some(p.validate(base)?),
        };
        self.ca_namespaces_apart(
            std::iter::once(("gateway.client_auth", &gateway_client_auth)).chain(
                postgres
                    .as_ref()
                    .map(|p| ("postgres.client_auth", &p.client_auth)),
            ),
        )?;
        let agent_listener = self.agent_listener(&connections, base)?;
        let approvals = self.approvals.validate(base)?;
        let recordings = self.recordings.validate(base)?;
        let store = self.store.validate(base)?;
        let oauth = match &self.oauth {
            None => None,
            Some(o) => Some(o.validate(&oidc, base)?),
        };
        // People sign in through the gateway's own client too.
        if let Some(o) = &oauth
            && let Some(i) = oidc.iter_mut().find(|i| i.settings.issuer == o.issuer)
            && let Some(roles) = &mut i.settings.clients
        {
            roles.people.push(o.client_id.clone());
        }
        let console = self.console.validate()?;
        let mut saml = match &self.saml {
            None => None,
            Some(s) => Some(s.validate(base)?),
        };
        reserve_namespaces(&mut oidc, saml.as_mut());
        Ok(Config {
            source: Default::default(),
            saml,
            oauth,
            console,
            recordings,
            approvals,
            agent_listener,
            oidc,
            gateway: GatewayConfig {
                listen: self.gateway.listen,
                admin_listen: self.gateway.admin_listen,
                metrics_token,
                public_url: self.gateway.public_url,
                domain: self.gateway.domain.map(|d| d.to_ascii_lowercase()),
                cert: path(&self.gateway.cert),
                key: path(&self.gateway.key),
                tls: self.gateway.tls,
                client_auth: gateway_client_auth,
                internal_ca: path(self.gateway.internal_ca.as_deref().unwrap_or("ca.pem")),
                internal_ca_set: self.gateway.internal_ca.is_some(),
            },
            limits,
            upstream_tls: self.upstream_tls,
            store,
            connections,
            grants,
            demo,
            masking,
            postgres,
        })
    }

    /// `[gateway]` and `[upstream_tls]`: TLS profiles, domain, public URL.
    fn check_gateway(&self) -> Result<(), Invalid> {
        self.gateway
            .tls
            .provider()
            .map_err(|e| invalid("gateway.tls", e.to_string()))?;
        self.upstream_tls
            .provider()
            .map_err(|e| invalid("upstream_tls", e.to_string()))?;
        if let Some(d) = &self.gateway.domain
            && (d.is_empty() || d.starts_with('.') || d.contains('/'))
        {
            return Err(invalid(
                "gateway.domain",
                "expected a host name such as gw.example.com",
            ));
        }
        if let Some(u) = &self.gateway.public_url
            && !u.starts_with("https://")
        {
            return Err(invalid("gateway.public_url", "must be an https:// URL"));
        }
        Ok(())
    }

    /// `[[connections]]`, and the set of their names.
    fn connections(&self, base: &Path) -> Result<(Vec<Connection>, HashSet<&str>), Invalid> {
        let mut names = HashSet::new();
        let mut connections = Vec::with_capacity(self.connections.len());
        for (i, c) in self.connections.iter().enumerate() {
            let key = |k: &str| format!("connections[{i}].{k}");
            check_name(&key("name"), &c.name)?;
            unique(&key("name"), &mut names, &c.name)?;
            connections.push(c.validate(&key, base)?);
        }
        Ok((connections, names))
    }

    /// Two identity providers (`[[oidc]]` issuers, `[saml]`) that both
    /// name people bare (`user:alice`) make each able to sign in as the
    /// other's people. That must be said on purpose (`namespace = ""` on
    /// each); left unset, it is refused. A namespace names one provider.
    fn namespaces_apart(&self) -> Result<(), Invalid> {
        // The key of its `namespace`, what it is, the namespace written.
        let providers: Vec<(String, &str, Option<&str>)> = self
            .oidc
            .iter()
            .enumerate()
            .map(|(i, o)| {
                (
                    format!("oidc[{i}].namespace"),
                    o.issuer.as_str(),
                    o.namespace.as_deref(),
                )
            })
            .chain(
                self.saml
                    .iter()
                    .map(|s| ("saml.namespace".to_string(), "[saml]", s.namespace())),
            )
            .collect();
        let mut owners = HashMap::new();
        for (key, what, ns) in &providers {
            if let Some(ns) = ns.filter(|n| !n.is_empty())
                && let Some(first) = owners.insert(ns, what)
            {
                return Err(invalid(
                    key,
                    format!(
                        "namespace {ns:?} is already {first}'s: a namespace names the people \
                         of one provider"
                    ),
                ));
            }
        }
        let bare: Vec<_> = providers
            .iter()
            .filter(|(_, _, ns)| ns.is_none_or(str::is_empty))
            .collect();
        let unset = bare.iter().find(|(_, _, ns)| ns.is_none());
        match unset {
            Some((key, what, _)) if bare.len() > 1 => {
                let other = bare
                    .iter()
                    .find(|(k, ..)| k != key)
                    .map_or("", |(_, w, _)| *w);
                Err(invalid(
                    key,
                    format!(
                        "{what} and {other} would both name people bare (user:NAME), so either \
                         could sign in as the other's people: give each provider its own \
                         `namespace` (its people become user:NAMESPACE/NAME), or write \
                         `namespace = \"\"` on each that names the same people"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// A listener's namespace for other CAs' certificates may not be an
    /// identity provider's: the partner CA would name that provider's
    /// people (`user:partner/alice`). Listeners may share one (the same
    /// partner CAs on every front).
    fn ca_namespaces_apart<'a>(
        &self,
        listeners: impl Iterator<Item = (&'a str, &'a ClientAuth)>,
    ) -> Result<(), Invalid> {
        let providers = self
            .oidc
            .iter()
            .map(|o| (o.issuer.as_str(), o.namespace.as_deref()))
            .chain(self.saml.iter().map(|s| ("[saml]", s.namespace())));
        let owners: HashMap<&str, &str> = providers
            .filter_map(|(what, ns)| Some((ns?, what)))
            .collect();
        for (key, auth) in listeners {
            if let ForeignNames::Namespace(ns) = &auth.namespace
                && let Some(what) = owners.get(ns.as_str())
            {
                return Err(invalid(
                    format!("{key}.namespace"),
                    format!(
                        "namespace {ns:?} is {what}'s: another CA's certificates would name its \
                         people; give the CAs a namespace of their own"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[[grants]]`: each names principals or groups, and connections
    /// that exist.
    fn grants(&self, names: &HashSet<&str>) -> Result<Vec<Grant>, Invalid> {
        let mut grant_names = HashSet::new();
        let mut grants = Vec::with_capacity(self.grants.len());
        for (i, g) in self.grants.iter().enumerate() {
            let key = |k: &str| format!("grants[{i}].{k}");
            let name = g.name.clone().unwrap_or_else(|| format!("grants[{i}]"));
            if !grant_names.insert(name.clone()) {
                return Err(invalid(key("name"), format!("{name:?} is defined twice")));
            }
            if g.principals.is_empty() && g.groups.is_empty() {
                return Err(invalid(
                    key("principals"),
                    "a grant needs at least one entry in `principals` or `groups`",
                ));
            }
            for p in &g.principals {
                portcullis_identity::validate_principal(p)
                    .map_err(|e| invalid(key("principals"), e))?;
            }
            if g.connections.is_empty() {
                return Err(invalid(
                    key("connections"),
                    "list at least one connection, or \"*\"",
                ));
            }
            known_connections(&key("connections"), &g.connections, names)?;
            let budgets = g
                .budgets
                .iter()
                .enumerate()
                .map(|(j, b)| b.validate(&|k: &str| key(&format!("budgets[{j}].{k}"))))
                .collect::<Result<Vec<_>, _>>()?;
            grants.push(Grant {
                name,
                principals: g.principals.clone(),
                groups: g.groups.clone(),
                connections: g.connections.clone(),
                budgets,
            });
        }
        Ok(grants)
    }

    /// `[masking]`: rules over connections that exist, which compile.
    fn masking(&self, names: &HashSet<&str>, base: &Path) -> Result<Masking, Invalid> {
        for (i, r) in self.masking.rules.iter().enumerate() {
            let key = format!("masking.rules[{i}].connections");
            known_connections(&key, &r.connections, names)?;
        }
        portcullis_mask::RuleSet::new(&self.masking.rules, Some(b"validation"))
            .map_err(|e| invalid("masking", e.to_string()))?;
        let hash_key = match &self.masking.hash_key {
            Some(k) => Some(SecretRef::parse(k, base).map_err(|e| invalid("masking.hash_key", e))?),
            None => None,
        };
        Ok(Masking {
            hash_key,
            rules: self.masking.rules.clone(),
        })
    }

    /// `[agent_listener]`: required as soon as a connection is served by
    /// an agent.
    fn agent_listener(
        &self,
        connections: &[Connection],
        base: &Path,
    ) -> Result<Option<AgentListener>, Invalid> {
        let Some(a) = &self.agent_listener else {
            let by_agent = connections
                .iter()
                .enumerate()
                .find(|(_, c)| matches!(c.target, Target::Agent(_)));
            return match by_agent {
                Some((i, c)) => Err(invalid(
                    format!("connections[{i}].agent"),
                    format!(
                        "connection {:?} is served by an agent, but there is no [agent_listener] for agents to connect to",
                        c.name
                    ),
                )),
                None => Ok(None),
            };
        };
        Ok(Some(AgentListener {
            listen: a.listen,
            ca_file: base.join(&a.ca_file),
            enrol_ca_key: a.enrol_ca_key.as_deref().map(|p| base.join(p)),
            enrol_validity: duration(
                "agent_listener.enrol_validity",
                a.enrol_validity.as_deref().unwrap_or("90d"),
            )?,
        }))
    }
}

/// Every name in `list` is `*` or a defined connection.
fn known_connections(key: &str, list: &[String], names: &HashSet<&str>) -> Result<(), Invalid> {
    match list
        .iter()
        .find(|c| *c != "*" && !names.contains(c.as_str()))
    {
        None => Ok(()),
        Some(c) => Err(invalid(
            key,
            format!(
                "no connection named {c:?}; defined: {}",
                sorted(names).join(", ")
            ),
        )),
    }
}

impl RawLimits {
    fn validate(&self) -> Result<Limits, Invalid> {
        if self.max_header_bytes < 8192 {
            return Err(invalid("limits.max_header_bytes", "must be at least 8192"));
        }
        if self.max_connections == 0 || self.max_connections_per_peer == 0 {
            return Err(invalid(
                "limits.max_connections",
                "max_connections and max_connections_per_peer must be at least 1",
            ));
        }
        if !(1..=1000).contains(&self.max_agent_streams_per_caller) {
            return Err(invalid(
                "limits.max_agent_streams_per_caller",
                "must be between 1 and 1000 (an agent serves 1,000 streams at most)",
            ));
        }
        Ok(Limits {
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            max_agent_streams_per_caller: self.max_agent_streams_per_caller,
            max_header_bytes: self.max_header_bytes,
            max_request_body_bytes: self.max_request_body_bytes,
            handshake_timeout: duration("limits.handshake_timeout", &self.handshake_timeout)?,
            idle_timeout: duration("limits.idle_timeout", &self.idle_timeout)?,
        })
    }
}

impl RawDemo {
    fn validate(&self, base: &Path) -> Result<DemoConfig, Invalid> {
        Ok(DemoConfig {
            listen: self.listen,
            cert: base.join(&self.cert),
            key: base.join(&self.key),
            api_key: SecretRef::parse(&self.api_key, base)
                .map_err(|e| invalid("demo.api_key", e))?,
        })
    }
}

impl RawPostgres {
    fn validate(&self, base: &Path) -> Result<PostgresListener, Invalid> {
        Ok(PostgresListener {
            listen: self.listen,
            max_message_bytes: self.max_message_bytes,
            strict_roles: self.strict_roles,
            client_auth: match &self.client_auth {
                Some(c) => c.validate("postgres.client_auth", base)?,
                None => ClientAuth::default(),
            },
        })
    }
}

impl RawApprovals {
    /// `[approvals]`: the review webhook, signed, over https.
    fn validate(&self, base: &Path) -> Result<Approvals, Invalid> {
        let Some(url) = &self.webhook else {
            return Ok(Approvals { webhook: None });
        };
        if !url.starts_with("https://") {
            return Err(invalid("approvals.webhook", "must be an https:// URL"));
        }
        let secret = self.webhook_secret.as_deref().ok_or_else(|| {
            invalid(
                "approvals.webhook_secret",
                "the webhook body is signed (HMAC-SHA256): give a secret reference",
            )
        })?;
        let slack = one_of(
            "approvals.webhook_format",
            self.webhook_format.as_deref(),
            &[("generic", false), ("slack", true)],
        )?;
        Ok(Approvals {
            webhook: Some(Webhook {
                url: url.clone(),
                secret: SecretRef::parse(secret, base)
                    .map_err(|e| invalid("approvals.webhook_secret", e))?,
                slack,
                ca_file: self.webhook_ca_file.as_deref().map(|p| base.join(p)),
            }),
        })
    }
}

/// A config value from a closed set: `None` is the first choice (the
/// default); anything else is an error naming the key and every choice.
/// (By hand rather than serde enums: serde's error would not name the key.)
fn one_of<T: Copy>(key: &str, value: Option<&str>, choices: &[(&str, T)]) -> Result<T, Invalid> {
    let Some(v) = value else {
        return Ok(choices[0].1);
    };
    if let Some((_, t)) = choices.iter().find(|(name, _)| *name == v) {
        return Ok(*t);
    }
    let valid: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
    Err(invalid(
        key,
        format!("unknown value {v:?}; valid: {}", valid.join(", ")),
    ))
}

fn sorted<'a>(names: &HashSet<&'a str>) -> Vec<&'a str> {
    let mut v: Vec<_> = names.iter().copied().collect();
    v.sort_unstable();
    v
}

impl RawConnection {
    fn validate(&self, key: &dyn Fn(&str) -> String, base: &Path) -> Result<Connection, Invalid> {
        let timeout = match &self.timeout {
            Some(t) => duration(&key("timeout"), t)?,
            None => Duration::from_secs(30),
        };
        let mut ca_file = self.ca_file.as_deref().map(|p| base.join(p));
        if self.method_overrides.is_some() && self.kind != "http" {
            return Err(invalid(
                key("method_overrides"),
                format!("only for HTTP connections, not {:?}", self.kind),
            ));
        }
        if let Some(agent) = &self.agent {
            return self.via_agent(key, agent, timeout);
        }
        let target = match self.kind.as_str() {
            "http" => {
                self.refuse(key, "tools_allow", self.tools_allow.is_some(), "http")?;
                self.refuse(key, "tools_deny", self.tools_deny.is_some(), "http")?;
                Target::Http(self.http(key, base)?)
            }
            "mcp" => {
                let check = |k: &str, list: &[String]| -> Result<(), Invalid> {
                    for p in list {
                        let body = p.strip_suffix('*').unwrap_or(p);
                        if p.is_empty() || body.contains('*') || body.len() > 128 {
                            return Err(invalid(
                                key(k),
                                format!(
                                    "{p:?}: a tool name, or a prefix ending in * (e.g. \"get_*\")"
                                ),
                            ));
                        }
                    }
                    Ok(())
                };
                let allow = self.tools_allow.clone().unwrap_or_else(|| vec!["*".into()]);
                let deny = self.tools_deny.clone().unwrap_or_default();
                check("tools_allow", &allow)?;
                check("tools_deny", &deny)?;
                Target::Mcp(McpTarget {
                    http: self.http(key, base)?,
                    tools_allow: allow,
                    tools_deny: deny,
                })
            }
            "postgres" => {
                self.refuse(key, "tools_allow", self.tools_allow.is_some(), "postgres")?;
                self.refuse(key, "tools_deny", self.tools_deny.is_some(), "postgres")?;
                let (t, root) = self.postgres(key, base)?;
                if ca_file.is_none() {
                    ca_file = root;
                }
                Target::Postgres(t)
            }
            other => {
                return Err(invalid(
                    key("type"),
                    format!(
                        "unknown connection type {other:?}; valid: \"http\", \"postgres\", \"mcp\""
                    ),
                ));
            }
        };
        let approval = match &self.approval {
            Some(a) => Some(a.validate(key)?).filter(|r| r.mode != ApprovalMode::None),
            None => None,
        };
        Ok(Connection {
            name: self.name.clone(),
            ca_file,
            timeout,
            target,
            approval,
            method_overrides: self.method_overrides.unwrap_or(false),
        })
    }

    fn refuse(
        &self,
        key: &dyn Fn(&str) -> String,
        field: &str,
        set: bool,
        kind: &str,
    ) -> Result<(), Invalid> {
        if set {
            Err(invalid(
                key(field),
                format!("not valid for a connection of type {kind:?}"),
            ))
        } else {
            Ok(())
        }
    }

    /// A connection an agent serves: the gateway knows its name, protocol
    /// and access mode only; URL and secret live in the agent's config.
    fn via_agent(
        &self,
        key: &dyn Fn(&str) -> String,
        agent: &str,
        timeout: Duration,
    ) -> Result<Connection, Invalid> {
        check_name(&key("agent"), agent)?;
        let protocol = match self.kind.as_str() {
            "http" => crate::Protocol::Http,
            "postgres" => crate::Protocol::Postgres,
            other => {
                return Err(invalid(
                    key("type"),
                    format!(
                        "{other:?} connections cannot be served by an agent (\"http\", \"postgres\")"
                    ),
                ));
            }
        };
        let why = "is kept by the agent (agent.toml), not the gateway";
        for (field, set) in [
            ("url", !self.url.is_empty()),
            ("credential", self.credential.is_some()),
            ("password", self.password.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("tls", self.tls.is_some()),
            ("reuse", self.reuse.is_some()),
            ("tools_allow", self.tools_allow.is_some()),
            ("tools_deny", self.tools_deny.is_some()),
        ] {
            if set {
                return Err(invalid(
                    key(field),
                    format!("with `agent` set, `{field}` {why}"),
                ));
            }
        }
        let access = match (protocol, self.access.as_deref()) {
            (_, None) | (_, Some("read-write")) => Access::ReadWrite,
            (crate::Protocol::Postgres, Some("read-only")) => Access::ReadOnly,
            (_, Some(other)) => {
                return Err(invalid(
                    key("access"),
                    format!("{other:?}: \"read-write\" or (postgres) \"read-only\""),
                ));
            }
        };
        let approval = match &self.approval {
            Some(a) => Some(a.validate(key)?).filter(|r| r.mode != ApprovalMode::None),
            None => None,
        };
        Ok(Connection {
            name: self.name.clone(),
            ca_file: None,
            approval,
            method_overrides: self.method_overrides.unwrap_or(false),
            timeout,
            target: Target::Agent(AgentTarget {
                agent: agent.to_string(),
                protocol,
                access,
            }),
        })
    }

    fn http(&self, key: &dyn Fn(&str) -> String, base: &Path) -> Result<HttpTarget, Invalid> {
        self.refuse(key, "password", self.password.is_some(), "http")?;
        self.refuse(key, "access", self.access.is_some(), "http")?;
        self.refuse(key, "reuse", self.reuse.is_some(), "http")?;
        let url: Uri = self
            .url
            .parse()
            .map_err(|e| invalid(key("url"), format!("not a URL: {e}")))?;
        if url.host().is_none() {
            return Err(invalid(key("url"), "the URL needs a host"));
        }
        if url.query().is_some() {
            return Err(invalid(key("url"), "the URL may not carry a query"));
        }
        // Never sent, but written into debug logs as part of the URL
        // (review): a secret goes in `credential`.
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(invalid(
                key("url"),
                "the URL may not carry a user or password; put the secret in `credential`",
            ));
        }
        let tls = match self.tls.as_deref() {
            None | Some("verify") => UpstreamTls::Verify,
            Some("disable") => UpstreamTls::Disable,
            Some(other) => {
                return Err(invalid(
                    key("tls"),
                    format!("unknown value {other:?}; valid: \"verify\" (default), \"disable\""),
                ));
            }
        };
        match (url.scheme_str(), tls) {
            (Some("https"), UpstreamTls::Verify) | (Some("http"), UpstreamTls::Disable) => {}
            (Some("http"), UpstreamTls::Verify) => {
                return Err(invalid(
                    key("url"),
                    "plaintext http:// to a target needs `tls = \"disable\"` written out",
                ));
            }
            (Some("https"), UpstreamTls::Disable) => {
                return Err(invalid(
                    key("tls"),
                    "\"disable\" contradicts the https:// URL",
                ));
            }
            _ => {
                return Err(invalid(
                    key("url"),
                    "the scheme must be https:// (or http:// with tls = \"disable\")",
                ));
            }
        }
        let credential = match &self.credential {
            None => None,
            Some(c) => {
                let header = HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| {
                    invalid(key("credential.header"), "not a valid HTTP header name")
                })?;
                if FORBIDDEN_CREDENTIAL_HEADERS.contains(&header.as_str()) {
                    return Err(invalid(
                        key("credential.header"),
                        format!("{header} cannot carry a credential"),
                    ));
                }
                if c.prefix.chars().any(|ch| ch.is_control()) {
                    return Err(invalid(key("credential.prefix"), "no control characters"));
                }
                Some(InjectedCredential {
                    header,
                    prefix: c.prefix.clone(),
                    secret: SecretRef::parse(&c.secret, base)
                        .map_err(|e| invalid(key("credential.secret"), e))?,
                })
            }
        };
        Ok(HttpTarget {
            url,
            tls,
            credential,
        })
    }

    /// A PostgreSQL target and the `sslrootcert` its URL names, if any.
    fn postgres(
        &self,
        key: &dyn Fn(&str) -> String,
        base: &Path,
    ) -> Result<(PgTarget, Option<std::path::PathBuf>), Invalid> {
        self.refuse(key, "credential", self.credential.is_some(), "postgres")?;
        self.refuse(
            key,
            "tls",
            self.tls.is_some(),
            "postgres (use sslmode in the URL)",
        )?;
        let u = crate::pgurl::parse(&self.url).map_err(|e| invalid(key("url"), e))?;
        if u.password.is_some() {
            return Err(invalid(
                key("url"),
                "the URL may not hold a password; use `password = \"env:NAME\"` or `\"file:PATH\"`",
            ));
        }
        let password = self
            .password
            .as_deref()
            .ok_or_else(|| {
                invalid(
                    key("password"),
                    "a postgres connection needs `password` (env:NAME or file:PATH)",
                )
            })
            .and_then(|p| SecretRef::parse(p, base).map_err(|e| invalid(key("password"), e)))?;
        let access = match self.access.as_deref() {
            None | Some("read-write") => Access::ReadWrite,
            Some("read-only") => Access::ReadOnly,
            Some(other) => {
                return Err(invalid(
                    key("access"),
                    format!(
                        "unknown value {other:?}; valid: \"read-write\" (default), \"read-only\""
                    ),
                ));
            }
        };
        let tls = match u.sslmode {
            crate::pgurl::SslMode::VerifyFull => UpstreamTls::Verify,
            crate::pgurl::SslMode::Disable => UpstreamTls::Disable,
        };
        let root = u.sslrootcert.as_deref().map(|r| base.join(r));
        Ok((
            PgTarget {
                host: u.host,
                port: u.port,
                database: u.database,
                user: u.user,
                password,
                tls,
                access,
                access_stated: self.access.is_some(),
                reuse: self.reuse.unwrap_or(true),
            },
            root,
        ))
    }
}

/// Every bare identity provider is told the namespaces of the others, so
/// that it cannot name a group in one of them.
fn reserve_namespaces(oidc: &mut [OidcIssuer], saml: Option<&mut crate::saml::Saml>) {
    use portcullis_identity::Namespace;
    let mut all: Vec<String> = oidc
        .iter()
        .map(|o| &o.settings.namespace)
        .chain(saml.as_ref().map(|s| &s.namespace))
        .filter_map(|n| n.own().map(str::to_string))
        .collect();
    all.sort();
    all.dedup();
    let spaces = oidc
        .iter_mut()
        .map(|o| &mut o.settings.namespace)
        .chain(saml.map(|s| &mut s.namespace));
    for n in spaces {
        if let Namespace::Bare { reserved } = n {
            *reserved = all.clone();
        }
    }
}
