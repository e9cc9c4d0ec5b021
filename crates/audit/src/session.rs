//! A session's edges, the same for every protocol: opened (audit entry
//! durable, recording started, index row) before the target is reached,
//! and sealed (recording finished, its digest in the audit chain) at the
//! end.

use std::time::Instant;

use portcullis_record::{Event, Recorder, Writer};
use portcullis_store::SessionRow;

use crate::{AuditError, AuditEvent, AuditLog};

/// Who opened a session, where, and under which rule.
pub struct Opening {
    pub principal: String,
    pub principal_kind: String,
    pub auth: serde_json::Value,
    pub connection: String,
    pub protocol: &'static str,
    pub peer: String,
    pub tls: serde_json::Value,
    pub rule: String,
    /// The agent the session goes through, if any.
    pub agent: Option<String>,
}

/// How a session ended.
pub struct Closing {
    pub outcome: String,
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
}

/// A session that is open: its id and recorder.
pub struct OpenSession {
    pub id: String,
    pub recorder: Recorder,
    started: Instant,
    row: SessionRow,
    sessions: Sessions,
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
        Self { audit, sink }
    }

    pub fn sink(&self) -> &portcullis_recordings::RecordingSink {
        &self.sink
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Open a session. On error nothing may reach the target: the caller
    /// refuses the session (fail closed).
    pub async fn open(&self, o: Opening) -> Result<OpenSession, AuditError> {
        let id = new_id();
        let row = SessionRow {
            id: id.clone(),
            principal: o.principal.clone(),
            connection: o.connection.clone(),
            protocol: o.protocol.into(),
            started_at_ms: now_ms(),
            ended_at_ms: None,
            outcome: None,
            recording_digest: None,
        };
        let start = AuditEvent::SessionStart {
            session: id.clone(),
            principal: o.principal.clone(),
            principal_kind: o.principal_kind,
            auth: o.auth,
            connection: o.connection.clone(),
            protocol: o.protocol.into(),
            peer: o.peer,
            tls: o.tls,
            rule: o.rule,
            agent: o.agent,
        };
        self.audit.append_with(&start, Some(row.clone())).await?;
        // Recordings that cannot be stored are not made: fail closed.
        self.sink.healthy().map_err(AuditError::Recording)?;
        let writer = Writer::create(self.sink.spool(), &id)
            .map_err(|e| AuditError::Recording(e.to_string()))?;
        let recorder = Recorder::start(writer);
        recorder
            .event(Event::SessionStart {
                session: id.clone(),
                principal: o.principal,
                connection: o.connection,
                protocol: o.protocol.into(),
            })
            .map_err(|e| AuditError::Recording(e.to_string()))?;
        Ok(OpenSession {
            id,
            recorder,
            started: Instant::now(),
            row,
            sessions: self.clone(),
        })
    }

    /// Record a refusal (no session was opened).
    pub async fn refusal(
        &self,
        principal: Option<String>,
        connection: Option<String>,
        protocol: &str,
        peer: String,
        reason: String,
    ) {
        let e = AuditEvent::Refusal {
            principal,
            connection,
            protocol: protocol.into(),
            peer,
            reason,
        };
        if let Err(err) = self.audit.append(&e).await {
            tracing::error!(error = %err, "audit append failed for a refusal");
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
        if let Err(err) = self.sessions.audit.append(&e).await {
            tracing::error!(error = %err, "audit append failed for a refused statement");
        }
    }

    /// Finish the recording and seal its digest into the audit chain.
    pub async fn seal(self, c: Closing) {
        let _ = self.recorder.event(Event::SessionEnd {
            outcome: c.outcome.clone(),
        });
        let digest = match self.recorder.finish() {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                tracing::error!(error = %e, "recording could not be finished");
                None
            }
            None => None,
        };
        let s = &self.sessions;
        if digest.is_some() {
            s.sink.finished(&self.id);
        }
        let row = SessionRow {
            ended_at_ms: Some(now_ms()),
            outcome: Some(c.outcome.clone()),
            recording_digest: digest.clone(),
            ..self.row
        };
        let e = AuditEvent::SessionEnd {
            session: self.id,
            duration_ms: self.started.elapsed().as_millis() as u64,
            bytes_from_caller: c.bytes_from_caller,
            bytes_to_caller: c.bytes_to_caller,
            requests: c.requests,
            outcome: c.outcome,
            error: c.error,
            recording_digest: digest,
        };
        if let Err(err) = s.audit.append_with(&e, Some(row)).await {
            tracing::error!(error = %err, "audit append failed at session end");
        }
    }
}
