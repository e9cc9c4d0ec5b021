//! Nothing stale: a session opened with a gateway token or a client
//! certificate ends when that credential is revoked or its token expires,
//! within about a second, on this gateway or any other sharing the store.
//!
//! Sessions register the credential they were opened with ([`Liveness::
//! watch`]); one poller per gateway ([`Liveness::poll`]) asks the store
//! which credentials ended since it last asked (one query, and none while
//! no session is registered) and tells the sessions holding them. The
//! store is the meeting point, so a revocation written by another gateway
//! or by the CLI is seen the same way. Requests that authenticate each
//! time (HTTP, MCP) are refused at their next request anyway; this ends
//! what runs on: PostgreSQL sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_identity::{AuthMethod, Principal};
use tokio::sync::watch;

/// The sessions open per credential: each one's id and the sender that
/// tells it why it ends.
type Open = HashMap<String, Vec<(u64, watch::Sender<Option<String>>)>>;

#[derive(Default)]
pub struct Liveness {
    open: Mutex<Open>,
    next: AtomicU64,
}

/// One session's registration; dropping it deregisters.
pub struct Watch {
    live: Arc<Liveness>,
    key: String,
    id: u64,
    rx: watch::Receiver<Option<String>>,
}

impl Watch {
    /// Resolves when the credential has ended, with the reason.
    pub async fn ended(&self) -> String {
        let mut rx = self.rx.clone();
        // (The guard `wait_for` returns must not live across an await.)
        let reason = rx.wait_for(Option::is_some).await.ok().map(|r| r.clone());
        match reason {
            Some(r) => r.unwrap_or_default(),
            // The sender lives in the registry until this watch is
            // dropped; it cannot go first.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut open = self.live.lock();
        if let Some(list) = open.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                open.remove(&self.key);
            }
        }
    }
}

/// The registry key of a principal's credential; `None` for credentials
/// the store cannot revoke (an OIDC token lives until its `exp`).
fn key(p: &Principal) -> Option<String> {
    match &p.via {
        AuthMethod::GatewayToken { token_id, .. } => Some(format!("token:{token_id}")),
        AuthMethod::ClientCertificate { fingerprint } => Some(format!("cert:{fingerprint}")),
        AuthMethod::Oidc { .. } => None,
    }
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // Only a panic while holding it poisons it; the map is whole.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a session opened by `principal`.
    pub fn watch(self: &Arc<Self>, principal: &Principal) -> Option<Watch> {
        let key = key(principal)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        self.lock().entry(key.clone()).or_default().push((id, tx));
        Some(Watch {
            live: self.clone(),
            key,
            id,
            rx,
        })
    }

    /// End every session holding credential `key`.
    pub fn end(&self, key: &str, reason: &str) -> usize {
        let open = self.lock();
        let Some(list) = open.get(key) else { return 0 };
        for (_, tx) in list {
            let _ = tx.send(Some(reason.to_string()));
        }
        list.len()
    }

    fn is_empty(&self) -> bool {
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
            },
        }
    }

    #[tokio::test]
    async fn ending_a_credential_ends_only_its_sessions() {
        let live = Arc::new(Liveness::default());
        let a1 = live.watch(&principal("a")).unwrap();
        let a2 = live.watch(&principal("a")).unwrap();
        let b = live.watch(&principal("b")).unwrap();
        assert_eq!(live.end("token:a", "revoked"), 2);
        assert_eq!(a1.ended().await, "revoked");
        assert_eq!(a2.ended().await, "revoked");
        let not_yet = tokio::time::timeout(Duration::from_millis(50), b.ended()).await;
        assert!(not_yet.is_err(), "another credential's session goes on");
        drop((a1, a2));
        assert_eq!(
            live.end("token:a", "again"),
            0,
            "dropped watches deregister"
        );
        drop(b);
        assert!(live.is_empty());
    }
}
