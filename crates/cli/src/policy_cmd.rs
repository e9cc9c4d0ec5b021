//! `portcullis policy explain`: why a principal may or may not reach a
//! connection, from the config alone.

use clap::Subcommand;
use portcullis_identity::{AuthMethod, Principal, PrincipalKind, validate_subject};
use portcullis_policy::{Decision, Match, Policy};

use crate::Cli;

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Print the decision for PRINCIPAL on CONNECTION and the rule behind it.
    Explain {
        /// e.g. agent:ci or user:alice.
        #[arg(long)]
        principal: String,
        /// A group of the principal (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        connection: String,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn kind_name(k: PrincipalKind) -> &'static str {
    match k {
        PrincipalKind::Human => "human",
        PrincipalKind::Agent => "agent",
    }
}

pub(crate) fn run(cli: &Cli, cmd: &PolicyCommand) -> anyhow::Result<()> {
    let PolicyCommand::Explain {
        principal,
        groups,
        connection,
        json,
    } = cmd;
    validate_subject(principal).map_err(anyhow::Error::msg)?;
    let path = cli.config_path();
    let config = portcullis_config::Config::load(&path)?;
    let p = Principal {
        subject: principal.clone(),
        kind: PrincipalKind::of_subject(principal),
        groups: groups.clone(),
        via: AuthMethod::GatewayToken {
            token_id: "explain".into(),
            on_behalf_of: None,
        },
    };
    let known = config.connection(connection).is_some();
    let decision = Policy::new(config.grants.clone()).decide(&p, connection);
    if *json {
        let mut v = serde_json::to_value(&decision)?;
        v["principal"] = principal.clone().into();
        v["kind"] = serde_json::to_value(p.kind)?;
        v["connection"] = connection.clone().into();
        v["connection_defined"] = known.into();
        println!("{v}");
    } else {
        match &decision {
            Decision::Allow { rule, matched } => {
                let how = match matched {
                    Match::Principal(s) => format!("it names {s}"),
                    Match::Group(g) => format!("it names group {g}"),
                };
                println!(
                    "ALLOW: {principal} ({kind}) may reach {connection:?}: grant {rule:?} applies ({how})",
                    kind = kind_name(p.kind)
                );
            }
            Decision::Deny { reason } => println!(
                "DENY: {reason} ({} principals are denied by default)",
                kind_name(p.kind)
            ),
        }
        if !known {
            println!(
                "note: no connection named {connection:?} is defined in {}",
                path.display()
            );
        }
    }
    Ok(())
}
