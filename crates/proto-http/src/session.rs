//! HTTP sessions: a caller's connection, per principal and target.
//!
//! Every request is still authenticated, authorised and held for approval
//! on its own; what a keep-alive connection shares is the audited session
//! around them: one session-start entry (durable before the first request
//! is forwarded), one recording with the requests numbered, and one
//! session-end entry sealing the recording's digest when the connection
//! is gone and the last response body has been sent. A request per
//! session made every request pay two committed audit entries and a
//! recording file (see docs/performance.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use portcullis_front::{Closing, Ended, OpenSession, Outcome, Registration};
use portcullis_record::Recorder;
use tokio_util::task::TaskTracker;

/// Who is talking to which target: requests on one connection with the
/// same key share a session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey {
    pub principal: String,
    /// How the principal authenticated (token id, OIDC issuer,
    /// certificate), so two credentials never share a session.
    pub auth: portcullis_identity::AuthMethod,
    pub connection: String,
}

/// At most this many sessions (principal × target) live on one caller
/// connection: each holds a recording file and its flush task until the
/// connection closes.
pub const MAX_PER_CONNECTION: usize = 64;

/// Why a request could not join or open a session.
#[derive(Debug)]
pub(crate) enum SessionError<E> {
    /// The session could not be opened (audit or recording unavailable).
    Open(E),
    /// [`MAX_PER_CONNECTION`] sessions are already open on the connection.
    TooMany,
}

/// The sessions of one caller connection. Lives in [`crate::ConnInfo`].
#[derive(Default)]
pub struct ConnSessions {
    live: tokio::sync::Mutex<HashMap<SessionKey, Arc<LiveSession>>>,
}

impl std::fmt::Debug for ConnSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnSessions")
    }
}

impl ConnSessions {
    /// The session for `key`, opened with `open` if there is none yet.
    /// Opening is serialised per connection, so concurrent first requests
    /// (HTTP/2) share one session.
    /// `register` registers the new session as live with the callback it
    /// is given: when the session must end, it is marked so and the
    /// connection is cut.
    pub(crate) async fn get_or_open<F, Fut, E, R>(
        &self,
        key: SessionKey,
        finishing: &TaskTracker,
        open: F,
        register: R,
    ) -> Result<Arc<LiveSession>, SessionError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<OpenSession, E>>,
        R: FnOnce(&str, Box<dyn Fn(Ended) + Send + Sync>) -> Registration,
    {
        let mut live = self.live.lock().await;
        if let Some(s) = live.get(&key) {
            return Ok(s.clone());
        }
        if live.len() >= MAX_PER_CONNECTION {
            return Err(SessionError::TooMany);
        }
        // Once per connection: off the state every request's future
        // carries (`portcullis_front::cold`).
        let opened = portcullis_front::cold(open())
            .await
            .map_err(SessionError::Open)?;
        let ended: Arc<Mutex<Option<Ended>>> = Arc::default();
        let marks = ended.clone();
        let registration = register(
            &opened.id,
            Box::new(move |why| {
                if let Ok(mut e) = marks.lock() {
                    e.get_or_insert(why);
                }
            }),
        );
        let s = Arc::new(LiveSession {
            recorder: opened.recorder.clone(),
            open: Mutex::new(Some(opened)),
            requests: AtomicU64::new(0),
            bytes_from_caller: AtomicU64::new(0),
            bytes_to_caller: AtomicU64::new(0),
            last: Mutex::new(Last::default()),
            finishing: finishing.clone(),
            ended,
            _registration: registration,
            budget: std::sync::OnceLock::new(),
        });
        live.insert(key, s.clone());
        Ok(s)
    }
}

#[derive(Default)]
struct Last {
    status: u16,
    error: Option<String>,
    /// The last request to end was left by its caller before its answer.
    gone: bool,
}

/// An open session shared by the requests of one connection. Sealed when
/// the last reference goes: the connection has closed and every response
/// body it carried has ended.
pub(crate) struct LiveSession {
    pub recorder: Recorder,
    open: Mutex<Option<OpenSession>>,
    requests: AtomicU64,
    bytes_from_caller: AtomicU64,
    bytes_to_caller: AtomicU64,
    last: Mutex<Last>,
    finishing: TaskTracker,
    /// Why the session was cut, when it was (set by its registration's
    /// callback).
    ended: Arc<Mutex<Option<Ended>>>,
    /// Its place in the live-session registry, left when it is sealed.
    _registration: Registration,
    /// Its grant's budget, taken at its first request.
    pub budget: std::sync::OnceLock<Option<portcullis_front::Budget>>,
}

impl LiveSession {
    /// The audited session's id (`None` once sealed).
    pub fn id(&self) -> Option<String> {
        self.open.lock().ok()?.as_ref().map(|o| o.id.clone())
    }

    /// Number the next request (from 1).
    pub fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A request's response has been sent (or given up on); `gone`: its
    /// caller left before the answer.
    pub fn finished(&self, status: u16, error: Option<String>, bytes: (u64, u64), gone: bool) {
        let (from_caller, to_caller) = bytes;
        self.bytes_from_caller
            .fetch_add(from_caller, Ordering::Relaxed);
        self.bytes_to_caller.fetch_add(to_caller, Ordering::Relaxed);
        if let Ok(mut last) = self.last.lock() {
            last.status = status;
            last.gone = gone;
            if error.is_some() {
                last.error = error;
            }
        }
    }

    /// A request's work was dropped before its answer (hyper drops it
    /// when the caller's connection or HTTP/2 stream goes away), after
    /// `from_caller` bytes of its body came; `gone`: its caller's
    /// connection hung up.
    pub fn abandoned(&self, from_caller: u64, gone: bool) {
        self.bytes_from_caller
            .fetch_add(from_caller, Ordering::Relaxed);
        if gone && let Ok(mut last) = self.last.lock() {
            last.gone = true;
        }
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let Some(open) = self.open.get_mut().ok().and_then(Option::take) else {
            return;
        };
        let last = self.last.get_mut().map(std::mem::take).unwrap_or_default();
        let ended = self.ended.lock().ok().and_then(|mut e| e.take());
        let (outcome, error) = match ended {
            Some(Ended::Credential(why)) => (Outcome::CredentialEnded, Some(why)),
            Some(Ended::Access(why)) => (Outcome::AccessEnded, Some(why)),
            None if last.gone => (Outcome::CallerGone, last.error),
            // The status of the last request; each one's is in the recording.
            None if last.status == 0 => (Outcome::NoResponse, last.error),
            None => (Outcome::HttpStatus(last.status), last.error),
        };
        let closing = Closing {
            outcome,
            error,
            bytes_from_caller: self.bytes_from_caller.load(Ordering::Relaxed),
            bytes_to_caller: self.bytes_to_caller.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        };
        // Drops happen on the runtime's threads; without one (the process
        // is exiting) the end is lost like any crash, and the chain still
        // verifies.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.finishing.spawn_on(open.seal(closing), &rt);
        }
    }
}
