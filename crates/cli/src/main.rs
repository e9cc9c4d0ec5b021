//! The `portcullis` binary. `anyhow` lives here, at the edge; the crates
//! below return typed errors.

mod agent_cmd;
mod audit_cmd;
mod budgets_cmd;
mod cert_cmd;
mod console_cmd;
mod docs_cmd;
mod doctor_cmd;
mod gateway_cmd;
mod login;
mod mask_cmd;
mod mcp_cmd;
mod oauth_cmd;
mod policy_cmd;
mod quickstart;
mod reviews_cmd;
mod sessions_cmd;
mod telemetry;
mod token_cmd;

use std::path::PathBuf;

/// jemalloc, with a background thread that returns freed pages to the
/// system (`.cargo/config.toml`), rather than glibc's malloc or mimalloc:
/// measured in bench/ (resident memory after a load ends, and CPU per
/// request); see docs/performance.md. glibc kept 10× its fresh figure
/// after a load; mimalloc returned freed pages only on a thread's next
/// allocations, so an idle gateway kept what its last load had left.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An access gateway for AI agents and the people who run them"
)]
struct Cli {
    /// The data folder (CA, certificates, database, generated config).
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_DATA_DIR",
        default_value = "./portcullis-data"
    )]
    data_dir: PathBuf,
    /// The config file [default: <data-dir>/portcullis.toml].
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `portcullis=debug` (RUST_LOG also works)
    /// [default: info for gateway, agent and quickstart; warn for one-shot
    /// commands, so that their output stands alone].
    #[arg(long, global = true, env = "PORTCULLIS_LOG")]
    log: Option<String>,
    /// Export traces to this OTLP/HTTP receiver (e.g.
    /// http://127.0.0.1:4318/v1/traces): a span per session and per
    /// request or statement. gateway, agent and quickstart only.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// More log lines: -v info, -vv debug (unless --log says otherwise).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Set up a data folder with a CA, a demo API and a token, and run the
    /// gateway in the foreground (Ctrl-C stops it). Safe to re-run.
    Quickstart(quickstart::Args),
    /// Run the gateway from a config file.
    Gateway,
    /// Create, list and revoke gateway-issued tokens.
    #[command(subcommand)]
    Token(token_cmd::TokenCommand),
    /// List recorded sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Play a recorded session in the terminal.
    Replay(sessions_cmd::ReplayArgs),
    /// Certificates from the internal CA.
    #[command(subcommand)]
    Cert(cert_cmd::CertCommand),
    /// Explain access decisions.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Verify, tail or export the audit log.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Mask standard input with the configured rules (or every built-in
    /// detector), to test rules before deploying them.
    Mask(mask_cmd::Args),
    /// Sign in with the gateway's identity provider (device code, or a
    /// browser with --browser); the token is cached for `env` and tools.
    Login(login::LoginArgs),
    /// Forget the cached sign-in for a gateway.
    Logout(login::GatewayArgs),
    /// Print shell exports for tools (PORTCULLIS_TOKEN, PGHOST, PGPORT,
    /// PGPASSWORD, …) from the cached sign-in: `eval "$(portcullis env)"`.
    Env(login::GatewayArgs),
    /// MCP: set up AI clients (Claude Code, Cursor, Codex) to use the
    /// gateway's /mcp endpoint.
    #[command(subcommand)]
    Mcp(mcp_cmd::McpCommand),
    /// The web console: a one-time sign-in link for a person with no
    /// identity provider.
    #[command(subcommand)]
    Console(console_cmd::ConsoleCommand),
    /// The gateway's OAuth authorization server: registered MCP clients.
    #[command(subcommand)]
    Oauth(oauth_cmd::OAuthCommand),
    /// Run an agent: dial out to the gateway and serve the connections of
    /// its config (--config, default <data-dir>/agent/agent.toml).
    Agent,
    /// Agents connected to a running gateway.
    #[command(subcommand)]
    Agents(agent_cmd::AgentsCommand),
    /// Reviews of held actions: list, show, approve, deny (as an approver).
    #[command(subcommand)]
    Reviews(reviews_cmd::ReviewsCommand),
    /// Grants' budgets: what a principal used of each limit.
    #[command(subcommand)]
    Budgets(budgets_cmd::BudgetsCommand),
    /// Check that the database role of each PostgreSQL connection is least
    /// privilege (read-only connections fail on a superuser, an owner or
    /// write privileges) and print the role to create instead.
    Doctor(doctor_cmd::Args),
    /// Print a shell completion script: `source <(portcullis completions bash)`.
    Completions(docs_cmd::CompletionsArgs),
    /// Print the man page (roff), or write all of them with --out DIR.
    Man(docs_cmd::ManArgs),
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Sessions, newest first (filters: principal, connection, outcome,
    /// since; --limit).
    List(sessions_cmd::ListArgs),
    /// End a live session: whichever gateway runs it ends it within about
    /// a second (outcome access_ended), as the console's End button does.
    End(sessions_cmd::EndArgs),
}

/// The store `config` names, opened (its password resolved).
pub(crate) async fn open_store(
    config: &portcullis_config::Config,
) -> anyhow::Result<portcullis_store::Store> {
    use anyhow::Context;
    let url = config
        .store
        .open_url()
        .map_err(|e| anyhow::anyhow!("store password: {e}"))?;
    portcullis_store::Store::open(&url)
        .await
        .with_context(|| format!("opening the store {}", config.store.describe()))
}

impl Cli {
    /// `--log`, else what the command and `-v` call for.
    fn log_filter(&self) -> String {
        if let Some(f) = &self.log {
            return f.clone();
        }
        let serves = matches!(
            self.command,
            Command::Quickstart(_) | Command::Gateway | Command::Agent
        );
        match (serves, self.verbose) {
            (_, 2..) => "debug",
            (true, _) | (false, 1) => "info",
            (false, 0) => "warn",
        }
        .to_owned()
    }

    fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| self.data_dir.join("portcullis.toml"))
    }

    /// Load the config (with a hint when there is none yet) and open the
    /// store it names.
    async fn load(&self) -> anyhow::Result<(portcullis_config::Config, portcullis_store::Store)> {
        let path = self.config_path();
        if !path.exists() {
            anyhow::bail!(
                "no config at {} (run `portcullis quickstart --data-dir {}` to create one, or pass --config FILE)",
                path.display(),
                self.data_dir.display()
            );
        }
        let config = portcullis_config::Config::load(&path)?;
        let store = open_store(&config).await?;
        Ok((config, store))
    }
}

/// An error and its causes, each said once: many errors already quote
/// their cause in their own message, and `{:#}` would repeat it.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

fn main() -> std::process::ExitCode {
    portcullis_tls::install_default_provider();
    let cli = Cli::parse();
    let serves = matches!(
        cli.command,
        Command::Quickstart(_) | Command::Gateway | Command::Agent
    );
    let otlp = cli.otlp_endpoint.as_deref().filter(|_| serves);
    let traces = match telemetry::init(cli.log_format, &cli.log_filter(), otlp) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portcullis: error: {}", error_chain(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Quickstart(args) => quickstart::run(&cli, args).await,
            Command::Gateway => gateway_cmd::run(&cli).await,
            Command::Token(t) => token_cmd::run(&cli, t).await,
            Command::Mask(a) => mask_cmd::run(&cli, a),
            Command::Policy(p) => policy_cmd::run(&cli, p),
            Command::Cert(c) => cert_cmd::run(&cli, c).await,
            Command::Audit(a) => audit_cmd::run(&cli, a).await,
            Command::Sessions(SessionsCommand::List(a)) => sessions_cmd::list(&cli, a).await,
            Command::Sessions(SessionsCommand::End(a)) => sessions_cmd::end(&cli, a).await,
            Command::Replay(a) => sessions_cmd::replay(&cli, a).await,
            Command::Login(a) => login::login(a).await,
            Command::Logout(a) => login::logout(a),
            Command::Env(a) => login::env(a).await,
            Command::Mcp(m) => mcp_cmd::run(&cli, m).await,
            Command::Oauth(o) => oauth_cmd::run(&cli, o).await,
            Command::Console(c) => console_cmd::run(&cli, c).await,
            Command::Agent => agent_cmd::run_agent(&cli).await,
            Command::Reviews(r) => reviews_cmd::run(&cli, r).await,
            Command::Budgets(b) => budgets_cmd::run(&cli, b).await,
            Command::Agents(a) => agent_cmd::agents(&cli, a).await,
            Command::Doctor(a) => doctor_cmd::run(&cli, a).await,
            Command::Completions(a) => docs_cmd::completions(a),
            Command::Man(a) => docs_cmd::man(a),
            Command::Version => {
                println!("portcullis {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
        }
    });
    // The runtime is gone: the exporter's blocking client may now send
    // the last batch.
    drop(runtime);
    if let Some(t) = traces
        && let Err(e) = t.shutdown()
    {
        eprintln!("portcullis: the last traces could not be exported: {e}");
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The line scripts (and the tests) wait for: the gateway is serving.
pub(crate) fn ready_line(g: &portcullis_gateway::RunningGateway) -> String {
    let mut line = format!("portcullis: ready url={}", g.public_url);
    if let Some(a) = g.postgres_addr {
        line.push_str(&format!(" postgres={a}"));
    }
    if let Some(a) = g.admin_addr {
        line.push_str(&format!(" admin={a}"));
    }
    if let Some(a) = g.agent_addr {
        line.push_str(&format!(" agents={a}"));
    }
    line
}

/// Wait for Ctrl-C or SIGTERM.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    // The handlers are installed now, not when the future is first polled:
    // a SIGTERM sent right after the ready line must stop us cleanly, not
    // kill us with the default action.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {}
                _ = wait(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
