//! OpenTelemetry: with `--otlp-endpoint`, the gateway exports a span per
//! session, per HTTP request and per SQL statement (and per refusal) to a
//! real OTLP/HTTP receiver decoding with OpenTelemetry's own protobuf
//! definitions; attributes say who, where and what was decided, and no
//! credential is ever in what is sent.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::pg::{PG_PASSWORD, PgCluster};
use common::*;
use portcullis_tls::CertificateAuthority;

struct Receiver {
    child: std::process::Child,
    port: u16,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn receiver(dir: &std::path::Path) -> Receiver {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/python/otlp_receiver.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg("--out")
        .arg(dir.join("spans.jsonl"))
        .arg("--raw")
        .arg(dir.join("raw.bin"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with opentelemetry-proto (see .ci/run)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("otlp: ready port=")
        .unwrap_or_else(|| panic!("receiver did not start: {line:?}"))
        .parse()
        .unwrap();
    Receiver { child, port }
}

fn token(cfg: &std::path::Path, principal: &str) -> String {
    let out = cli_at(
        cfg,
        &["token", "create", "--principal", principal, "--json"],
    );
    created_token(&out).0
}

#[test]
fn sessions_requests_and_statements_are_exported_as_spans() {
    let pg = PgCluster::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rx = receiver(dir);
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    write_leaf(&ca, dir, "server");
    std::fs::write(dir.join("pgpw"), format!("{PG_PASSWORD}\n")).unwrap();
    let up = upstream::start(&dir.join("server.pem"), &dir.join("server.key"));
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"

[postgres]
listen = "127.0.0.1:0"

[[connections]]
name = "db"
type = "postgres"
url = "postgres://postgres@localhost:{pgport}/postgres?sslrootcert={pgca}"
password = "file:pgpw"
access = "read-only"

[[connections]]
name = "api"
type = "http"
url = "https://localhost:{api}"
ca_file = "ca.pem"

[[grants]]
name = "testers"
principals = ["agent:tester"]
connections = ["db", "api"]
"#,
        pgport = pg.port,
        pgca = pg.ca.display(),
        api = up.port,
    );
    let cfg = dir.join("portcullis.toml");
    std::fs::write(&cfg, config).unwrap();
    let tester = token(&cfg, "agent:tester");
    let stranger = token(&cfg, "agent:stranger");
    let endpoint = format!("http://127.0.0.1:{}/v1/traces", rx.port);
    let gw = Proc::spawn(
        dir,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--otlp-endpoint",
            &endpoint,
            "gateway",
        ],
        "gateway.log",
    );
    let ca = dir.join("ca.pem").display().to_string();
    assert_eq!(
        get(&gw.url, &ca, Some(&tester), "/c/api/x?key=q").status,
        200
    );
    assert_eq!(get(&gw.url, &ca, Some(&stranger), "/c/api/x").status, 403);
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "select 1",
            "-c",
            "create table t_otel (x int)",
        ])
        .arg(format!(
            "host=localhost port={} dbname=db user=agent sslmode=verify-full sslrootcert={ca}",
            gw.pg_port.unwrap()
        ))
        .env("PGPASSWORD", &tester)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains('1'));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    // Shutdown exports what is left.
    std::thread::sleep(Duration::from_millis(300));
    assert!(gw.stop().success());

    let spans: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("spans.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |name: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        spans
            .iter()
            .find(|s| s["name"] == name && f(&s["attributes"]))
            .cloned()
            .unwrap_or_else(|| panic!("no {name:?} span as expected in {spans:#?}"))
    };
    assert!(spans.iter().all(|s| s["service"] == "portcullis"));
    let req = find("HTTP request", &|a| a["principal"] == "agent:tester");
    let a = &req["attributes"];
    assert_eq!(a["connection"], "api");
    assert_eq!(a["decision"], "allowed");
    // (A number, sent as OTLP's int or as a string by the bridge.)
    let num = |v: &serde_json::Value| v.to_string().trim_matches('"').to_string();
    assert_eq!(num(&a["status"]), "200");
    assert_eq!(a["method"], "GET");
    let refused = find("HTTP request", &|a| a["principal"] == "agent:stranger");
    assert_eq!(refused["attributes"]["decision"], "refused");
    assert_eq!(num(&refused["attributes"]["status"]), "403");
    find("refusal", &|a| {
        a["decision"] == "refused" && a["principal"] == "agent:stranger"
    });
    let session = find("http session", &|a| a["connection"] == "api");
    assert_eq!(session["attributes"]["principal"], "agent:tester");
    assert!(session["attributes"]["outcome"].is_string(), "{session}");
    let stmt = find("SQL statement", &|a| a["class"] == "read");
    assert_eq!(stmt["attributes"]["decision"], "allowed");
    assert_eq!(stmt["attributes"]["connection"], "db");
    find("SQL statement", &|a| {
        a["decision"] == "refused" && a["connection"] == "db"
    });
    find("postgres session", &|a| a["principal"] == "agent:tester");

    // No credential, and no query string, in anything sent.
    let raw = std::fs::read(dir.join("raw.bin")).unwrap();
    for secret in [&tester, &stranger, &PG_PASSWORD.to_string()] {
        assert!(!contains(&raw, secret), "a credential was exported");
    }
    assert!(!contains(&raw, "key=q"), "the path's query was exported");
}
