//! `portcullis reviews list|show|approve|deny`: approvers' tools, through
//! the gateway's API as the person holding the token (PORTCULLIS_TOKEN, or
//! the `portcullis login` sign-in).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

#[derive(Args)]
pub(crate) struct Conn {
    #[arg(long, env = "PORTCULLIS_URL")]
    gateway: String,
    #[arg(long, env = "PORTCULLIS_CA")]
    ca: Option<PathBuf>,
    /// The approver's token [default: the `portcullis login` sign-in].
    #[arg(long, env = "PORTCULLIS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum ReviewsCommand {
    /// Reviews, newest first.
    List {
        #[command(flatten)]
        conn: Conn,
        /// pending, approved, denied, expired or used.
        #[arg(long)]
        state: Option<String>,
        /// One JSON object per review.
        #[arg(long)]
        json: bool,
    },
    /// One review, whole (JSON).
    Show {
        #[command(flatten)]
        conn: Conn,
        id: String,
    },
    /// Approve a review (one of the approvals it needs).
    Approve {
        #[command(flatten)]
        conn: Conn,
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a review.
    Deny {
        #[command(flatten)]
        conn: Conn,
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn new(c: &Conn) -> anyhow::Result<Self> {
        let base = c.gateway.trim_end_matches('/').to_string();
        let token = match &c.token {
            Some(t) if !t.is_empty() => t.clone(),
            _ => crate::login::token_for(&base).await?,
        };
        let http = crate::login::http(c.ca.as_ref())?;
        Ok(Self { base, token, http })
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let resp = req.bearer_auth(&self.token).send().await?;
        let status = resp.status();
        let v: serde_json::Value = resp
            .json()
            .await
            .with_context(|| format!("HTTP {status}: not JSON"))?;
        if !status.is_success() {
            bail!(
                "{} (HTTP {status})",
                v["message"].as_str().unwrap_or("refused")
            );
        }
        Ok(v)
    }
}

pub(crate) async fn run(cmd: &ReviewsCommand) -> anyhow::Result<()> {
    match cmd {
        ReviewsCommand::List { conn, state, json } => {
            let api = Api::new(conn).await?;
            let mut url = format!("{}/api/v1/reviews", api.base);
            if let Some(s) = state {
                url.push_str(&format!("?state={s}"));
            }
            let v = api.call(api.http.get(&url)).await?;
            let list = v["reviews"].as_array().cloned().unwrap_or_default();
            for r in &list {
                if *json {
                    println!("{r}");
                } else {
                    println!(
                        "{}  {:<8}  {}  on {}  {}  ({} of {} approvals)",
                        r["id"].as_str().unwrap_or("?"),
                        r["state"].as_str().unwrap_or("?"),
                        r["requester"].as_str().unwrap_or("?"),
                        r["connection"].as_str().unwrap_or("?"),
                        r["action"].as_str().unwrap_or("?").replace('\n', " "),
                        r["approvals"].as_array().map(Vec::len).unwrap_or(0),
                        r["required"]
                    );
                }
            }
            if list.is_empty() && !*json {
                eprintln!("no reviews");
            }
        }
        ReviewsCommand::Show { conn, id } => {
            let api = Api::new(conn).await?;
            let v = api
                .call(api.http.get(format!("{}/api/v1/reviews/{id}", api.base)))
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ReviewsCommand::Approve { conn, id, reason }
        | ReviewsCommand::Deny { conn, id, reason } => {
            let verb = if matches!(cmd, ReviewsCommand::Approve { .. }) {
                "approve"
            } else {
                "deny"
            };
            let api = Api::new(conn).await?;
            let v = api
                .call(
                    api.http
                        .post(format!("{}/api/v1/reviews/{id}/{verb}", api.base))
                        .json(&serde_json::json!({ "reason": reason })),
                )
                .await?;
            eprintln!(
                "review {} is now {}",
                v["id"].as_str().unwrap_or(id),
                v["state"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}
