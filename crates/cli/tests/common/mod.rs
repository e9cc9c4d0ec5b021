//! Test harness: runs the real `portcullis` binary on loopback ports chosen
//! at run time, and talks to it with real clients (curl, openssl, rustls).
#![allow(dead_code)]

pub mod db_api;
pub mod idp;
pub mod pg;
pub mod upstream;
pub mod wire;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A running `portcullis` process; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub url: String,
    /// `postgres=ADDR` from the ready line, when a PostgreSQL listener runs.
    pub pg_port: Option<u16>,
    /// `admin=ADDR` from the ready line, when the admin listener runs.
    pub admin: Option<String>,
}

/// The rest of the first line `child` prints on stdout (piped) that starts
/// with `prefix`, read by a thread of its own; the error if none comes
/// within `wait`.
pub fn ready_line(
    child: &mut Child,
    prefix: &'static str,
    wait: Duration,
) -> Result<String, mpsc::RecvTimeoutError> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    rx.recv_timeout(wait)
}

impl Proc {
    /// Start `portcullis ARGS` with stderr going to `log`, and wait for its
    /// "ready" line on stdout.
    pub fn spawn(dir: &Path, args: &[&str], log_name: &str) -> Proc {
        let log = dir.join(log_name);
        let err = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .env("PORTCULLIS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn portcullis");
        let ready = match ready_line(&mut child, "portcullis: ready ", Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "portcullis did not become ready; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let field = |name: &str| {
            ready
                .split(' ')
                .find_map(|f| f.strip_prefix(name))
                .map(str::to_string)
        };
        let url = field("url=").expect("url in the ready line");
        let pg_port = field("postgres=").and_then(|a| a.rsplit(':').next()?.parse().ok());
        Proc {
            child,
            dir: dir.to_path_buf(),
            log,
            url,
            pg_port,
            admin: field("admin="),
        }
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once `seen` holds of it, or as it is after `wait`: a line
    /// the process writes just after the client had its answer (a refused
    /// handshake is logged after the alert is sent) is waited for, not
    /// raced (it lost under a full suite's load).
    pub fn logs_when(&self, wait: Duration, seen: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let logs = self.logs();
            if seen(&logs) || std::time::Instant::now() >= deadline {
                return logs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("portcullis did not stop on SIGTERM");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write `config` as `dir/portcullis.toml`, create a token for
/// `agent:tester` in group `testers`, and start `portcullis gateway`.
pub fn gateway_with_config(dir: &Path, config: &str) -> (Proc, String) {
    let cfg_path = dir.join("portcullis.toml");
    std::fs::write(&cfg_path, config).unwrap();
    let token = tester_token(&cfg_path);
    let cfg = cfg_path.to_str().unwrap();
    let gw = Proc::spawn(dir, &["--config", cfg, "gateway"], "gateway.log");
    (gw, token)
}

/// A token for `agent:tester` in group `testers`, from the config `cfg`.
pub fn tester_token(cfg: &Path) -> String {
    let out = cli_at(
        cfg,
        &[
            "token",
            "create",
            "--principal",
            "agent:tester",
            "--group",
            "testers",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The JSON lines a command that succeeded printed (`--json` lists,
/// `audit export`, `replay --json`).
pub fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A server certificate for localhost and 127.0.0.1 from `ca`, written
/// as `dir/STEM.pem` and `dir/STEM.key`.
pub fn write_leaf(ca: &portcullis_tls::CertificateAuthority, dir: &Path, stem: &str) {
    let leaf = ca
        .issue(
            portcullis_tls::LeafKind::Server,
            &["localhost".into(), "127.0.0.1".into()],
            Duration::from_secs(86400),
        )
        .unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), leaf.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), leaf.key_pem).unwrap();
}

/// A quickstart in a fresh temporary folder.
pub struct Quickstart {
    pub tmp: tempfile::TempDir,
    pub proc: Proc,
    pub env: HashMap<String, String>,
}

impl Quickstart {
    pub fn start() -> Quickstart {
        let tmp = tempfile::tempdir().unwrap();
        let proc = Self::run_in(tmp.path());
        let env = read_env(&tmp.path().join("data/quickstart.env"));
        Quickstart { tmp, proc, env }
    }

    pub fn run_in(dir: &Path) -> Proc {
        let data = dir.join("data");
        Proc::spawn(
            dir,
            &[
                "quickstart",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            "quickstart.log",
        )
    }

    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing from quickstart.env"))
    }

    /// PORTCULLIS_URL, PORTCULLIS_CA and PORTCULLIS_TOKEN.
    pub fn creds(&self) -> (&str, &str, &str) {
        (
            self.var("PORTCULLIS_URL"),
            self.var("PORTCULLIS_CA"),
            self.var("PORTCULLIS_TOKEN"),
        )
    }

    /// Run a CLI subcommand against this quickstart's data folder.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(self.data())
            .args(args)
            .output()
            .unwrap()
    }

    /// A new token for `agent:quickstart`: (secret, id).
    pub fn agent_token(&self) -> (String, String) {
        created_token(&self.cli(&[
            "token",
            "create",
            "--principal",
            "agent:quickstart",
            "--json",
        ]))
    }
}

/// Parse `export K='V'` lines by asking a real shell to source the file.
pub fn read_env(path: &Path) -> HashMap<String, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(". '{}' && env", path.display()))
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "sourcing {} failed", path.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("PORTCULLIS_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What curl got.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub curl_exit: i32,
    pub stderr: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} (status {}, curl exit {}: {})",
                self.body, self.status, self.curl_exit, self.stderr
            )
        })
    }
}

/// Run curl with `args`; status and body parsed from its output.
pub fn curl(args: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Reply {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
        curl_exit: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// curl a gateway path with the CA and (optionally) a bearer token.
pub fn get(base: &str, ca: &str, token: Option<&str>, path: &str) -> Reply {
    let url = format!("{base}{path}");
    let auth;
    let mut args = vec!["--cacert", ca];
    if let Some(t) = token {
        auth = format!("Authorization: Bearer {t}");
        args.extend(["-H", &auth]);
    }
    args.push(&url);
    curl(&args)
}

/// Every file below `dir`, as bytes, for canary searches.
pub fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A rustls client config trusting the PEM CA at `ca`.
pub fn client_tls(ca: &Path, alpn: &[&[u8]]) -> std::sync::Arc<rustls::ClientConfig> {
    let roots = portcullis_tls::load_roots(ca, false).unwrap();
    let mut cfg =
        portcullis_tls::client_config(&portcullis_tls::TlsPolicy::default(), roots).unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(cfg)
}

/// tokio-postgres through the gateway's PostgreSQL listener on `port`:
/// connection `db`, the token as the password, TLS verified against `ca`.
pub async fn pg_client(
    port: u16,
    ca: &Path,
    db: &str,
    token: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*client_tls(ca, &[])).clone());
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("localhost")
        .port(port)
        .dbname(db)
        .user("agent")
        .password(token)
        // The rustls config above verifies the gateway against its CA.
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, conn) = cfg.connect(tls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Open a TLS connection to the gateway on loopback as `localhost`.
pub async fn tls_connect(
    port: u16,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls(ca, &[b"http/1.1"]));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// `openssl s_client` against 127.0.0.1:`port` as `localhost`, verifying
/// with `ca`; returns everything it printed.
pub fn s_client(port: u16, ca: &str, extra: &[&str]) -> String {
    assert!(
        Command::new("openssl").arg("version").output().is_ok(),
        "openssl is required for this test (.ci/run installs it)"
    );
    let addr = format!("127.0.0.1:{port}");
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr,
            "-servername",
            "localhost",
            "-CAfile",
            ca,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A psql session held open: statements written to its stdin as the test
/// goes, its output read when it ends.
pub struct HeldPsql {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl HeldPsql {
    /// Open psql on `conninfo` with `password` and run `select 'before';`.
    pub fn open(conninfo: &str, password: &str) -> HeldPsql {
        let mut child = Command::new("psql")
            .args(["-X", "-A", "-t"])
            .arg(conninfo)
            .env("PGPASSWORD", password)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        let stdin = child.stdin.take();
        let mut held = HeldPsql { child, stdin };
        held.send("select 'before';");
        held
    }

    /// Write `sql` (a whole statement) to the session.
    pub fn send(&mut self, sql: &str) {
        use std::io::Write;
        if let Some(i) = self.stdin.as_mut() {
            let _ = writeln!(i, "{sql}");
        }
    }

    /// Close stdin and wait: (stdout, stderr).
    pub fn finish(mut self) -> (String, String) {
        self.stdin.take();
        let out = self.child.wait_with_output().expect("psql output");
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

/// Scan `localhost:port` with sslyze against Mozilla's `profile`
/// (`intermediate` or `modern`), trusting `ca`; `starttls` for a
/// PostgreSQL listener. Returns sslyze's report; panics unless it says
/// the listener is compliant.
pub fn mozilla_compliant(port: u16, ca: &str, profile: &str, starttls: Option<&str>) -> String {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "sslyze", &format!("--mozilla_config={profile}")])
        .args(["--certinfo_ca_file", ca]);
    if let Some(p) = starttls {
        cmd.args(["--starttls", p]);
    }
    let out = cmd
        .arg(format!("localhost:{port}"))
        .output()
        .expect("python3 with sslyze (.ci/run installs it)");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        report.contains(&format!("localhost:{port}: OK - Compliant")),
        "not compliant with Mozilla's {profile} profile:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// Run `portcullis --config CFG ARGS`.
pub fn cli_at(cfg: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

/// The secret and the id of a `token create … --json` that succeeded.
pub fn created_token(out: &std::process::Output) -> (String, String) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let field = |k: &str| created[k].as_str().unwrap().to_string();
    (field("token"), field("id"))
}

/// The ids of the sessions on `connection` in the index of config `cfg`.
pub fn session_ids(cfg: &Path, connection: &str) -> Vec<String> {
    json_lines(&cli_at(
        cfg,
        &["sessions", "list", "--json", "--connection", connection],
    ))
    .iter()
    .map(|s| s["id"].as_str().unwrap().to_owned())
    .collect()
}

/// The upstream MCP server (TypeScript SDK) in its own process.
pub struct McpUpstream {
    child: std::process::Child,
    pub port: u16,
}

impl Drop for McpUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `tests/node/mcp-upstream.mjs` with `dir/api.pem` and
/// `dir/api.key`, answering callers that send `key`.
pub fn mcp_upstream(dir: &std::path::Path, key: &str) -> McpUpstream {
    node_upstream(dir, "mcp-upstream", key, &[])
}

/// Start `tests/node/mcp-hostile-upstream.mjs` (as [`mcp_upstream`]),
/// planting `email` and `secret` (a key rule's value) in its answers.
pub fn mcp_hostile_upstream(
    dir: &std::path::Path,
    key: &str,
    email: &str,
    secret: &str,
) -> McpUpstream {
    node_upstream(
        dir,
        "mcp-hostile",
        key,
        &["--email", email, "--secret", secret],
    )
}

/// `tests/node/{script}-upstream.mjs` or `{script}.mjs` over HTTPS, up
/// once it prints `{script}: ready port=PORT`.
fn node_upstream(dir: &std::path::Path, script: &str, key: &str, extra: &[&str]) -> McpUpstream {
    use std::io::BufRead;
    idp::ensure_packages();
    let file = match script {
        "mcp-upstream" => "mcp-upstream.mjs".to_string(),
        other => format!("{other}-upstream.mjs"),
    };
    let mut child = Command::new("node")
        .arg(idp::harness_dir().join(file))
        .args(["--cert", dir.join("api.pem").to_str().unwrap()])
        .args(["--key", dir.join("api.key").to_str().unwrap()])
        .args(["--api-key", key])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join(format!("{script}.log"))).unwrap())
        .spawn()
        .expect("node runs the upstream MCP server");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix(&format!("{script}: ready port="))
        .unwrap_or_else(|| panic!("upstream MCP server did not start: {line:?}"))
        .parse()
        .unwrap();
    McpUpstream { child, port }
}

/// Debian's Chromium (or `$CHROMIUM`), for the console tests, if installed.
pub fn chromium() -> Option<String> {
    let c = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    Path::new(&c).exists().then_some(c)
}

/// Base64 SHA-256 of a certificate's public key (what Chromium's
/// `--ignore-certificate-errors-spki-list` names): the keys a test's
/// browser accepts without a public CA.
pub fn spki(cert: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            cert.display()
        ))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A reqwest client (the MCP SDK's transport) trusting the gateway's CA.
pub fn https_client(ca: &str) -> reqwest::Client {
    let roots = portcullis_tls::load_roots(std::path::Path::new(ca), false).unwrap();
    let tls = portcullis_tls::client_config(&Default::default(), roots).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

/// A token `person` minted for the agent `subject` (`agent:NAME@person`),
/// written to the store at `store_url` as the gateway writes one (minting
/// one through the gateway needs the person's sign-in at a provider): its
/// secret.
pub fn delegated_token(store_url: &str, subject: &str, person: &str, groups: &[String]) -> String {
    let minted = portcullis_identity::token::generate().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = portcullis_store::Store::open(store_url).await.unwrap();
        store
            .insert_token(&portcullis_store::NewTokenRow {
                hash: minted.hash,
                subject,
                groups,
                created_at: portcullis_identity::unix_now(),
                expires_at: None,
                on_behalf_of: Some(person),
                audience: None,
                oauth_family: None,
            })
            .await
            .unwrap();
    });
    minted.secret.clone()
}
