//! Least privilege of read-only PostgreSQL connections, checked at start.
//! Read-only is enforced by the gateway and, as a backstop, by the target
//! (`default_transaction_read_only = on`); a database role that is a
//! superuser, owns tables or may write can undo the backstop. Without
//! `[postgres] strict_roles` such roles are logged (in the background);
//! with it the gateway refuses to start. `portcullis doctor` reports the
//! same and prints the role to create.

use portcullis_config::{Access, Config, Connection, PgTarget, Target};
use portcullis_postgres::PgUpstream;
use portcullis_postgres::doctor;

pub use portcullis_postgres::doctor::{RoleReport, advice};

use crate::GatewayError;

/// What to do about a role that is not least privilege.
const HINT: &str = "run `portcullis doctor` for the least-privilege role to create";

/// Ask the target what the database role of `conn` (a PostgreSQL
/// connection the gateway dials itself, not through an agent) may do.
/// Errors are in words and never hold a secret.
pub async fn check_connection(
    cfg: &Config,
    conn: &Connection,
    t: &PgTarget,
) -> Result<RoleReport, String> {
    let up = PgUpstream::new(conn, t, &cfg.upstream_tls).map_err(|e| e.to_string())?;
    doctor::check(&up).await.map_err(|e| e.to_string())
}

/// Check the role of every read-only PostgreSQL connection the gateway
/// dials itself (agents' connections are checked on their side). With
/// `strict_roles` this waits for the checks and fails on any problem or
/// failed check; without it the checks run in the background and only
/// log.
pub(crate) async fn check_read_only_roles(cfg: &Config) -> Result<(), GatewayError> {
    let strict = cfg.postgres.as_ref().is_some_and(|p| p.strict_roles);
    let mut upstreams = Vec::new();
    for c in &cfg.connections {
        match &c.target {
            Target::Postgres(t) if t.access == Access::ReadOnly => {
                match PgUpstream::new(c, t, &cfg.upstream_tls) {
                    Ok(up) => upstreams.push(up),
                    Err(e) if strict => return Err(e.into()),
                    Err(e) => tracing::warn!(
                        connection = %c.name,
                        error = %e,
                        "cannot check the database role of a read-only connection"
                    ),
                }
            }
            Target::Agent(a)
                if a.protocol == portcullis_config::Protocol::Postgres
                    && a.access == Access::ReadOnly =>
            {
                tracing::debug!(
                    connection = %c.name,
                    agent = %a.agent,
                    "read-only connection served by an agent: its role is not checked here"
                );
            }
            _ => {}
        }
    }
    if !strict {
        for up in upstreams {
            tokio::spawn(async move {
                match doctor::check(&up).await {
                    Ok(report) => {
                        for problem in report.problems() {
                            tracing::warn!(
                                connection = %up.name,
                                problem = %problem,
                                "the database role of read-only connection {:?} is not least \
                                 privilege: {problem}; {HINT}",
                                up.name
                            );
                        }
                    }
                    Err(e) => tracing::warn!(
                        connection = %up.name,
                        error = %e,
                        "cannot check the database role of read-only connection {:?}: {e}",
                        up.name
                    ),
                }
            });
        }
        return Ok(());
    }
    let mut failures = Vec::new();
    for up in &upstreams {
        match doctor::check(up).await {
            Ok(report) => {
                let problems = report.problems();
                if problems.is_empty() {
                    tracing::info!(
                        connection = %up.name,
                        role = %report.role,
                        "read-only connection: its database role is least privilege"
                    );
                } else {
                    failures.push(format!("connection {:?}: {}", up.name, problems.join("; ")));
                }
            }
            Err(e) => failures.push(format!(
                "connection {:?}: cannot check its database role: {e}",
                up.name
            )),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(GatewayError::Roles(format!(
            "{}; {HINT}",
            failures.join("; ")
        )))
    }
}
