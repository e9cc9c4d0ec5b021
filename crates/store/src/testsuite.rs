//! The repository tests, written once and run against every backend: the
//! store's unit tests run them on SQLite, the integration tests on the
//! suite's PostgreSQL server. They panic on the first failure. Each run
//! uses fresh random names, so it can share a database with other runs.

use portcullis_identity::token;
use sqlx::AssertSqlSafe;

use crate::{
    AuditRow, GrantKind, NewTokenRow, OAuthClientRow, OAuthGrantRow, ReviewRow, SessionQuery,
    SessionRow, Spent, Store, Taken, TooMany, UsageWindow,
};

fn tag() -> String {
    token::generate()
        .map(|t| t.hash.id())
        .unwrap_or_else(|_| "x".into())
}

pub async fn run_all(store: &Store) {
    tokens(store).await;
    tool_pins(store).await;
    reviews_and_jit(store).await;
    revocation(store).await;
    enrolments(store).await;
    audit_and_sessions(store).await;
    cut_sessions(store).await;
    oauth(store).await;
    session_pages(store).await;
    budget_usage(store).await;
    budget_takes(store).await;
    naming(store).await;
    live_for_agents(store).await;
    shared_keys(store).await;
    // Last: it sweeps what the others left.
    oauth_room(store).await;
}

/// A flood of registrations cannot hold the cap: the oldest no person
/// consented to make room, a consented one never does; sign-ins in
/// progress are swept as soon as they expired, ended grants a day later.
pub async fn oauth_room(store: &Store) {
    let t = tag();
    let client = |id: String, created_at| OAuthClientRow {
        id,
        name: "Flood".into(),
        redirect_uris: vec!["http://127.0.0.1/cb".into()],
        created_at,
        revoked_at: None,
    };
    let kept = format!("kept-{t}");
    store
        .insert_oauth_client(&client(kept.clone(), 0))
        .await
        .unwrap();
    let hash = |n: u8| {
        let mut h = token::generate().unwrap().hash.0;
        h[0] = n;
        h
    };
    let grant = |hash, kind, expires_at| OAuthGrantRow {
        hash,
        kind,
        client_id: kept.clone(),
        family: format!("fam-{t}"),
        data: "{}".into(),
        created_at: 0,
        expires_at,
    };
    let refresh = hash(1);
    store
        .insert_oauth_grant(&grant(refresh, GrantKind::Refresh, 100))
        .await
        .unwrap();
    for i in 1..=5 {
        store
            .insert_oauth_client(&client(format!("flood-{t}-{i}"), i))
            .await
            .unwrap();
    }
    assert_eq!(store.oauth_make_room(3).await.unwrap(), 3);
    for i in 1..=5 {
        let there = store.oauth_client(&format!("flood-{t}-{i}")).await.unwrap();
        assert_eq!(there.is_some(), i >= 4, "flood-{i}");
    }
    assert!(store.oauth_client(&kept).await.unwrap().is_some());
    assert_eq!(store.oauth_make_room(3).await.unwrap(), 0);
    // A sign-in in progress, expired at 100: gone at a sweep at 200, while
    // the refresh token (expired at 100 too) stays until 100 + a day.
    let pending = hash(2);
    store
        .insert_oauth_grant(&grant(pending, GrantKind::Request, 100))
        .await
        .unwrap();
    store.sweep_oauth(50, 200).await.unwrap();
    let spent = |h, kind| async move { store.spend_oauth_grant(&h, kind, 0).await.unwrap() };
    assert_eq!(spent(pending, GrantKind::Request).await, Spent::Invalid);
    assert!(matches!(
        spent(refresh, GrantKind::Refresh).await,
        Spent::Fresh { .. }
    ));
}

/// A shared key is made once and then the same for every caller, even
/// when many ask at once; keys of other names differ.
pub async fn shared_keys(store: &Store) {
    let name = format!("test-{}", tag());
    let keys = futures_join(8, || {
        let (store, name) = (store.clone(), name.clone());
        async move { store.shared_key(&name).await }
    })
    .await;
    let first = keys[0].as_ref().unwrap().clone();
    assert_eq!(first.len(), crate::keys::KEY_LEN);
    for k in &keys {
        assert_eq!(k.as_ref().unwrap(), &first);
    }
    assert_eq!(store.shared_key(&name).await.unwrap(), first);
    let other = store.shared_key(&format!("{name}-other")).await.unwrap();
    assert_ne!(other, first);
}

/// A person holds at most the bound of live tokens for agents: a mint past
/// it is refused, even when many arrive at once; revoked and expired ones
/// do not count, nor other people's, nor an operator's tokens.
pub async fn live_for_agents(store: &Store) {
    let capped = store.clone().with_live_for_agents(3);
    let person = format!("user:p-{}", tag());
    let mint = |person: String, created_at: i64| {
        let capped = capped.clone();
        async move {
            let t = token::generate().unwrap();
            capped
                .insert_token(&NewTokenRow {
                    hash: t.hash,
                    subject: "agent:bot",
                    groups: &[],
                    created_at,
                    expires_at: Some(1000),
                    on_behalf_of: Some(&person),
                    audience: None,
                    oauth_family: None,
                })
                .await
        }
    };
    let ids: Vec<String> = futures_join(3, || mint(person.clone(), 100))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let past = mint(person.clone(), 100).await;
    assert!(
        matches!(&past, Err(crate::StoreError::TooManyForAgents { max: 3, person: p }) if *p == person),
        "{past:?}"
    );
    assert!(
        mint(format!("user:q-{}", tag()), 100).await.is_ok(),
        "another person's own bound"
    );
    let operator = token::generate().unwrap();
    assert!(
        capped
            .insert_token(&NewTokenRow {
                hash: operator.hash,
                subject: "agent:bot",
                groups: &[],
                created_at: 100,
                expires_at: Some(1000),
                on_behalf_of: None,
                audience: None,
                oauth_family: None,
            })
            .await
            .is_ok(),
        "an operator's token is not minted for a person"
    );
    assert!(capped.revoke_token(&ids[0], 110).await.unwrap());
    assert!(
        mint(person.clone(), 120).await.is_ok(),
        "a revoked one is freed"
    );
    assert!(mint(person.clone(), 120).await.is_err());
    // At 1000 every one of them has expired.
    assert!(
        mint(person.clone(), 1000).await.is_ok(),
        "expired ones are freed"
    );
    // An OAuth grant's access tokens count once, however often its client
    // refreshes, and a grant at the bound still refreshes.
    let oauth_person = format!("user:o-{}", tag());
    let access = |family: String| {
        let (capped, person) = (capped.clone(), oauth_person.clone());
        async move {
            let t = token::generate().unwrap();
            capped
                .insert_token(&NewTokenRow {
                    hash: t.hash,
                    subject: "agent:client",
                    groups: &[],
                    created_at: 100,
                    expires_at: Some(1000),
                    on_behalf_of: Some(&person),
                    audience: Some("mcp"),
                    oauth_family: Some(&family),
                })
                .await
        }
    };
    let family = format!("f-{}", tag());
    for _ in 0..5 {
        assert!(
            access(family.clone()).await.is_ok(),
            "a refresh of one grant"
        );
    }
    assert!(mint(oauth_person.clone(), 100).await.is_ok());
    assert!(mint(oauth_person.clone(), 100).await.is_ok());
    assert!(
        mint(oauth_person.clone(), 100).await.is_err(),
        "the grant counted once"
    );
    assert!(
        access(family.clone()).await.is_ok(),
        "its own grant refreshes"
    );
    assert!(
        access(format!("f-{}", tag())).await.is_err(),
        "a new grant counts"
    );
    // Many at once for a fresh person: exactly the bound gets in.
    let fresh = format!("user:r-{}", tag());
    let all = futures_join(12, || mint(fresh.clone(), 100)).await;
    let written = all.iter().filter(|r| r.is_ok()).count();
    assert_eq!(written, 3, "{all:?}");
    assert!(
        all.iter()
            .all(|r| r.is_ok() || matches!(r, Err(crate::StoreError::TooManyForAgents { .. })))
    );
}

/// `n` futures from `make`, run at once on the runtime's threads.
async fn futures_join<T, F>(n: usize, make: impl Fn() -> F) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(make())).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// A change in how providers name people revokes every token minted for
/// a person, and no other.
pub async fn naming(store: &Store) {
    let insert = |subject: &'static str, on_behalf_of, audience| async move {
        let t = token::generate().unwrap();
        store
            .insert_token(&NewTokenRow {
                hash: t.hash,
                subject,
                groups: &[],
                created_at: 10,
                expires_at: None,
                on_behalf_of,
                audience,
                oauth_family: None,
            })
            .await
            .unwrap()
    };
    // Whatever an earlier run left: from here, "oidc https://a x".
    store.record_naming("oidc https://a x", 100).await.unwrap();
    let operator = insert("agent:ci", None, None).await;
    let delegated = insert("agent:claude@alice", Some("user:alice"), None).await;
    let console = insert("user:alice", None, Some("console")).await;
    let unchanged = store.record_naming("oidc https://a x", 200).await.unwrap();
    assert_eq!(unchanged, None);
    let revoked =
        |id: String| async move { store.token_by_id(&id).await.unwrap().unwrap().revoked_at };
    assert_eq!(revoked(delegated.clone()).await, None);
    let changed = store.record_naming("oidc https://a y", 300).await.unwrap();
    assert!(changed.is_some_and(|n| n >= 2), "{changed:?}");
    assert_eq!(revoked(delegated).await, Some(300));
    assert_eq!(revoked(console).await, Some(300));
    assert_eq!(revoked(operator).await, None, "an operator's token stays");
    // Another gateway on the same store, still on the old naming: it may
    // not write a token or a grant for a person any more (a review had
    // one go on minting under the old names), but an operator's token
    // still goes in.
    let old = store.clone_fresh();
    old.record_naming("oidc https://a y", 310).await.unwrap();
    store.record_naming("oidc https://a z", 320).await.unwrap();
    let t = token::generate().unwrap();
    let person = NewTokenRow {
        hash: t.hash,
        subject: "agent:claude@alice",
        groups: &[],
        created_at: 10,
        expires_at: None,
        on_behalf_of: Some("user:alice"),
        audience: None,
        oauth_family: None,
    };
    assert!(matches!(
        old.insert_token(&person).await,
        Err(crate::StoreError::NamingChanged)
    ));
    let grant = crate::OAuthGrantRow {
        hash: token::generate().unwrap().hash.0,
        kind: crate::GrantKind::Refresh,
        client_id: format!("c-{}", token::generate().unwrap().hash.id()),
        family: format!("f-{}", token::generate().unwrap().hash.id()),
        data: "{}".into(),
        created_at: 10,
        expires_at: 1000,
    };
    assert!(matches!(
        old.insert_oauth_grant(&grant).await,
        Err(crate::StoreError::NamingChanged)
    ));
    assert!(matches!(
        old.insert_oauth_grant_once(&grant).await,
        Err(crate::StoreError::NamingChanged)
    ));
    assert!(
        old.insert_token(&NewTokenRow {
            on_behalf_of: None,
            subject: "agent:ops",
            ..person
        })
        .await
        .is_ok()
    );
    // The gateway on the current naming writes both.
    let t = token::generate().unwrap();
    assert!(
        store
            .insert_token(&NewTokenRow {
                hash: t.hash,
                ..person
            })
            .await
            .is_ok()
    );
    assert!(store.insert_oauth_grant_once(&grant).await.unwrap());
    if store.backend() == crate::Backend::Postgres {
        naming_race_on_postgres(store, person.clone()).await;
    }
    // Back to bare everywhere, as a fresh store starts.
    assert!(store.record_naming("", 400).await.unwrap().is_some());
    assert_eq!(store.record_naming("", 500).await.unwrap(), None);
}

pub async fn tokens(store: &Store) {
    let t = token::generate().unwrap();
    let groups = vec!["ci".to_string()];
    let id = store
        .insert_token(&NewTokenRow {
            hash: t.hash,
            subject: "agent:ci",
            groups: &groups,
            created_at: 10,
            expires_at: Some(1000),
            on_behalf_of: Some("user:alice"),
            audience: None,
            oauth_family: None,
        })
        .await
        .unwrap();
    let rec = store.token_by_hash(&t.hash).await.unwrap().unwrap();
    assert_eq!(rec.id, id);
    assert_eq!(rec.groups, groups);
    assert_eq!(rec.on_behalf_of.as_deref(), Some("user:alice"));
    assert!(
        rec.principal_at(20, portcullis_identity::Resource::Other)
            .is_ok()
    );
    assert!(store.revoke_token(&id, 30).await.unwrap());
    assert!(store.revoke_token(&id, 40).await.unwrap());
    let rec = store.token_by_id(&id).await.unwrap().unwrap();
    assert_eq!(rec.revoked_at, Some(30), "the first revocation time stays");
    assert!(
        rec.principal_at(50, portcullis_identity::Resource::Other)
            .is_err()
    );
    assert!(!store.revoke_token("nope", 1).await.unwrap());
    assert!(
        store
            .list_tokens()
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == id)
    );
    // Alice's: minted on her behalf; not bob's.
    let mine = store.tokens_of(Some("user:alice"), 1000).await.unwrap();
    assert!(mine.iter().any(|r| r.id == id));
    assert!(
        mine.iter()
            .all(|r| r.subject == "user:alice" || r.on_behalf_of.as_deref() == Some("user:alice"))
    );
    let bobs = store.tokens_of(Some("user:bob"), 1000).await.unwrap();
    assert!(!bobs.iter().any(|r| r.id == id));
    let all = store.tokens_of(None, 100_000).await.unwrap();
    assert!(all.iter().any(|r| r.id == id));
    assert!(all.windows(2).all(|w| w[0].created_at >= w[1].created_at));
    let other = token::generate().unwrap();
    assert!(store.token_by_hash(&other.hash).await.unwrap().is_none());
}

pub async fn tool_pins(store: &Store) {
    let c = format!("c-{}", tag());
    assert!(store.pin_tool(&c, "search", "h1", 10).await.unwrap());
    assert!(
        !store.pin_tool(&c, "search", "h9", 11).await.unwrap(),
        "first pin wins"
    );
    assert_eq!(store.approve_tool(&c, "search", 12).await.unwrap(), None);
    store.flag_tool(&c, "search", "h2").await.unwrap();
    let p = &store.tool_pins(&c).await.unwrap()[0];
    assert_eq!(
        (p.hash.as_str(), p.pending_hash.as_deref()),
        ("h1", Some("h2"))
    );
    assert_eq!(
        store
            .approve_tool(&c, "search", 13)
            .await
            .unwrap()
            .as_deref(),
        Some("h2")
    );
    let p = &store.tool_pins(&c).await.unwrap()[0];
    assert_eq!((p.hash.as_str(), p.pending_hash.as_deref()), ("h2", None));
    assert!(
        store
            .tool_pins("no-such-connection")
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn reviews_and_jit(store: &Store) {
    let t = tag();
    let r = ReviewRow {
        id: format!("rv_{t}"),
        created_at: 100,
        expires_at: 200,
        requester: format!("agent:{t}"),
        on_behalf_of: None,
        connection: "db".into(),
        kind: "statement".into(),
        action: "DELETE FROM t".into(),
        action_sha256: format!("h{t}"),
        classification: "write".into(),
        state: "pending".into(),
        required: 1,
        approvers: "[\"dba\"]".into(),
        approvals: "[]".into(),
        decided_by: None,
        reason: None,
        used_at: None,
        preview: Some(r#"{"status":"counted","tables":[]}"#.into()),
    };
    store.insert_review(&r).await.unwrap();
    assert_eq!(store.review(&r.id).await.unwrap().unwrap(), r);
    let found = store
        .review_for_action(&r.requester, "db", &r.action_sha256)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, r.id);
    // A decision only applies to the state it was made on.
    let approved = ReviewRow {
        state: "approved".into(),
        decided_by: Some("user:bob".into()),
        ..r.clone()
    };
    assert!(store.update_review(&approved, "pending").await.unwrap());
    assert!(!store.update_review(&approved, "pending").await.unwrap());
    assert!(
        store
            .reviews(Some("approved"))
            .await
            .unwrap()
            .iter()
            .any(|x| x.id == r.id)
    );
    let who = format!("agent:{t}");
    assert_eq!(store.jit_until(&who, "db").await.unwrap(), None);
    store.grant_jit(&who, "db", 500, &r.id).await.unwrap();
    store.grant_jit(&who, "db", 900, &r.id).await.unwrap();
    assert_eq!(store.jit_until(&who, "db").await.unwrap(), Some(900));
}

pub async fn revocation(store: &Store) {
    let fp = format!("{:0>64}", tag());
    assert!(!store.is_cert_revoked(&fp).await.unwrap());
    assert!(store.revoke_cert(&fp, Some("agent:x"), 1).await.unwrap());
    assert!(!store.revoke_cert(&fp, None, 2).await.unwrap());
    assert!(store.is_cert_revoked(&fp).await.unwrap());
}

pub async fn enrolments(store: &Store) {
    let t = tag();
    let (live, old) = (format!("live-{t}"), format!("old-{t}"));
    store
        .insert_enrolment(&format!("e1{t}"), live.as_bytes(), "dc1", 100, 200)
        .await
        .unwrap();
    store
        .insert_enrolment(&format!("e2{t}"), old.as_bytes(), "dc2", 100, 150)
        .await
        .unwrap();
    // Expired: refused; unknown: refused; live: once.
    assert_eq!(
        store.use_enrolment(old.as_bytes(), 160).await.unwrap(),
        None
    );
    assert_eq!(store.use_enrolment(b"nope", 160).await.unwrap(), None);
    assert_eq!(
        store.use_enrolment(live.as_bytes(), 160).await.unwrap(),
        Some((format!("e1{t}"), "dc1".to_string()))
    );
    assert_eq!(
        store.use_enrolment(live.as_bytes(), 161).await.unwrap(),
        None
    );
}

pub async fn audit_and_sessions(store: &Store) {
    let head = store.audit_head().await.unwrap().map(|h| h.0).unwrap_or(0);
    let t = tag();
    let row = |seq: i64| AuditRow {
        seq,
        time_ms: seq,
        prev_hash: format!("p{seq}"),
        hash: format!("h{seq}-{t}"),
        event: "{}".into(),
    };
    let session = SessionRow {
        id: format!("s_{t}"),
        principal: "agent:x".into(),
        connection: "db".into(),
        protocol: "postgres".into(),
        started_at_ms: 1,
        ended_at_ms: None,
        outcome: None,
        recording_digest: None,
        gateway: Some(format!("gw_{t}")),
    };
    store
        .audit_batch(
            &[row(head + 1), row(head + 2)],
            std::slice::from_ref(&session),
        )
        .await
        .unwrap();
    // An admin asks for its end: every gateway's next look sees it, once.
    assert!(
        store
            .request_session_end(&session.id, "user:root", "enough", 100)
            .await
            .unwrap()
    );
    assert!(
        !store
            .request_session_end(&session.id, "user:root", "again", 101)
            .await
            .unwrap()
    );
    assert!(
        !store
            .request_session_end("no-such-session", "user:root", "x", 100)
            .await
            .unwrap()
    );
    let key = format!("session:{}", session.id);
    let ended = store.ended_credentials(100, 100).await.unwrap();
    assert!(
        ended
            .iter()
            .any(|(k, why)| *k == key && why == "ended by user:root: enough"),
        "{ended:?}"
    );
    let later = store.ended_credentials(102, 103).await.unwrap();
    assert!(!later.iter().any(|(k, _)| *k == key));
    // A sequence number is taken: the whole batch fails, nothing half-written.
    let ended = SessionRow {
        ended_at_ms: Some(5),
        outcome: Some("ok".into()),
        ..session.clone()
    };
    assert!(
        store
            .audit_batch(
                &[row(head + 3), row(head + 2)],
                std::slice::from_ref(&ended)
            )
            .await
            .is_err()
    );
    assert_eq!(store.audit_head().await.unwrap().unwrap().0, head + 2);
    store
        .audit_batch(&[row(head + 3)], std::slice::from_ref(&ended))
        .await
        .unwrap();
    let rows = store.audit_rows(head, 10).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![head + 1, head + 2, head + 3]
    );
    let s = store
        .sessions()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.id == session.id)
        .unwrap();
    assert_eq!((s.ended_at_ms, s.outcome.as_deref()), (Some(5), Some("ok")));
    assert_eq!(s.gateway, session.gateway);
}

/// A session left open by a gateway that died is found by that gateway's
/// next run, and by a peer once the dead one's heartbeat is stale by the
/// database's clock; never the asking gateway's own, and never once ended.
pub async fn cut_sessions(store: &Store) {
    let t = tag();
    let (me, previous, peer) = (format!("gw_m{t}"), format!("gw_p{t}"), format!("gw_o{t}"));
    for gw in [&me, &previous, &peer] {
        store.gateway_heartbeat(gw, "https://g", 1).await.unwrap();
    }
    let open = |id: &str, gw: &str| SessionRow {
        id: format!("{id}_{t}"),
        principal: "agent:x".into(),
        connection: "db".into(),
        protocol: "postgres".into(),
        started_at_ms: 1,
        ended_at_ms: None,
        outcome: None,
        recording_digest: None,
        gateway: Some(gw.to_owned()),
    };
    let ended = SessionRow {
        ended_at_ms: Some(2),
        outcome: Some("ok".into()),
        ..open("ended", &previous)
    };
    let rows = [
        open("mine", &me),
        open("previous", &previous),
        open("peer", &peer),
        ended,
    ];
    store.audit_batch(&[], &rows).await.unwrap();
    let found = |v: Vec<SessionRow>| {
        let mut ids: Vec<String> = v
            .into_iter()
            .map(|s| s.id)
            .filter(|id| id.ends_with(&t))
            .collect();
        ids.sort();
        ids
    };
    // Every heartbeat is fresh: only the previous run's.
    let cut = store
        .cut_sessions(Some(&previous), &me, 60, false)
        .await
        .unwrap();
    assert_eq!(found(cut), vec![format!("previous_{t}")]);
    // Every heartbeat counts as stale: the peer's too, never our own.
    let cut = store.cut_sessions(None, &me, -3600, false).await.unwrap();
    assert_eq!(
        found(cut),
        vec![format!("peer_{t}"), format!("previous_{t}")]
    );
}

/// Clients, one-time secrets and families: a code is spent once, reuse
/// is reported with its family, and revoking the family (or the client)
/// revokes its access tokens.
pub async fn oauth(store: &Store) {
    let client = format!("client-{}", tag());
    store
        .insert_oauth_client(&OAuthClientRow {
            id: client.clone(),
            name: "Test client".into(),
            redirect_uris: vec!["http://127.0.0.1/cb".into()],
            created_at: 5,
            revoked_at: None,
        })
        .await
        .unwrap();
    let got = store.oauth_client(&client).await.unwrap().unwrap();
    assert_eq!(got.redirect_uris, ["http://127.0.0.1/cb"]);
    assert!(store.oauth_clients().await.unwrap().contains(&got));
    let family = format!("fam-{}", tag());
    let secret = |n: u8| {
        let mut h = token::generate().unwrap().hash.0;
        h[0] = n;
        h
    };
    let code = secret(1);
    let row = |hash, kind, expires_at| OAuthGrantRow {
        hash,
        kind,
        client_id: client.clone(),
        family: family.clone(),
        data: "{\"k\":1}".into(),
        created_at: 10,
        expires_at,
    };
    store
        .insert_oauth_grant(&row(code, GrantKind::Code, 100))
        .await
        .unwrap();
    // Another kind with the same hash does not match.
    assert_eq!(
        store
            .spend_oauth_grant(&code, GrantKind::Refresh, 20)
            .await
            .unwrap(),
        Spent::Invalid
    );
    assert!(matches!(
        store.spend_oauth_grant(&code, GrantKind::Code, 20).await.unwrap(),
        Spent::Fresh { data, .. } if data == "{\"k\":1}"
    ));
    assert_eq!(
        store
            .spend_oauth_grant(&code, GrantKind::Code, 21)
            .await
            .unwrap(),
        Spent::Reused {
            client_id: client.clone(),
            family: family.clone()
        }
    );
    // Kept once: the second keeping of the same hash is a replay, on
    // every gateway sharing the store.
    let once = secret(7);
    assert!(
        store
            .insert_oauth_grant_once(&row(once, GrantKind::SamlAssertion, 100))
            .await
            .unwrap()
    );
    assert!(
        !store
            .insert_oauth_grant_once(&row(once, GrantKind::SamlAssertion, 100))
            .await
            .unwrap()
    );
    // Expired is invalid, not reuse.
    let old = secret(2);
    store
        .insert_oauth_grant(&row(old, GrantKind::Code, 30))
        .await
        .unwrap();
    assert_eq!(
        store
            .spend_oauth_grant(&old, GrantKind::Code, 30)
            .await
            .unwrap(),
        Spent::Invalid
    );
    // An access token of the family, revoked with it.
    let t = token::generate().unwrap();
    let subject = format!("agent:{client}");
    insert_family_token(store, &t, &subject, &family).await;
    let rec = store.token_by_hash(&t.hash).await.unwrap().unwrap();
    assert_eq!(rec.audience.as_deref(), Some("mcp"));
    let refresh = secret(3);
    store
        .insert_oauth_grant(&row(refresh, GrantKind::Refresh, 1000))
        .await
        .unwrap();
    assert!(store.oauth_family_live(&family, &client).await.unwrap());
    assert_eq!(store.revoke_oauth_family(&family, 40).await.unwrap(), 1);
    assert!(!store.oauth_family_live(&family, &client).await.unwrap());
    // Rows issued after the revocation (an issue racing it) find the
    // family dead when they look.
    let late = secret(6);
    store
        .insert_oauth_grant(&row(late, GrantKind::Refresh, 1000))
        .await
        .unwrap();
    assert!(!store.oauth_family_live(&family, &client).await.unwrap());
    assert!(store.oauth_live_clients().await.unwrap() >= 1);
    assert!(
        store
            .token_by_hash(&t.hash)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    assert_eq!(
        store
            .spend_oauth_grant(&refresh, GrantKind::Refresh, 41)
            .await
            .unwrap(),
        Spent::Invalid
    );
    // Revoking one of a family's access tokens by id (the console's
    // Tokens page, `token revoke`) revokes the grant it came from: its
    // refresh token no longer refreshes (review).
    let family3 = format!("fam-{}", tag());
    let t3 = token::generate().unwrap();
    insert_family_token(store, &t3, &subject, &family3).await;
    let r3 = secret(7);
    store
        .insert_oauth_grant(&OAuthGrantRow {
            family: family3.clone(),
            ..row(r3, GrantKind::Refresh, 1000)
        })
        .await
        .unwrap();
    let id3 = store.token_by_hash(&t3.hash).await.unwrap().unwrap().id;
    assert!(store.revoke_token(&id3, 45).await.unwrap());
    assert!(!store.oauth_family_live(&family3, &client).await.unwrap());
    assert_eq!(
        store
            .spend_oauth_grant(&r3, GrantKind::Refresh, 46)
            .await
            .unwrap(),
        Spent::Invalid
    );
    // Revoking the client revokes the grants of every family it has.
    let family2 = format!("fam-{}", tag());
    let r2 = secret(4);
    store
        .insert_oauth_grant(&OAuthGrantRow {
            family: family2.clone(),
            ..row(r2, GrantKind::Refresh, 1000)
        })
        .await
        .unwrap();
    assert!(store.oauth_family_live(&family2, &client).await.unwrap());
    assert!(store.revoke_oauth_client(&client, 50).await.unwrap());
    assert!(!store.oauth_family_live(&family2, &client).await.unwrap());
    assert!(
        !store
            .revoke_oauth_client("no-such-client", 50)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .oauth_client(&client)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(50)
    );
    assert_eq!(
        store
            .spend_oauth_grant(&r2, GrantKind::Refresh, 51)
            .await
            .unwrap(),
        Spent::Invalid
    );
}

/// Pages of sessions: newest first, filtered, visible to a person (their
/// own and their agents'), never a look-alike name.
/// An MCP access token of OAuth family `family`, for a person.
async fn insert_family_token(store: &Store, t: &token::NewToken, subject: &str, family: &str) {
    store
        .insert_token(&NewTokenRow {
            hash: t.hash,
            subject,
            groups: &[],
            created_at: 10,
            expires_at: Some(i64::MAX / 2),
            on_behalf_of: Some("user:alice"),
            audience: Some("mcp"),
            oauth_family: Some(family),
        })
        .await
        .unwrap();
}

pub async fn session_pages(store: &Store) {
    let t = tag();
    let connection = format!("c_{t}");
    let mk = |i: i64, principal: &str| SessionRow {
        id: format!("sp_{t}_{i}"),
        principal: principal.into(),
        connection: connection.clone(),
        protocol: "postgres".into(),
        started_at_ms: 1_000 + i,
        ended_at_ms: (i % 2 == 0).then_some(2_000 + i),
        outcome: (i % 2 == 0).then(|| "ok".to_string()),
        recording_digest: None,
        gateway: None,
    };
    let people = [
        "user:al_ce",
        "agent:claude@al_ce",
        "agent:x@alxce",
        "user:bob",
    ];
    for i in 0..8 {
        let row = mk(i, people[i as usize % 4]);
        store.session_start(&row).await.unwrap();
        if let Some(end) = row.ended_at_ms {
            store.session_end(&row.id, end, "ok", None).await.unwrap();
        }
    }
    let page = |q: SessionQuery<'static>| async move {
        store
            .sessions_page(&q)
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.id.starts_with("sp_"))
            .map(|s| s.id)
            .collect::<Vec<_>>()
    };
    let conn: &'static str = Box::leak(connection.clone().into_boxed_str());
    let all = page(SessionQuery {
        connection: Some(conn),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(all.len(), 8);
    assert_eq!(all[0], format!("sp_{t}_7"), "newest first");
    let next = page(SessionQuery {
        connection: Some(conn),
        before: Some((1_004, "")),
        limit: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(next, [format!("sp_{t}_3"), format!("sp_{t}_2")]);
    let mine = page(SessionQuery {
        connection: Some(conn),
        visible_to: Some(("user:al_ce", "al_ce")),
        limit: 100,
        ..Default::default()
    })
    .await;
    // `_` is not a wildcard (alxce's agent is not al_ce's), and bob@al_ce's
    // agent is not al_ce's.
    assert_eq!(mine.len(), 4, "{mine:?}");
    // An admin's filter by person is the same relation.
    let by_person = page(SessionQuery {
        connection: Some(conn),
        person: Some("al_ce"),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(by_person, mine);
    let recent = page(SessionQuery {
        connection: Some(conn),
        since_ms: Some(1_004),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(recent.len(), 4, "{recent:?}");
    // Sessions started in one millisecond are not skipped between pages.
    let same = |i: i64| SessionRow {
        id: format!("sq_{t}_{i}"),
        started_at_ms: 5_000,
        ..mk(i, "user:same")
    };
    for i in 0..3 {
        store.session_start(&same(i)).await.unwrap();
    }
    let first = store
        .sessions_page(&SessionQuery {
            principal: Some("user:same"),
            connection: Some(conn),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let last = first.last().unwrap();
    let rest = store
        .sessions_page(&SessionQuery {
            principal: Some("user:same"),
            connection: Some(conn),
            before: Some((last.started_at_ms, last.id.as_str())),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first.len() + rest.len(), 3, "{first:?} {rest:?}");
    let live = page(SessionQuery {
        connection: Some(conn),
        live_only: true,
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(live.len(), 4);
}

pub async fn budget_usage(store: &Store) {
    let t = tag();
    let who = format!("agent:{t}");
    assert_eq!(
        store.usage_since(&who, "g", "rows", 0).await.unwrap(),
        (0, None)
    );
    store.add_usage(&who, "g", "rows", 100, 5).await.unwrap();
    store.add_usage(&who, "g", "rows", 100, 2).await.unwrap();
    store.add_usage(&who, "g", "rows", 130, 1).await.unwrap();
    store
        .add_usage(&who, "g", "requests:GET", 130, 9)
        .await
        .unwrap();
    store
        .add_usage(&who, "other", "rows", 130, 9)
        .await
        .unwrap();
    assert_eq!(
        store.usage_since(&who, "g", "rows", 0).await.unwrap(),
        (8, Some(100))
    );
    assert_eq!(
        store.usage_since(&who, "g", "rows", 101).await.unwrap(),
        (1, Some(130))
    );
    store
        .add_usage(&who, "g", "tables:b", 130, 1)
        .await
        .unwrap();
    store
        .add_usage(&who, "g", "tables:a_%", 131, 1)
        .await
        .unwrap();
    store
        .add_usage(&who, "g", "tables:b", 131, 1)
        .await
        .unwrap();
    assert_eq!(
        store.counters_since(&who, "g", "tables:", 0).await.unwrap(),
        (vec!["a_%".to_string(), "b".to_string()], Some(130))
    );
    assert!(store.prune_usage(101).await.unwrap() >= 1);
    assert_eq!(
        store.usage_since(&who, "g", "rows", 0).await.unwrap(),
        (1, Some(130))
    );
}

pub async fn budget_takes(store: &Store) {
    let who = format!("agent:{}", tag());
    let w = |since, limit| UsageWindow { since, limit };
    // As much as the tightest window has left, and no more.
    let got = store
        .take_usage(&who, "g", "rows", 300, &[w(0, 100), w(250, 10)], 4)
        .await
        .unwrap();
    assert_eq!(
        got,
        Taken {
            granted: 4,
            used: vec![(0, None), (0, None)]
        }
    );
    let got = store
        .take_usage(&who, "g", "rows", 301, &[w(0, 100), w(250, 10)], 50)
        .await
        .unwrap();
    assert_eq!(got.granted, 6);
    assert_eq!(got.used, vec![(4, Some(300)), (4, Some(300))]);
    let got = store
        .take_usage(&who, "g", "rows", 301, &[w(0, 100), w(250, 10)], 1)
        .await
        .unwrap();
    assert_eq!(got.granted, 0);
    assert_eq!(store.usage_since(&who, "g", "rows", 0).await.unwrap().0, 10);

    // Many takes at once (one connection each on a pooled store, as
    // gateways sharing it) never give out more than the limit.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (store, who) = (store.clone(), who.clone());
        set.spawn(async move {
            store
                .take_usage(&who, "g", "writes", 400 + i % 2, &[w(0, 20)], 3)
                .await
                .unwrap()
                .granted
        });
    }
    let mut total = 0;
    while let Some(g) = set.join_next().await {
        total += g.unwrap();
    }
    assert_eq!(total, 20);
    assert_eq!(
        store.usage_since(&who, "g", "writes", 0).await.unwrap().0,
        20
    );

    // Distinct names: known ones pass, a new one past the limit does not,
    // and a refused take records nothing.
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let take = |n: Vec<String>| {
        let (store, who) = (store.clone(), who.clone());
        async move {
            store
                .take_distinct(&who, "g", "tables:", &n, 500, &[w(0, 3), w(490, 3)])
                .await
                .unwrap()
        }
    };
    assert_eq!(take(names(&["a", "b"])).await, Ok(()));
    assert_eq!(take(names(&["b", "c"])).await, Ok(()));
    assert_eq!(
        take(names(&["a", "d"])).await,
        Err(TooMany {
            window: 0,
            seen: 3,
            first: Some(500),
            new: 1
        })
    );
    assert_eq!(take(names(&["c"])).await, Ok(()));
    assert_eq!(
        store
            .counters_since(&who, "g", "tables:", 0)
            .await
            .unwrap()
            .0,
        names(&["a", "b", "c"])
    );
    // Racing: 6 takes of one new name each, 2 places left.
    let who2 = format!("agent:{}", tag());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6 {
        let (store, who2) = (store.clone(), who2.clone());
        set.spawn(async move {
            store
                .take_distinct(&who2, "g", "tables:", &[format!("t{i}")], 500, &[w(0, 2)])
                .await
                .unwrap()
                .is_ok()
        });
    }
    let mut ok = 0;
    while let Some(g) = set.join_next().await {
        ok += usize::from(g.unwrap());
    }
    assert_eq!(ok, 2);
}

/// A review found, on PostgreSQL, a token minted while another gateway's
/// start was recording a new naming, committed after that start's
/// revocation had looked: it survived. The insert now reads the naming
/// row `FOR SHARE`, so it waits for the start and then sees its naming.
async fn naming_race_on_postgres(store: &Store, person: NewTokenRow<'_>) {
    let mine = store.my_naming().expect("recorded above");
    let mut start = store.pool.begin().await.unwrap();
    sqlx::query("UPDATE identity_naming SET naming = 'racing' WHERE id = 1")
        .execute(&mut *start)
        .await
        .unwrap();
    let t = token::generate().unwrap();
    let row = NewTokenRow {
        hash: t.hash,
        ..person
    };
    let insert = store.insert_token(&row);
    let commit = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        start.commit().await.unwrap();
    };
    let (inserted, ()) = tokio::join!(insert, commit);
    assert!(
        matches!(inserted, Err(crate::StoreError::NamingChanged)),
        "{inserted:?}"
    );
    // Put the naming back for the rest of the suite.
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE identity_naming SET naming = '{}' WHERE id = 1",
        mine.replace('\'', "''")
    )))
    .execute(&store.pool)
    .await
    .unwrap();
}
