//! The CLI as an operator uses it for a day, against a running quickstart:
//! quiet one-shot commands, newest-first session lists with --limit and
//! --since, replay by id prefix, --json where scripts need it, and
//! `audit tail --follow`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn ok(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn one_shot_commands_are_quiet_unless_asked() {
    let qs = Quickstart::start();
    let out = ok(qs.cli(&["token", "create", "--principal", "agent:quiet"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("INFO"), "no log lines by default: {err}");
    assert!(err.contains("It is shown once"), "{err}");
    // (The quickstart's env sets PORTCULLIS_LOG for the gateway only.)
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(qs.data())
        .args(["-v", "token", "create", "--principal", "agent:loud"])
        .env_remove("PORTCULLIS_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INFO") && err.contains("token created"),
        "{err}"
    );
}

#[test]
fn sessions_newest_first_limited_and_since_a_duration() {
    let qs = Quickstart::start();
    let (url, ca, token) = qs.creds();
    for path in ["/c/demo-api/hello", "/c/demo-api/customers"] {
        // One connection each: two sessions, the second the newest.
        assert_eq!(get(url, ca, Some(token), path).status, 200);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let wait_sealed = || {
        for _ in 0..40 {
            let all = lines(&ok(qs.cli(&["sessions", "list", "--json"])));
            if all.len() >= 2 && all.iter().all(|s| s["outcome"] != "open") {
                return all;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("sessions were not sealed");
    };
    let all = wait_sealed();
    let started: Vec<&str> = all
        .iter()
        .map(|s| s["started_at"].as_str().unwrap())
        .collect();
    let mut sorted = started.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(started, sorted, "newest first");

    let one = lines(&ok(qs.cli(&["sessions", "list", "--json", "--limit", "1"])));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["id"], all[0]["id"]);
    let recent = lines(&ok(qs.cli(&["sessions", "list", "--json", "--since", "1h"])));
    assert_eq!(recent.len(), all.len());
    let future = lines(&ok(qs.cli(&[
        "sessions",
        "list",
        "--json",
        "--since",
        "2099-01-01T00:00:00Z",
    ])));
    assert!(future.is_empty());
    let bad = qs.cli(&["sessions", "list", "--since", "yesterday-ish"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("neither a time"));

    // Replay by a prefix of the id.
    let id = all[0]["id"].as_str().unwrap();
    let out = ok(qs.cli(&["replay", &id[..8], "--no-wait"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("customers"));
}

#[test]
fn json_where_scripts_need_it() {
    let qs = Quickstart::start();
    let v = lines(&ok(qs.cli(&["audit", "verify", "--json"])));
    assert_eq!(v[0]["ok"], true);
    assert!(v[0]["entries"].as_u64().unwrap() > 0);

    let prefix = qs.tmp.path().join("bot");
    let out = ok(qs.cli(&[
        "cert",
        "issue",
        "--principal",
        "agent:bot",
        "--out",
        prefix.to_str().unwrap(),
        "--json",
    ]));
    let v = lines(&out);
    assert_eq!(v[0]["principal"], "agent:bot");
    assert!(std::path::Path::new(v[0]["cert"].as_str().unwrap()).exists());

    let created = lines(&ok(qs.cli(&[
        "token",
        "create",
        "--principal",
        "agent:gone",
        "--json",
    ])));
    let id = created[0]["id"].as_str().unwrap();
    let revoked = lines(&ok(qs.cli(&["token", "revoke", id, "--json"])));
    assert_eq!(revoked[0]["id"], id);
    assert!(revoked[0]["revoked_at"].is_string());
}

#[test]
fn audit_tail_follows_new_entries() {
    let qs = Quickstart::start();
    let mut tail = Command::new(BIN)
        .arg("--data-dir")
        .arg(qs.data())
        .args(["audit", "tail", "-n", "1", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the last entry");
    assert!(first.contains("\"seq\""), "{first}");
    ok(qs.cli(&["token", "create", "--principal", "agent:followed"]));
    let mut seen = String::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push_str(&l);
        if l.contains("agent:followed") {
            break;
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(
        seen.contains("token_created") && seen.contains("agent:followed"),
        "{seen}"
    );
}

/// Completions and man pages are generated from the CLI definition: they
/// name today's subcommands and flags, and bash accepts the script.
#[test]
fn completions_and_man_pages_come_from_the_cli() {
    let script = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <('{BIN}' completions bash) && complete -p portcullis && \
             COMP_WORDS=(portcullis sessions list --l); COMP_CWORD=3; \
             _portcullis portcullis --l list; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        ))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&script.stdout);
    assert!(
        script.status.success(),
        "{}",
        String::from_utf8_lossy(&script.stderr)
    );
    assert!(out.contains("-F _portcullis portcullis"), "{out}");
    assert!(
        out.contains("--limit"),
        "completes a flag added this month: {out}"
    );
    for shell in ["zsh", "fish"] {
        let out = ok(Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap());
        assert!(String::from_utf8_lossy(&out.stdout).contains("reviews"));
    }

    let page = ok(Command::new(BIN).arg("man").output().unwrap());
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(page.contains(".TH portcullis 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    ok(Command::new(BIN)
        .args(["man", "--out", dir.path().to_str().unwrap()])
        .output()
        .unwrap());
    let list = std::fs::read_to_string(dir.path().join("portcullis-sessions-list.1")).unwrap();
    assert!(list.contains("limit"), "{list}");
}

/// `dist/package` (run here on the test build, as CI has no time for a
/// release build): a tarball with the stripped binary, completions and
/// man pages, the symbols apart, a SHA-256 that checks, and the glibc
/// floor said.
#[test]
fn the_release_package_is_stripped_checksummed_and_runs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let run = ok(Command::new(root.join("dist/package"))
        .args(["--binary", BIN, "--out", out.path().to_str().unwrap()])
        .output()
        .unwrap());
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(said.contains("needs GLIBC_"), "{said}");
    let tarball = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-linux-gnu.tar.gz"))
        .expect("the tarball");
    ok(Command::new("sha256sum")
        .args([
            "-c",
            &format!("{}.sha256", tarball.file_name().unwrap().to_string_lossy()),
        ])
        .current_dir(out.path())
        .output()
        .unwrap());
    let x = tempfile::tempdir().unwrap();
    ok(Command::new("tar")
        .args([
            "-xzf",
            tarball.to_str().unwrap(),
            "-C",
            x.path().to_str().unwrap(),
        ])
        .output()
        .unwrap());
    let top = std::fs::read_dir(x.path())
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let bin = top.join("portcullis");
    let v = ok(Command::new(&bin).arg("version").output().unwrap());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("portcullis "));
    for f in [
        "completions/portcullis.bash",
        "man/portcullis.1",
        "README.md",
    ] {
        assert!(top.join(f).exists(), "{f}");
    }
    let sections = |p: &std::path::Path| {
        String::from_utf8_lossy(
            &Command::new("objdump")
                .arg("-h")
                .arg(p)
                .output()
                .unwrap()
                .stdout,
        )
        .to_string()
    };
    assert!(!sections(&bin).contains(".debug_line"), "stripped");
    assert!(
        sections(&bin).contains(".gnu_debuglink"),
        "points at its symbols"
    );
    assert!(
        std::fs::metadata(&bin).unwrap().len() < std::fs::metadata(BIN).unwrap().len(),
        "smaller than the unstripped build"
    );
}
