//! `portcullis console link`: a one-time sign-in link to the web console
//! for a person with no identity provider (the quickstart's local admin,
//! or an operator on the gateway's host). Whoever can run this can already
//! create tokens in the same store: it grants nothing new.

use clap::Subcommand;

use crate::Cli;

#[derive(Subcommand)]
pub(crate) enum ConsoleCommand {
    /// Print a one-time link (valid 24 hours) that signs `--principal` in
    /// to the console with the groups given.
    Link {
        /// The person, e.g. user:admin.
        #[arg(long)]
        principal: String,
        /// A group of the person (repeatable); the console's admin groups
        /// (`[console] admin_groups`, default `admins`) see everything.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The gateway's URL as people reach it [default: the config's
        /// public URL].
        #[arg(long, env = "PORTCULLIS_URL")]
        gateway: Option<String>,
    },
}

pub(crate) async fn run(cli: &Cli, cmd: &ConsoleCommand) -> anyhow::Result<()> {
    let ConsoleCommand::Link {
        principal,
        groups,
        gateway,
    } = cmd;
    portcullis_identity::validate_principal(principal).map_err(anyhow::Error::msg)?;
    if !principal.starts_with("user:") {
        anyhow::bail!("the console is for people: use a user:NAME principal");
    }
    let (config, store) = cli.load().await?;
    let secret = portcullis_gateway::console::make_link(&store, principal, groups)
        .await
        .map_err(anyhow::Error::msg)?;
    crate::token_cmd::audit_admin(
        &store,
        config.dir(),
        "console_link_created",
        serde_json::json!({"principal": principal, "groups": groups}),
    )
    .await?;
    let base = gateway.clone().unwrap_or_else(|| config.public_url());
    println!("{}/ui/link?t={secret}", base.trim_end_matches('/'));
    store.close().await;
    Ok(())
}
