//! `portcullis budgets show`: what a principal has used of its grants'
//! budgets, through the gateway's API (the same sign-in as `reviews`).

use clap::Subcommand;

use crate::reviews_cmd::{Api, Conn};

#[derive(Subcommand)]
pub(crate) enum BudgetsCommand {
    /// Each budgeted grant's limits and what PRINCIPAL used of them in
    /// their windows now (yourself when not given; another principal
    /// only for admins, or the person an agent acts for).
    Show {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(cli: &crate::Cli, cmd: &BudgetsCommand) -> anyhow::Result<()> {
    let BudgetsCommand::Show {
        conn,
        principal,
        json,
    } = cmd;
    let api = Api::new(conn, cli).await?;
    let base = format!("{}/api/v1/budgets", api.base);
    let params: Vec<(&str, &str)> = principal
        .iter()
        .map(|p| ("principal", p.as_str()))
        .collect();
    let url = reqwest::Url::parse_with_params(&base, &params)?;
    let req = api.http.get(url);
    let v = api.call(req).await?;
    if *json {
        println!("{v}");
        return Ok(());
    }
    let list = v["budgets"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        eprintln!("no grant has a budget");
    }
    // An agent acting for a person spends that person's budget.
    if let (Some(shown), Some(counted)) = (v["principal"].as_str(), v["counted_under"].as_str())
        && shown != counted
    {
        println!("{shown}: use is counted under {counted}, whose agents share it");
    }
    for b in &list {
        let used = match b["used"].as_u64() {
            Some(u) => format!("{u} of {}", b["limit"]),
            None => format!("at most {} (counted by each session)", b["limit"]),
        };
        let resets = b["resets_at"]
            .as_i64()
            .map(|t| {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
                format!("; frees up from {}", humantime::format_rfc3339_seconds(at))
            })
            .unwrap_or_default();
        println!(
            "{}  {}: {used}{resets}",
            b["grant"].as_str().unwrap_or("?"),
            b["what"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}
