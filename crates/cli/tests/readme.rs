//! The README's shell examples, run as written against a quickstart with
//! the suite's PostgreSQL, so the README cannot drift from the binary.
//!
//! Every ```sh block of README.md is either run (in order, in one bash
//! session, from a folder holding `./portcullis-data` as the README
//! assumes, with `portcullis` on PATH) or skipped with a reason written
//! here; a new block fails this test until it is given one. Commands run
//! unchanged except for the substitutions in [`substitute`] (the
//! `cargo run` prefix, the `D` folder placeholder, a review id that only
//! exists at run time); documented outputs are checked in [`checks`].

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pg::PgCluster;
use common::*;

/// What the test does with each block, in README order.
enum Plan {
    /// The quickstart command: the harness starts it (with loopback
    /// ports and the suite's PostgreSQL), since it stays in the foreground.
    Quickstart,
    Run,
    Skip(&'static str),
}

const PLANS: &[Plan] = &[
    Plan::Quickstart,                                               // 1 quickstart
    Plan::Skip("the suite's own command: this test is part of it"), // 2 cargo test
    Plan::Run,                                                      // 3 hello
    Plan::Run,                                                      // 4 customers, masked
    Plan::Run,                                                      // 5 portcullis mask
    Plan::Run,                                                      // 6 refusals
    Plan::Quickstart,                                               // 7 quickstart --postgres
    Plan::Run,                                                      // 8 psql, pgbench
    Plan::Skip(
        "names an identity provider and gw.example.com; identity.rs runs login, env, \
         delegation and client certificates against a real OpenID provider",
    ), // 9 identity
    Plan::Skip("a second quickstart folder; quickstart.rs runs --agent-demo"), // 10 agent demo
    Plan::Run,                                                      // 11 approvals
    Plan::Run,                                                      // 12 mcp config
];

/// The ```sh blocks of the README: (first line number, lines).
fn sh_blocks(readme: &str) -> Vec<(usize, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<String>)> = None;
    for (i, line) in readme.lines().enumerate() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some((i + 1, Vec::new())),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some((_, lines)), l) => lines.push(l.to_string()),
            (None, _) => {}
        }
    }
    blocks
}

/// Commands of a block: continuation lines joined, comment-only lines
/// (documented output) dropped.
fn commands(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for l in lines {
        if pending.is_empty() && (l.trim_start().starts_with('#') || l.trim().is_empty()) {
            continue;
        }
        match l.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(l);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    out
}

/// The few changes a command needs to run here, each one a placeholder
/// the README's reader fills in too.
fn substitute(cmd: &str) -> String {
    let mut c = cmd
        .replace("cargo run --release -- ", "portcullis ")
        .replace(". D/", ". ./portcullis-data/");
    if c.contains("-c 'create table t (x int)'") && c.trim_end().ends_with("# waits") {
        // It waits for the approval given below: in the background.
        let held = c.trim_end().trim_end_matches("# waits").trim_end();
        c = format!("({held}) > held.out 2>&1 & HELD=$!; sleep 2");
    }
    if c.contains("reviews approve rv_…") {
        let list = "PORTCULLIS_TOKEN=$PORTCULLIS_APPROVER_TOKEN portcullis reviews list --state pending --json";
        c = format!(
            "RV=$({list} | head -1 | sed 's/.*\"id\":\"\\([^\"]*\\)\".*/\\1/'); {}; wait $HELD; cat held.out",
            c.replace("rv_…", "\"$RV\"")
        );
    }
    c
}

/// What a command's output must (and must not) show, and whether it may
/// fail: (a part of the command, exit status 0 expected, must contain,
/// must not contain).
type Check = (
    &'static str,
    bool,
    &'static [&'static str],
    &'static [&'static str],
);

/// Stands for the quickstart's token in a check.
const TOKEN: &str = "$TOKEN";

fn checks() -> Vec<Check> {
    vec![
        (
            "/c/demo-api/hello\"\n",
            true,
            &[
                "\"api_key_valid\":true",
                "\"caller_authorization_seen\":false",
            ],
            &[],
        ),
        (
            "/c/demo-api/customers",
            true,
            &[
                "**** **** **** 1111",
                "Ada Lovelace",
                "\"[IBAN]\"",
                "\"[API_KEY]\"",
            ],
            &["4111 1111 1111 1111", "4111111111111111"],
        ),
        (
            "| portcullis mask\n",
            true,
            &["1111"],
            &["4111 1111 1111 1111"],
        ),
        ("mask --explain", true, &["\"detector\""], &[]),
        (
            "\"$PORTCULLIS_URL/c/demo-api/hello\"            # 401",
            true,
            &["unauthenticated"],
            &[],
        ),
        ("${PORTCULLIS_URL/https/http}", true, &["https://"], &[]),
        ("T=$(portcullis token create", true, &[], &[]),
        ("Bearer $T", true, &["agent:other", "demo-api"], &[]),
        ("/metrics", true, &["portcullis_tls_handshakes_total"], &[]),
        ("-c 'select current_user'", true, &["postgres"], &[]),
        ("pgbench -i", true, &["done"], &[]),
        (
            "pgbench -S",
            true,
            &["number of transactions actually processed"],
            &[],
        ),
        ("dbname=demo-pg-readonly", false, &["read-only"], &[]),
        ("reviews list\n", true, &["pending"], &[]),
        ("reviews approve", true, &["approved", "CREATE TABLE"], &[]),
        (
            "mcp config --client claude-code",
            true,
            &["--header 'Authorization: Bearer ${PORTCULLIS_TOKEN}'"],
            &[TOKEN],
        ),
    ]
}

#[test]
fn every_shell_example_in_the_readme_works_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let blocks = sh_blocks(&readme);
    assert_eq!(
        blocks.len(),
        PLANS.len(),
        "the README's ```sh blocks changed: give each one a Plan in readme.rs"
    );

    // A database of its own on the suite's server: pgbench makes tables.
    let pg = PgCluster::shared();
    let db = format!("readme_{}", std::process::id());
    pg.psql_direct(&format!("drop database if exists {db}"));
    pg.psql_direct(&format!("create database {db}"));
    let url = pg
        .url("localhost", "")
        .replace("/postgres?", &format!("/{db}?"));

    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("portcullis")).unwrap();
    let path = format!(
        "{}:{}:{}",
        bin.display(),
        pg.pgbench_path().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // Blocks 1 and 7: the quickstart, as block 7 writes it (block 1 is
    // its prefix), on loopback ports and the suite's server.
    let quickstart: Vec<String> = blocks
        .iter()
        .zip(PLANS)
        .filter(|(_, p)| matches!(p, Plan::Quickstart))
        .flat_map(|(b, _)| commands(&b.1))
        .map(|c| substitute(&c))
        .collect();
    assert!(quickstart.len() == 2 && quickstart[1].starts_with(quickstart[0].trim_end()));
    let args = shell_words(&quickstart[1]);
    let args: Vec<String> = args
        .into_iter()
        .skip(1) // `portcullis`
        .map(|a| match a.as_str() {
            u if u.starts_with("postgres://") => url.clone(),
            // Proc runs from the test's folder: the README's relative path, made absolute.
            "./portcullis-data" => work.join("portcullis-data").display().to_string(),
            _ => a,
        })
        .chain(
            [
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--pg-listen",
                "127.0.0.1:0",
            ]
            .map(String::from),
        )
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let qs = Proc::spawn(work, &args, "quickstart.log");

    // Every other block that runs, in one bash session.
    let mut script = String::from("set -o pipefail\n");
    let mut cmds = Vec::new();
    for ((line, lines), plan) in blocks.iter().zip(PLANS) {
        match plan {
            Plan::Run => {
                for c in commands(lines) {
                    let n = cmds.len();
                    script.push_str(&format!(
                        "{{\n{}\n}} > out.{n} 2>&1 < /dev/null; echo $? > rc.{n}\n",
                        substitute(&c)
                    ));
                    cmds.push((*line, c));
                }
            }
            Plan::Skip(why) => eprintln!("README line {line}: not run: {why}"),
            Plan::Quickstart => {}
        }
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(work)
        .env("PATH", &path)
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_DATA_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let env = read_env(&work.join("portcullis-data/quickstart.env"));
    let token = env["PORTCULLIS_TOKEN"].clone();
    let checks = checks();
    let mut unchecked: Vec<&str> = checks.iter().map(|c| c.0).collect();
    for (n, (line, c)) in cmds.iter().enumerate() {
        let output = std::fs::read_to_string(work.join(format!("out.{n}"))).unwrap_or_default();
        let rc: i32 = std::fs::read_to_string(work.join(format!("rc.{n}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1);
        let keyed = format!("{c}\n");
        let check = checks.iter().find(|k| keyed.contains(k.0));
        let ok_expected = check.is_none_or(|k| k.1);
        assert_eq!(
            rc == 0,
            ok_expected,
            "README line {line}: `{c}` exited {rc}:\n{output}\n--- quickstart log:\n{}",
            qs.logs()
        );
        if let Some((key, _, must, must_not)) = check {
            unchecked.retain(|k| k != key);
            for m in *must {
                assert!(
                    output.contains(m),
                    "README line {line}: `{c}` should show {m:?}:\n{output}"
                );
            }
            for m in *must_not {
                let m = &if *m == TOKEN {
                    token.clone()
                } else {
                    m.to_string()
                };
                assert!(
                    !output.contains(m),
                    "README line {line}: `{c}` must not show {m:?}:\n{output}"
                );
            }
        }
    }
    assert!(
        unchecked.is_empty(),
        "checks that matched no README command: {unchecked:?}"
    );
    drop(qs);
    std::thread::sleep(Duration::from_millis(200));
    pg.psql_direct(&format!("drop database if exists {db} with (force)"));
}

/// Split a command line as the shell would, for the few forms the
/// quickstart lines use (words, double-quoted strings).
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for ch in s.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}
