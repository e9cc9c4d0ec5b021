//! `portcullis oauth clients list|revoke`: the MCP clients that registered
//! with the gateway's authorization server. Revoking one revokes every
//! grant and access token it holds, so running gateways end its sessions
//! within a second and refuse it from the next request.

use clap::Subcommand;
use portcullis_audit::{AuditEvent, OAuthAction};
use portcullis_identity::unix_now;

use crate::Cli;
use crate::token_cmd::rfc3339;

#[derive(Subcommand)]
pub(crate) enum OAuthCommand {
    /// Registered MCP clients.
    #[command(subcommand)]
    Clients(ClientsCommand),
}

#[derive(Subcommand)]
pub(crate) enum ClientsCommand {
    /// List registered clients, oldest first.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a client with every grant and access token it holds.
    Revoke {
        /// The client's id (see `portcullis oauth clients list`).
        id: String,
        /// Print a JSON object ({"id", "revoked_at"}).
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(cli: &Cli, cmd: &OAuthCommand) -> anyhow::Result<()> {
    let OAuthCommand::Clients(cmd) = cmd;
    let (config, store) = cli.load().await?;
    match cmd {
        ClientsCommand::List { json } => {
            let clients = store.oauth_clients().await?;
            if !*json {
                println!("{:<34} {:<24} {:<21} STATUS", "ID", "NAME", "REGISTERED");
            }
            for c in &clients {
                let status = if c.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                if *json {
                    let v = serde_json::json!({
                        "id": c.id,
                        "name": c.name,
                        "principal": format!("agent:{}", c.id),
                        "redirect_uris": c.redirect_uris,
                        "registered_at": rfc3339(c.created_at),
                        "revoked_at": c.revoked_at.map(rfc3339),
                        "status": status,
                    });
                    println!("{v}");
                } else {
                    let name: String = c.name.chars().take(24).collect();
                    println!(
                        "{:<34} {:<24} {:<21} {status}",
                        c.id,
                        name,
                        rfc3339(c.created_at)
                    );
                }
            }
        }
        ClientsCommand::Revoke { id, json } => {
            let now = unix_now();
            if !store.revoke_oauth_client(id, now).await? {
                anyhow::bail!(
                    "no OAuth client with id {id:?} (see `portcullis oauth clients list`)"
                );
            }
            let log = portcullis_audit::AuditLog::open(store.clone(), config.dir()).await?;
            log.append(&AuditEvent::OAuth {
                action: OAuthAction::ClientRevoked,
                client_id: id.clone(),
                principal: None,
                on_behalf_of: None,
                token_id: None,
                family: None,
                resource: None,
                reason: Some("revoked by an operator".into()),
            })
            .await?;
            if *json {
                println!(
                    "{}",
                    serde_json::json!({"id": id, "revoked_at": rfc3339(now)})
                );
            } else {
                eprintln!("revoked OAuth client {id} and every token it held");
            }
        }
    }
    store.close().await;
    Ok(())
}
