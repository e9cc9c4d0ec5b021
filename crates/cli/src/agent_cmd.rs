//! `portcullis agent` (run an agent) and `portcullis agents list` (what a
//! gateway sees connected).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::Cli;

/// `portcullis agent --config agent.toml`.
pub(crate) async fn run_agent(cli: &Cli) -> anyhow::Result<()> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| cli.data_dir.join("agent").join("agent.toml"));
    let cfg = portcullis_config::AgentConfig::load(&path)?;
    if let Some(e) = &cfg.enrol
        && !cfg.cert.exists()
    {
        enrol(&cfg, e)
            .await
            .with_context(|| format!("enrolling with {}", e.url))?;
    }
    let stop = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let signal = crate::shutdown_signal();
    if let Some(d) = &cfg.demo {
        let addr = portcullis_gateway::serve_demo(
            d,
            &cfg.upstream_tls,
            std::time::Duration::from_secs(10),
            stop.clone(),
            tracker.clone(),
        )
        .await?;
        tracing::info!(%addr, "demo API (run by the agent)");
    }
    let agent = portcullis_agent::Agent::new(cfg.clone())
        .with_context(|| format!("preparing the connections of {}", path.display()))?;
    println!(
        "portcullis: agent running gateways={} connections={}",
        cfg.gateways
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(","),
        cfg.connections.len()
    );
    tokio::select! {
        _ = agent.run(stop.clone()) => {}
        _ = signal => {
            tracing::info!("stopping the agent");
        }
    }
    stop.cancel();
    tracker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait()).await;
    Ok(())
}

/// Exchange the one-time token for a certificate: the key is made here
/// and never leaves; the gateway signs a request for it.
async fn enrol(
    cfg: &portcullis_config::AgentConfig,
    e: &portcullis_config::AgentEnrol,
) -> anyhow::Result<()> {
    let token = e.token.resolve().map_err(anyhow::Error::msg)?;
    let (key_pem, csr) = portcullis_tls::key_and_request()?;
    // Only the gateway's CA, as for the link itself.
    let http = crate::login::https_client(portcullis_tls::load_roots(&cfg.ca_file, false)?)?;
    let url = format!("{}{}", e.url, portcullis_gateway::enrol::ENROL_PATH);
    let resp = http
        .post(&url)
        .bearer_auth(token.expose().trim())
        .json(&serde_json::json!({ "csr": csr }))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "the gateway refused the enrolment ({status}): {}",
            body["message"].as_str().unwrap_or("no reason given")
        );
    }
    let cert = body["certificate"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the gateway's answer holds no certificate"))?;
    portcullis_tls::write_private(&cfg.key, key_pem.as_bytes())?;
    portcullis_tls::write_public(&cfg.cert, cert.as_bytes())?;
    tracing::info!(
        principal = body["principal"].as_str().unwrap_or("?"),
        cert = %cfg.cert.display(),
        "enrolled: certificate written"
    );
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum AgentsCommand {
    /// Agents connected to a running gateway (its admin listener).
    List(ListArgs),
    /// A one-time token an agent exchanges for its certificate (`enrol`
    /// under `[agent]` in agent.toml; the gateway needs
    /// `[agent_listener] enrol_ca_key`).
    Enrol(EnrolArgs),
}

#[derive(Args)]
pub(crate) struct EnrolArgs {
    /// The agent's name: its certificate will be `connector:NAME`.
    #[arg(long)]
    name: String,
    /// How long the token may wait to be used.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    ttl: std::time::Duration,
    #[arg(long)]
    json: bool,
}

async fn create_enrolment(cli: &Cli, a: &EnrolArgs) -> anyhow::Result<()> {
    portcullis_identity::validate_subject(&format!("connector:{}", a.name))
        .map_err(anyhow::Error::msg)?;
    let (config, store) = cli.load().await?;
    if config
        .agent_listener
        .as_ref()
        .is_none_or(|l| l.enrol_ca_key.is_none())
    {
        eprintln!(
            "note: this gateway's configuration has no [agent_listener] enrol_ca_key; the token cannot be used until it does"
        );
    }
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let token = format!(
        "{}{}",
        portcullis_gateway::enrol::TOKEN_PREFIX,
        hex::encode(secret)
    );
    let mut id = [0u8; 6];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let id = hex::encode(id);
    let now = portcullis_identity::unix_now();
    let expires_at = now + a.ttl.as_secs() as i64;
    store
        .insert_enrolment(
            &id,
            &portcullis_gateway::enrol::token_hash(&token),
            &a.name,
            now,
            expires_at,
        )
        .await?;
    crate::token_cmd::audit_admin(
        &store,
        config.dir(),
        "agent_enrolment_created",
        serde_json::json!({"enrolment": id, "agent": a.name, "expires_at": expires_at}),
    )
    .await?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"id": id, "agent": a.name, "expires_at": expires_at, "token": token})
        );
    } else {
        eprintln!(
            "enrolment {id} for connector:{}: usable once, within {}. It is shown once:",
            a.name,
            humantime::format_duration(a.ttl)
        );
        println!("{token}");
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct ListArgs {
    /// The gateway's admin URL.
    #[arg(long, env = "PORTCULLIS_ADMIN_URL")]
    admin: String,
    /// CA that signed the gateway's certificate (PEM).
    #[arg(long, env = "PORTCULLIS_CA")]
    ca: Option<PathBuf>,
    /// A token the gateway accepts (the admin listener answers
    /// authenticated callers only, apart from /healthz and /metrics). An
    /// admin's (`[console] admin_groups`) lists every agent and where it
    /// connects from; any other lists the connections its grants reach.
    #[arg(long, env = "PORTCULLIS_TOKEN", hide_env_values = true)]
    token: String,
    #[arg(long)]
    json: bool,
}

pub(crate) async fn agents(cli: &Cli, cmd: &AgentsCommand) -> anyhow::Result<()> {
    let a = match cmd {
        AgentsCommand::List(a) => a,
        AgentsCommand::Enrol(e) => return create_enrolment(cli, e).await,
    };
    let http = crate::login::http(a.ca.as_ref())?;
    let url = format!("{}/agents", a.admin.trim_end_matches('/'));
    let v: serde_json::Value = http
        .get(&url)
        .bearer_auth(&a.token)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()?
        .json()
        .await?;
    let list = v["agents"].as_array().cloned().unwrap_or_default();
    if a.json {
        for agent in &list {
            println!("{agent}");
        }
        return Ok(());
    }
    if list.is_empty() {
        println!("no agents connected");
    }
    let now = portcullis_identity::unix_now();
    for agent in &list {
        let conns: Vec<String> = agent["connections"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|x| x["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        // Only admins are told where an agent connects from.
        let from = agent["address"]
            .as_str()
            .map(|a| format!("  from {a}"))
            .unwrap_or_default();
        println!(
            "{}  version {}{from}  connections: {}  last heartbeat {}s ago",
            agent["agent"].as_str().unwrap_or("?"),
            agent["version"].as_str().unwrap_or("?"),
            conns.join(", "),
            now - agent["last_heartbeat"].as_i64().unwrap_or(now)
        );
    }
    Ok(())
}
