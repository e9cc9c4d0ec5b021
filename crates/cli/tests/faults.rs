//! Nothing lost on faults, with real faults: the data folder or the
//! recordings spool on a tiny tmpfs that fills up, the store's write lock
//! held by another process, and `kill -9` under HTTP and PostgreSQL load.
//! After each: refusals were fast and in the caller's protocol, nothing
//! reached the target unaudited, the gateway recovered by itself, every
//! session has its end, and `audit verify` passes.
//!
//! Mounting a tmpfs needs root with CAP_SYS_ADMIN (CI has it); where it is
//! missing the two tmpfs tests say SKIPPED on stderr and return.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A tmpfs mounted for one test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (the test says it was skipped, loudly) where this machine
    /// may not mount file systems: the fault needs a real small disk.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("mount");
        if !out.status.success() {
            eprintln!(
                "SKIPPED: mounting a tmpfs at {} failed (root with CAP_SYS_ADMIN is needed): {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Tmpfs(path.to_path_buf()))
    }

    /// Write a filler file until the file system is full; returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5au8; 16 << 10];
        while f.write_all(&chunk).is_ok() {}
        // The last partial chunk too.
        while f.write_all(&[0u8; 512]).is_ok() {}
        while f.write_all(&[0u8]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Gateway {
    dir: PathBuf,
    logs: PathBuf,
    cfg: PathBuf,
    token: String,
    ca: String,
    gw: Option<Proc>,
    upstream: upstream::TestUpstream,
}

/// A gateway whose config (and so its store, keys and, unless `spool`
/// says otherwise, recordings) lives in `dir`; logs in `logs`, outside any
/// tmpfs. Connections: `api` (HTTP) and `db` (PostgreSQL).
fn gateway(dir: &Path, logs: &Path, spool: Option<&Path>) -> Gateway {
    let up = db_api::prepare(dir);
    let recordings = spool
        .map(|s| format!("[recordings]\nurl = \"file://{}\"\n", s.display()))
        .unwrap_or_default();
    let cfg = dir.join("portcullis.toml");
    let rest = format!("{}{recordings}", db_api::TESTERS);
    std::fs::write(&cfg, db_api::config(up.port, &rest)).unwrap();
    let token = tester_token(&cfg);
    let mut g = Gateway {
        dir: dir.to_path_buf(),
        logs: logs.to_path_buf(),
        cfg,
        token,
        ca: dir.join("ca.pem").display().to_string(),
        gw: None,
        upstream: up,
    };
    g.start();
    g
}

/// [`gateway`] in a fresh folder (not a tmpfs); the folder lives as long
/// as the returned guard.
fn plain_gateway() -> (tempfile::TempDir, Gateway) {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let g = gateway(&data, &logs, None);
    (tmp, g)
}

impl Gateway {
    fn start(&mut self) {
        let n = std::fs::read_dir(&self.logs).map_or(0, |d| d.count());
        let log = self.logs.join(format!("gateway-{n}.log"));
        let cfg = self.cfg.to_str().unwrap().to_owned();
        self.gw = Some(Proc::spawn(
            &self.dir,
            &["--config", &cfg, "gateway"],
            log.to_str().unwrap(),
        ));
    }

    fn gw(&self) -> &Proc {
        self.gw.as_ref().expect("the gateway runs")
    }

    /// A request on a new connection: (status, body, seconds it took).
    fn request(&self, path: &str) -> (u16, String, f64) {
        let t = Instant::now();
        let r = get(&self.gw().url, &self.ca, Some(&self.token), path);
        (r.status, r.body, t.elapsed().as_secs_f64())
    }

    fn admin(&self, path: &str) -> (u16, serde_json::Value) {
        let base = format!(
            "https://{}",
            self.gw().admin.clone().expect("admin listener")
        );
        let r = get(&base, &self.ca, Some(&self.token), path);
        (r.status, serde_json::from_str(&r.body).unwrap_or_default())
    }

    fn wait_for(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; log:\n{}",
                self.gw().logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        cli_at(&self.cfg, args)
    }

    fn sessions(&self) -> Vec<serde_json::Value> {
        json_lines(&self.cli(&["sessions", "list", "--json", "--limit", "100000"]))
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        json_lines(&self.cli(&["audit", "export"]))
    }

    fn verify(&self) {
        let out = self.cli(&["audit", "verify"]);
        assert!(
            out.status.success(),
            "audit verify failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every session the index knows has ended.
    fn assert_none_open(&self) {
        let open: Vec<_> = self
            .sessions()
            .into_iter()
            .filter(|s| s["outcome"] == "open")
            .collect();
        assert!(open.is_empty(), "sessions left open: {open:?}");
    }

    /// Sessions whose outcome is `outcome`.
    fn with_outcome(&self, outcome: &str) -> Vec<serde_json::Value> {
        self.sessions()
            .into_iter()
            .filter(|s| s["outcome"] == outcome)
            .collect()
    }

    fn conninfo(&self) -> String {
        format!(
            "host=localhost port={} dbname=db user=agent sslmode=verify-full sslrootcert={} connect_timeout=10",
            self.gw().pg_port.unwrap(),
            self.ca
        )
    }

    fn psql(&self, sql: &str) -> (bool, String, f64) {
        let t = Instant::now();
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-c", sql])
            .arg(self.conninfo())
            .env("PGPASSWORD", &self.token)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            t.elapsed().as_secs_f64(),
        )
    }

    fn stop(&mut self) {
        if let Some(gw) = self.gw.take() {
            assert!(gw.stop().success());
        }
    }

    fn kill9(&mut self) {
        if let Some(mut gw) = self.gw.take() {
            gw.child.kill().unwrap();
            gw.child.wait().unwrap();
        }
    }
}

/// The data folder (SQLite store, recordings, keys) fills up: sessions
/// are refused at once (HTTP 503 JSON, PostgreSQL FATAL), nothing reaches
/// the target, health says so; once space is freed the gateway serves
/// again by itself, and the chain verifies — also after a restart, with
/// no sequence number used twice.
#[test]
fn a_full_data_folder_refuses_fast_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("data"), "24m") else {
        return;
    };
    let mut g = gateway(&fs.0, &logs, None);

    assert_eq!(g.request("/c/api/before").0, 200, "{}", g.gw().logs());
    let (ok, out, _) = g.psql("select 'before'");
    assert!(ok && out.contains("before"), "{out}");
    assert_eq!(g.admin("/healthz").0, 200);

    let filler = fs.fill();
    let reached = g.upstream.count();
    for i in 0..6 {
        let (status, body, secs) = g.request(&format!("/c/api/full{i}"));
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains("audit_unavailable") || body.contains("recording_unavailable"),
            "{body}"
        );
        assert!(secs < 1.0, "refusal {i} took {secs:.2}s");
    }
    let (ok, out, secs) = g.psql("select 'while full'");
    assert!(!ok && out.contains("refused"), "{out}");
    assert!(secs < 1.5, "the PostgreSQL refusal took {secs:.2}s");
    assert_eq!(
        g.upstream.count(),
        reached,
        "nothing reached the target while full"
    );
    let (status, health) = g.admin("/healthz");
    assert_eq!(status, 503, "{health}");
    let (status, st) = g.admin("/status");
    assert_eq!(status, 503);
    assert_eq!(st["accepting_sessions"], false, "{st}");
    let metrics = get(
        &format!("https://{}", g.gw().admin.clone().unwrap()),
        &g.ca,
        None,
        "/metrics",
    )
    .body;
    assert!(
        metrics.contains("portcullis_fault_refusals_total{cause="),
        "{metrics}"
    );

    std::fs::remove_file(&filler).unwrap();
    g.wait_for("requests to be served again", 15, || {
        g.request("/c/api/after").0 == 200
    });
    g.wait_for("health to recover", 10, || g.admin("/healthz").0 == 200);
    let (ok, out, _) = g.psql("select 'after'");
    assert!(ok && out.contains("after"), "{out}");

    // Every session the target saw has a start and an end, the outage is
    // in the log, and the chain verifies, also after a restart.
    g.wait_for("sessions to end", 10, || {
        g.sessions().iter().all(|s| s["outcome"] != "open")
    });
    let served = g.with_outcome("200").len();
    assert_eq!(served, g.upstream.count(), "{:?}", g.sessions());
    assert!(
        g.audit()
            .iter()
            .any(|e| e["event"]["kind"] == "audit_outage"),
        "the outage is an entry of its own"
    );
    g.stop();
    g.verify();
    g.start();
    assert_eq!(g.request("/c/api/restarted").0, 200);
    g.stop();
    g.verify();
    let seqs: Vec<i64> = g
        .audit()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    let mut unique = seqs.clone();
    unique.dedup();
    assert_eq!(seqs, unique, "no sequence number twice");
}

/// Another process holds the store's write lock: sessions are refused
/// within a second (not after the store's own busy wait), health says so,
/// and when the lock goes the gateway serves again with every late start
/// closed.
#[test]
fn a_stalled_store_refuses_fast() {
    let (_tmp, mut g) = plain_gateway();
    let data = g.dir.clone();
    assert_eq!(g.request("/c/api/before").0, 200);

    let db = data.join("portcullis.db");
    let mut lock = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys,time\n\
             c=sqlite3.connect(sys.argv[1],isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked',flush=True)\n\
             time.sleep(float(sys.argv[2]))\n\
             c.execute('COMMIT')",
        ])
        .arg(&db)
        .arg("4")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(lock.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
    }
    let reached = g.upstream.count();
    let (status, body, secs) = g.request("/c/api/stalled");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("audit_unavailable"), "{body}");
    // The gateway gives up on the store after 800 ms; the rest is the
    // client's own TLS handshake on a loaded CI machine.
    assert!(secs < 1.2, "the refusal took {secs:.2}s");
    assert_eq!(g.admin("/healthz").0, 503);
    assert_eq!(g.upstream.count(), reached);
    lock.wait().unwrap();

    g.wait_for("requests to be served again", 15, || {
        g.request("/c/api/after").0 == 200
    });
    g.wait_for("health to recover", 10, || g.admin("/healthz").0 == 200);
    g.wait_for("late starts to be closed", 10, || {
        g.sessions().iter().all(|s| s["outcome"] != "open")
    });
    assert_eq!(g.with_outcome("200").len(), g.upstream.count());
    g.stop();
    g.verify();
}

/// The recordings spool fills up mid-session: the keep-alive session
/// that can no longer be recorded ends (503 to the caller, its end entry
/// says `recording_failed`, its recording reads as far as it got), new
/// sessions are refused until there is room, and then served again.
#[test]
fn a_full_spool_ends_the_session_that_cannot_be_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("spool"), "512k") else {
        return;
    };
    let mut g = gateway(&data, &logs, Some(&fs.0));

    // Bodies that compress little, each its own: each request adds ~40
    // KiB to the recording, so the spool fills within a few seconds. (One
    // body sent 40 times would not: zstd's window finds the repeats in a
    // segment.)
    let mut seed = 0x2545f4914f6cdd1du64;
    let bodies: Vec<std::path::PathBuf> = (0..40)
        .map(|i| {
            let text: String = (0..64 << 10)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(b'a' + (seed % 26) as u8)
                })
                .collect();
            let body = tmp.path().join(format!("body{i}"));
            std::fs::write(&body, text).unwrap();
            body
        })
        .collect();
    let url = format!("{}/c/api/upload", g.gw().url);
    let auth = format!("Authorization: Bearer {}", g.token);
    // One curl, one keep-alive connection for as long as the gateway keeps
    // it (`--next` keeps it), paced so that the recording's one-second
    // flushes fall between requests (the spool fills mid-session, not at
    // its end).
    let mut curl = Command::new("curl");
    curl.args(["--rate", "5/s"]);
    for (i, body) in bodies.iter().enumerate() {
        if i > 0 {
            curl.arg("--next");
        }
        curl.args(["-s", "--cacert", &g.ca, "-H", &auth])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .args(["-w", "%{http_code}\\n", "-o", "/dev/null"])
            .arg(&url);
    }
    let out = curl.output().unwrap();
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(codes.len(), 40, "{codes:?}");
    assert_eq!(codes[0], "200", "{codes:?}\n{}", g.gw().logs());
    let first_refusal = codes
        .iter()
        .position(|c| c == "503")
        .unwrap_or_else(|| panic!("never refused: {codes:?}"));
    assert!(
        // 503, or a transfer cut with the connection (curl's 000).
        codes[first_refusal..].iter().all(|c| c != "200"),
        "once the spool is full nothing is served unrecorded: {codes:?}"
    );
    let failed = g.with_outcome("recording_failed");
    assert!(!failed.is_empty(), "{:?}", g.sessions());
    let id = failed[0]["id"].as_str().unwrap().to_owned();
    let end = g
        .audit()
        .into_iter()
        .find(|e| e["event"]["kind"] == "session_end" && e["event"]["session"] == id.as_str())
        .unwrap();
    assert!(
        end["event"]["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("recording_failed"),
        "{end}"
    );
    // What was written reads, and matches the digest the chain sealed.
    let replay = g.cli(&["replay", &id, "--json", "--no-wait"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(
        failed[0]["recording_digest"], end["event"]["recording_digest"],
        "the index and the chain agree"
    );
    // Refused while full, with the reason; no empty recording left.
    let (status, body, _) = g.request("/c/api/while-full");
    assert_eq!(status, 503);
    assert!(body.contains("recording_unavailable"), "{body}");
    assert_eq!(g.admin("/healthz").0, 503);
    for e in std::fs::read_dir(&fs.0).unwrap().flatten() {
        let len = e.metadata().unwrap().len();
        assert!(
            len > 8,
            "an empty recording was left: {}",
            e.path().display()
        );
    }

    // Room again: the probe notices and sessions are served.
    let biggest = std::fs::read_dir(&fs.0)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .unwrap()
        .path();
    std::fs::copy(&biggest, tmp.path().join("kept.rec")).unwrap();
    std::fs::remove_file(&biggest).unwrap();
    g.wait_for("recording to work again", 15, || {
        g.request("/c/api/after").0 == 200
    });
    g.wait_for("health to recover", 10, || g.admin("/healthz").0 == 200);
    g.stop();
    g.assert_none_open();
    g.verify();
}

/// The sweep that closes sessions of dead gateways (every heartbeat)
/// never touches this gateway's own live sessions: a psql session held
/// across several heartbeats still works, ends as the caller closed it
/// (once), and its recording reads with the digest its end sealed.
#[test]
fn a_live_session_outlives_the_heartbeat_sweep() {
    let (_tmp, mut g) = plain_gateway();
    let mut psql = HeldPsql::open(&g.conninfo(), &g.token);
    psql.send("select 'early';");
    std::thread::sleep(Duration::from_secs(12));
    psql.send("select 'late';");
    let (out, err) = psql.finish();
    assert!(out.contains("early") && out.contains("late"), "{out}{err}");
    g.wait_for("the session to end", 10, || {
        g.with_outcome("open").is_empty()
    });
    let ended = g.with_outcome("caller_closed");
    assert_eq!(ended.len(), 1, "{:?}", g.sessions());
    assert!(g.with_outcome("cut_by_restart").is_empty());
    let id = ended[0]["id"].as_str().unwrap();
    let ends = g
        .audit()
        .into_iter()
        .filter(|e| e["event"]["kind"] == "session_end" && e["event"]["session"] == id)
        .count();
    assert_eq!(ends, 1, "one end entry");
    let replay = g.cli(&["replay", id, "--no-wait"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(text.contains("late"), "{text}");
    g.stop();
    g.verify();
}

/// SIGTERM while a PostgreSQL statement runs: the session is not ended
/// as if its caller had left (a re-review found such sessions sealed
/// `caller_gone` with zero counts at the stop); the next start closes it
/// as `cut_by_restart`. The statement does not run on at the target (it
/// had, to its own timeout): the target checks the gateway's side of the
/// connection while it runs.
#[test]
fn a_stopped_gateway_does_not_blame_its_callers() {
    let (_tmp, mut g) = plain_gateway();
    let mut psql = HeldPsql::open(&g.conninfo(), &g.token);
    let marker = "stopped_gateway_marker";
    psql.send(&format!("select pg_sleep(60) /* {marker} */;"));
    let pg = pg::PgCluster::shared();
    pg.wait_running(marker, 1, 15, "the statement never started");
    g.wait_for("the session to be open", 10, || {
        g.sessions()
            .iter()
            .any(|s| s["outcome"] == "open" && s["protocol"] == "postgres")
    });
    g.stop();
    pg.wait_running(marker, 0, 10, "the statement ran on after the stop");
    let _ = psql.finish();
    assert!(
        g.with_outcome("caller_gone").is_empty(),
        "{:?}",
        g.sessions()
    );
    g.start();
    g.assert_none_open();
    assert!(
        g.with_outcome("cut_by_restart")
            .iter()
            .any(|s| s["protocol"] == "postgres"),
        "{:?}",
        g.sessions()
    );
    g.stop();
    g.verify();
}

/// `kill -9` while HTTP and PostgreSQL sessions are open: at the next
/// start the gateway closes what it left open (`cut_by_restart`), their
/// recordings are sealed as far as they got and replay, no recording is
/// empty, and the chain verifies.
#[test]
fn kill_9_under_load_leaves_no_session_open() {
    let (_tmp, mut g) = plain_gateway();
    let data = g.dir.clone();

    let mut psql = HeldPsql::open(&g.conninfo(), &g.token);
    psql.send("select 'first';");
    // HTTP load on keep-alive connections while the process dies.
    let url = format!("{}/c/api/load", g.gw().url);
    let auth = format!("Authorization: Bearer {}", g.token);
    let mut load = Vec::new();
    for _ in 0..3 {
        let mut c = Command::new("curl");
        c.args(["-s", "--cacert", &g.ca, "-H", &auth, "-o", "/dev/null"]);
        for _ in 0..400 {
            c.arg(&url);
        }
        load.push(c.stdout(std::process::Stdio::null()).spawn().unwrap());
    }
    g.wait_for("sessions to be open", 10, || {
        g.sessions()
            .iter()
            .filter(|s| s["outcome"] == "open")
            .count()
            >= 2
    });
    std::thread::sleep(Duration::from_millis(1500));
    // A refused PostgreSQL session leaves a refusal entry.
    let refused = Command::new("psql")
        .args(["-X", "-c", "select 1"])
        .arg(g.conninfo())
        .env("PGPASSWORD", "pcl_not_a_token")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    g.kill9();
    for mut c in load {
        let _ = c.wait();
    }
    let _ = psql.finish();
    let open_before: Vec<String> = g
        .sessions()
        .into_iter()
        .filter(|s| s["outcome"] == "open")
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!open_before.is_empty(), "the kill left sessions open");

    g.start();
    g.assert_none_open();
    let cut = g.with_outcome("cut_by_restart");
    let cut_ids: Vec<&str> = cut.iter().map(|s| s["id"].as_str().unwrap()).collect();
    for id in &open_before {
        assert!(cut_ids.contains(&id.as_str()), "{id} not closed as cut");
    }
    assert!(cut.iter().any(|s| s["protocol"] == "postgres"), "{cut:?}");
    for s in &cut {
        let id = s["id"].as_str().unwrap();
        let records = json_lines(&g.cli(&["replay", id, "--json", "--no-wait"]));
        let last = records.last().unwrap();
        assert_eq!(last["type"], "session_end", "{last}");
        assert_eq!(last["outcome"], "cut_by_restart");
    }
    for e in std::fs::read_dir(data.join("recordings"))
        .unwrap()
        .flatten()
    {
        assert!(
            e.metadata().unwrap().len() > 8,
            "an empty recording: {}",
            e.path().display()
        );
    }
    let audit = g.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["event"]["kind"] == "refusal" && e["event"]["protocol"] == "postgres"),
        "the refused PostgreSQL session has its refusal entry"
    );
    g.stop();
    g.verify();
}

/// `kill -9` while a PostgreSQL statement runs: nothing can cancel it
/// from the gateway, and the target stops it by itself within seconds
/// (the connection check the gateway asks for at every startup), rather
/// than running it to its own end with its locks held.
#[test]
fn a_killed_gateway_leaves_no_statement_running_on_the_target() {
    let (_tmp, mut g) = plain_gateway();
    let marker = "killed_gateway_marker";
    // A caller whose startup value the server quotes back with the
    // setting's name is refused, and the check stays on for the next (a
    // review turned it off for every caller this way).
    let poisoned = Command::new("psql")
        .args(["-X", "-c", "select 1"])
        .arg(g.conninfo())
        .env("PGPASSWORD", &g.token)
        .env("PGTZ", "client_connection_check_interval")
        .output()
        .unwrap();
    assert!(!poisoned.status.success());
    let mut psql = HeldPsql::open(&g.conninfo(), &g.token);
    psql.send(&format!("select pg_sleep(60) /* {marker} */;"));
    let pg = pg::PgCluster::shared();
    pg.wait_running(marker, 1, 15, "the statement never started");
    g.kill9();
    pg.wait_running(marker, 0, 10, "the statement ran on after kill -9");
    let _ = psql.finish();
    g.start();
    g.assert_none_open();
    g.stop();
    g.verify();
}
