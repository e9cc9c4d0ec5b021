//! The admission path against a real SQLite store, audit log and
//! recording spool: each refusal is the right error *and* leaves its
//! audit entry; an admitted caller gets its grant and approval gate.

use portcullis_config::{Config, Protocol};
use portcullis_identity::Credential;
use portcullis_store::Store;

use super::*;

const CONFIG: &str = r#"
[gateway]
listen = "127.0.0.1:8443"
cert = "s.pem"
key = "s.key"

[[connections]]
name = "api"
type = "http"
url = "https://localhost:1"

[[connections]]
name = "held"
type = "http"
url = "https://localhost:1"
approval = { mode = "statements", methods = ["DELETE"], approvers = ["dba"], wait = "1s" }

[[connections]]
name = "tools"
type = "mcp"
url = "https://localhost:1/mcp"

[[grants]]
name = "testers"
groups = ["testers"]
connections = ["api", "held", "tools"]

[[grants]]
name = "everything"
principals = ["agent:root"]
connections = ["*"]
"#;

struct World {
    ctx: FrontContext,
    store: Store,
    tester: String,
    outsider: String,
    /// Granted every connection (`*`): told which names do not exist.
    root: String,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(CONFIG, &dir.path().join("portcullis.toml")).unwrap();
    let (ctx, store) = testing::context(&cfg, dir.path()).await;
    let tester = testing::token(&store, "agent:tester", &["testers".into()]).await;
    let outsider = testing::token(&store, "agent:outsider", &[]).await;
    let root = testing::token(&store, "agent:root", &[]).await;
    World {
        ctx,
        store,
        tester,
        outsider,
        root,
        _dir: dir,
    }
}

impl World {
    /// `agent:tester` admitted to `connection` over HTTP.
    async fn tester_on(&self, connection: &str) -> Admitted {
        self.ctx
            .admit(
                Credential::Bearer(&self.tester),
                connection,
                Protocol::Http,
                &origin(),
            )
            .await
            .unwrap()
    }
}

fn origin() -> Origin {
    Origin {
        peer: "127.0.0.1:5000".into(),
        front: Protocol::Http,
        tls: None,
    }
}

/// The audit log's refusal entries, as (principal, connection, reason).
async fn refusals(store: &Store) -> Vec<serde_json::Value> {
    portcullis_audit::entries(store)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .filter(|e| e["kind"] == "refusal")
        .collect()
}

#[tokio::test]
async fn a_bad_credential_is_refused_and_audited() {
    let w = world().await;
    let e = w
        .ctx
        .admit(
            Credential::Bearer("pcl_nope"),
            "api",
            Protocol::Http,
            &origin(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, AdmitError::Unauthenticated(_)), "{e}");
    let r = refusals(&w.store).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["connection"], "api");
    assert!(r[0]["principal"].is_null());
    assert_eq!(r[0]["protocol"], "http");
    // The presented secret never reaches the evidence.
    assert!(!r[0].to_string().contains("pcl_nope"), "{}", r[0]);
}

#[tokio::test]
async fn every_refusal_of_an_authenticated_caller_is_audited() {
    let w = world().await;
    type Case<'a> = (&'a str, &'a str, Protocol, fn(&AdmitError) -> bool);
    let cases: [Case; 4] = [
        (
            &w.root,
            "nowhere",
            Protocol::Http,
            |e| matches!(e, AdmitError::UnknownConnection(n) if n == "nowhere"),
        ),
        (&w.tester, "nowhere", Protocol::Http, |e| {
            matches!(e, AdmitError::Forbidden(_))
        }),
        (&w.tester, "tools", Protocol::Http, |e| {
            matches!(
                e,
                AdmitError::WrongProtocol {
                    speaks: Protocol::Mcp,
                    wanted: Protocol::Http,
                    ..
                }
            )
        }),
        (&w.outsider, "api", Protocol::Http, |e| {
            matches!(e, AdmitError::Forbidden(_))
        }),
    ];
    for (i, (token, connection, wanted, expected)) in cases.into_iter().enumerate() {
        let e = w
            .ctx
            .admit(Credential::Bearer(token), connection, wanted, &origin())
            .await
            .unwrap_err();
        assert!(expected(&e), "{connection}: {e:?}");
        let r = refusals(&w.store).await;
        assert_eq!(r.len(), i + 1, "one entry per refusal: {r:?}");
        assert_eq!(r[i]["connection"], connection);
        assert!(r[i]["principal"].as_str().unwrap().starts_with("agent:"));
    }
}

/// A caller no grant reaches a name with learns nothing of it: an
/// unknown name, a connection of another protocol and one of its own are
/// refused alike (a review enumerated names and protocols through the
/// difference).
#[tokio::test]
async fn a_caller_without_a_grant_cannot_tell_which_connections_exist() {
    let w = world().await;
    let mut said = Vec::new();
    for (connection, wanted) in [
        ("api", Protocol::Http),
        ("tools", Protocol::Http),
        ("nowhere", Protocol::Http),
        ("api", Protocol::Postgres),
    ] {
        let e = w
            .ctx
            .admit(
                Credential::Bearer(&w.outsider),
                connection,
                wanted,
                &origin(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, AdmitError::Forbidden(_)), "{connection}: {e:?}");
        said.push(e.to_string().replace(connection, "NAME"));
    }
    said.dedup();
    assert_eq!(said.len(), 1, "{said:?}");
}

#[tokio::test]
async fn an_unknown_name_in_messages_is_bounded() {
    let w = world().await;
    let long = "x".repeat(10_000);
    let e = w
        .ctx
        .admit(
            Credential::Bearer(&w.tester),
            &long,
            Protocol::Http,
            &origin(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().len() < 300, "{}", e.to_string().len());
}

/// A person's agents share the person's budget: three agents minted by
/// alice take two requests between them, not two each (a review took
/// six under a limit of two).
#[tokio::test]
async fn delegated_agents_spend_their_persons_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(
        &CONFIG.replace(
            "connections = [\"api\", \"held\", \"tools\"]",
            "connections = [\"api\", \"held\", \"tools\"]\nbudgets = [{ requests = 2, per = \"hour\" }]",
        ),
        &dir.path().join("portcullis.toml"),
    )
    .unwrap();
    let (ctx, store) = testing::context(&cfg, dir.path()).await;
    // The budget of `agent` acting for `person`, as admitted on `api`.
    let budget_of = |agent: &'static str, person: &'static str| {
        let (ctx, store) = (&ctx, &store);
        async move {
            let t = portcullis_identity::token::generate().unwrap();
            store
                .insert_token(&portcullis_store::NewTokenRow {
                    hash: t.hash,
                    subject: agent,
                    groups: &["testers".to_string()],
                    created_at: 0,
                    expires_at: None,
                    on_behalf_of: Some(person),
                    audience: None,
                    oauth_family: None,
                })
                .await
                .unwrap();
            let a = ctx
                .admit(
                    Credential::Bearer(&t.secret),
                    "api",
                    Protocol::Http,
                    &origin(),
                )
                .await
                .unwrap();
            ctx.budget(&a).expect("the grant has a budget")
        }
    };
    let requests = portcullis_policy::budget::Measure::Requests;
    let (mut taken, mut refused) = (0, 0);
    for agent in ["agent:a1@alice", "agent:a2@alice", "agent:a3@alice"] {
        let budget = budget_of(agent, "user:alice").await;
        for _ in 0..2 {
            match budget.take_one(requests, Some("GET")).await {
                Ok(()) => taken += 1,
                Err(_) => refused += 1,
            }
        }
    }
    assert_eq!((taken, refused), (2, 4));
    // Another person's agent has its own person's budget.
    let bobs = budget_of("agent:a1@bob", "user:bob").await;
    assert!(bobs.take_one(requests, Some("GET")).await.is_ok());
}

/// A session whose owner asked for it ([`OpenSession::if_dropped`]) is
/// sealed as it said when dropped unsealed (its caller went away), but
/// not once the gateway is stopping: its shutdown dropping work is not
/// the caller leaving, and the next start closes it `cut_by_restart`.
#[tokio::test]
async fn a_dropped_session_is_sealed_unless_the_gateway_is_stopping() {
    let w = world().await;
    let a = w.tester_on("api").await;
    let gone = || Closing {
        outcome: Outcome::CallerGone,
        error: None,
        bytes_from_caller: 0,
        bytes_to_caller: 0,
        requests: 1,
    };
    let ends = || async {
        portcullis_audit::entries(&w.store)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.event["kind"] == "session_end")
            .map(|e| e.event["session"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let mut left = w.ctx.open(&a, None).await.unwrap();
    left.if_dropped(gone());
    let left_id = left.id.clone();
    drop(left);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !ends().await.contains(&left_id) {
        assert!(
            std::time::Instant::now() < until,
            "the dropped session was not sealed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut cut = w.ctx.open(&a, None).await.unwrap();
    cut.if_dropped(gone());
    let cut_id = cut.id.clone();
    w.ctx.sessions.gateway_stopping();
    drop(cut);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !ends().await.contains(&cut_id),
        "sealed by a stopping gateway"
    );
}

#[tokio::test]
async fn admitted_callers_get_their_grant_gate_and_a_durable_session() {
    let w = world().await;
    let a = w.tester_on("api").await;
    assert_eq!((a.rule.as_str(), a.connection.as_str()), ("testers", "api"));
    assert!(a.gate.is_none(), "no approval rule on api");
    let held = w.tester_on("held").await;
    let gate = held.gate.as_ref().expect("held has an approval rule");
    assert_eq!(gate.connection(), "held");
    assert_eq!(gate.principal().subject, "agent:tester");

    let open = w.ctx.open(&a, None).await.unwrap();
    let entries = portcullis_audit::entries(&w.store).await.unwrap();
    let start = entries
        .iter()
        .map(|e| &e.event)
        .find(|e| e["kind"] == "session_start")
        .expect("the session's start is durable once open returns");
    assert_eq!(start["session"], open.id.as_str());
    assert_eq!(start["rule"], "testers");
    assert_eq!(start["protocol"], "http");
    open.seal(Closing {
        outcome: Outcome::HttpStatus(204),
        error: None,
        bytes_from_caller: 0,
        bytes_to_caller: 0,
        requests: 1,
    })
    .await;
    let entries = portcullis_audit::entries(&w.store).await.unwrap();
    let end = entries.last().unwrap();
    assert_eq!(end.event["kind"], "session_end");
    assert_eq!(end.event["outcome"], "204");
}

#[tokio::test]
async fn a_held_action_waits_times_out_then_passes_once_approved() {
    let w = world().await;
    let a = w.tester_on("held").await;
    let gate = a.gate.unwrap();
    let ask = Ask {
        kind: "http",
        action: "DELETE /x body-sha256:00",
        classification: "DELETE",
        grant: None,
        preview: None,
    };
    let e = gate.hold(&ask).await.unwrap_err();
    let HoldError::TimedOut { review, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(e.to_string().contains("not decided within 1s"), "{e}");
    let dba = portcullis_identity::Principal {
        subject: "alice@example.com".into(),
        kind: portcullis_identity::PrincipalKind::of_subject("alice@example.com"),
        groups: vec!["dba".into()],
        via: portcullis_identity::AuthMethod::GatewayToken {
            token_id: "t".into(),
            on_behalf_of: None,
            audience: None,
        },
    };
    w.ctx
        .approvals
        .decide(&review.id, &dba, true, None)
        .await
        .unwrap();
    gate.hold(&ask).await.expect("approved once");
    // Single use: the same action waits again.
    let again = gate.hold(&ask).await.unwrap_err();
    assert!(matches!(again, HoldError::TimedOut { .. }), "{again:?}");
}

#[test]
fn outcomes_keep_their_labels() {
    // The labels are in audit entries and dashboards: they must not move.
    for (o, label) in [
        (Outcome::CallerClosed, "caller_closed"),
        (Outcome::UpstreamClosed, "upstream_closed"),
        (Outcome::UpstreamError, "upstream_error"),
        (Outcome::CallerProtocolError, "caller_protocol_error"),
        (Outcome::Refused, "refused"),
        (Outcome::InternalError, "internal_error"),
        (Outcome::CallerGone, "caller_gone"),
        (Outcome::Ok, "ok"),
        (Outcome::Error, "error"),
        (Outcome::HttpStatus(502), "502"),
        (Outcome::CredentialEnded, "credential_ended"),
    ] {
        assert_eq!(o.to_string(), label);
    }
}

#[test]
fn a_callers_connection_name_is_bounded_and_cannot_forge_a_log_line() {
    // Review: a PostgreSQL database name holding a newline wrote a line
    // of its own into the text log.
    let forged =
        "db\n2026-12-03T23:59:59Z INFO portcullis::access: postgres session opened\r\u{1b}[2J";
    let shown = crate::admit::bounded(forged);
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    assert!(shown.starts_with("db\\n2026"), "{shown:?}");
    assert_eq!(crate::admit::bounded(&"x".repeat(9000)).len(), 128);
}
