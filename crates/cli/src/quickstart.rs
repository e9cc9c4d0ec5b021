//! `portcullis quickstart`: a working gateway from an empty folder in one
//! command, and the same gateway again on a second run (nothing rotated,
//! nothing wiped).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use portcullis_config::Config;
use portcullis_identity::{Authenticator, Credential};
use portcullis_tls::CertificateAuthority;

use crate::Cli;

const PRINCIPAL: &str = "agent:quickstart";
const CONNECTION: &str = "demo-api";
const TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);
const CERT_TTL: Duration = Duration::from_secs(365 * 86_400);

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Gateway address (overrides the config's `gateway.listen`; port 0
    /// picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin address for /metrics and /healthz (overrides
    /// `gateway.admin_listen`).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Add a PostgreSQL target as connection `demo-pg`:
    /// postgres://USER:PASSWORD@HOST:PORT/DB[?sslmode=verify-full|disable&sslrootcert=CA.pem].
    /// The password is stored as a secret file of the gateway, never in the config.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// PostgreSQL listener address (overrides `postgres.listen`).
    #[arg(long)]
    pg_listen: Option<SocketAddr>,
    /// Route `demo-api` through an agent: the demo API and its key live
    /// only under <data-dir>/agent/, served by a second process
    /// (`portcullis agent`) that dials out to the gateway.
    #[arg(long)]
    agent_demo: bool,
}

/// The agent of `--agent-demo` (certificate `connector:quickstart`).
const AGENT: &str = "quickstart";

const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
const DEFAULT_ADMIN: &str = "127.0.0.1:9443";
const DEFAULT_PG_LISTEN: &str = "127.0.0.1:15432";
const PG_CONNECTION: &str = "demo-pg";
const PG_GUARDED: &str = "demo-pg-guarded";
const PG_READONLY: &str = "demo-pg-readonly";
/// The quickstart's human approver and its group.
const APPROVER: &str = "user:approver";
const APPROVERS: &str = "approvers";
/// The console's local person on a quickstart (no identity provider): an
/// approver, and a console admin.
const CONSOLE_ADMIN: &str = "user:admin";
const CONSOLE_ADMINS: &str = "admins";

pub(crate) async fn run(cli: &Cli, args: &Args) -> anyhow::Result<()> {
    let folder = prepare_folder(cli, args)?;
    let Folder {
        dir,
        ca,
        config_path,
    } = &folder;
    let config = load_config(config_path, args)?;
    let store = crate::open_store(&config).await?;
    let stop = crate::shutdown_signal();
    let hangups = crate::gateway_cmd::hangups();
    let running = portcullis_gateway::start(&config, store.clone()).await?;
    // Tokens only once the gateway runs: a start that fails (a port in
    // use) leaves no token that nobody received.
    let env_path = dir.join("quickstart.env");
    let token = match reusable_token(&env_path, &store).await {
        Some(t) => t,
        None => quickstart_token(&store, dir, PRINCIPAL, "quickstart").await?,
    };

    // With a guarded connection: a person who may approve.
    let approver = if config.connection(PG_GUARDED).is_some() {
        Some(match reusable_approver(&env_path, &store).await {
            Some(t) => t,
            None => quickstart_token(&store, dir, APPROVER, APPROVERS).await?,
        })
    } else {
        None
    };

    // With --agent-demo: the agent's folder and process.
    let _agent = match running.agent_addr {
        Some(addr) => Some(AgentProcess::watch(
            start_agent(ca, dir, addr, &running).await?,
        )),
        None => None,
    };
    let env = environment(&folder, &config, &running, token, approver.as_ref(), &store).await?;
    write_env(&env_path, &env)?;
    // What an agent is given: its own credentials and where to use them,
    // never the person's (a review signed in as the console's admin with
    // the link, and approved with the approver's token, from the file an
    // agent was told to source).
    let agent_env: Vec<(&str, String)> = env
        .iter()
        .filter(|(k, _)| !PERSON_VARS.contains(k))
        .cloned()
        .collect();
    write_env(&dir.join(AGENT_ENV), &agent_env)?;
    let pg = has_demo_postgres(&config, &running);
    if pg {
        check_postgres(&config).await;
    }
    let console_url = env
        .iter()
        .find(|(k, _)| *k == "PORTCULLIS_CONSOLE_URL")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    welcome(dir, &running, &env_path, console_url, pg);

    crate::gateway_cmd::serve(&running, stop, hangups).await;
    tracing::info!("shutting down");
    running.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// The quickstart's folder, set up (safe to re-run).
struct Folder {
    dir: std::path::PathBuf,
    ca: CertificateAuthority,
    config_path: std::path::PathBuf,
}

/// The data folder with its CA, certificates, secrets and config, made
/// where missing. An existing folder keeps the mode it was set up in.
fn prepare_folder(cli: &Cli, args: &Args) -> anyhow::Result<Folder> {
    let dir = &cli.data_dir;
    create_private_dir(dir)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;

    let (ca, created) = CertificateAuthority::load_or_create(&dir)?;
    if created {
        eprintln!(
            "created an internal certificate authority in {}",
            dir.display()
        );
    }
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
    ca.ensure_server_cert(&dir, "server", &names, CERT_TTL)?;
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| dir.join("portcullis.toml"));
    // An existing folder keeps the mode it was set up in.
    let agent_mode = if config_path.exists() {
        std::fs::read_to_string(&config_path)
            .map(|t| t.contains("[agent_listener]"))
            .unwrap_or(false)
    } else {
        args.agent_demo
    };
    if args.agent_demo && !agent_mode {
        anyhow::bail!(
            "{} was set up without --agent-demo; use a new --data-dir for the agent demo",
            dir.display()
        );
    }
    if !agent_mode {
        ca.ensure_server_cert(&dir, "demo-api", &names, CERT_TTL)?;
    }

    let secrets = dir.join("secrets");
    create_private_dir(&secrets)?;
    let own_secrets: &[&str] = if agent_mode {
        &["mask-hash-key"]
    } else {
        &["demo-api-key", "mask-hash-key"]
    };
    for name in own_secrets.iter().copied() {
        let f = secrets.join(name);
        if !f.exists() {
            write_private(&f, format!("{}\n", random_hex(32)?).as_bytes())?;
        }
    }

    if !config_path.exists() {
        let text = generated_config(
            agent_mode.then(free_loopback_port).transpose()?,
            args.listen
                .map(|a| a.to_string())
                .as_deref()
                .unwrap_or(DEFAULT_LISTEN),
            args.admin_listen
                .map(|a| a.to_string())
                .as_deref()
                .unwrap_or(DEFAULT_ADMIN),
            free_loopback_port()?,
        );
        std::fs::write(&config_path, text)
            .with_context(|| format!("writing {}", config_path.display()))?;
        eprintln!(
            "wrote {} (edit it and reuse it with `portcullis gateway --config`)",
            config_path.display()
        );
    }
    if let Some(url) = &args.postgres {
        add_postgres(&dir, &config_path, url, args.pg_listen)?;
    }
    Ok(Folder {
        dir,
        ca,
        config_path,
    })
}

/// The config, with the listen addresses given on the command line.
fn load_config(config_path: &std::path::Path, args: &Args) -> anyhow::Result<Config> {
    let mut config = Config::load(config_path)?;
    if let Some(p) = args.pg_listen
        && let Some(pg) = config.postgres.as_mut()
    {
        pg.listen = p;
    }
    if let Some(l) = args.listen {
        config.gateway.listen = l;
    }
    if let Some(a) = args.admin_listen {
        config.gateway.admin_listen = Some(a);
    }
    Ok(config)
}

/// Whether the demo PostgreSQL connection is served.
fn has_demo_postgres(config: &Config, running: &portcullis_gateway::RunningGateway) -> bool {
    running.postgres_addr.is_some() && config.connection(PG_CONNECTION).is_some()
}

/// `quickstart.env`'s variables: where the gateway is, the tokens, the
/// demo connections, and a one-time sign-in link to the console (new at
/// every start, audited).
async fn environment(
    folder: &Folder,
    config: &Config,
    running: &portcullis_gateway::RunningGateway,
    token: String,
    approver: Option<&String>,
    store: &portcullis_store::Store,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let dir = &folder.dir;
    let url = running.public_url.clone();
    let ca_path = folder.ca.cert_path().to_path_buf();
    let mut env = vec![
        ("PORTCULLIS_URL", url.clone()),
        ("PORTCULLIS_CA", ca_path.display().to_string()),
        ("PORTCULLIS_TOKEN", token),
        ("PORTCULLIS_DEMO_CONNECTION", CONNECTION.to_string()),
        ("PORTCULLIS_DATA_DIR", dir.display().to_string()),
    ];
    if let Some(a) = running.admin_addr {
        env.push(("PORTCULLIS_ADMIN_URL", portcullis_config::url_for(a)));
    }
    let pg = running
        .postgres_addr
        .filter(|_| config.connection(PG_CONNECTION).is_some());
    if let Some(a) = pg {
        env.push(("PORTCULLIS_PG_HOST", "localhost".to_string()));
        env.push(("PORTCULLIS_PG_PORT", a.port().to_string()));
        env.push(("PORTCULLIS_DEMO_PG", PG_CONNECTION.to_string()));
        if config.connection(PG_READONLY).is_some() {
            env.push(("PORTCULLIS_DEMO_PG_READONLY", PG_READONLY.to_string()));
        }
        if let Some(t) = approver {
            env.push(("PORTCULLIS_DEMO_PG_GUARDED", PG_GUARDED.to_string()));
            env.push(("PORTCULLIS_APPROVER_TOKEN", t.clone()));
        }
    }
    // A one-time sign-in link to the console, new at every start.
    let groups = [APPROVERS.to_string(), CONSOLE_ADMINS.to_string()];
    let link = portcullis_gateway::console::make_link(store, CONSOLE_ADMIN, &groups)
        .await
        .map_err(|e| anyhow::anyhow!("console sign-in link: {e}"))?;
    crate::token_cmd::audit_admin(
        store,
        dir,
        "console_link_created",
        serde_json::json!({"principal": CONSOLE_ADMIN, "groups": groups}),
    )
    .await?;
    let console_url = format!("{url}/ui/link?t={link}");
    env.push(("PORTCULLIS_CONSOLE_URL", console_url));
    Ok(env)
}

/// What to do next, on standard output.
fn welcome(
    dir: &std::path::Path,
    running: &portcullis_gateway::RunningGateway,
    env_path: &std::path::Path,
    console_url: &str,
    pg: bool,
) {
    let url = &running.public_url;
    println!();
    println!("Portcullis is running at {url}");
    if running.agent_addr.is_some() {
        println!(
            "Connection {CONNECTION:?} reaches a demo HTTPS API through agent {AGENT:?}; only the agent ({}) holds its key.",
            dir.join("agent").display()
        );
    } else {
        println!("Connection {CONNECTION:?} reaches a demo HTTPS API; the gateway holds its key.");
    }
    println!("Console (signs you in once as {CONSOLE_ADMIN}): {console_url}");
    println!();
    println!(
        "In another shell (an agent gets {AGENT_ENV}: the same, without the console link and the approver's token):"
    );
    println!("  . {}", env_path.display());
    println!(
        "  curl --cacert \"$PORTCULLIS_CA\" -H \"Authorization: Bearer $PORTCULLIS_TOKEN\" \"$PORTCULLIS_URL/c/{CONNECTION}/hello\""
    );
    println!(
        "  curl --cacert \"$PORTCULLIS_CA\" -H \"Authorization: Bearer $PORTCULLIS_TOKEN\" \"$PORTCULLIS_URL/c/{CONNECTION}/customers\"   # masked"
    );
    if pg {
        println!(
            "  PGPASSWORD=$PORTCULLIS_TOKEN psql \"host=$PORTCULLIS_PG_HOST port=$PORTCULLIS_PG_PORT dbname={PG_CONNECTION} user=agent sslmode=verify-full sslrootcert=$PORTCULLIS_CA\""
        );
    }
    println!();
    println!("{}", crate::ready_line(running));
    let _ = std::io::stdout().flush();
}

/// Whether the gateway can sign in to the PostgreSQL demo target: a
/// warning (not a failure: the rest of the demo works) that says how to
/// fix it.
async fn check_postgres(config: &Config) {
    let Some(c) = config.connection(PG_CONNECTION) else {
        return;
    };
    let portcullis_config::Target::Postgres(t) = &c.target else {
        return;
    };
    if let Err(e) = portcullis_gateway::roles::check_connection(config, c, t).await {
        eprintln!(
            "WARNING: the gateway cannot reach PostgreSQL for {PG_CONNECTION:?}: {e}\n\
             \x20 Fix the server or the URL, then run the quickstart again with \
             --postgres URL (a new password replaces the stored one), or edit \
             secrets/demo-pg-password and send the quickstart SIGHUP (kill -HUP {}).",
            std::process::id()
        );
    }
}

/// The approver's token in an earlier quickstart.env, if still good.
async fn reusable_approver(env_path: &Path, store: &portcullis_store::Store) -> Option<String> {
    let text = std::fs::read_to_string(env_path).ok()?;
    let token = text.lines().find_map(|l| {
        l.strip_prefix("export PORTCULLIS_APPROVER_TOKEN=")
            .map(|v| v.trim_matches('\'').to_string())
    })?;
    let auth = Authenticator::new(std::sync::Arc::new(store.clone()));
    match auth
        .authenticate(
            Credential::Bearer(&token),
            portcullis_identity::Resource::Other,
        )
        .await
    {
        Ok(p) if p.subject == APPROVER => Some(token),
        _ => None,
    }
}

/// The token in an earlier quickstart.env, if it still authenticates.
async fn reusable_token(env_path: &Path, store: &portcullis_store::Store) -> Option<String> {
    let text = std::fs::read_to_string(env_path).ok()?;
    let token = text.lines().find_map(|l| {
        l.strip_prefix("export PORTCULLIS_TOKEN=")
            .or_else(|| l.strip_prefix("PORTCULLIS_TOKEN="))
            .map(|v| v.trim_matches('\'').to_string())
    })?;
    let auth = Authenticator::new(std::sync::Arc::new(store.clone()));
    match auth
        .authenticate(
            Credential::Bearer(&token),
            portcullis_identity::Resource::Other,
        )
        .await
    {
        Ok(p) if p.subject == PRINCIPAL => Some(token),
        Ok(_) => None,
        Err(e) => {
            eprintln!(
                "the token in {} is no longer usable ({e}); creating a new one",
                env_path.display()
            );
            None
        }
    }
}

/// Set up `<dir>/agent/` (certificate `connector:quickstart`, the
/// gateway's CA, the demo API's certificate and key, `agent.toml`) and
/// start `portcullis agent` on it; wait until it has connected.
async fn start_agent(
    ca: &CertificateAuthority,
    dir: &Path,
    gateway: SocketAddr,
    running: &portcullis_gateway::RunningGateway,
) -> anyhow::Result<tokio::process::Child> {
    let adir = dir.join("agent");
    create_private_dir(&adir)?;
    let asecrets = adir.join("secrets");
    create_private_dir(&asecrets)?;
    let key = asecrets.join("demo-api-key");
    if !key.exists() {
        write_private(&key, format!("{}\n", random_hex(32)?).as_bytes())?;
    }
    std::fs::copy(ca.cert_path(), adir.join("gateway-ca.pem"))?;
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
    ca.ensure_server_cert(&adir, "demo-api", &names, CERT_TTL)?;
    if !adir.join("agent.pem").exists() {
        ca.write_leaf(
            portcullis_tls::LeafKind::Client,
            &adir.join("agent"),
            &[format!("connector:{AGENT}")],
            CERT_TTL,
        )?;
    }
    let config = adir.join("agent.toml");
    let demo_port = match std::fs::read_to_string(&config)
        .ok()
        .and_then(|t| portcullis_config::AgentConfig::parse(&t, &config).ok())
        .and_then(|c| c.demo.map(|d| d.listen.port()))
    {
        Some(p) => p,
        None => free_loopback_port()?,
    };
    std::fs::write(&config, agent_config(gateway.port(), demo_port))?;
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&config)
        .arg("agent")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting `portcullis agent`")?;
    for _ in 0..150 {
        if running.links.list().iter().any(|a| a.agent == AGENT) {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the agent did not connect within 15 seconds (see its log above)")
}

/// The `--agent-demo` agent, watched: if it exits, that is logged (and
/// the process reaped, no zombie); when this is dropped, it is stopped.
struct AgentProcess {
    stop: tokio_util::sync::CancellationToken,
}

impl AgentProcess {
    fn watch(mut child: tokio::process::Child) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    tracing::error!(
                        %status,
                        "the demo agent exited ({status}); {CONNECTION:?} is unreachable \
                         until the quickstart is started again"
                    );
                }
                _ = stopped.cancelled() => {
                    // Kill and reap.
                    let _ = child.kill().await;
                }
            }
        });
        Self { stop }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn agent_config(gateway_port: u16, demo_port: u16) -> String {
    format!(
        r#"# Generated by `portcullis quickstart --agent-demo`: the agent's own
# configuration. Only this folder holds the demo API's key.

[agent]
gateway = "localhost:{gateway_port}"
ca_file = "gateway-ca.pem"
cert = "agent.pem"
key = "agent.key"

# The demo API (the "target"), run by the agent in its network.
[demo]
listen = "127.0.0.1:{demo_port}"
cert = "demo-api.pem"
key = "demo-api.key"
api_key = "file:secrets/demo-api-key"

[[connections]]
name = "{CONNECTION}"
type = "http"
url = "https://localhost:{demo_port}"
ca_file = "gateway-ca.pem"
credential = {{ header = "x-api-key", secret = "file:secrets/demo-api-key" }}
"#
    )
}

fn generated_config(agent_port: Option<u16>, listen: &str, admin: &str, demo_port: u16) -> String {
    let target = match agent_port {
        None => format!(
            r#"# The demo API runs inside the quickstart process, on loopback.
[demo]
listen = "127.0.0.1:{demo_port}"
cert = "demo-api.pem"
key = "demo-api.key"
api_key = "file:secrets/demo-api-key"

[[connections]]
name = "{CONNECTION}"
type = "http"
url = "https://localhost:{demo_port}"
ca_file = "ca.pem"
credential = {{ header = "x-api-key", secret = "file:secrets/demo-api-key" }}"#
        ),
        Some(port) => format!(
            r#"# Agents dial in here (client certificate connector:NAME from ca.pem).
[agent_listener]
listen = "127.0.0.1:{port}"
ca_file = "ca.pem"

# Served by agent "{AGENT}": its URL and key are in agent/agent.toml only.
[[connections]]
name = "{CONNECTION}"
type = "http"
agent = "{AGENT}""#
        ),
    };
    format!(
        r#"# Generated by `portcullis quickstart`. Every key is documented in
# portcullis.example.toml in the repository. Paths are relative to this file.

[gateway]
listen = "{listen}"
admin_listen = "{admin}"
cert = "server.pem"
key = "server.key"
tls = {{ profile = "intermediate" }}
# Client certificates from this folder's CA (`portcullis cert issue`)
# authenticate callers; without one, callers use a token.
client_auth = {{ mode = "optional", ca_file = "ca.pem" }}

[store]
path = "portcullis.db"

{target}

[[grants]]
name = "quickstart-demo"
principals = ["{PRINCIPAL}"]
connections = ["{CONNECTION}"]

# Mask what comes back from every connection: all built-in detectors,
# card numbers keeping their last 4 digits, emails their domain, and
# anything under an api_key, token or password key removed outright.
[masking]
hash_key = "file:secrets/mask-hash-key"

[[masking.rules]]
name = "quickstart-pii"
connections = ["*"]
actions = {{ card = {{ action = "partial", keep_last = 4 }}, email = {{ action = "partial", keep_domain = true }} }}

[[masking.rules.fields]]
keys = ["api_key", "token", "password", "secret"]
action = "redact"
"#
    )
}

/// Add the PostgreSQL demo to the config: the `[postgres]` listener and
/// connections `demo-pg`, `demo-pg-readonly` and `demo-pg-guarded`, with
/// the password in a secret file. What exists already is kept, except
/// the password: a re-run with another one replaces the stored secret
/// (and says so), since that is why people re-run it.
fn add_postgres(
    dir: &Path,
    config_path: &Path,
    url: &str,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut parsed =
        portcullis_config::pgurl::parse(url).map_err(|e| anyhow::anyhow!("--postgres: {e}"))?;
    let password = parsed.password.take().ok_or_else(|| {
        anyhow::anyhow!("--postgres: the URL needs the password (postgres://USER:PASSWORD@HOST/DB)")
    })?;
    if parsed.sslmode == portcullis_config::pgurl::SslMode::Disable {
        eprintln!(
            "WARNING: sslmode=disable: the gateway will talk to {} in plaintext",
            parsed.host
        );
    }
    if let Some(root) = &parsed.sslrootcert {
        let abs = std::path::absolute(root).with_context(|| format!("resolving {root}"))?;
        parsed.sslrootcert = Some(abs.display().to_string());
    }
    let existing = Config::load(config_path)?;
    let url = parsed.without_password();
    if let Some(c) = existing.connection(PG_CONNECTION)
        && let portcullis_config::Target::Postgres(t) = &c.target
        && (
            t.host.as_str(),
            t.port,
            t.database.as_str(),
            t.user.as_str(),
        ) != (
            parsed.host.as_str(),
            parsed.port,
            parsed.database.as_str(),
            parsed.user.as_str(),
        )
    {
        eprintln!(
            "connection {PG_CONNECTION:?} in {} keeps its URL; edit the file to change it \
             (the gateway reloads it on save)",
            config_path.display()
        );
    }
    let mut text = std::fs::read_to_string(config_path)?;
    let before = text.len();
    if existing.postgres.is_none() {
        let listen = listen
            .map(|l| l.to_string())
            .unwrap_or_else(|| DEFAULT_PG_LISTEN.to_string());
        text.push_str(&format!(
            r#"
# PostgreSQL callers: psql "host=localhost port=PORT dbname=<connection> sslmode=verify-full"
# with a token as the password, or a client certificate from ca.pem.
[postgres]
listen = "{listen}"
client_auth = {{ mode = "optional", ca_file = "ca.pem" }}
"#
        ));
    }
    for (name, extra, comment) in [
        (PG_CONNECTION, "", ""),
        (
            PG_READONLY,
            "access = \"read-only\"\n",
            "# The same server, read-only: only statements proven to be reads run.\n",
        ),
        (
            PG_GUARDED,
            "approval = { mode = \"statements\", classes = [\"write\", \"ddl\", \"admin\", \"unknown\"], approvers = [\"approvers\"], required = 1, wait = \"120s\" }\n",
            "# The same server, but writes and DDL wait for one person's approval\n\
             # (`portcullis reviews approve ID` with an approver's token).\n",
        ),
    ] {
        if existing.connection(name).is_some() {
            continue;
        }
        text.push_str(&format!(
            r#"
{comment}[[connections]]
name = "{name}"
type = "postgres"
url = "{url}"
password = "file:secrets/demo-pg-password"
{extra}
[[grants]]
name = "quickstart-{name}"
principals = ["{PRINCIPAL}"]
connections = ["{name}"]
"#
        ));
    }
    // Validate before writing anything: a bad URL must leave neither a
    // broken config nor a replaced password.
    let added = text.len() != before;
    if added {
        Config::parse(&text, config_path)?;
    }
    let secret = dir.join("secrets/demo-pg-password");
    let stored = std::fs::read_to_string(&secret).ok();
    if stored.as_deref().map(|s| s.trim_end_matches(['\r', '\n'])) != Some(password.as_str()) {
        if stored.is_some() {
            eprintln!(
                "replaced the stored PostgreSQL password ({}) with the one in --postgres",
                secret.display()
            );
        }
        write_private(&secret, format!("{password}\n").as_bytes())?;
    }
    if added {
        std::fs::write(config_path, text)
            .with_context(|| format!("writing {}", config_path.display()))?;
        eprintln!(
            "added the PostgreSQL demo connections to {}",
            config_path.display()
        );
    }
    Ok(())
}

fn free_loopback_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .context("finding a free port for the demo API")?;
    Ok(l.local_addr()?.port())
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(hex::encode(buf))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Write a shell-sourceable env file atomically (readers never see half).
/// The file an agent is given: `quickstart.env` less [`PERSON_VARS`].
const AGENT_ENV: &str = "quickstart-agent.env";
/// What only the person running the quickstart should hold.
const PERSON_VARS: &[&str] = &["PORTCULLIS_CONSOLE_URL", "PORTCULLIS_APPROVER_TOKEN"];

fn write_env(path: &Path, vars: &[(&str, String)]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let mut text = format!("# Written by `portcullis quickstart`; source it: . ./{name}\n");
    for (k, v) in vars {
        text.push_str(&format!("export {k}='{}'\n", v.replace('\'', r"'\''")));
    }
    let tmp: PathBuf = path.with_extension("env.tmp");
    write_private(&tmp, text.as_bytes())?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A token for `principal` in `group`, made (and audited) by the quickstart.
async fn quickstart_token(
    store: &portcullis_store::Store,
    dir: &std::path::Path,
    principal: &str,
    group: &str,
) -> anyhow::Result<String> {
    let (id, secret, _) =
        crate::token_cmd::create(store, principal, &[group.to_string()], TOKEN_TTL).await?;
    eprintln!("created token {id} for {principal} (group {group})");
    crate::token_cmd::audit_admin(
        store,
        dir,
        "token_created",
        serde_json::json!({"token_id": id, "principal": principal, "by": "quickstart"}),
    )
    .await?;
    Ok(secret)
}
