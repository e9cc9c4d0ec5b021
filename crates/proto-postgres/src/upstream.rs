//! The upstream half: TLS to the target with full verification, then
//! authentication with the credential only this code reads (SCRAM-SHA-256,
//! or md5/cleartext for old servers, the latter two only inside TLS).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use portcullis_config::{Access, Connection, PgTarget, Secret, UpstreamTls};
use portcullis_tls::TlsPolicy;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::frame::{Message, tag, take_cstr};
use crate::homed::Homed;
use crate::io::{FrameReader, ReadError};
use crate::messages;

/// Largest message accepted from a target: PostgreSQL's own field limit
/// is 1 GiB, but a row is buffered whole (the masker reads it whole), so
/// a few concurrent giant rows must not exhaust memory. A larger message
/// ends the session.
pub const MAX_BACKEND_MESSAGE: usize = 64 * 1024 * 1024;

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Move the stream's socket to the reactor of the runtime this is
    /// called on ([`Homed::rehome`]); nothing to move for a stream with no
    /// socket of its own (an agent's tunnel, driven by the link's task).
    fn rehome(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Stream for Homed {
    fn rehome(&mut self) -> std::io::Result<()> {
        Homed::rehome(self)
    }
}
impl Stream for tokio_rustls::client::TlsStream<Homed> {
    fn rehome(&mut self) -> std::io::Result<()> {
        self.get_mut().0.rehome()
    }
}
impl Stream for portcullis_link::Tunnel {}
pub type BoxStream = Box<dyn Stream>;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the system's random source failed")]
    Random,
    #[error("connection {connection:?}: {reason}")]
    Tls { connection: String, reason: String },
    #[error("connection {connection:?}: password {reference}: {reason}")]
    Secret {
        connection: String,
        reference: String,
        reason: String,
    },
}

/// Why a session with the target could not be opened. Messages are safe
/// for callers: never a secret.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the target: {0}")]
    Connect(std::io::Error),
    #[error("the target did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the target does not accept TLS (use sslmode=disable only if that is intended)")]
    TlsRefused,
    #[error("{0}")]
    Tls(String),
    #[error("the target refused the gateway's credentials: {0}")]
    Auth(String),
    /// Refused during sign-in for another reason than credentials: the
    /// server is starting or shutting down (57P03), has too many
    /// connections (53300), has no such database (3D000)…
    #[error("the target did not accept the connection: {0}")]
    NotAccepting(String),
    #[error("the target asked for a cleartext or md5 password over plaintext; refused")]
    InsecureAuth,
    #[error("the target asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(i32),
    #[error("the target reported an error: {0}")]
    Server(String),
    #[error("protocol error talking to the target: {0}")]
    Protocol(String),
    #[error("connection {connection:?} is served by agent {agent:?}, which is not connected")]
    AgentUnavailable { connection: String, agent: String },
    #[error("{0}")]
    Agent(String),
    /// `[postgres] strict_roles`: the database role of a read-only
    /// connection, checked through its agent, could undo read-only.
    #[error("strict_roles: {0}")]
    Roles(String),
}

impl From<ReadError> for UpstreamError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(io) => match describe_io(&io) {
                Some(tls) => UpstreamError::Tls(tls),
                None => UpstreamError::Protocol(io.to_string()),
            },
            other => UpstreamError::Protocol(other.to_string()),
        }
    }
}

/// A TLS verification failure inside an io::Error, in words.
fn describe_io(e: &std::io::Error) -> Option<String> {
    use rustls::CertificateError as C;
    let t = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match t {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the target's certificate is not trusted (unknown issuer); set sslrootcert or ca_file"
                .into()
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "the target's certificate is not valid for its host name".into(),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the target's certificate has expired".into()
        }
        other => format!("TLS with the target failed: {other}"),
    })
}

/// Everything needed to open sessions to one PostgreSQL target.
pub struct PgUpstream {
    pub name: String,
    host: String,
    port: u16,
    database: String,
    user: String,
    password: Secret,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    pub read_only: bool,
    timeout: Duration,
    reuse: bool,
    idle: std::sync::Mutex<Vec<Idle>>,
    /// Served through an agent: (agent name, the gateway's links).
    via: Option<(String, Arc<portcullis_link::AgentRegistry>)>,
    /// Proofs about the target's functions, for the statement rules.
    catalog: crate::catalog::Catalog,
    /// Statement texts already analysed (pure: the text decides).
    analyses: Arc<crate::classify::AnalysisCache>,
    /// The masker's catalog look-ups (types, protected columns' sources),
    /// by query text: see [`PgUpstream::mask_catalog`].
    mask_catalog: std::sync::Mutex<MaskCatalogs>,
    /// Previews of held statements running now (see [`crate::preview`]).
    previews: tokio::sync::Semaphore,
    /// Read-only through an agent: the database role, checked through
    /// each new link before a caller's first session on it.
    role_check: Option<RoleCheck>,
    /// Whether the target takes [`CONNECTION_CHECK`] (PostgreSQL 14 and
    /// later); cleared once a startup it refused for the setting went
    /// through without it ([`refuses_connection_check`]).
    checks_connection: std::sync::atomic::AtomicBool,
}

/// The least-privilege check of a read-only connection's role, made
/// through its agent (the gateway cannot reach the target itself): a role
/// that is a superuser, owns tables or may write can undo the target's
/// read-only backstop. Checked once per link (an agent that reconnects
/// may serve it with another role); under `strict_roles` callers are
/// refused until it passes, else what it found is logged.
struct RoleCheck {
    strict: bool,
    /// The link last checked through, and what the check found.
    checked: tokio::sync::Mutex<Option<(u64, Result<(), String>)>>,
}

/// Rows of a catalog query, as text.
pub type CatalogRows = Vec<Vec<Option<String>>>;

/// The masker's catalog readings by query text, and when each was read:
/// reused as long as the statement proofs' (changes made through the
/// gateway make both stale at once, on every connection).
type MaskCatalogs =
    std::collections::HashMap<String, (crate::catalog::Reading, Arc<crate::masking::Catalog>)>;
/// Distinct masking rules' queries kept.
const MASK_CATALOG_MAX: usize = 16;

/// Whose a target session is, for reuse. An idle session goes back only
/// to the owner that left it: `DISCARD ALL` resets what PostgreSQL itself
/// keeps per session, but not everything an extension or a language keeps
/// (a `dblink` connection and what it can read, `setseed`, PL/Perl's
/// `%_SHARED`, a replication origin), and no such state may cross from one
/// identity to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The gateway's own work (catalog look-ups): never handed to a
    /// caller.
    Gateway,
    /// A caller, by principal (its sessions are reused for it alone),
    /// and who answers for it (whose share of an agent's streams it
    /// takes: the person an agent acts for).
    Caller {
        subject: String,
        accountable: String,
    },
    /// At an agent: the owner a gateway named (see [`owner_tag`]), through
    /// that gateway (each admits callers under its own policy).
    Relayed { gateway: String, tag: String },
    /// Never reused: closed when its caller leaves.
    Nobody,
}

/// What an idle session is kept under.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    /// The caller's parameters that reached the target, normalised.
    params: Vec<(String, String)>,
    /// The mode it was opened in (a read-write session never serves a
    /// read-only open).
    read_only: bool,
    owner: Owner,
}

/// An upstream session waiting for its next caller.
struct Idle {
    key: Key,
    session: UpstreamSession,
    since: std::time::Instant,
}

/// Which of the idle sessions (their keys and home threads) serves `key`
/// on thread `here`: the newest kept under `key` that `here` drives, else
/// the newest kept under `key` (correct anywhere, a wake-up dearer).
fn pick(
    idle: &[(&Key, std::thread::ThreadId)],
    key: &Key,
    here: std::thread::ThreadId,
) -> Option<usize> {
    let under = |i: &&(&Key, std::thread::ThreadId)| *i.0 == *key;
    (idle.iter().rposition(|i| under(&i) && i.1 == here))
        .or_else(|| idle.iter().rposition(|i| under(&i)))
}

/// Write `bytes` to the target and flush them, before waiting on its
/// answer. Through TLS, `write_all` alone can leave the tail in the TLS
/// layer's buffer when the socket is not writable at that moment (a full
/// send buffer, or a socket just moved to another reactor that has not
/// yet read its readiness), and the answer waited on never comes: a kept
/// session moved between connection workers hung on its first catalog
/// query that way (2026-12-05).
async fn send_flushed<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// How long the goodbye to a target session may take ([`goodbye`]).
const GOODBYE: Duration = Duration::from_millis(500);

/// Say goodbye to a target session: Terminate (unless `terminate` is
/// false: the caller's own went through, or the stream is not at a
/// message's boundary), then close. Bounded: a target that stopped reading
/// (a statement waiting on a lock, our buffer to it full) would hold the
/// task, and with it the socket the target's connection check would see
/// closed (review, 2026-12-05).
pub async fn goodbye<W: AsyncWrite + Unpin>(w: &mut W, terminate: bool) {
    let close = async {
        if terminate {
            let bye = Message::new(tag::TERMINATE, Bytes::new()).to_bytes();
            let _ = w.write_all(&bye).await;
        }
        let _ = w.shutdown().await;
    };
    let _ = tokio::time::timeout(GOODBYE, close).await;
}

/// How long a backend the gateway cancelled and said goodbye to may take
/// to end before it is ended for certain ([`PgUpstream::end_for_certain`]).
const END_GRACE: Duration = Duration::from_secs(3);

/// How many idle sessions a connection keeps, and for how long.
const MAX_IDLE: usize = 16;
const IDLE_FOR: Duration = Duration::from_secs(60);

impl std::fmt::Debug for PgUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgUpstream")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// An authenticated session with the target, ready for queries.
pub struct UpstreamSession {
    pub reader: FrameReader<tokio::io::ReadHalf<BoxStream>>,
    pub writer: tokio::io::WriteHalf<BoxStream>,
    /// ParameterStatus (and any NoticeResponse) sent during startup, to be
    /// replayed to the caller.
    pub startup_messages: Vec<Message>,
    pub pid: i32,
    pub secret: i32,
    pub status: u8,
    /// Opened read-only on the target: an idle session is only handed
    /// on to callers in the mode it was opened in.
    pub read_only: bool,
    /// Whose it is: an idle session is only handed back to its owner.
    pub owner: Owner,
    /// The thread that opened it, whose reactor drives its socket: an
    /// idle session goes back first to a caller served on that thread
    /// (on a connection worker, any other costs a cross-thread wake-up
    /// per message from the target).
    pub home: std::thread::ThreadId,
}

/// Startup parameters a caller may pass through to the target. Anything
/// else (notably `options`, which can carry `-c` settings) is dropped;
/// the lexing settings are the gateway's ([`LEXING`]).
const PASSED_PARAMS: &[&str] = &[
    "application_name",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
];

/// The settings that decide how the target lexes a statement, as the
/// gateway's proofs lex it, sent at every startup (a startup parameter
/// wins over a role's, a database's and postgresql.conf's defaults) and
/// checked in what the target reports ([`lexes_as_proven`]): a review
/// found a database default of `standard_conforming_strings = off`, or of
/// a client encoding that can swallow a backslash (SJIS), reopened the
/// differentials the gateway refuses as `SET` statements.
const LEXING: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
];

/// Asked of the target at every startup: while a statement runs, the
/// server checks every second whether the gateway's (or agent's) side of
/// the connection is still there, and cancels the statement if not. The
/// gateway cancels what its callers leave (`CancelOnDrop`, the relay's
/// cancel request), but a gateway that is stopped, killed or cut off
/// from the target sends nothing: a review found such statements
/// running on to their own timeouts, holding locks and a backend. On
/// PostgreSQL older than 14 (which does not know the setting) or a
/// platform without the kernel support, a startup refused for it is
/// tried again without it, and once that goes through the connection
/// stops asking and says so once.
const CONNECTION_CHECK: (&str, &str) = ("client_connection_check_interval", "1000");

/// TCP keepalives on the target's side of every session, so that a
/// gateway or agent whose host or network is gone (no FIN, no RST ever
/// comes) is found within about 25 seconds rather than the kernel's two
/// hours, and the connection check above then cancels what it left
/// running (review). Known to every supported PostgreSQL.
const KEEPALIVES: &[(&str, &str)] = &[
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
];

/// Whether a refused startup was refused for [`CONNECTION_CHECK`] itself
/// (42704 on PostgreSQL before 14, 22023 where the platform lacks the
/// kernel support): in the server's exact English words, or, for a server
/// whose `lc_messages` translates them (`nicht erkannter
/// Konfigurationsparameter »…«`), by the SQLSTATE and the setting's name,
/// which no translation changes, when no value of the caller's names it.
/// A caller's own startup values are quoted back in errors too: a review's
/// `PGTZ=client_connection_check_interval` turned the check off for
/// every caller when any error naming it counted. (The check is turned
/// off only once a startup without it then succeeds, a second guard.)
fn refuses_connection_check(e: &UpstreamError, caller_params: &[(String, String)]) -> bool {
    let (name, value) = CONNECTION_CHECK;
    let (UpstreamError::Server(t) | UpstreamError::NotAccepting(t)) = e else {
        return false;
    };
    let unknown = format!("42704: unrecognized configuration parameter \"{name}\"");
    let unsupported = format!("22023: invalid value for parameter \"{name}\": \"{value}\"");
    if *t == unknown || *t == unsupported {
        return true;
    }
    let quoted_by_caller = caller_params
        .iter()
        .any(|(k, v)| contains_ignoring_case(k, name) || contains_ignoring_case(v, name));
    (t.starts_with("42704: ") || t.starts_with("22023: ")) && t.contains(name) && !quoted_by_caller
}

fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    haystack.to_ascii_lowercase().contains(needle)
}

/// Whether a caller's startup parameter reaches the target.
fn passes(k: &str, v: &str) -> bool {
    let k = k.to_ascii_lowercase();
    PASSED_PARAMS.contains(&k.as_str())
        // The same rule as `SET search_path` (see classify).
        && (k != "search_path" || crate::classify::search_path_keeps_catalog_first(v))
}

impl PgUpstream {
    pub fn new(conn: &Connection, t: &PgTarget, policy: &TlsPolicy) -> Result<Self, SetupError> {
        let password = t.password.resolve().map_err(|reason| SetupError::Secret {
            connection: conn.name.clone(),
            reference: t.password.to_string(),
            reason,
        })?;
        let tls = match t.tls {
            UpstreamTls::Disable => {
                tracing::warn!(
                    connection = %conn.name,
                    host = %t.host,
                    "PLAINTEXT to the target: sslmode=disable is set for this connection"
                );
                None
            }
            UpstreamTls::Verify => {
                let tls_err = |reason: String| SetupError::Tls {
                    connection: conn.name.clone(),
                    reason,
                };
                let roots = match &conn.ca_file {
                    Some(b) => {
                        portcullis_tls::load_roots(b, true).map_err(|e| tls_err(e.to_string()))?
                    }
                    None => portcullis_tls::system_roots(),
                };
                let cfg = portcullis_tls::client_config(policy, roots)
                    .map_err(|e| tls_err(e.to_string()))?;
                let name = ServerName::try_from(t.host.clone())
                    .map_err(|_| tls_err(format!("{:?} is not a valid TLS server name", t.host)))?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
            }
        };
        Ok(Self {
            name: conn.name.clone(),
            host: t.host.clone(),
            port: t.port,
            database: t.database.clone(),
            user: t.user.clone(),
            password,
            tls,
            read_only: t.access == Access::ReadOnly,
            timeout: conn.timeout,
            reuse: t.reuse,
            idle: std::sync::Mutex::new(Vec::new()),
            via: None,
            catalog: Default::default(),
            analyses: Default::default(),
            mask_catalog: Default::default(),
            previews: tokio::sync::Semaphore::new(crate::preview::MAX_CONCURRENT),
            role_check: None,
            checks_connection: true.into(),
        })
    }

    /// The gateway's half for a connection an agent serves: the agent
    /// connects and authenticates; the session arrives over the link.
    pub fn via_agent(
        conn: &Connection,
        t: &portcullis_config::AgentTarget,
        links: Arc<portcullis_link::AgentRegistry>,
        strict_roles: bool,
    ) -> Self {
        Self {
            name: conn.name.clone(),
            host: String::new(),
            port: 0,
            database: String::new(),
            user: String::new(),
            password: portcullis_config::Secret::new(String::new()),
            tls: None,
            read_only: t.access == Access::ReadOnly,
            timeout: conn.timeout,
            // A session crosses the link once; the agent's side decides
            // about its own connections.
            reuse: false,
            role_check: (t.access == Access::ReadOnly).then(|| RoleCheck {
                strict: strict_roles,
                checked: tokio::sync::Mutex::new(None),
            }),
            idle: std::sync::Mutex::new(Vec::new()),
            via: Some((t.agent.clone(), links)),
            catalog: Default::default(),
            analyses: Default::default(),
            mask_catalog: Default::default(),
            previews: tokio::sync::Semaphore::new(crate::preview::MAX_CONCURRENT),
            // The agent opens the target session and asks for it.
            checks_connection: false.into(),
        }
    }

    /// A place for one more preview, while fewer than
    /// [`crate::preview::MAX_CONCURRENT`] run.
    pub fn preview_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.previews.try_acquire().ok()
    }

    /// The agent serving this connection, if one does.
    pub fn agent(&self) -> Option<&str> {
        self.via.as_ref().map(|(a, _)| a.as_str())
    }

    pub fn reuse(&self) -> bool {
        self.reuse
    }

    /// The class of `sql`, its function calls proven against the target's
    /// own catalog (see [`crate::catalog`]).
    pub async fn classify(
        &self,
        sql: &str,
    ) -> Result<crate::classify::Class, crate::catalog::ProofError> {
        self.resolve(&self.analyse(sql)).await
    }

    /// [`crate::classify::analyse`], remembered for texts seen before (a
    /// driver's prepared statements, an agent's repeated queries).
    pub fn analyse(&self, sql: &str) -> std::sync::Arc<crate::classify::Analysis> {
        self.analyses.get_or_analyse(sql)
    }

    /// The remembered analyses, shared with the masker (which needs what
    /// a statement reads for column rules).
    pub fn analyses(&self) -> Arc<crate::classify::AnalysisCache> {
        self.analyses.clone()
    }

    /// The class of an analysed statement, its calls proven against the
    /// catalog as it is now (cached; forgotten after a schema change).
    pub async fn resolve(
        &self,
        a: &crate::classify::Analysis,
    ) -> Result<crate::classify::Class, crate::catalog::ProofError> {
        self.catalog
            .resolve(a, || self.connect(&[], Owner::Gateway))
            .await
    }

    /// Forget the catalog's proofs: a statement that may have changed the
    /// schema has finished (called once it is done, not when it is
    /// admitted, so no proof of the old schema outlives the change).
    pub fn forget_catalog(&self) {
        self.catalog.forget();
        if let Ok(mut m) = self.mask_catalog.lock() {
            m.clear();
        }
    }

    /// The rows of the masker's catalog query `sql`, run on `session`
    /// unless the same query was answered in the last 30 seconds and no
    /// schema change went through the gateway since (on any connection). What a stale answer
    /// can miss fails closed: a relation, view or function newer than it
    /// is unknown to the masker and treated as protected (see
    /// `masking::sources`).
    pub async fn mask_catalog(
        &self,
        sql: &str,
        session: &mut UpstreamSession,
        read: impl FnOnce(&CatalogRows) -> crate::masking::Catalog,
    ) -> Result<(Arc<crate::masking::Catalog>, crate::catalog::Reading), UpstreamError> {
        if let Some(hit) = self.mask_catalog_cached(sql) {
            return Ok(hit);
        }
        let reading = crate::catalog::Reading::begin();
        let rows = session.simple_rows(sql).await?;
        Ok(self.mask_catalog_keep(sql, reading, read(&rows)))
    }

    /// [`Self::mask_catalog`] for a session already under way, whose
    /// masker's reading went stale: read on the gateway's own look-up
    /// session (the caller's is mid-conversation).
    pub async fn mask_catalog_again(
        &self,
        sql: &str,
        read: impl FnOnce(&CatalogRows) -> crate::masking::Catalog,
    ) -> Result<(Arc<crate::masking::Catalog>, crate::catalog::Reading), crate::catalog::ProofError>
    {
        if let Some(hit) = self.mask_catalog_cached(sql) {
            return Ok(hit);
        }
        let reading = crate::catalog::Reading::begin();
        let rows = self
            .catalog
            .rows(sql, || self.connect(&[], Owner::Gateway))
            .await?;
        Ok(self.mask_catalog_keep(sql, reading, read(&rows)))
    }

    fn mask_catalog_cached(
        &self,
        sql: &str,
    ) -> Option<(Arc<crate::masking::Catalog>, crate::catalog::Reading)> {
        let m = self.mask_catalog.lock().ok()?;
        m.get(sql)
            .filter(|(read, _)| read.fresh())
            .map(|(read, c)| (c.clone(), *read))
    }

    /// Reading thousands of rows into maps is CPU work: done once per
    /// answer, not per session.
    fn mask_catalog_keep(
        &self,
        sql: &str,
        reading: crate::catalog::Reading,
        catalog: crate::masking::Catalog,
    ) -> (Arc<crate::masking::Catalog>, crate::catalog::Reading) {
        let catalog = Arc::new(catalog);
        if let Ok(mut m) = self.mask_catalog.lock() {
            if m.len() >= MASK_CATALOG_MAX {
                m.clear();
            }
            m.insert(sql.to_string(), (reading, catalog.clone()));
        }
        (catalog, reading)
    }

    /// The class of a fast-path call ('F') of function `oid`, and the
    /// function's name as the target knows it.
    pub async fn function_class(
        &self,
        oid: u32,
    ) -> Result<(crate::classify::Class, String), crate::catalog::ProofError> {
        let row = self
            .catalog
            .function(oid, || self.connect(&[], Owner::Gateway))
            .await?;
        let name = row.as_ref().map_or_else(
            || format!("oid {oid}"),
            |r| format!("{}.{}", r.schema, r.name),
        );
        Ok((crate::catalog::function_call_class(row.as_ref()), name))
    }

    /// The caller's parameters that reach the target, normalised: sessions
    /// are only reused between callers with the same ones.
    fn passed(caller_params: &[(String, String)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = caller_params
            .iter()
            .filter(|(k, v)| passes(k, v))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        v.sort();
        v
    }

    /// What an idle session is kept under; `None`: it is not kept.
    fn key(caller_params: &[(String, String)], read_only: bool, owner: &Owner) -> Option<Key> {
        (*owner != Owner::Nobody).then(|| Key {
            params: Self::passed(caller_params),
            read_only,
            owner: owner.clone(),
        })
    }

    /// An idle session kept under `key` that is still alive.
    async fn checkout(&self, key: &Key) -> Option<UpstreamSession> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().ok()?;
                idle.retain(|i| i.since.elapsed() < IDLE_FOR);
                let kept: Vec<_> = idle.iter().map(|i| (&i.key, i.session.home)).collect();
                let at = pick(&kept, key, std::thread::current().id())?;
                idle.swap_remove(at).session
            };
            let mut s = candidate;
            // Anything the target sent while idle (an error about shutting
            // down, EOF, even part of a message) means the session is not
            // usable; silence means it is.
            match tokio::time::timeout(Duration::ZERO, s.reader.next()).await {
                Err(_) if s.reader.pending() == 0 => {}
                _ => continue,
            }
            match s.moved_here() {
                Ok(s) => return Some(s),
                Err(e) => {
                    tracing::debug!(connection = %self.name, error = %e, "kept session could not move to this thread; closed");
                }
            }
        }
    }

    /// Reset a session whose caller left cleanly and keep it for the next
    /// caller with the same parameters. Anything unexpected drops it.
    pub async fn checkin(&self, caller_params: &[(String, String)], mut session: UpstreamSession) {
        let Some(key) = Self::key(caller_params, session.read_only, &session.owner) else {
            return;
        };
        if !self.reuse {
            return;
        }
        let reset = async {
            session
                .writer
                .write_all(&messages::query("DISCARD ALL").to_bytes())
                .await
                .ok()?;
            session.writer.flush().await.ok()?;
            loop {
                let m = session.reader.next().await.ok()??;
                match m.tag {
                    tag::COMMAND_COMPLETE | tag::NOTICE_RESPONSE | tag::PARAMETER_STATUS => {}
                    tag::READY_FOR_QUERY if m.body.first() == Some(&b'I') => return Some(()),
                    _ => return None,
                }
            }
        };
        if tokio::time::timeout(self.timeout, reset)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            tracing::debug!(connection = %self.name, "upstream session not reusable; closed");
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() >= MAX_IDLE {
                idle.remove(0);
            }
            idle.push(Idle {
                key,
                session,
                since: std::time::Instant::now(),
            });
        }
    }

    async fn dial(&self) -> Result<BoxStream, UpstreamError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut tcp = Homed::new(tcp);
        let Some((connector, name)) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        tcp.write_all(&messages::ssl_request())
            .await
            .map_err(UpstreamError::Connect)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(UpstreamError::Connect)?;
        match answer[0] {
            b'S' => {}
            b'N' => return Err(UpstreamError::TlsRefused),
            _ => {
                return Err(UpstreamError::Protocol(
                    "unexpected answer to SSLRequest".into(),
                ));
            }
        }
        let tls =
            connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| match describe_io(&e) {
                    Some(d) => UpstreamError::Tls(d),
                    None => UpstreamError::Connect(e),
                })?;
        Ok(Box::new(tls))
    }

    /// Open and authenticate a session. `caller_params` are the caller's
    /// startup parameters; only [`PASSED_PARAMS`] go through.
    pub async fn connect(
        &self,
        caller_params: &[(String, String)],
        owner: Owner,
    ) -> Result<UpstreamSession, UpstreamError> {
        self.connect_as(caller_params, self.read_only, owner).await
    }

    /// [`Self::connect`], read-only on the target if `read_only` or this
    /// connection's own mode says so: an agent enforces the mode the
    /// gateway sends as well as its own, whichever is stricter.
    pub async fn connect_as(
        &self,
        caller_params: &[(String, String)],
        read_only: bool,
        owner: Owner,
    ) -> Result<UpstreamSession, UpstreamError> {
        let read_only = read_only || self.read_only;
        if !matches!(owner, Owner::Gateway) {
            self.role_checked().await?;
        }
        if self.reuse
            && let Some(key) = Self::key(caller_params, read_only, &owner)
            && let Some(s) = self.checkout(&key).await
        {
            tracing::debug!(connection = %self.name, "reusing an upstream session");
            return Ok(s);
        }
        let open = async {
            let mut s = match &self.via {
                Some((agent, links)) => {
                    self.connect_via(agent, links, caller_params, read_only, &owner)
                        .await?
                }
                None => self.connect_inner(caller_params, read_only).await?,
            };
            s.owner = owner;
            Ok(s)
        };
        tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
    }

    /// [`RoleCheck`]: through the link up now, checked once.
    async fn role_checked(&self) -> Result<(), UpstreamError> {
        let (Some(check), Some((agent, links))) = (&self.role_check, &self.via) else {
            return Ok(());
        };
        let Some(link) = links.link_id(agent) else {
            // Not connected: connecting says so (and under strict_roles
            // nothing goes through a link not checked).
            return match check.strict {
                true => Err(UpstreamError::AgentUnavailable {
                    connection: self.name.clone(),
                    agent: agent.clone(),
                }),
                false => Ok(()),
            };
        };
        // Held while checking: one check per link, others wait for it.
        let mut checked = check.checked.lock().await;
        let found = match &*checked {
            Some((id, found)) if *id == link => found.clone(),
            _ => {
                // Boxed: the check connects through `connect` (as the
                // gateway, which skips this).
                let report = Box::pin(crate::doctor::check(self)).await;
                let found = match &report {
                    Ok(report) if report.problems().is_empty() => Ok(()),
                    Ok(report) => Err(format!(
                        "the database role of read-only connection {:?}, checked through agent {agent:?}, is not least privilege: {}; run `portcullis doctor` on the agent's side for the role to create",
                        self.name,
                        report.problems().join("; ")
                    )),
                    Err(e) => Err(format!(
                        "cannot check the database role of read-only connection {:?} through agent {agent:?}: {e}",
                        self.name
                    )),
                };
                match &found {
                    Ok(()) => {
                        tracing::info!(connection = %self.name, agent, "read-only connection: its database role is least privilege")
                    }
                    Err(why) => tracing::warn!(connection = %self.name, agent, "{why}"),
                }
                // Only a finished check stands for the link: one that
                // could not run (a busy target, a timeout) is tried again
                // by the next session rather than refusing every caller
                // until the agent reconnects (code review).
                if report.is_ok() {
                    *checked = Some((link, found.clone()));
                }
                found
            }
        };
        match found {
            Err(why) if check.strict => Err(UpstreamError::Roles(why)),
            _ => Ok(()),
        }
    }

    async fn connect_via(
        &self,
        agent: &str,
        links: &portcullis_link::AgentRegistry,
        caller_params: &[(String, String)],
        read_only: bool,
        owner: &Owner,
    ) -> Result<UpstreamSession, UpstreamError> {
        let passed: Vec<(String, String)> = Self::passed(caller_params);
        let io = links
            .open_pg(
                agent,
                &self.name,
                &passed,
                read_only,
                owner_tag(owner).as_deref(),
                match owner {
                    Owner::Caller { accountable, .. } => Some(accountable.as_str()),
                    _ => None,
                },
            )
            .await
            .map_err(|e| self.link_error(e))?;
        let stream: BoxStream = Box::new(io);
        let (r, w) = tokio::io::split(stream);
        let reader = FrameReader::new(r, MAX_BACKEND_MESSAGE);
        read_startup(reader, w, read_only).await
    }

    fn link_error(&self, e: portcullis_link::LinkError) -> UpstreamError {
        match e {
            portcullis_link::LinkError::NotConnected { agent } => UpstreamError::AgentUnavailable {
                connection: self.name.clone(),
                agent,
            },
            other => UpstreamError::Agent(other.to_string()),
        }
    }

    /// Hand a caller's session (already authenticated by whoever dialled
    /// it) to a relay: the agent side of a link uses this to carry the
    /// target's startup messages to the gateway.
    pub fn startup_bytes(session: &UpstreamSession) -> Vec<u8> {
        let mut out = Vec::new();
        for m in &session.startup_messages {
            out.extend_from_slice(&m.to_bytes());
        }
        out.extend_from_slice(&messages::backend_key_data(session.pid, session.secret).to_bytes());
        out.extend_from_slice(&messages::ready_for_query(session.status).to_bytes());
        out
    }

    async fn connect_inner(
        &self,
        caller_params: &[(String, String)],
        read_only: bool,
    ) -> Result<UpstreamSession, UpstreamError> {
        use std::sync::atomic::Ordering::Relaxed;
        let checked = self.checks_connection.load(Relaxed);
        match self.open(caller_params, read_only, checked).await {
            Err(e) if checked && refuses_connection_check(&e, caller_params) => {
                let opened = self.open(caller_params, read_only, false).await;
                // Turned off only once a startup without it went through.
                if opened.is_ok() && self.checks_connection.swap(false, Relaxed) {
                    tracing::warn!(
                        connection = %self.name,
                        error = %e,
                        "the target does not take {} (PostgreSQL before 14?): a statement left running by a gateway that stops or loses the target runs on to its own timeout there",
                        CONNECTION_CHECK.0
                    );
                }
                opened
            }
            other => other,
        }
    }

    /// Dial, sign in and read the target's startup; `check` asks for
    /// [`CONNECTION_CHECK`].
    async fn open(
        &self,
        caller_params: &[(String, String)],
        read_only: bool,
        check: bool,
    ) -> Result<UpstreamSession, UpstreamError> {
        let stream = self.dial().await?;
        let (r, mut w) = tokio::io::split(stream);
        let mut reader = FrameReader::new(r, MAX_BACKEND_MESSAGE);

        let mut params: Vec<(&str, &str)> =
            vec![("user", &self.user), ("database", &self.database)];
        params.extend_from_slice(LEXING);
        params.extend_from_slice(KEEPALIVES);
        if check {
            params.push(CONNECTION_CHECK);
        }
        for (k, v) in caller_params {
            if passes(k, v) {
                params.push((k, v));
            }
        }
        if read_only {
            // Belt and braces: the target refuses writes too.
            params.push(("default_transaction_read_only", "on"));
        }
        send_flushed(&mut w, &messages::startup(&params))
            .await
            .map_err(UpstreamError::Connect)?;

        self.authenticate(&mut reader, &mut w).await?;
        read_startup(reader, w, read_only).await
    }

    async fn authenticate<R, W>(
        &self,
        reader: &mut FrameReader<R>,
        w: &mut W,
    ) -> Result<(), UpstreamError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let m = reader.next().await?.ok_or_else(|| {
                UpstreamError::Protocol(
                    "the target closed the connection during authentication".into(),
                )
            })?;
            match m.tag {
                tag::ERROR_RESPONSE => {
                    let text = error_text(&m);
                    // Class 28 is "invalid authorization specification";
                    // anything else is not about the credentials.
                    return Err(if text.starts_with("28") {
                        UpstreamError::Auth(text)
                    } else {
                        UpstreamError::NotAccepting(text)
                    });
                }
                tag::AUTHENTICATION if m.body.len() >= 4 => {}
                _ => {
                    return Err(UpstreamError::Protocol(
                        "expected an authentication request".into(),
                    ));
                }
            }
            let code = i32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
            let data = &m.body[4..];
            let reply = match code {
                0 => return Ok(()),
                3 => {
                    self.require_tls()?;
                    password_message(self.password.expose().as_bytes())
                }
                5 => {
                    self.require_tls()?;
                    let salt: [u8; 4] = data
                        .try_into()
                        .map_err(|_| UpstreamError::Protocol("bad md5 salt".into()))?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        self.user.as_bytes(),
                        self.password.expose().as_bytes(),
                        salt,
                    );
                    password_message(hash.as_bytes())
                }
                10 => {
                    let mut mechs = data;
                    let mut offered = Vec::new();
                    while let Some(s) = take_cstr(&mut mechs).filter(|s| !s.is_empty()) {
                        offered.push(s);
                    }
                    if !offered.iter().any(|s| s == SCRAM_SHA_256) {
                        return Err(UpstreamError::Auth(format!(
                            "no supported SASL mechanism offered ({})",
                            offered.join(", ")
                        )));
                    }
                    // Channel binding is not used: the TLS connection is
                    // already verified against the target's name.
                    let s = ScramSha256::new(
                        self.password.expose().as_bytes(),
                        ChannelBinding::unsupported(),
                    );
                    let mut b = BytesMut::new();
                    b.put_slice(SCRAM_SHA_256.as_bytes());
                    b.put_u8(0);
                    b.put_i32(s.message().len() as i32);
                    b.put_slice(s.message());
                    scram = Some(s);
                    Message::new(tag::PASSWORD, b.freeze())
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| {
                        UpstreamError::Protocol("SASL continue before SASL start".into())
                    })?;
                    s.update(data)
                        .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                    Message::new(tag::PASSWORD, Bytes::copy_from_slice(s.message()))
                }
                12 => {
                    let s = scram.as_mut().ok_or_else(|| {
                        UpstreamError::Protocol("SASL final before SASL start".into())
                    })?;
                    // Verifies the server's signature: the target proves it
                    // knows the password too.
                    s.finish(data)
                        .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                    continue;
                }
                other => return Err(UpstreamError::UnsupportedAuth(other)),
            };
            send_flushed(w, &reply.to_bytes())
                .await
                .map_err(UpstreamError::Connect)?;
        }
    }

    fn require_tls(&self) -> Result<(), UpstreamError> {
        if self.tls.is_some() {
            Ok(())
        } else {
            Err(UpstreamError::InsecureAuth)
        }
    }

    /// End the target's backend `pid` (a session the gateway closed while
    /// a statement ran) if it still runs [`END_GRACE`] from now: a
    /// statement may catch the cancel (a PL/pgSQL handler for
    /// `query_canceled`), and a caller on a full-access connection may
    /// have turned off `client_connection_check_interval`, which would
    /// otherwise end it once its client is gone. `pg_terminate_backend`
    /// cannot be caught. The gateway's role may end its own backends.
    ///
    /// Only a backend that started before the session ended is ended: a
    /// pid the system gave to a new backend meanwhile is left alone.
    /// Directly reached targets only: an agent's target is the agent's,
    /// and the agent does the same for it.
    /// In the background, bounded by the connection's timeout.
    pub fn end_for_certain(self: &Arc<Self>, pid: i32) {
        if self.via.is_some() {
            return;
        }
        let this = Arc::clone(self);
        let ended_at = std::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(END_GRACE).await;
            let end = async {
                let mut s = this.connect(&[], Owner::Nobody).await?;
                // Started before the session ended, by the target's clock
                // less the time since (connecting took some of it).
                let since = ended_at.elapsed().as_millis();
                let ended = s
                    .simple_rows(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE pid = {pid} AND backend_start < now() - interval '{since} milliseconds'"
                    ))
                    .await?;
                s.close().await;
                // A row only where such a backend ran; `t` where it ended.
                Ok::<_, UpstreamError>(ended.first().map(|r| r.first() == Some(&Some("t".into()))))
            };
            match tokio::time::timeout(this.timeout, end).await {
                Ok(Ok(Some(true))) => {
                    tracing::warn!(connection = %this.name, pid, "a departed caller's statement outlived its cancel; its backend was ended")
                }
                Ok(Ok(Some(false))) => {
                    tracing::warn!(connection = %this.name, pid, "a departed caller's statement outlived its cancel, and the target refused to end its backend")
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(connection = %this.name, pid, error = %e, "could not make sure a departed caller's backend ended")
                }
                Err(_) => {
                    tracing::warn!(connection = %this.name, pid, "could not make sure a departed caller's backend ended: timed out")
                }
            }
        });
    }

    /// Forward a cancel request for the target's backend `pid`/`secret`.
    pub async fn cancel(&self, pid: i32, secret: i32) -> Result<(), UpstreamError> {
        if let Some((agent, links)) = &self.via {
            // Bounded as the direct path is: an agent that never answers
            // held the caller's connection slot for ever (review).
            let cancel = links.cancel_pg(agent, &self.name, pid, secret);
            return tokio::time::timeout(self.timeout, cancel)
                .await
                .map_err(|_| UpstreamError::Timeout(self.timeout))?
                .map_err(|e| self.link_error(e));
        }
        let fut = async {
            let mut s = self.dial().await?;
            s.write_all(&messages::cancel_request(pid, secret))
                .await
                .map_err(UpstreamError::Connect)?;
            s.flush().await.map_err(UpstreamError::Connect)?;
            // The server closes without answering; wait for that briefly so
            // the request is not cut off.
            let mut sink = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink)).await;
            Ok(())
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
    }
}

fn password_message(p: &[u8]) -> Message {
    let mut b = BytesMut::with_capacity(p.len() + 1);
    b.put_slice(p);
    b.put_u8(0);
    Message::new(tag::PASSWORD, b.freeze())
}

impl UpstreamSession {
    /// The session, its socket driven by this thread's reactor from now
    /// on ([`crate::homed`]) when another thread's drove it (it was
    /// opened, or last taken, there), on a single-threaded runtime (a
    /// connection worker). Only for an idle session with nothing
    /// buffered: its halves are joined and split again.
    pub fn moved_here(self) -> std::io::Result<Self> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let here = std::thread::current().id();
        // On a work-stealing runtime one reactor serves every thread.
        let single =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
        if self.home == here || !single {
            return Ok(self);
        }
        let (read, buffered) = self.reader.into_parts();
        if !buffered.is_empty() || !read.is_pair_of(&self.writer) {
            return Err(std::io::Error::other("the session is not idle"));
        }
        let mut stream = read.unsplit(self.writer);
        stream.rehome()?;
        let (r, w) = tokio::io::split(stream);
        Ok(UpstreamSession {
            reader: FrameReader::new(r, MAX_BACKEND_MESSAGE),
            writer: w,
            home: here,
            ..self
        })
    }

    /// Say goodbye to the target (Terminate) and close the session.
    pub async fn close(mut self) {
        goodbye(&mut self.writer, true).await;
    }

    /// Run one simple query on the session (before it is handed to a
    /// caller) and return its rows as text; `None` values are NULLs.
    pub async fn simple_rows(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, UpstreamError> {
        send_flushed(&mut self.writer, &messages::query(sql).to_bytes())
            .await
            .map_err(UpstreamError::Connect)?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let m = self.reader.next().await?.ok_or_else(|| {
                UpstreamError::Protocol("the target closed the connection".into())
            })?;
            match m.tag {
                tag::DATA_ROW => rows.push(data_row_text(&m.body)),
                tag::ERROR_RESPONSE => failed = Some(error_text(&m)),
                tag::READY_FOR_QUERY => {
                    self.status = m.body.first().copied().unwrap_or(b'I');
                    return match failed {
                        Some(e) => Err(UpstreamError::Server(e)),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
        }
    }
}

/// The result of [`UpstreamSession::query`]: the last result set's
/// columns and up to `max_rows` of its rows (text format).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryOutcome {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows the statement returned, including those not kept.
    pub total_rows: u64,
    /// CommandComplete tags, in order (e.g. `SELECT 3`).
    pub tags: Vec<String>,
}

impl UpstreamSession {
    /// Run `sql` as a simple query, keeping at most `max_rows` rows in
    /// memory (the rest are read and counted, not kept): the caller sets
    /// a `statement_timeout` first to bound the time as well.
    pub async fn query(
        &mut self,
        sql: &str,
        max_rows: usize,
    ) -> Result<QueryOutcome, UpstreamError> {
        self.query_inspected(sql, max_rows, None).await
    }

    /// [`Self::query`] with every message through `inspector` (the
    /// masker), as the wire protocol's messages are: one masking path. A
    /// refusal ends the query with its error, and the session is left
    /// marked unusable (not idle), so it is not reused.
    pub async fn query_inspected(
        &mut self,
        sql: &str,
        max_rows: usize,
        inspector: Option<&mut (dyn crate::inspect::Inspector + '_)>,
    ) -> Result<QueryOutcome, UpstreamError> {
        self.run_inspected(&[messages::query(sql)], max_rows, inspector)
            .await
    }

    /// [`Self::query_inspected`] through the extended protocol: `sql`
    /// with parameter `types`, bound to `params` as the caller's Bind
    /// gave them (formats included), results in text.
    pub async fn bound_inspected(
        &mut self,
        sql: &str,
        types: &[u32],
        params: &messages::Bind<'_>,
        max_rows: usize,
        inspector: Option<&mut (dyn crate::inspect::Inspector + '_)>,
    ) -> Result<QueryOutcome, UpstreamError> {
        let bind = messages::Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: params.param_formats.clone(),
            params: params.params.clone(),
            result_formats: Vec::new(),
        }
        .encode_for("");
        let [describe, execute, sync] = messages::describe_execute_sync();
        let msgs = [
            messages::parse_typed(sql, types),
            bind,
            describe,
            execute,
            sync,
        ];
        self.run_inspected(&msgs, max_rows, inspector).await
    }

    /// Send `msgs` (through `inspector`) and read the answer up to
    /// ReadyForQuery.
    async fn run_inspected(
        &mut self,
        msgs: &[Message],
        max_rows: usize,
        mut inspector: Option<&mut (dyn crate::inspect::Inspector + '_)>,
    ) -> Result<QueryOutcome, UpstreamError> {
        let mut bytes = BytesMut::new();
        for m in msgs {
            if let Some(i) = inspector.as_deref_mut() {
                i.frontend(m);
            }
            m.encode(&mut bytes);
        }
        send_flushed(&mut self.writer, &bytes)
            .await
            .map_err(UpstreamError::Connect)?;
        let mut out = QueryOutcome::default();
        let mut failed = None;
        loop {
            let m = self.reader.next().await?.ok_or_else(|| {
                UpstreamError::Protocol("the target closed the connection".into())
            })?;
            let m = match inspector.as_deref_mut().map(|i| i.backend(&m)) {
                None | Some(crate::inspect::Verdict::Pass) => m,
                Some(crate::inspect::Verdict::Rewrite(new)) => new,
                Some(crate::inspect::Verdict::Drop) => continue,
                Some(crate::inspect::Verdict::Refuse(r)) => {
                    self.status = 0;
                    return Err(UpstreamError::Server(format!(
                        "{}: {}",
                        r.code.code(),
                        r.message
                    )));
                }
            };
            match m.tag {
                tag::ROW_DESCRIPTION => {
                    out.columns = row_description_names(&m.body);
                    out.rows.clear();
                    out.total_rows = 0;
                }
                tag::DATA_ROW => {
                    out.total_rows += 1;
                    if out.rows.len() < max_rows {
                        out.rows.push(data_row_text(&m.body));
                    }
                }
                tag::COMMAND_COMPLETE => out.tags.push(
                    String::from_utf8_lossy(m.body.strip_suffix(&[0]).unwrap_or(&m.body))
                        .into_owned(),
                ),
                tag::ERROR_RESPONSE => failed = Some(error_text(&m)),
                tag::READY_FOR_QUERY => {
                    self.status = m.body.first().copied().unwrap_or(b'I');
                    return match failed {
                        Some(e) => Err(UpstreamError::Server(e)),
                        None => Ok(out),
                    };
                }
                _ => {}
            }
        }
    }
}

/// Column names of a RowDescription body.
pub(crate) fn row_description_names(body: &[u8]) -> Vec<String> {
    let n = body
        .get(..2)
        .map(|x| i16::from_be_bytes([x[0], x[1]]))
        .unwrap_or(0)
        .max(0) as usize;
    let mut rest = body.get(2..).unwrap_or_default();
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            break;
        };
        names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        // name NUL, then table oid (4), column (2), type oid (4), size (2),
        // modifier (4), format (2).
        rest = rest.get(end + 1 + 18..).unwrap_or_default();
    }
    names
}

/// Cells of a DataRow body as text; `None` is NULL.
pub(crate) fn data_row_text(body: &[u8]) -> Vec<Option<String>> {
    let n = body
        .get(..2)
        .map(|x| i16::from_be_bytes([x[0], x[1]]))
        .unwrap_or(0);
    let mut b = body.get(2..).unwrap_or_default();
    let mut row = Vec::new();
    for _ in 0..n {
        let len = b
            .get(..4)
            .map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))
            .unwrap_or(-1);
        b = b.get(4..).unwrap_or_default();
        if len < 0 {
            row.push(None);
        } else {
            let (v, rest) = b.split_at((len as usize).min(b.len()));
            row.push(Some(portcullis_record::text_of(v)));
            b = rest;
        }
    }
    row
}

/// A reported setting the proofs depend on ([`LEXING`]), as they assume
/// it: refused (the session is not used) where the target says otherwise
/// after all.
fn lexes_as_proven(m: &Message) -> Result<(), UpstreamError> {
    let mut b = &m.body[..];
    let (Some(name), Some(value)) = (take_cstr(&mut b), take_cstr(&mut b)) else {
        return Ok(());
    };
    let Some((_, wanted)) = LEXING.iter().find(|(n, _)| *n == name) else {
        return Ok(());
    };
    if value.eq_ignore_ascii_case(wanted) {
        return Ok(());
    }
    Err(UpstreamError::Protocol(format!(
        "the target reports {name} = {value}, not {wanted}: statements would be read differently from the gateway's proofs"
    )))
}

/// What a target may send between authentication and ReadyForQuery
/// (PostgreSQL sends about 500 bytes of settings).
const MAX_STARTUP_BYTES: usize = 64 << 10;

/// After authentication: ParameterStatus and notices, BackendKeyData,
/// then ReadyForQuery.
async fn read_startup(
    mut reader: FrameReader<tokio::io::ReadHalf<BoxStream>>,
    w: tokio::io::WriteHalf<BoxStream>,
    read_only: bool,
) -> Result<UpstreamSession, UpstreamError> {
    let mut startup_messages = Vec::new();
    let mut kept = 0usize;
    let (mut pid, mut secret) = (0, 0);
    loop {
        let m = reader.next().await?.ok_or_else(|| {
            UpstreamError::Protocol("the target closed the connection during startup".into())
        })?;
        // Bounded: a hostile target (or agent) sending ParameterStatus
        // without end grew the gateway by gigabytes (review).
        kept += m.body.len() + 5;
        if kept > MAX_STARTUP_BYTES {
            return Err(UpstreamError::Protocol(format!(
                "the target sent more than {MAX_STARTUP_BYTES} bytes before it was ready"
            )));
        }
        match m.tag {
            tag::PARAMETER_STATUS => {
                lexes_as_proven(&m)?;
                startup_messages.push(m)
            }
            tag::NOTICE_RESPONSE => startup_messages.push(m),
            tag::BACKEND_KEY_DATA if m.body.len() == 8 => {
                pid = i32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
                secret = i32::from_be_bytes([m.body[4], m.body[5], m.body[6], m.body[7]]);
            }
            tag::READY_FOR_QUERY => {
                let status = m.body.first().copied().unwrap_or(b'I');
                return Ok(UpstreamSession {
                    reader,
                    writer: w,
                    startup_messages,
                    pid,
                    secret,
                    status,
                    read_only,
                    // Set by whoever opened it.
                    owner: Owner::Nobody,
                    home: std::thread::current().id(),
                });
            }
            tag::ERROR_RESPONSE => return Err(UpstreamError::Server(error_text(&m))),
            _ => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected {:?} during startup",
                    m.tag as char
                )));
            }
        }
    }
}

/// How a gateway names a session's owner to an agent: a digest, since the
/// agent only needs to tell owners apart, and a digest is always a valid
/// header value and keeps principals out of the agent's logs. (It is not
/// a secret: anyone who knows a subject can compute its digest.) `None`:
/// never to be reused.
fn owner_tag(owner: &Owner) -> Option<String> {
    let named = match owner {
        Owner::Gateway => "gateway".to_string(),
        Owner::Caller { subject, .. } => format!("caller:{subject}"),
        Owner::Relayed { .. } | Owner::Nobody => return None,
    };
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, named.as_bytes());
    Some(hex::encode(d.as_ref()))
}

/// "CODE: message" of an ErrorResponse.
pub fn error_text(m: &Message) -> String {
    let f = messages::parse_fields(&m.body);
    format!(
        "{}: {}",
        messages::field(&f, b'C').unwrap_or("?????"),
        messages::field(&f, b'M').unwrap_or("(no message)")
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    /// A single-threaded runtime on a thread of its own, as a connection
    /// worker is.
    fn worker() -> tokio::runtime::Handle {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
        handle
    }

    /// A TLS session opened on one worker, kept, and taken by a caller on
    /// the other, answers its first query there: its socket moves to the
    /// second worker's reactor, and what is written before the answer is
    /// awaited is flushed out of the TLS layer. A moved session whose
    /// first catalog query was written without a flush hung (2026-12-05:
    /// the reactor had not yet read the new registration's readiness, so
    /// the query stayed in the TLS layer's buffer).
    #[test]
    fn a_kept_tls_session_answers_on_another_worker() {
        let (first, second) = (worker(), worker());
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
        let server = portcullis_tls::server_config(
            &Default::default(),
            vec![c.cert.der().clone()],
            key,
            &[],
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(c.cert.der().clone()).unwrap();
        let client = portcullis_tls::client_config(&Default::default(), roots).unwrap();
        let opened = first.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            // The target: each Query answered with one row, then ready.
            tokio::spawn(async move {
                let (tcp, _) = l.accept().await.unwrap();
                let tls = tokio_rustls::TlsAcceptor::from(server)
                    .accept(tcp)
                    .await
                    .unwrap();
                let (r, mut w) = tokio::io::split(tls);
                let mut r = FrameReader::new(r, 1 << 20);
                while let Ok(Some(m)) = r.next().await {
                    if m.tag != tag::QUERY {
                        continue;
                    }
                    let mut out = BytesMut::new();
                    let mut row = BytesMut::new();
                    row.put_i16(1);
                    row.put_i32(1);
                    row.put_u8(b'1');
                    Message::new(tag::DATA_ROW, row.freeze()).encode(&mut out);
                    messages::ready_for_query(b'I').encode(&mut out);
                    if w.write_all(&out).await.is_err() || w.flush().await.is_err() {
                        break;
                    }
                }
            });
            let tcp = Homed::new(TcpStream::connect(addr).await.unwrap());
            let name = ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap();
            let stream: BoxStream = Box::new(tls);
            let (r, w) = tokio::io::split(stream);
            let mut s = UpstreamSession {
                reader: FrameReader::new(r, MAX_BACKEND_MESSAGE),
                writer: w,
                startup_messages: Vec::new(),
                pid: 1,
                secret: 2,
                status: b'I',
                read_only: false,
                owner: Owner::Nobody,
                home: std::thread::current().id(),
            };
            // Used where it was opened, as the session before was.
            assert_eq!(
                s.simple_rows("select 1").await.unwrap(),
                [[Some("1".into())]]
            );
            s
        });
        let (tx, rx) = std::sync::mpsc::channel();
        second.spawn(async move {
            let answer = async {
                let mut s = opened.moved_here()?;
                let moved = s.home == std::thread::current().id();
                let rows = s
                    .simple_rows("select 1")
                    .await
                    .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>((moved, rows))
            };
            let _ = tx.send(tokio::time::timeout(Duration::from_secs(10), answer).await);
        });
        let (moved, rows) = rx
            .recv()
            .unwrap()
            .expect("the moved session answered in time")
            .unwrap();
        assert!(moved, "the session's home is the worker that took it");
        assert_eq!(rows, [[Some("1".to_string())]]);
    }

    /// An idle session goes first to a caller on the thread that drives
    /// it, never to another key, and to another thread when none is
    /// home; the newest of each kind first.
    #[test]
    fn idle_sessions_go_home_first() {
        let key = |subject: &str| super::Key {
            params: vec![],
            read_only: false,
            owner: super::Owner::Caller {
                subject: subject.into(),
                accountable: subject.into(),
            },
        };
        let (a, b) = (key("agent:a"), key("agent:b"));
        let here = std::thread::current().id();
        let there = std::thread::spawn(|| std::thread::current().id())
            .join()
            .unwrap();
        let idle = [(&a, here), (&a, there), (&b, here), (&a, there)];
        assert_eq!(super::pick(&idle, &a, here), Some(0));
        assert_eq!(super::pick(&idle, &a, there), Some(3));
        assert_eq!(super::pick(&idle, &b, there), Some(2));
        assert_eq!(super::pick(&idle[..2], &b, here), None);
        assert_eq!(super::pick(&idle[1..2], &a, here), Some(0));
    }

    use tokio::net::TcpListener;

    use super::*;
    use crate::frame::Startup;

    /// Each startup's parameters, as the target received them.
    type Startups = Arc<Mutex<Vec<Vec<(String, String)>>>>;

    /// A target that trusts the gateway and keeps each startup's
    /// parameters; `old`: it refuses the connection check after signing
    /// in, as PostgreSQL 13 does (`FATAL 42704`).
    async fn target(old: bool) -> (u16, Startups) {
        target_speaking(old, false).await
    }

    /// [`target`], refusing in German when `german` (`lc_messages =
    /// 'de_DE.UTF-8'`: PostgreSQL's own translations).
    async fn target_speaking(old: bool, german: bool) -> (u16, Startups) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen: Startups = Arc::default();
        let kept = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (r, mut w) = tokio::io::split(s);
                let mut r = FrameReader::new(r, 1 << 20);
                let Ok(Some(Startup::Startup { params })) = r.startup().await else {
                    continue;
                };
                let asked = params.iter().any(|(k, _)| k == CONNECTION_CHECK.0);
                // A caller's value the server quotes back: PostgreSQL's
                // answer to `PGTZ=client_connection_check_interval`.
                let quoted = params.iter().find(|(k, v)| {
                    k.eq_ignore_ascii_case("timezone") && v.contains(CONNECTION_CHECK.0)
                });
                let refusal = match (quoted, old && asked, german) {
                    (Some((_, v)), _, false) => Some(format!(
                        "22023\0Minvalid value for parameter \"TimeZone\": \"{v}\""
                    )),
                    (Some((_, v)), _, true) => Some(format!(
                        "22023\0Mungültiger Wert für Parameter »TimeZone«: »{v}«"
                    )),
                    (None, true, false) => Some(format!(
                        "42704\0Munrecognized configuration parameter \"{}\"",
                        CONNECTION_CHECK.0
                    )),
                    (None, true, true) => Some(format!(
                        "42704\0Mnicht erkannter Konfigurationsparameter »{}«",
                        CONNECTION_CHECK.0
                    )),
                    (None, false, _) => None,
                };
                kept.lock().unwrap().push(params);
                let mut out = BytesMut::new();
                messages::auth_ok().encode(&mut out);
                if let Some(r) = refusal {
                    let body = format!("SFATAL\0C{r}\0\0");
                    Message::new(tag::ERROR_RESPONSE, Bytes::from(body)).encode(&mut out);
                } else {
                    messages::backend_key_data(7, 8).encode(&mut out);
                    messages::ready_for_query(b'I').encode(&mut out);
                }
                let _ = w.write_all(&out).await;
            }
        });
        (port, seen)
    }

    fn upstream(port: u16, dir: &std::path::Path) -> PgUpstream {
        std::fs::write(dir.join("pgpw"), "pw").unwrap();
        let text = format!(
            r#"
[gateway]
listen = "127.0.0.1:8443"
cert = "s.pem"
key = "s.key"

[[connections]]
name = "db"
type = "postgres"
url = "postgres://app@127.0.0.1:{port}/app?sslmode=disable"
password = "file:pgpw"
"#
        );
        let cfg = portcullis_config::Config::parse(&text, &dir.join("p.toml")).unwrap();
        let c = &cfg.connections[0];
        let portcullis_config::Target::Postgres(t) = &c.target else {
            panic!("a PostgreSQL connection")
        };
        PgUpstream::new(c, t, &cfg.upstream_tls).unwrap()
    }

    fn check_of(params: &[(String, String)]) -> Option<&str> {
        params
            .iter()
            .find(|(k, _)| k == CONNECTION_CHECK.0)
            .map(|(_, v)| v.as_str())
    }

    /// A target that answers each simple query, after `delay`, with one
    /// row: for a look-up in `pg_proc`, the immutable built-in `lower`
    /// with OID 42, whatever was asked; else the query's own text.
    async fn echoing_target(delay: Duration) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = tokio::io::split(s);
                    let mut r = FrameReader::new(r, 1 << 20);
                    let Ok(Some(Startup::Startup { .. })) = r.startup().await else {
                        return;
                    };
                    let mut out = BytesMut::new();
                    messages::auth_ok().encode(&mut out);
                    messages::ready_for_query(b'I').encode(&mut out);
                    let _ = w.write_all(&out).await;
                    while let Ok(Some(m)) = r.next().await {
                        if m.tag != tag::QUERY {
                            continue;
                        }
                        tokio::time::sleep(delay).await;
                        let text = m.body.strip_suffix(b"\0").unwrap_or(&m.body);
                        let cells: Vec<&[u8]> = if text.windows(7).any(|w| w == b"pg_proc") {
                            vec![b"pg_catalog", b"lower", b"i", b"", b"true", b"42"]
                        } else {
                            vec![text]
                        };
                        let mut row = BytesMut::new();
                        row.put_i16(cells.len() as i16);
                        for c in cells {
                            row.put_i32(c.len() as i32);
                            row.put_slice(c);
                        }
                        let mut out = BytesMut::new();
                        Message::new(tag::DATA_ROW, row.freeze()).encode(&mut out);
                        messages::ready_for_query(b'I').encode(&mut out);
                        if w.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    /// A catalog look-up dropped half way (its caller gone, its MCP
    /// request cancelled) leaves no answer for the next look-up to take
    /// as its own: the shared look-up session answered each look-up
    /// with the one before it, and a function was proven by another's
    /// row (review, 2026-12-05).
    #[tokio::test]
    async fn a_dropped_catalog_look_up_leaves_no_answer_behind() {
        let dir = tempfile::tempdir().unwrap();
        let port = echoing_target(Duration::from_millis(300)).await;
        let up = upstream(port, dir.path());
        let open = || up.connect(&[], Owner::Gateway);
        // Sent, then dropped before its answer comes.
        let first = up.catalog.rows("select 'first'", open);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), first)
                .await
                .is_err()
        );
        let rows = up.catalog.rows("select 'second'", open).await.unwrap();
        assert_eq!(rows, [[Some("select 'second'".to_string())]]);
        // The session kept after a whole look-up serves the next one.
        let rows = up.catalog.rows("select 'third'", open).await.unwrap();
        assert_eq!(rows, [[Some("select 'third'".to_string())]]);
    }

    /// A fast-path call's function is proven by the row about its OID
    /// only: an answer about another function (a look-up session out of
    /// step with its queries answered each look-up with the one before
    /// it) proves nothing (review, 2026-12-05).
    #[tokio::test]
    async fn a_function_is_proven_only_by_its_own_row() {
        let dir = tempfile::tempdir().unwrap();
        let port = echoing_target(Duration::ZERO).await;
        let up = upstream(port, dir.path());
        let open = || up.connect(&[], Owner::Gateway);
        let asked = up.catalog.function(7, open).await.unwrap();
        assert!(asked.is_none(), "{asked:?}");
        let own = up.catalog.function(42, open).await.unwrap();
        assert_eq!(
            own.map(|r| (r.name, r.volatility)),
            Some(("lower".into(), b'i'))
        );
        // Cached: the same answer again.
        assert!(up.catalog.function(7, open).await.unwrap().is_none());
    }

    /// Every session asks the target to watch for the gateway's side
    /// going away, at one second.
    #[tokio::test]
    async fn every_startup_asks_the_target_to_check_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (port, seen) = target(false).await;
        let up = upstream(port, dir.path());
        for _ in 0..2 {
            up.connect(&[], Owner::Nobody).await.unwrap();
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|p| check_of(p) == Some("1000")), "{seen:?}");
    }

    /// A target that does not know the setting (before PostgreSQL 14) is
    /// still served: the refused startup is tried again without it, and
    /// later sessions do not ask.
    #[tokio::test]
    async fn a_target_without_the_check_is_served_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let (port, seen) = target(true).await;
        let up = upstream(port, dir.path());
        for _ in 0..2 {
            let s = up.connect(&[], Owner::Nobody).await.unwrap();
            assert_eq!(s.pid, 7);
        }
        let seen = seen.lock().unwrap();
        let asked: Vec<bool> = seen.iter().map(|p| check_of(p).is_some()).collect();
        assert_eq!(asked, [true, false, false]);
    }

    /// The same from a server that answers in German: a localized
    /// refusal is known by its SQLSTATE and the setting's name (it
    /// refused every session before, 2026-12-05), and a caller's value
    /// quoted in one still turns nothing off.
    #[tokio::test]
    async fn a_target_refusing_in_its_own_language_is_served_without_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let (port, seen) = target_speaking(true, true).await;
        let up = upstream(port, dir.path());
        let poison = [("TimeZone".to_string(), CONNECTION_CHECK.0.to_string())];
        assert!(up.connect(&poison, Owner::Nobody).await.is_err());
        for _ in 0..2 {
            let s = up.connect(&[], Owner::Nobody).await.unwrap();
            assert_eq!(s.pid, 7);
        }
        let seen = seen.lock().unwrap();
        let asked: Vec<bool> = seen.iter().map(|p| check_of(p).is_some()).collect();
        // The poisoned startup: refused, not retried; the next: refused in
        // German for the check, tried without, and no more asked.
        assert_eq!(asked, [true, true, false, false]);
    }

    /// A caller whose own startup value makes the server quote the
    /// setting's name in its refusal is refused, and the check stays on
    /// for everyone (a review turned it off with
    /// `PGTZ=client_connection_check_interval`).
    #[tokio::test]
    async fn a_refusal_that_quotes_the_setting_does_not_turn_it_off() {
        let dir = tempfile::tempdir().unwrap();
        for old in [false, true] {
            let (port, seen) = target(old).await;
            let up = upstream(port, dir.path());
            let poison = [("TimeZone".to_string(), CONNECTION_CHECK.0.to_string())];
            assert!(up.connect(&poison, Owner::Nobody).await.is_err());
            up.connect(&[], Owner::Nobody).await.unwrap();
            let seen = seen.lock().unwrap();
            let asked: Vec<bool> = seen.iter().map(|p| check_of(p).is_some()).collect();
            // The poisoned startup is not retried and turns nothing off:
            // the next caller's startup asks again (and, on an old target,
            // is refused in the server's own words and tried without).
            let expected: &[bool] = if old {
                &[true, true, false]
            } else {
                &[true, true]
            };
            assert_eq!(asked, expected, "old target: {old}");
        }
    }

    /// Every startup asks for TCP keepalives on the target's side.
    #[tokio::test]
    async fn every_startup_asks_for_keepalives() {
        let dir = tempfile::tempdir().unwrap();
        let (port, seen) = target(false).await;
        let up = upstream(port, dir.path());
        up.connect(&[], Owner::Nobody).await.unwrap();
        let seen = seen.lock().unwrap();
        for (k, v) in KEEPALIVES {
            assert!(
                seen[0].iter().any(|(a, b)| a == k && b == v),
                "{k}: {seen:?}"
            );
        }
    }
}
