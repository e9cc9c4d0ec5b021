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

#[derive(Subcommand)]
pub(crate) enum AgentsCommand {
    /// Agents connected to a running gateway (its admin listener).
    List(ListArgs),
}

#[derive(Args)]
pub(crate) struct ListArgs {
    /// The gateway's admin URL.
    #[arg(long, env = "PORTCULLIS_ADMIN_URL")]
    admin: String,
    /// CA that signed the gateway's certificate (PEM).
    #[arg(long, env = "PORTCULLIS_CA")]
    ca: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub(crate) async fn agents(cmd: &AgentsCommand) -> anyhow::Result<()> {
    let AgentsCommand::List(a) = cmd;
    let mut roots = portcullis_tls::system_roots();
    if let Some(ca) = &a.ca {
        for c in portcullis_tls::load_cert_chain(ca)? {
            roots.add(c)?;
        }
    }
    let tls = portcullis_tls::client_config(&Default::default(), roots)?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let url = format!("{}/agents", a.admin.trim_end_matches('/'));
    let v: serde_json::Value = http
        .get(&url)
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
        println!(
            "{}  version {}  from {}  connections: {}  last heartbeat {}s ago",
            agent["agent"].as_str().unwrap_or("?"),
            agent["version"].as_str().unwrap_or("?"),
            agent["address"].as_str().unwrap_or("?"),
            conns.join(", "),
            now - agent["last_heartbeat"].as_i64().unwrap_or(now)
        );
    }
    Ok(())
}
