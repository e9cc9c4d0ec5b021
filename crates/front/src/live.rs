//! Nothing stale: a session ends when what admitted it no longer holds —
//! its credential is revoked or its token expires (on this gateway or any
//! other sharing the store), a config reload takes away its grant or
//! changes its connection or masking, or an admin ends it from the console
//! — within about a second.
//!
//! Sessions register who opened them and on which connection ([`Liveness::
//! watch`]); one poller per gateway ([`Liveness::poll`]) asks the store
//! which credentials ended since it last asked (one query, and none while
//! no session is registered) and tells the sessions holding them; a reload
//! asks every registered session again ([`Liveness::recheck`]). The store
//! is the meeting point, so a revocation written by another gateway or by
//! the CLI is seen the same way. Requests that are admitted each time
//! (HTTP, MCP) are refused at their next request anyway; this ends what
//! runs on: PostgreSQL sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_config::Protocol;
use portcullis_identity::{AuthMethod, Principal};
use tokio::sync::watch;

/// One registered session.
struct Entry {
    /// Its credential's registry key; `None` for credentials the store
    /// cannot revoke (an OIDC token lives until its `exp`).
    key: Option<String>,
    /// `session:ID`: what an admin's request to end it is keyed by.
    session: String,
    principal: Principal,
    connection: String,
    front: Protocol,
    tell: Tell,
}

/// How a registered session is told it must end.
enum Tell {
    /// A session that waits on its [`Watch`] (PostgreSQL's relay).
    Channel(watch::Sender<Option<Ended>>),
    /// A callback run at once, under the registry's lock (so it must be
    /// quick and must not call back into the registry): an HTTP session
    /// marks itself and cuts its connection, with no task of its own.
    Call(Box<dyn Fn(Ended) + Send + Sync>),
}

impl Tell {
    fn send(&self, why: Ended) {
        match self {
            Tell::Channel(tx) => {
                let _ = tx.send(Some(why));
            }
            Tell::Call(f) => f(why),
        }
    }
}

/// A session registered with a callback ([`Liveness::register`]);
/// dropping it deregisters.
pub struct Registration {
    live: Arc<Liveness>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
    }
}

/// Why a live session must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The credential it was opened with was revoked or expired.
    Credential(String),
    /// What admitted it no longer holds: the grant, the connection or
    /// its masking changed (a config reload).
    Access(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Credential(r) | Ended::Access(r) => f.write_str(r),
        }
    }
}

/// What a reload checks a live session against: who, where, through
/// which front.
pub struct LiveSession<'a> {
    pub principal: &'a Principal,
    pub connection: &'a str,
    pub front: Protocol,
}

/// Every open session by registration id. Revocations are rare and the
/// map holds at most the gateway's connection cap, so a linear scan per
/// revocation is cheaper than keeping a second index in step.
type Open = HashMap<u64, Entry>;

#[derive(Default)]
pub struct Liveness {
    open: Mutex<Open>,
    next: AtomicU64,
    /// The config generation in force, set by [`Self::recheck`] under the
    /// registry's lock: a session admitted under an older one and
    /// registered after the recheck ran was never checked, and ends.
    generation: AtomicU64,
}

/// The prefix of a session's key in the registry and in the store's
/// answer to [`portcullis_store::Store::ended_credentials`].
pub const SESSION_KEY: &str = "session:";

/// Where a registered session runs: its id (as the store knows it), its
/// connection and front, and the config generation that admitted it.
pub struct At<'a> {
    pub session: &'a str,
    pub connection: &'a str,
    pub front: Protocol,
    pub generation: u64,
}

/// One session's registration; dropping it deregisters.
pub struct Watch {
    live: Arc<Liveness>,
    id: u64,
    rx: watch::Receiver<Option<Ended>>,
    /// When the credential itself runs out (an OIDC token's `exp`, a
    /// certificate's `notAfter`) and what the caller is told: nobody
    /// revokes it, it just ends.
    expiry: Option<(i64, &'static str)>,
}

impl Watch {
    /// Resolves when the session must end, with the reason.
    pub async fn ended(&self) -> Ended {
        let Some((exp, why)) = self.expiry else {
            return self.told().await;
        };
        let left = exp.saturating_sub(portcullis_identity::unix_now()).max(0) as u64;
        tokio::select! {
            e = self.told() => e,
            _ = tokio::time::sleep(Duration::from_secs(left)) => Ended::Credential(why.into()),
        }
    }

    /// Resolves when the registry says the session must end.
    async fn told(&self) -> Ended {
        let mut rx = self.rx.clone();
        // (The guard `wait_for` returns must not live across an await.)
        let reason = rx.wait_for(Option::is_some).await.ok().map(|r| r.clone());
        match reason {
            Some(Some(r)) => r,
            // `wait_for` returned only once the value is `Some`.
            Some(None) => std::future::pending().await,
            // The sender lives in the registry until this watch is
            // dropped; it cannot go first.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
    }
}

/// The registry key of a principal's credential; `None` for credentials
/// the store cannot revoke (an OIDC token lives until its `exp`).
fn key(p: &Principal) -> Option<String> {
    match &p.via {
        AuthMethod::GatewayToken { token_id, .. } => Some(format!("token:{token_id}")),
        AuthMethod::ClientCertificate { fingerprint, .. } => Some(format!("cert:{fingerprint}")),
        AuthMethod::Oidc { .. } => None,
    }
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // Only a panic while holding it poisons it; the map is whole.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The config generation in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Register a session opened by `principal` on `connection` through
    /// `front`, admitted under config `generation`. One admitted under a
    /// generation a reload has since replaced ends at once: the reload's
    /// recheck could not see it.
    pub fn watch(
        self: &Arc<Self>,
        principal: &Principal,
        session: &str,
        connection: &str,
        front: Protocol,
        generation: u64,
    ) -> Watch {
        let (tx, rx) = watch::channel(None);
        let at = At {
            session,
            connection,
            front,
            generation,
        };
        let id = self.insert(principal, &at, Tell::Channel(tx));
        Watch {
            live: self.clone(),
            id,
            rx,
            expiry: principal.via.expiry(),
        }
    }

    /// Register a session that `on_end` tells when it must end (at once,
    /// under the registry's lock: it must be quick and must not call back
    /// into the registry), admitted under config `generation`.
    pub fn register(
        self: &Arc<Self>,
        principal: &Principal,
        at: &At<'_>,
        on_end: impl Fn(Ended) + Send + Sync + 'static,
    ) -> Registration {
        let id = self.insert(principal, at, Tell::Call(Box::new(on_end)));
        Registration {
            live: self.clone(),
            id,
        }
    }

    fn insert(&self, principal: &Principal, at: &At<'_>, tell: Tell) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut open = self.lock();
        if at.generation < self.generation() {
            tell.send(Ended::Access(
                "the gateway's config changed while this session was being admitted; connect again"
                    .into(),
            ));
        }
        let entry = Entry {
            key: key(principal),
            session: format!("{SESSION_KEY}{}", at.session),
            principal: principal.clone(),
            connection: at.connection.to_owned(),
            front: at.front,
            tell,
        };
        open.insert(id, entry);
        id
    }

    /// End every session holding credential `key`, or the session `key`
    /// names (`session:ID`, an admin's request).
    pub fn end(&self, key: &str, reason: &str) -> usize {
        let open = self.lock();
        let mut n = 0;
        let by_admin = key.starts_with(SESSION_KEY);
        for e in open
            .values()
            .filter(|e| e.key.as_deref() == Some(key) || e.session == key)
        {
            e.tell.send(match by_admin {
                true => Ended::Access(reason.to_string()),
                false => Ended::Credential(reason.to_string()),
            });
            n += 1;
        }
        n
    }

    /// Ask every live session again after a reload to config
    /// `generation`: each one `still` answers with a reason ends.
    pub fn recheck(
        &self,
        generation: u64,
        still: impl Fn(&LiveSession<'_>) -> Option<String>,
    ) -> usize {
        let open = self.lock();
        self.generation.fetch_max(generation, Ordering::AcqRel);
        let mut n = 0;
        for e in open.values() {
            let s = LiveSession {
                principal: &e.principal,
                connection: &e.connection,
                front: e.front,
            };
            if let Some(reason) = still(&s) {
                tracing::info!(principal = %e.principal.subject, connection = %e.connection, %reason, "live session ended");
                e.tell.send(Ended::Access(reason));
                n += 1;
            }
        }
        n
    }

    /// How many sessions are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Ask the store every `every` which credentials ended, until the
    /// returned future is dropped.
    pub async fn poll(self: Arc<Self>, store: portcullis_store::Store, every: Duration) {
        let mut since = portcullis_identity::unix_now();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = portcullis_identity::unix_now();
            // Nothing to end (any live session could be: an admin may end
            // one whatever its credential).
            if self.is_empty() {
                since = now;
                continue;
            }
            // Seconds overlap: a revocation in the second of the last
            // look is seen again rather than missed (ending twice is
            // harmless).
            match store.ended_credentials(since - 1, now).await {
                Ok(ended) => {
                    for (key, reason) in ended {
                        let n = self.end(&key, &reason);
                        if n > 0 {
                            tracing::info!(credential = %key, sessions = n, %reason, "live sessions ended");
                        }
                    }
                    since = now;
                }
                // Kept: the next look covers this one's interval too.
                Err(e) => tracing::warn!(error = %e, "revocations could not be read"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(token: &str) -> Principal {
        Principal {
            subject: "agent:a".into(),
            kind: portcullis_identity::PrincipalKind::Agent,
            groups: vec![],
            via: AuthMethod::GatewayToken {
                token_id: token.into(),
                on_behalf_of: None,
                audience: None,
            },
        }
    }

    fn watch(live: &Arc<Liveness>, token: &str, connection: &str) -> Watch {
        live.watch(&principal(token), "s", connection, Protocol::Postgres, 0)
    }

    async fn still_running(w: &Watch) -> bool {
        tokio::time::timeout(Duration::from_millis(50), w.ended())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn ending_a_credential_ends_only_its_sessions() {
        let live = Arc::new(Liveness::default());
        let a1 = watch(&live, "a", "db");
        let a2 = watch(&live, "a", "db");
        let b = watch(&live, "b", "db");
        assert_eq!(live.end("token:a", "revoked"), 2);
        assert_eq!(a1.ended().await, Ended::Credential("revoked".into()));
        assert_eq!(a2.ended().await, Ended::Credential("revoked".into()));
        assert!(
            still_running(&b).await,
            "another credential's session goes on"
        );
        drop((a1, a2));
        assert_eq!(
            live.end("token:a", "again"),
            0,
            "dropped watches deregister"
        );
        drop(b);
        assert!(live.is_empty());
    }

    #[tokio::test]
    async fn an_admin_ends_one_session_and_not_its_credentials_others() {
        let live = Arc::new(Liveness::default());
        let one = live.watch(&principal("t"), "one", "db", Protocol::Postgres, 0);
        let two = live.watch(&principal("t"), "two", "db", Protocol::Postgres, 0);
        assert_eq!(live.end("session:one", "ended by user:root"), 1);
        assert_eq!(
            one.ended().await,
            Ended::Access("ended by user:root".into())
        );
        assert!(still_running(&two).await);
        assert_eq!(live.end("session:none", "x"), 0);
    }

    #[tokio::test]
    async fn a_recheck_ends_only_the_sessions_it_refuses() {
        let live = Arc::new(Liveness::default());
        let on_a = watch(&live, "t", "a");
        let on_b = watch(&live, "t", "b");
        let n = live.recheck(1, |s| {
            (s.connection == "a").then(|| "grant removed".to_owned())
        });
        assert_eq!(n, 1);
        assert_eq!(on_a.ended().await, Ended::Access("grant removed".into()));
        assert!(still_running(&on_b).await);
        drop(on_a);
        assert_eq!(live.recheck(1, |_| None), 0);
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn a_registered_callback_is_told_once_and_dropping_deregisters() {
        let live = Arc::new(Liveness::default());
        let told = Arc::new(Mutex::new(Vec::new()));
        let t = told.clone();
        let at = At {
            session: "s1",
            connection: "api",
            front: Protocol::Http,
            generation: 0,
        };
        let r = live.register(&principal("t"), &at, move |why| t.lock().unwrap().push(why));
        assert_eq!(live.end("token:t", "revoked"), 1);
        assert_eq!(
            *told.lock().unwrap(),
            vec![Ended::Credential("revoked".into())]
        );
        drop(r);
        assert!(live.is_empty());
    }

    #[tokio::test]
    async fn a_session_admitted_before_a_reload_and_registered_after_ends() {
        let live = Arc::new(Liveness::default());
        live.recheck(3, |_| None);
        let late = live.watch(&principal("t"), "s", "db", Protocol::Postgres, 2);
        assert!(matches!(late.ended().await, Ended::Access(r) if r.contains("config changed")));
        let current = live.watch(&principal("t"), "s", "db", Protocol::Postgres, 3);
        assert!(still_running(&current).await);
    }

    #[tokio::test]
    async fn oidc_sessions_are_rechecked_and_watched_for_an_admins_end() {
        let live = Arc::new(Liveness::default());
        let mut p = principal("x");
        p.via = AuthMethod::Oidc {
            issuer: "https://idp".into(),
            expires_at: None,
        };
        let w = live.watch(&p, "s", "db", Protocol::Postgres, 0);
        // No credential the store can revoke, but an admin may end it.
        assert!(!live.is_empty());
        assert_eq!(live.end("token:x", "revoked"), 0);
        assert_eq!(live.recheck(1, |_| Some("gone".into())), 1);
        assert_eq!(w.ended().await, Ended::Access("gone".into()));
    }

    /// Review: the per-request date check on certificates left a psql
    /// session opened with one running past its `notAfter`.
    #[tokio::test(start_paused = true)]
    async fn a_certificate_session_ends_when_its_certificate_expires() {
        let live = Arc::new(Liveness::default());
        let mut p = principal("x");
        p.via = AuthMethod::ClientCertificate {
            fingerprint: "ab".into(),
            expires_at: Some(portcullis_identity::unix_now() + 30),
        };
        let w = live.watch(&p, "s", "db", Protocol::Postgres, 0);
        let mut ended = Box::pin(w.ended());
        let early = tokio::time::timeout(Duration::from_secs(25), &mut ended).await;
        assert!(early.is_err(), "not before notAfter");
        let ended = tokio::time::timeout(Duration::from_secs(10), ended).await;
        assert!(
            matches!(ended, Ok(Ended::Credential(ref r)) if r.contains("certificate expired")),
            "{ended:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_oidc_session_ends_when_its_token_expires() {
        let live = Arc::new(Liveness::default());
        let mut p = principal("x");
        let exp = portcullis_identity::unix_now() + 30;
        p.via = AuthMethod::Oidc {
            issuer: "https://idp".into(),
            expires_at: Some(exp),
        };
        let w = live.watch(&p, "s", "db", Protocol::Postgres, 0);
        let mut ended = Box::pin(w.ended());
        let early = tokio::time::timeout(Duration::from_secs(25), &mut ended).await;
        assert!(early.is_err(), "not before exp");
        let ended = tokio::time::timeout(Duration::from_secs(10), ended).await;
        assert!(
            matches!(ended, Ok(Ended::Credential(ref r)) if r.contains("expired")),
            "{ended:?}"
        );
    }
}
