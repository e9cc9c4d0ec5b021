//! `portcullis reviews list|show|approve|deny`: approvers' tools, through
//! the gateway's API as the person holding the token (PORTCULLIS_TOKEN, or
//! the `portcullis login` sign-in).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

#[derive(Args)]
pub(crate) struct Conn {
    /// The gateway's URL [default: the config's `public_url`, else its
    /// `listen` address].
    #[arg(long, env = "PORTCULLIS_URL")]
    gateway: Option<String>,
    /// CA to trust for the gateway [default: the data folder's ca.pem,
    /// when the URL came from the config].
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
    /// One review, whole (JSON, times in RFC 3339).
    Show {
        #[command(flatten)]
        conn: Conn,
        id: String,
        /// As the API returns it (times in Unix seconds).
        #[arg(long)]
        json: bool,
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

pub(crate) struct Api {
    pub(crate) base: String,
    token: String,
    pub(crate) http: reqwest::Client,
}

impl Api {
    pub(crate) async fn new(c: &Conn, cli: &crate::Cli) -> anyhow::Result<Self> {
        let (base, ca) = match &c.gateway {
            Some(g) => (g.clone(), c.ca.clone()),
            None => from_config(cli, c.ca.clone()).await?,
        };
        let base = base.trim_end_matches('/').to_string();
        let token = match &c.token {
            Some(t) if !t.is_empty() => t.clone(),
            _ => crate::login::token_for(&base).await?,
        };
        let http = crate::login::http(ca.as_ref())?;
        Ok(Self { base, token, http })
    }

    pub(crate) async fn call(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<serde_json::Value> {
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

/// The gateway's URL when none was given: a gateway seen in the store in
/// the last 30 s (it announces the URL it really listens on, port 0
/// resolved), else the config's `public_url` or `listen`; and the CA to
/// trust for it (the data folder's).
async fn from_config(
    cli: &crate::Cli,
    ca: Option<PathBuf>,
) -> anyhow::Result<(String, Option<PathBuf>)> {
    let (cfg, store) = cli.load().await.map_err(|e| {
        anyhow::anyhow!("--gateway not given and the config cannot say where the gateway is: {e}")
    })?;
    let since = portcullis_identity::unix_now() - 30;
    let live = store.gateways(since).await.unwrap_or_default();
    store.close().await;
    let seen = live
        .into_iter()
        .max_by_key(|(_, _, _, last_seen)| *last_seen)
        .map(|(_, url, _, _)| url);
    let url = match (seen, &cfg.gateway.public_url) {
        (Some(u), _) => u,
        (None, Some(u)) => u.clone(),
        (None, None) if cfg.gateway.listen.port() != 0 => {
            portcullis_config::url_for(cfg.gateway.listen)
        }
        (None, None) => anyhow::bail!(
            "--gateway not given, no gateway is running on this store, and the config listens on port 0"
        ),
    };
    let ca = ca.or_else(|| Some(cfg.dir().join("ca.pem")).filter(|p| p.exists()));
    Ok((url, ca))
}

/// Unix-second times (`*_at`, `at`) as RFC 3339, for people to read.
fn readable_times(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x.as_i64() {
                    Some(t) if k == "at" || k.ends_with("_at") => {
                        *x = crate::token_cmd::rfc3339(t).into();
                    }
                    _ => readable_times(x),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(readable_times),
        _ => {}
    }
}

pub(crate) async fn run(cli: &crate::Cli, cmd: &ReviewsCommand) -> anyhow::Result<()> {
    match cmd {
        ReviewsCommand::List { conn, state, json } => {
            let api = Api::new(conn, cli).await?;
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
        ReviewsCommand::Show { conn, id, json } => {
            let api = Api::new(conn, cli).await?;
            let mut v = api
                .call(api.http.get(format!("{}/api/v1/reviews/{id}", api.base)))
                .await?;
            if *json {
                println!("{v}");
            } else {
                readable_times(&mut v);
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        ReviewsCommand::Approve { conn, id, reason }
        | ReviewsCommand::Deny { conn, id, reason } => {
            let verb = if matches!(cmd, ReviewsCommand::Approve { .. }) {
                "approve"
            } else {
                "deny"
            };
            let api = Api::new(conn, cli).await?;
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
