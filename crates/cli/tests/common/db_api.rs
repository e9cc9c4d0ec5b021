//! A gateway folder with one PostgreSQL connection (`db`, the suite's
//! server) and one HTTP connection (`api`, a test upstream), admin and
//! PostgreSQL listeners on: the layout the reload and fault tests share.

use std::path::Path;

use portcullis_tls::CertificateAuthority;

use super::pg::{PG_PASSWORD, PgCluster};
use super::upstream::{self, TestUpstream};

/// The grant giving group `testers` both connections.
pub const TESTERS: &str = r#"
[[grants]]
name = "testers"
groups = ["testers"]
connections = ["db", "api"]
"#;

/// A CA, a server certificate, the server's password and the HTTP
/// target, in `dir`.
pub fn prepare(dir: &Path) -> TestUpstream {
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    super::write_leaf(&ca, dir, "server");
    std::fs::write(dir.join("pgpw"), format!("{PG_PASSWORD}\n")).unwrap();
    upstream::start(&dir.join("server.pem"), &dir.join("server.key"))
}

/// The config: the two connections, then `rest` (grants, more
/// connections, masking rules; `APIPORT` in it is the target's port).
pub fn config(api_port: u16, rest: &str) -> String {
    let rest = rest.replace("APIPORT", &api_port.to_string());
    let pg = PgCluster::shared();
    let (p, root) = (pg.port, pg.ca.display());
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"
admin_listen = "127.0.0.1:0"

[postgres]
listen = "127.0.0.1:0"

[[connections]]
name = "db"
type = "postgres"
url = "postgres://postgres@localhost:{p}/postgres?sslrootcert={root}"
password = "file:pgpw"

[[connections]]
name = "api"
type = "http"
url = "https://localhost:{api_port}"
ca_file = "ca.pem"
{rest}
"#
    )
}
