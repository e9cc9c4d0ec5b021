//! A session's edges, the same for every protocol: opened (audit entry
//! durable, recording started, index row) before the target is reached,
//! and sealed (recording finished, its digest in the audit chain) at the
//! end.

use std::sync::Arc;
use std::time::Instant;

use portcullis_audit::{AuditError, AuditEvent, AuditLog};
use portcullis_config::Protocol;
use portcullis_record::{Event, Recorder, Writer};
use portcullis_store::SessionRow;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Why a session could not be opened. Either way nothing may reach the
/// target: the front refuses the session (fail closed).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("recording_unavailable: {0}")]
    Recording(String),
}

/// Who opened a session, where, and under which rule.
pub struct Opening {
    pub principal: String,
    pub principal_kind: String,
    pub auth: serde_json::Value,
    pub connection: String,
    /// The front the caller came through (an MCP tool call reaching a
    /// PostgreSQL connection is an `mcp` session).
    pub protocol: Protocol,
    pub peer: String,
    pub tls: serde_json::Value,
    pub rule: String,
    /// The agent the session goes through, if any.
    pub agent: Option<String>,
}

/// How a session ended, as the audit log and the session index say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The caller ended the session (or said goodbye).
    CallerClosed,
    /// The caller went away before the session was handed over.
    CallerGone,
    /// The target ended the session.
    UpstreamClosed,
    /// The target could not be reached or refused the gateway.
    UpstreamError,
    /// The caller broke the protocol.
    CallerProtocolError,
    /// A rule ended the session.
    Refused,
    /// The gateway failed; the caller was told so.
    InternalError,
    /// A one-shot session (an MCP tool call) that succeeded.
    Ok,
    /// A one-shot session that failed.
    Error,
    /// An HTTP session, by the status of its last request.
    HttpStatus(u16),
    /// An HTTP session that ended before any request was answered.
    NoResponse,
    /// The credential the session was opened with was revoked or expired.
    CredentialEnded,
    /// What admitted the session no longer holds (a config reload took
    /// its grant, or changed its connection or masking).
    AccessEnded,
    /// The session's recording could not be written (a full spool): it
    /// ended rather than go on unrecorded.
    RecordingFailed,
    /// The gateway process stopped (killed, crashed) while the session
    /// was open; closed at the next start.
    CutByRestart,
}

impl Outcome {
    /// The label used in the audit log, the index and metrics.
    pub fn label(self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow::Borrowed;
        match self {
            Outcome::CallerClosed => Borrowed("caller_closed"),
            Outcome::CallerGone => Borrowed("caller_gone"),
            Outcome::UpstreamClosed => Borrowed("upstream_closed"),
            Outcome::UpstreamError => Borrowed("upstream_error"),
            Outcome::CallerProtocolError => Borrowed("caller_protocol_error"),
            Outcome::Refused => Borrowed("refused"),
            Outcome::InternalError => Borrowed("internal_error"),
            Outcome::Ok => Borrowed("ok"),
            Outcome::Error => Borrowed("error"),
            Outcome::HttpStatus(s) => std::borrow::Cow::Owned(s.to_string()),
            Outcome::NoResponse => Borrowed("closed"),
            Outcome::CredentialEnded => Borrowed("credential_ended"),
            Outcome::AccessEnded => Borrowed("access_ended"),
            Outcome::RecordingFailed => Borrowed("recording_failed"),
            Outcome::CutByRestart => Borrowed("cut_by_restart"),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// How a session ended.
pub struct Closing {
    pub outcome: Outcome,
    pub error: Option<String>,
    pub bytes_from_caller: u64,
    pub bytes_to_caller: u64,
    pub requests: u64,
}

/// Opens and seals sessions; shared by the fronts.
#[derive(Clone)]
pub struct Sessions {
    audit: AuditLog,
    sink: portcullis_recordings::RecordingSink,
    /// This gateway's id, kept on each session's index row (so a session
    /// this process leaves open is closed at its restart, or by a peer).
    gateway: Option<String>,
    faults: Family<FaultLabels, Counter>,
    /// Refusals of callers with no identity, merged (see
    /// [`crate::unidentified`]).
    unidentified: Arc<std::sync::Mutex<crate::unidentified::Merger>>,
    /// Every such refusal, merged or not.
    unidentified_total: Family<FrontLabel, Counter>,
    /// Set when the gateway starts to stop: sessions its shutdown drops
    /// are left to the next start (`cut_by_restart`), not drop-sealed as
    /// if their callers had left ([`OpenSession::if_dropped`]).
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// The front a refusal came through.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrontLabel {
    pub front: &'static str,
}

/// Why a session was refused for the gateway's own fault.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// `audit_store` or `recording_spool`.
    pub cause: &'static str,
}

/// A session that is open: its id and recorder. Sealed with
/// [`OpenSession::seal`]; one dropped unsealed stays open until the
/// gateway's next start closes it (`cut_by_restart`), unless its owner
/// said how a drop ends it ([`OpenSession::if_dropped`]).
pub struct OpenSession {
    pub id: String,
    pub recorder: Recorder,
    /// What sealing needs; taken by the seal.
    unsealed: Option<Unsealed>,
    /// How a drop before the seal ends the session, if its owner knows.
    if_dropped: Option<Closing>,
    /// The session's trace span (exported when OTLP is on): open until
    /// the session is sealed.
    pub span: tracing::Span,
}

struct Unsealed {
    started: Instant,
    row: SessionRow,
    sessions: Sessions,
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        let Some(closing) = self.if_dropped.take() else {
            return;
        };
        let Some(unsealed) = self.unsealed.take() else {
            return;
        };
        // Dropped by the gateway's own shutdown (its connections closed
        // after the grace period): the caller did not leave, and the next
        // start closes the session `cut_by_restart`.
        if unsealed
            .sessions
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        // Outside a runtime only when the gateway itself is going away:
        // its next start closes the session (`cut_by_restart`).
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Sealed from its parts, not as an `OpenSession`: a runtime that
        // is shutting down drops the task unrun, and an `OpenSession` in
        // it would spawn again from its own drop, without end (a stack
        // overflow in the in-memory tests).
        let (id, recorder, span) = (
            std::mem::take(&mut self.id),
            self.recorder.clone(),
            self.span.clone(),
        );
        rt.spawn(seal_parts(id, recorder, span, unsealed, closing));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_id() -> String {
    let mut b = [0u8; 12];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}

impl Sessions {
    pub fn new(audit: AuditLog, sink: portcullis_recordings::RecordingSink) -> Self {
        Self {
            audit,
            sink,
            gateway: None,
            faults: Family::default(),
            unidentified: Arc::default(),
            unidentified_total: Family::default(),
            stopping: Arc::default(),
        }
    }

    /// The gateway is stopping: what its shutdown drops is not its
    /// callers leaving.
    pub fn gateway_stopping(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sessions opened here are marked as this gateway's.
    pub fn of_gateway(mut self, id: &str) -> Self {
        self.gateway = Some(id.to_owned());
        self
    }

    /// `portcullis_fault_refusals_total{cause}`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "portcullis_fault_refusals",
            "Sessions refused because the gateway could not audit or record them, by cause",
            self.faults.clone(),
        );
        registry.register(
            "portcullis_unidentified_refusals",
            "Callers refused before they were identified (each one, including those merged into one audit entry), by front",
            self.unidentified_total.clone(),
        );
    }

    fn fault(&self, cause: &'static str) {
        self.faults.get_or_create(&FaultLabels { cause }).inc();
    }

    pub fn sink(&self) -> &portcullis_recordings::RecordingSink {
        &self.sink
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Open a session. On error nothing may reach the target: the caller
    /// refuses the session (fail closed).
    pub async fn open(&self, o: Opening) -> Result<OpenSession, SessionError> {
        let id = new_id();
        let row = SessionRow {
            id: id.clone(),
            principal: o.principal.clone(),
            connection: o.connection.clone(),
            protocol: o.protocol.as_str().into(),
            started_at_ms: now_ms(),
            ended_at_ms: None,
            outcome: None,
            recording_digest: None,
            gateway: self.gateway.clone(),
        };
        let span = tracing::debug_span!(
            target: crate::TRACE_TARGET,
            "session",
            otel.name = %format!("{} session", o.protocol.as_str()),
            session.id = %id,
            principal = %o.principal,
            connection = %o.connection,
            protocol = o.protocol.as_str(),
            rule = %o.rule,
            decision = "allowed",
            outcome = tracing::field::Empty,
        );
        // The recording first: a spool that cannot take it refuses the
        // session before any entry says it started.
        let writer = match self.recording(&id) {
            Ok(w) => w,
            Err(e) => {
                // Evidence of the refusal (the store still takes entries).
                self.refusal(
                    Some(o.principal),
                    Some(o.connection),
                    o.protocol,
                    o.peer,
                    e.to_string(),
                )
                .await;
                return Err(e);
            }
        };
        let start = AuditEvent::SessionStart {
            session: id.clone(),
            principal: o.principal.clone(),
            principal_kind: o.principal_kind,
            auth: o.auth,
            connection: o.connection.clone(),
            protocol: o.protocol.as_str().into(),
            peer: o.peer,
            tls: o.tls,
            rule: o.rule,
            agent: o.agent,
        };
        if let Err(e) = self.audit.append_with(&start, Some(row.clone())).await {
            // No session: no recording of one either.
            let path = writer.path().to_path_buf();
            drop(writer);
            let _ = std::fs::remove_file(path);
            self.fault("audit_store");
            return Err(e.into());
        }
        let recorder = Recorder::start(writer);
        let opened = OpenSession {
            id: id.clone(),
            recorder,
            unsealed: Some(Unsealed {
                started: Instant::now(),
                row,
                sessions: self.clone(),
            }),
            if_dropped: None,
            span,
        };
        if let Err(e) = opened.recorder.event(Event::SessionStart {
            session: id,
            principal: o.principal,
            connection: o.connection,
            protocol: o.protocol.as_str().into(),
        }) {
            let e = SessionError::Recording(e.to_string());
            opened.seal(Closing::refused(&e)).await;
            return Err(e);
        }
        Ok(opened)
    }

    /// Close the sessions a gateway left open when its process died:
    /// `previous` (this gateway's id in its last run, known dead: this
    /// process holds its lock), with `unowned` the sessions from before
    /// gateways were recorded, and those of peers whose heartbeat is more
    /// than `stale_secs` old by the store's clock. Never this process's
    /// own. Each gets its end entry (`cut_by_restart`); a recording found
    /// in this spool is sealed as far as it got. Returns how many.
    pub async fn close_cut(
        &self,
        store: &portcullis_store::Store,
        previous: Option<&str>,
        unowned: bool,
        stale_secs: i64,
    ) -> Result<usize, AuditError> {
        let Some(gateway) = &self.gateway else {
            return Ok(0);
        };
        let cut = store
            .cut_sessions(previous, gateway, stale_secs, unowned)
            .await?;
        let n = cut.len();
        for row in cut {
            let digest = self.seal_left_recording(&row.id);
            let by = row
                .gateway
                .clone()
                .unwrap_or_else(|| "an earlier run".into());
            let ended = SessionRow {
                ended_at_ms: Some(now_ms()),
                outcome: Some(Outcome::CutByRestart.label().into_owned()),
                recording_digest: digest.clone(),
                ..row
            };
            let e = AuditEvent::SessionEnd {
                session: ended.id.clone(),
                duration_ms: 0,
                bytes_from_caller: 0,
                bytes_to_caller: 0,
                requests: 0,
                outcome: Outcome::CutByRestart.label().into_owned(),
                error: Some(format!(
                    "gateway {by} stopped while the session was open; closed by {gateway}"
                )),
                recording_digest: digest,
            };
            self.audit.append_with(&e, Some(ended)).await?;
        }
        if n > 0 {
            tracing::warn!(
                sessions = n,
                "closed sessions left open by a gateway that stopped"
            );
        }
        Ok(n)
    }

    /// Seal a recording left in the spool by a process that died.
    fn seal_left_recording(&self, id: &str) -> Option<String> {
        let path = self
            .sink
            .spool()
            .join(format!("{id}.{}", portcullis_recordings::EXT));
        if !path.exists() {
            return None;
        }
        let sealed = Writer::resume(&path).and_then(|mut w| {
            w.event(Event::SessionEnd {
                outcome: Outcome::CutByRestart.label().into_owned(),
            })?;
            Ok(w.seal())
        });
        match sealed {
            Ok((digest, None)) => {
                self.sink.finished(id);
                Some(digest)
            }
            Ok((digest, Some(why))) => {
                tracing::error!(session = %id, %why, "a cut session's recording could not be sealed");
                Some(digest)
            }
            Err(e) => {
                tracing::error!(session = %id, error = %e, "a cut session's recording could not be read");
                None
            }
        }
    }

    /// A new recording in the spool, or why the spool cannot take one.
    fn recording(&self, id: &str) -> Result<Writer, SessionError> {
        let refuse = |reason: String| {
            self.fault("recording_spool");
            SessionError::Recording(reason)
        };
        self.sink.healthy().map_err(refuse)?;
        let sink = self.sink.clone();
        match Writer::create(self.sink.spool(), id) {
            Ok(w) => Ok(w.on_failure(std::sync::Arc::new(move |why| sink.spool_failed(why)))),
            Err(e) => {
                self.sink.spool_failed(&e.to_string());
                Err(refuse(e.to_string()))
            }
        }
    }

    /// Record a refusal (no session was opened).
    /// Evidence of a refusal before any session opened. One of a caller
    /// with no identity is written whole only if it is the first from its
    /// address for its reason in the window, else counted (see
    /// [`crate::unidentified`]): whether it was written whole.
    pub async fn refusal(
        &self,
        principal: Option<String>,
        connection: Option<String>,
        protocol: Protocol,
        peer: String,
        reason: String,
    ) -> bool {
        if principal.is_none() {
            self.unidentified_total
                .get_or_create(&FrontLabel {
                    front: protocol.as_str(),
                })
                .inc();
            let key = crate::unidentified::Key::new(protocol.as_str(), &peer, &reason);
            // Counted only: what an ended window is owed is written by the
            // periodic flush. Written here, the counts taken from the
            // merger went with this request when it was dropped at an
            // await (a reset stream), and a flood's count was lost
            // (review of cancellation, 2026-12-05).
            let whole = self.merger().count(key, Instant::now());
            if !whole {
                return false;
            }
        }
        // A refusal is a span of its own: no session follows it.
        let _span = tracing::debug_span!(
            target: crate::TRACE_TARGET,
            "refusal",
            principal = principal.as_deref().unwrap_or(""),
            connection = connection.as_deref().unwrap_or(""),
            protocol = protocol.as_str(),
            decision = "refused",
            reason = %reason,
        );
        let e = AuditEvent::Refusal {
            principal,
            connection,
            protocol: protocol.as_str().into(),
            peer,
            reason,
        };
        if let Err(err) = self.audit.append(&e).await {
            tracing::error!(error = %err, "audit append failed for a refusal");
        }
        true
    }

    fn merger(&self) -> std::sync::MutexGuard<'_, crate::unidentified::Merger> {
        self.unidentified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Write what merged refusals are owed once their window ended
    /// (called periodically, so a flood that stops is still counted).
    pub async fn flush_refusals(&self) {
        let owed = self.merger().due(Instant::now());
        self.write_repeated(owed).await;
    }

    /// Write every merged refusal not yet written (the gateway stops).
    pub async fn drain_refusals(&self) {
        let owed = self.merger().drain(Instant::now());
        self.write_repeated(owed).await;
    }

    async fn write_repeated(&self, owed: Vec<crate::unidentified::Repeated>) {
        for r in owed {
            tracing::info!(peer = %r.key.peer, front = r.key.protocol, reason = %r.key.reason, count = r.count, seconds = r.seconds, "more callers not authenticated");
            let e = AuditEvent::RefusalsRepeated {
                protocol: r.key.protocol.into(),
                peer: r.key.peer,
                reason: r.key.reason,
                count: r.count,
                seconds: r.seconds,
            };
            if let Err(err) = self.audit.append(&e).await {
                tracing::error!(error = %err, "audit append failed for merged refusals");
            }
        }
    }
}

/// A statement refused inside a session (see [`OpenSession::refused`]).
pub struct Refused<'a> {
    pub principal: &'a str,
    pub connection: &'a str,
    pub rule: &'a str,
    pub class: &'a str,
    /// What the caller sent, as it sent it.
    pub statement: &'a str,
    pub code: &'a str,
    pub reason: &'a str,
}

impl OpenSession {
    /// End the session with `closing` if it is dropped before it is
    /// sealed: for an owner whose future is dropped only when its caller
    /// went away (a proxied MCP call: hyper drops it; a review found such
    /// sessions open, their recordings unsealed, until the next start).
    /// Not for sessions a gateway shutdown may drop: those stay for the
    /// next start's `cut_by_restart` (a re-review found PostgreSQL
    /// sessions stopped by SIGTERM ended `caller_gone`).
    pub fn if_dropped(&mut self, closing: Closing) {
        self.if_dropped = Some(closing);
    }

    /// Evidence of a refusal inside this session: the statement as the
    /// caller sent it goes into the recording, and an audit entry names
    /// the principal, connection, rule and the statement's digest.
    pub async fn refused(&self, r: Refused<'_>) {
        let _ = self.recorder.event(Event::Refused {
            statement: r.statement.to_string(),
            code: r.code.to_string(),
            reason: r.reason.to_string(),
        });
        let digest = hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            r.statement.as_bytes(),
        ));
        let e = AuditEvent::StatementRefused {
            session: self.id.clone(),
            principal: r.principal.to_string(),
            connection: r.connection.to_string(),
            rule: r.rule.to_string(),
            class: r.class.to_string(),
            statement_sha256: digest,
            code: r.code.to_string(),
            reason: r.reason.to_string(),
        };
        let Some(unsealed) = &self.unsealed else {
            return;
        };
        if let Err(err) = unsealed.sessions.audit.append(&e).await {
            tracing::error!(error = %err, "audit append failed for a refused statement");
        }
    }

    /// Finish the recording and seal its digest into the audit chain. A
    /// recording that stopped early (a full spool) is sealed as far as it
    /// got, and the session's end says so whatever else ended it.
    pub async fn seal(mut self, c: Closing) {
        let Some(unsealed) = self.unsealed.take() else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        seal_parts(id, self.recorder.clone(), self.span.clone(), unsealed, c).await;
    }
}

/// [`OpenSession::seal`], from the session's parts.
async fn seal_parts(
    id: String,
    recorder: Recorder,
    span: tracing::Span,
    unsealed: Unsealed,
    c: Closing,
) {
    let Unsealed {
        started,
        row,
        sessions: s,
    } = unsealed;
    let _ = recorder.event(Event::SessionEnd {
        outcome: c.outcome.label().into_owned(),
    });
    let (digest, stopped) = match recorder.seal() {
        Some((d, stopped)) => (Some(d), stopped),
        None => (None, None),
    };
    let (outcome, error) = match stopped {
        Some(reason) => {
            tracing::error!(session = %id, %reason, "the session's recording stopped; the session ended");
            (
                Outcome::RecordingFailed.label().into_owned(),
                Some(format!("recording_failed: {reason}")),
            )
        }
        None => (c.outcome.label().into_owned(), c.error),
    };
    span.record("outcome", outcome.as_str());
    if digest.is_some() {
        s.sink.finished(&id);
    }
    let row = SessionRow {
        ended_at_ms: Some(now_ms()),
        outcome: Some(outcome.clone()),
        recording_digest: digest.clone(),
        ..row
    };
    let e = AuditEvent::SessionEnd {
        session: id,
        duration_ms: started.elapsed().as_millis() as u64,
        bytes_from_caller: c.bytes_from_caller,
        bytes_to_caller: c.bytes_to_caller,
        requests: c.requests,
        outcome,
        error,
        recording_digest: digest,
    };
    if let Err(err) = s.audit.append_with(&e, Some(row)).await {
        tracing::error!(error = %err, "audit append failed at session end");
    }
}

impl Closing {
    /// A session refused by the gateway before anything reached the target.
    pub fn refused(e: &SessionError) -> Self {
        Closing {
            outcome: Outcome::Refused,
            error: Some(e.to_string()),
            bytes_from_caller: 0,
            bytes_to_caller: 0,
            requests: 0,
        }
    }
}
