//! `portcullis doctor`: is the database role of each PostgreSQL
//! connection least privilege? Read-only is enforced by the gateway and,
//! as a backstop, by the target; a role that is a superuser, owns tables
//! or may write can undo the backstop. Read-only connections with such a
//! role (or that cannot be checked) fail the command; read-write ones are
//! reported only.

use portcullis_config::{Access, Config, Connection, Target};

use crate::Cli;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Print a JSON array: one object per connection with `connection`,
    /// `access`, `role`, `problems`, `error` (and `agent`).
    #[arg(long)]
    json: bool,
}

/// What was found for one connection.
struct Finding {
    connection: String,
    read_only: bool,
    /// The role the target reports, else the configured user.
    role: Option<String>,
    /// Served by this agent: not checked here.
    agent: Option<String>,
    database: Option<String>,
    problems: Vec<String>,
    error: Option<String>,
}

impl Finding {
    fn access(&self) -> &'static str {
        if self.read_only {
            "read-only"
        } else {
            "read-write"
        }
    }

    /// Counts against the exit status.
    fn fails(&self) -> bool {
        self.read_only
            && self.agent.is_none()
            && (!self.problems.is_empty() || self.error.is_some())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "connection": self.connection,
            "access": self.access(),
            "role": self.role,
            "problems": self.problems,
            "error": self.error,
            "agent": self.agent,
        })
    }
}

/// A role name to suggest for a connection's least-privilege role.
fn suggested_role(connection: &str) -> String {
    let base: String = connection
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("portcullis_{base}_ro")
}

async fn examine(config: &Config, c: &Connection) -> Option<Finding> {
    match &c.target {
        Target::Postgres(t) => {
            let mut f = Finding {
                connection: c.name.clone(),
                read_only: t.access == Access::ReadOnly,
                role: Some(t.user.clone()),
                agent: None,
                database: Some(t.database.clone()),
                problems: Vec::new(),
                error: None,
            };
            match portcullis_gateway::roles::check_connection(config, c, t).await {
                Ok(report) => {
                    f.problems = report.problems();
                    f.role = Some(report.role);
                }
                Err(e) => f.error = Some(e),
            }
            Some(f)
        }
        Target::Agent(a) if a.protocol == portcullis_config::Protocol::Postgres => Some(Finding {
            connection: c.name.clone(),
            read_only: a.access == Access::ReadOnly,
            role: None,
            agent: Some(a.agent.clone()),
            database: None,
            problems: Vec::new(),
            error: None,
        }),
        _ => None,
    }
}

fn print_text(f: &Finding) {
    let role = match &f.role {
        Some(r) => format!(", role {r:?}"),
        None => String::new(),
    };
    println!("{} ({}{role})", f.connection, f.access());
    if let Some(agent) = &f.agent {
        println!("  served by agent {agent}: run the check on the agent's side");
        return;
    }
    if let Some(e) = &f.error {
        println!("  error: cannot check the database role: {e}");
        return;
    }
    if f.problems.is_empty() {
        println!("  ok: least privilege");
        return;
    }
    for p in &f.problems {
        println!("  problem: {p}");
    }
    if !f.read_only {
        println!("  (a read-write connection: reported, not counted as a failure)");
        return;
    }
    let database = f.database.as_deref().unwrap_or("postgres");
    println!("  Create a least-privilege role for it instead (as a DBA):");
    for line in portcullis_gateway::roles::advice(&suggested_role(&f.connection), database).lines()
    {
        println!("    {line}");
    }
}

pub(crate) async fn run(cli: &Cli, args: &Args) -> anyhow::Result<()> {
    let path = cli.config_path();
    let config = Config::load(&path)?;
    let mut findings = Vec::new();
    // Read-only connections first: they are the ones that count.
    for read_only in [true, false] {
        for c in &config.connections {
            let mode = match &c.target {
                Target::Postgres(t) => t.access,
                Target::Agent(a) if a.protocol == portcullis_config::Protocol::Postgres => a.access,
                _ => continue,
            };
            if (mode == Access::ReadOnly) != read_only {
                continue;
            }
            if let Some(f) = examine(&config, c).await {
                findings.push(f);
            }
        }
    }
    if args.json {
        let all: Vec<serde_json::Value> = findings.iter().map(Finding::json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if findings.is_empty() {
        println!("no PostgreSQL connections in {}", path.display());
    } else {
        for (i, f) in findings.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print_text(f);
        }
    }
    let failed: Vec<&str> = findings
        .iter()
        .filter(|f| f.fails())
        .map(|f| f.connection.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "read-only connection(s) whose database role is not least privilege or could not \
             be checked: {}",
            failed.join(", ")
        )
    }
}
