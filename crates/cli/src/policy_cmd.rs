//! `portcullis policy explain`: why a principal may or may not reach a
//! connection, from the config alone.

use clap::Subcommand;
use portcullis_identity::{AuthMethod, Principal, PrincipalKind, validate_principal};
use portcullis_policy::{Decision, Match, Policy};

use crate::Cli;

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Print the decision for PRINCIPAL on CONNECTION, the grant behind it
    /// and what else applies there (access mode, approval rule, masking
    /// rule). Exit status 1 on DENY.
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
    validate_principal(principal).map_err(anyhow::Error::msg)?;
    let path = cli.config_path();
    let config = portcullis_config::Config::load(&path)?;
    let p = Principal {
        subject: principal.clone(),
        kind: PrincipalKind::of_subject(principal),
        groups: groups.clone(),
        via: AuthMethod::GatewayToken {
            token_id: "explain".into(),
            on_behalf_of: None,
            audience: None,
        },
    };
    let conn = config.connection(connection);
    let known = conn.is_some();
    let decision = Policy::new(config.grants.clone()).decide(&p, connection);
    let terms = conn.map(|c| terms(&config, c, groups)).transpose()?;
    if *json {
        let mut v = serde_json::to_value(&decision)?;
        v["principal"] = principal.clone().into();
        v["kind"] = serde_json::to_value(p.kind)?;
        v["connection"] = connection.clone().into();
        v["connection_defined"] = known.into();
        if let Some(t) = &terms {
            v["access"] = t.access.into();
            v["approval"] = t.approval.clone().into();
            v["masking"] = t.masking.clone().into();
        }
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
        if let (Some(t), Decision::Allow { .. }) = (&terms, &decision) {
            println!("  access:   {}", t.access);
            println!(
                "  approval: {}",
                t.approval.as_deref().unwrap_or("none (nothing is held)")
            );
            println!(
                "  masking:  {}",
                t.masking
                    .as_deref()
                    .map(|r| format!("rule {r:?}"))
                    .unwrap_or_else(|| "none (results pass unmasked)".into())
            );
        }
        if !known {
            println!(
                "note: no connection named {connection:?} is defined in {}",
                path.display()
            );
        }
    }
    if matches!(decision, Decision::Deny { .. }) {
        // Like grep: scripts can test the answer.
        std::process::exit(1);
    }
    Ok(())
}

/// What applies on a connection besides the grant.
struct Terms {
    access: &'static str,
    /// The approval rule, in words.
    approval: Option<String>,
    /// The name of the masking rule that applies to these groups.
    masking: Option<String>,
}

fn terms(
    cfg: &portcullis_config::Config,
    c: &portcullis_config::Connection,
    groups: &[String],
) -> anyhow::Result<Terms> {
    use portcullis_config::{Access, ApprovalMode, Target};
    let access = match &c.target {
        Target::Postgres(t) if t.access == Access::ReadOnly => "read-only",
        Target::Agent(a) if a.access == Access::ReadOnly => "read-only",
        Target::Postgres(_) | Target::Agent(_) => "read-write",
        Target::Http(_) | Target::Mcp(_) => {
            "as the grant allows (HTTP and MCP have no read-only mode)"
        }
    };
    let approval = c.approval.as_ref().map(|r| {
        let held = match r.mode {
            ApprovalMode::Session => format!(
                "the first use in a session (just-in-time, up to {:?})",
                r.session
            ),
            ApprovalMode::Statements | ApprovalMode::None => {
                let mut what = Vec::new();
                if !r.classes.is_empty() {
                    what.push(format!("statements of class {}", r.classes.join(", ")));
                }
                if !r.methods.is_empty() {
                    what.push(format!("HTTP {}", r.methods.join(", ")));
                }
                if !r.tools.is_empty() {
                    what.push(format!("tools {}", r.tools.join(", ")));
                }
                what.join("; ")
            }
        };
        format!(
            "{held} wait for {} approval(s) from group(s) {}",
            r.required,
            r.approvers.join(", ")
        )
    });
    // Only which rule applies is asked: any key selects the same one.
    let rules = portcullis_mask::RuleSet::new(&cfg.masking.rules, Some(b"explain"))?;
    let masking = rules.select(&c.name, groups).map(|r| r.name.clone());
    Ok(Terms {
        access,
        approval,
        masking,
    })
}
