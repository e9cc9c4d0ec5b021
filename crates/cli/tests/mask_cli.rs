//! `portcullis mask`: offline masking of standard input.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::BIN;

fn mask(args: &[&str], input: &str) -> (String, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("mask")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
        o.status.success(),
    )
}

#[test]
fn masks_json_and_text_and_explains() {
    let (out, err, ok) = mask(
        &[],
        r#"{"a":{"email":"x@example.com","n":4111111111111111}}"#,
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["a"]["email"], "[EMAIL]");
    assert_eq!(v["a"]["n"], "[CARD]");
    assert!(err.contains("masked 2 value(s)"), "{err}");

    let (out, _, ok) = mask(&["--format", "text"], "ssn 123-45-6789, ip 10.1.2.3\n");
    assert!(ok);
    assert_eq!(out, "ssn [SSN], ip [IP]\n");

    let (out, _, ok) = mask(
        &["--explain"],
        "key AKIAIOSFODNN7EXAMPLE and bob@example.org",
    );
    assert!(ok);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["detector"], "aws_access_key");
    assert_eq!(
        (lines[0]["start"].as_u64(), lines[0]["end"].as_u64()),
        (Some(4), Some(24))
    );
    assert_eq!(lines[1]["detector"], "email");
    assert_eq!(lines[1]["action"], "redact");

    let (out, _, ok) = mask(&["--explain"], r#"{"users":[{"mail":"c@example.com"}]}"#);
    assert!(ok);
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["path"], "$.users[0].mail");

    let (_, err, ok) = mask(&["--format", "json"], "not json");
    assert!(!ok && err.contains("not JSON"), "{err}");
    let (_, err, ok) = mask(&["--connection", "x"], "a");
    assert!(!ok && err.contains("needs a config"), "{err}");
}
