//! The service against a real SQLite store and audit log.

use std::time::Duration;

use portcullis_config::{ApprovalMode, ApprovalRule};
use portcullis_identity::{AuthMethod, Principal, PrincipalKind};

use super::*;

fn rule(required: u32) -> ApprovalRule {
    ApprovalRule {
        mode: ApprovalMode::Statements,
        classes: vec!["write".into()],
        methods: vec!["DELETE".into()],
        tools: vec!["http_request:DELETE".into()],
        approvers: vec!["dba".into()],
        required,
        wait: Duration::from_secs(5),
        expires: Duration::from_secs(3600),
        session: Duration::from_secs(60),
        preview: true,
        preview_tolerance: 0,
        preview_timeout: Duration::from_secs(5),
    }
}

fn person(subject: &str, groups: &[&str]) -> Principal {
    Principal {
        subject: subject.into(),
        kind: PrincipalKind::of_subject(subject),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        via: AuthMethod::GatewayToken {
            token_id: "t".into(),
            on_behalf_of: None,
            audience: None,
        },
    }
}

async fn service(dir: &std::path::Path) -> Approvals {
    let store = Store::open_sqlite(&dir.join("p.db")).await.unwrap();
    let audit = portcullis_audit::AuditLog::open(store.clone(), dir)
        .await
        .unwrap();
    Approvals::new(store, audit, None)
}

#[tokio::test]
async fn held_action_waits_is_approved_once_and_is_bound_to_its_text() {
    let dir = tempfile::tempdir().unwrap();
    let a = service(dir.path()).await;
    let agent = person("agent:claude", &[]);
    let r = rule(1);
    let held = |action: &'static str| Held {
        requester: &agent,
        connection: "db",
        kind: "statement",
        action,
        classification: "write",
        rule: &r,
        session: None,
        grant: None,
        preview: None,
    };
    let Check::Pending(rv) = a.check(&held("DELETE FROM t WHERE id = 1")).await.unwrap() else {
        panic!("should wait")
    };
    // The same action again reuses the pending review.
    let Check::Pending(again) = a.check(&held("DELETE FROM t WHERE id = 1")).await.unwrap() else {
        panic!()
    };
    assert_eq!(again.id, rv.id);

    let waiter = {
        let a = a.clone();
        let id = rv.id.clone();
        tokio::spawn(async move { a.wait(&id, Duration::from_secs(10), None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        a.decide(&rv.id, &agent, true, None).await.unwrap_err(),
        ReviewError::SelfApproval
    );
    a.decide(&rv.id, &person("user:bob", &["dba"]), true, None)
        .await
        .unwrap();
    match waiter.await.unwrap().unwrap() {
        Outcome::Approved(r) => assert_eq!(r.state, State::Used),
        other => panic!("{other:?}"),
    }
    // Used: the same text needs a new review; a different text never rode on it.
    assert!(matches!(
        a.check(&held("DELETE FROM t WHERE id = 1")).await.unwrap(),
        Check::Pending(r) if r.id != rv.id
    ));
    assert!(matches!(
        a.check(&held("DELETE FROM t")).await.unwrap(),
        Check::Pending(_)
    ));
    let all = a.list(None).await.unwrap();
    assert_eq!(all.len(), 3);
}

/// A decision whose request is dropped at an await (the approver's
/// client went away) either did not happen or stands in the chain with
/// who made it: the two are never parted. Before, the review was
/// approved with no entry saying by whom (review of cancellation,
/// 2026-12-05). Each round drops the request a little later.
#[tokio::test]
async fn a_decision_dropped_half_way_is_whole_or_absent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("p.db")).await.unwrap();
    let audit = portcullis_audit::AuditLog::open(store.clone(), dir.path())
        .await
        .unwrap();
    let a = Approvals::new(store.clone(), audit, None);
    let agent = person("agent:claude", &[]);
    let bob = person("user:bob", &["dba"]);
    let r = rule(1);
    let mut decided = 0;
    for step in 0..40u64 {
        let action = format!("DELETE FROM t WHERE id = {step}");
        let held = Held {
            requester: &agent,
            connection: "db",
            kind: "statement",
            action: &action,
            classification: "write",
            rule: &r,
            session: None,
            grant: None,
            preview: None,
        };
        let Check::Pending(rv) = a.check(&held).await.unwrap() else {
            panic!("should wait")
        };
        let decide = a.decide(&rv.id, &bob, true, None);
        let _ = tokio::time::timeout(Duration::from_micros(step * 100), decide).await;
        // Whatever was started runs to its end.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let state = a.get(&rv.id).await.unwrap().state;
        let logged = portcullis_audit::entries(&store)
            .await
            .unwrap()
            .iter()
            .any(|e| {
                let text = e.event.to_string();
                text.contains(&rv.id) && text.contains("review_approved")
            });
        assert_eq!(state == State::Approved, logged, "round {step}: {state:?}");
        decided += usize::from(logged);
    }
    // The later rounds let the decision through: the test saw both.
    assert!(decided > 0);
}

#[tokio::test]
async fn denial_and_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let a = service(dir.path()).await;
    let agent = person("agent:claude", &[]);
    let r = rule(2);
    let held = Held {
        requester: &agent,
        connection: "db",
        kind: "statement",
        action: "DROP TABLE t",
        classification: "ddl",
        rule: &r,
        session: None,
        grant: None,
        preview: None,
    };
    let Check::Pending(rv) = a.check(&held).await.unwrap() else {
        panic!()
    };
    assert!(matches!(
        a.wait(&rv.id, Duration::from_millis(200), None)
            .await
            .unwrap(),
        Outcome::TimedOut(_)
    ));
    // Two approvers needed: one is not enough, then a denial ends it.
    let r1 = a
        .decide(&rv.id, &person("user:bob", &["dba"]), true, None)
        .await
        .unwrap();
    assert_eq!(r1.state, State::Pending);
    a.decide(
        &rv.id,
        &person("user:dave", &["dba"]),
        false,
        Some("not in prod".into()),
    )
    .await
    .unwrap();
    match a.wait(&rv.id, Duration::from_secs(1), None).await.unwrap() {
        Outcome::Denied(r) => assert_eq!(r.reason.as_deref(), Some("not in prod")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn what_rules_hold() {
    let r = rule(1);
    assert!(holds_statement(&r, "write") && !holds_statement(&r, "read"));
    // Holding writes holds whatever is more powerful (review).
    for class in ["ddl", "admin", "unknown"] {
        assert!(holds_statement(&r, class), "{class}");
    }
    assert!(holds_method(&r, "delete") && !holds_method(&r, "GET"));
    assert!(holds_tool(&r, "http_request", Some("DELETE")));
    assert!(!holds_tool(&r, "http_request", Some("GET")));
    assert!(!holds_tool(&r, "sql_query", None));
}

#[test]
fn a_session_ask_is_cut_to_the_rule_and_names_its_length() {
    let r = rule(1); // session = 60 s
    let asked = SessionRequest::new("db", &r, Some(Duration::from_secs(20)));
    assert_eq!(asked.duration, Duration::from_secs(20));
    assert_eq!(asked.action, "session on db for 20s");
    assert_eq!(asked.cut_notice(), None);
    let default = SessionRequest::new("db", &r, None);
    assert_eq!(default.duration, Duration::from_secs(60));
    let greedy = SessionRequest::new("db", &r, Some(Duration::from_secs(7200)));
    assert_eq!(greedy.duration, Duration::from_secs(60));
    assert_eq!(greedy.action, "session on db for 60s");
    let notice = greedy.cut_notice().unwrap();
    assert!(
        notice.contains("7200s") && notice.contains("60s"),
        "{notice}"
    );
    // Two lengths are two actions: approving one does not approve the other.
    assert_ne!(asked.action, default.action);

    assert_eq!(parse_session_duration("30m"), Ok(Duration::from_secs(1800)));
    assert_eq!(
        parse_session_duration(" 2h "),
        Ok(Duration::from_secs(7200))
    );
    assert!(parse_session_duration("0s").is_err());
    assert!(parse_session_duration("soon").is_err());
    assert!(parse_session_duration("").is_err());
}

#[tokio::test]
async fn a_session_review_lasts_the_asked_length() {
    let dir = tempfile::tempdir().unwrap();
    let a = service(dir.path()).await;
    let agent = person("agent:claude", &[]);
    let mut r = rule(1);
    r.mode = ApprovalMode::Session;
    let ask = SessionRequest::new("db", &r, Some(Duration::from_secs(20)));
    let Check::Pending(rv) = a.check(&ask.held(&agent, "db", &r, None)).await.unwrap() else {
        panic!("should wait")
    };
    assert!((rv.expires_at - rv.created_at - 20).abs() <= 1, "{rv:?}");
}
