use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use portcullis_identity::{TokenRecord, token, unix_now, validate_principal};
use portcullis_store::{NewTokenRow, Store};

use crate::Cli;

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token. The token is printed once, on standard output.
    Create {
        /// The principal the token stands for, e.g. agent:ci or user:alice.
        #[arg(long)]
        principal: String,
        /// A group of the principal (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// How long the token is valid, e.g. 12h, 30d, 1y [default: 30d;
        /// 8h with --gateway, at most 24h].
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Print a JSON object instead of the bare token.
        #[arg(long)]
        json: bool,
        /// Mint the token through a running gateway as the person signed in
        /// with `portcullis login`, for an agent acting on their behalf:
        /// the token carries your groups and names you in every audit entry.
        #[arg(long, conflicts_with = "groups")]
        gateway: Option<String>,
        /// Extra CA to trust for --gateway (PEM); ignored without it, so
        /// that a sourced quickstart.env does not change what `token
        /// create` does.
        #[arg(long, env = "PORTCULLIS_CA")]
        ca: Option<std::path::PathBuf>,
    },
    /// List tokens (never their secrets).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id; running gateways end its sessions within a
    /// second and refuse it from the next request.
    Revoke {
        id: String,
        /// Print a JSON object ({"id", "revoked_at"}).
        #[arg(long)]
        json: bool,
    },
}

/// Create a token in `store` and return (id, secret, expires_at).
pub(crate) async fn create(
    store: &Store,
    principal: &str,
    groups: &[String],
    ttl: Duration,
) -> anyhow::Result<(String, String, i64)> {
    validate_principal(principal).map_err(anyhow::Error::msg)?;
    for g in groups {
        if g.is_empty()
            || !g
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            anyhow::bail!("invalid group {g:?}: use letters, digits, - _ . :");
        }
    }
    let now = unix_now();
    let expires_at = now.saturating_add(ttl.as_secs().min(i64::MAX as u64) as i64);
    let t = token::generate().context("generating a token")?;
    let id = store
        .insert_token(&NewTokenRow {
            hash: t.hash,
            subject: principal,
            on_behalf_of: None,
            audience: None,
            oauth_family: None,
            groups,
            created_at: now,
            expires_at: Some(expires_at),
        })
        .await?;
    tracing::info!(token_id = %id, principal, "token created");
    Ok((id, t.secret, expires_at))
}

/// Record an administrative action in the audit log of the data folder.
pub(crate) async fn audit_admin(
    store: &Store,
    dir: &std::path::Path,
    action: &str,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    let log = portcullis_audit::AuditLog::open(store.clone(), dir).await?;
    log.append(&portcullis_audit::AuditEvent::Admin {
        action: action.to_string(),
        detail,
    })
    .await?;
    Ok(())
}

pub(crate) async fn run(cli: &Cli, cmd: &TokenCommand) -> anyhow::Result<()> {
    if let TokenCommand::Create {
        principal,
        ttl,
        json,
        gateway: Some(gateway),
        ca,
        ..
    } = cmd
    {
        return crate::login::mint_remote(gateway, ca.as_ref(), principal, *ttl, *json).await;
    }
    let (config, store) = cli.load().await?;
    match cmd {
        TokenCommand::Create {
            principal,
            groups,
            ttl,
            json,
            ..
        } => {
            let ttl = ttl.unwrap_or(Duration::from_secs(30 * 86400));
            let (id, secret, expires_at) = create(&store, principal, groups, ttl).await?;
            audit_admin(
                &store,
                config.dir(),
                "token_created",
                serde_json::json!({"token_id": id, "principal": principal, "groups": groups}),
            )
            .await?;
            if *json {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": id,
                        "principal": principal,
                        "groups": groups,
                        "expires_at": rfc3339(expires_at),
                        "token": secret,
                    })
                );
            } else {
                eprintln!(
                    "created token {id} for {principal}, expires {}. It is shown once:",
                    rfc3339(expires_at)
                );
                println!("{secret}");
            }
        }
        TokenCommand::List { json } => {
            let now = unix_now();
            let tokens = store.list_tokens().await?;
            if *json {
                for t in &tokens {
                    println!("{}", token_json(t, now));
                }
            } else {
                println!(
                    "{:<14} {:<28} {:<20} {:<21} STATUS",
                    "ID", "PRINCIPAL", "GROUPS", "EXPIRES"
                );
                for t in &tokens {
                    println!(
                        "{:<14} {:<28} {:<20} {:<21} {}",
                        t.id,
                        t.subject,
                        t.groups.join(","),
                        t.expires_at.map(rfc3339).unwrap_or_else(|| "never".into()),
                        status(t, now)
                    );
                }
            }
        }
        TokenCommand::Revoke { id, json } => {
            let now = unix_now();
            if store.revoke_token(id, now).await? {
                audit_admin(
                    &store,
                    config.dir(),
                    "token_revoked",
                    serde_json::json!({"token_id": id}),
                )
                .await?;
                tracing::info!(token_id = %id, "token revoked");
                if *json {
                    println!(
                        "{}",
                        serde_json::json!({"id": id, "revoked_at": rfc3339(now)})
                    );
                } else {
                    eprintln!("revoked token {id}");
                }
            } else {
                anyhow::bail!("no token with id {id:?} (see `portcullis token list`)");
            }
        }
    }
    store.close().await;
    Ok(())
}

fn status(t: &TokenRecord, now: i64) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

fn token_json(t: &TokenRecord, now: i64) -> serde_json::Value {
    serde_json::json!({
        "id": t.id,
        "principal": t.subject,
        "groups": t.groups,
        "created_at": rfc3339(t.created_at),
        "expires_at": t.expires_at.map(rfc3339),
        "revoked_at": t.revoked_at.map(rfc3339),
        "status": status(t, now),
        "audience": t.audience,
    })
}

pub(crate) fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
