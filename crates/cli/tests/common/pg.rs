//! A throwaway PostgreSQL cluster for tests: TLS on (certificate from a
//! test CA), SCRAM passwords, loopback only. Started once per test binary;
//! a watchdog stops it when the test process exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use portcullis_tls::{CertificateAuthority, LeafKind};

pub const PG_PASSWORD: &str = "canary-pg-password-5e1d";

pub struct PgCluster {
    pub port: u16,
    pub dir: PathBuf,
    /// The CA that signed the server certificate (for sslrootcert).
    pub ca: PathBuf,
    bin: PathBuf,
    /// Outlives the test process on purpose: it stops the cluster after.
    _watchdog: std::process::Child,
}

fn bindir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    if let Some(b) = found.pop() {
        return b;
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "PostgreSQL server binaries not found (.ci/run installs Debian's postgresql)"
    );
    Path::new(&p).parent().unwrap().to_path_buf()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Run a PostgreSQL server program, as the `postgres` user when we are
/// root (the server refuses to run as root).
fn pg_cmd(bin: &Path, prog: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(prog));
        c
    } else {
        Command::new(bin.join(prog))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgCluster {
    /// The cluster shared by the tests of this binary.
    pub fn shared() -> &'static PgCluster {
        static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
        CLUSTER.get_or_init(PgCluster::start)
    }

    fn start() -> PgCluster {
        let bin = bindir();
        let dir = std::env::temp_dir().join(format!("portcullis-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, _) = CertificateAuthority::load_or_create(&dir).unwrap();
        let names = vec!["localhost".to_string()];
        let leaf = ca
            .issue(LeafKind::Server, &names, Duration::from_secs(86400))
            .unwrap();
        std::fs::write(dir.join("server.crt"), leaf.cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), leaf.key_pem).unwrap();
        std::fs::write(dir.join("pw"), format!("{PG_PASSWORD}\n")).unwrap();
        let root = is_root();
        if root {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        Command::new("chmod")
            .arg("600")
            .arg(dir.join("server.key"))
            .status()
            .unwrap();
        Command::new("chmod").arg("755").arg(&dir).status().unwrap();

        let out = pg_cmd(&bin, "initdb")
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", dir.join("pw").display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{d}'\nssl = on\n\
             ssl_cert_file = '{d}/server.crt'\nssl_key_file = '{d}/server.key'\nmax_connections = 200\n\
             fsync = off\nlog_min_messages = warning\n",
            d = dir.display()
        );
        let conf_path = dir.join("data/postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        let out = pg_cmd(&bin, "pg_ctl")
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        // Stop the cluster when this test process is gone, however it ends.
        let stop = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
             kill -QUIT $(head -1 '{d}/data/postmaster.pid') 2>/dev/null; sleep 1; rm -rf '{d}'",
            me = std::process::id(),
            d = dir.display()
        );
        let watchdog = Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        PgCluster {
            _watchdog: watchdog,
            port,
            ca: dir.join("ca.pem"),
            dir,
            bin,
        }
    }

    /// A URL for `--postgres` / a connection, with the password.
    pub fn url(&self, host: &str, extra: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@{host}:{}/postgres?sslrootcert={}{extra}",
            self.port,
            self.ca.display()
        )
    }

    /// Run SQL directly against the cluster (over the local socket).
    pub fn psql_direct(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// Wait until `n` backends (besides the asking one) run a statement
    /// holding `marker`; fails with `what` after `secs` seconds.
    pub fn wait_running(&self, marker: &str, n: usize, secs: u64, what: &str) {
        let sql = format!(
            "select count(*) from pg_stat_activity where query like '%{marker}%' and pid <> pg_backend_pid()"
        );
        let until = Instant::now() + Duration::from_secs(secs);
        while self.psql_direct(&sql) != n.to_string() {
            assert!(Instant::now() < until, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run SQL directly against database `db` of the cluster.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql direct: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn pgbench_path(&self) -> PathBuf {
        self.bin.join("pgbench")
    }
}
