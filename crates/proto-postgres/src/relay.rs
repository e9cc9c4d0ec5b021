//! The relay: messages both ways until either side ends. Each direction
//! is a loop over whole messages, as many as arrived together, sent on
//! in one write. From the caller, each message is proven and held by the
//! statement rules ([`crate::statements`]), then goes through the
//! inspector chain; a refusal is sent on as a placeholder that fails in
//! protocol order (see [`Pending`]). From the target, each message goes
//! through the chain backwards and on to the caller.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use portcullis_front::{OpenSession, Outcome};
use portcullis_identity::Principal;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::classify::Class;
use crate::frame::{FrameError, Message, tag};
use crate::inspect::{self, Inspector, Refusal};
use crate::io::{Frame, FrameReader, ReadError};
use crate::messages::{self, SqlState, sqlstate};
use crate::statements::{self, Gate};
use crate::upstream::{PgUpstream, UpstreamSession};

/// Placeholder refusals older than this many are forgotten (their error
/// was swallowed by an aborted transaction).
const MAX_PENDING_REFUSALS: usize = 64;

/// What one session's relay and statement rules work with.
#[derive(Clone, Copy)]
pub(crate) struct SessionCtx<'a> {
    pub connection: &'a str,
    pub principal: &'a Principal,
    /// The grant that admitted the session.
    pub rule: &'a str,
    pub upstream: &'a Arc<PgUpstream>,
    pub open: &'a OpenSession,
    pub gate: Option<&'a Gate>,
    /// Whether masking rules apply to this session.
    pub masked: bool,
    /// Makes placeholder statements unguessable, so a caller cannot
    /// forge an error that the gateway would rewrite.
    pub nonce: &'a str,
    /// Largest message accepted from the caller.
    pub max_message: usize,
    /// Statements refused on this connection.
    pub refused: &'a Counter,
    /// Prepared statements to re-prove at each Bind.
    pub prepared: &'a Mutex<crate::statements::Prepared>,
    /// Ends the session when its credential is revoked or expires.
    pub watch: Option<&'a portcullis_front::Watch>,
    /// Its grant's budget, when it has one.
    pub budget: Option<&'a portcullis_front::Budget>,
}

impl SessionCtx<'_> {
    pub(crate) fn prepared(&self) -> std::sync::MutexGuard<'_, crate::statements::Prepared> {
        // Only a panic while holding it poisons it; the table is still whole.
        self.prepared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How the relay ended.
pub(crate) struct RelayEnd {
    pub outcome: Outcome,
    /// The target's session, when it can serve another caller (the caller
    /// said goodbye with nothing in flight and no transaction open).
    pub reusable: Option<UpstreamSession>,
    pub bytes_from_caller: u64,
    pub bytes_to_caller: u64,
}

enum Exit {
    /// The caller sent Terminate.
    CallerTerminated,
    CallerGone,
    UpstreamGone,
    CallerBadFrame(FrameError),
    Refused(Refusal),
    /// The credential the session was opened with ended (revoked,
    /// expired): the reason.
    CredentialEnded(String),
    /// A config reload took what admitted the session: the reason.
    AccessEnded(String),
    Internal,
}

/// Resolves when the session's just-in-time grant has run out: the
/// session ends then, not at its next statement (checked each second;
/// pending for sessions without one).
async fn just_in_time_ended(ctx: &SessionCtx<'_>) -> Exit {
    let Some(gate) = ctx.gate.filter(|g| g.is_just_in_time()) else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if gate
            .jit_until()
            .is_some_and(|until| portcullis_identity::unix_now() >= until)
        {
            return Exit::AccessEnded(format!(
                "just-in-time access to connection \"{}\" ended; reconnect to ask for it again",
                ctx.connection
            ));
        }
    }
}

impl Exit {
    /// The outcome, and the last word for the caller.
    fn outcome(&self, connection: &str) -> (Outcome, Option<Message>) {
        match self {
            Exit::CallerGone | Exit::CallerTerminated => (Outcome::CallerClosed, None),
            Exit::UpstreamGone => (
                Outcome::UpstreamClosed,
                Some(fatal(
                    sqlstate::CONNECTION_FAILURE,
                    &format!("connection \"{connection}\": the target closed the connection"),
                )),
            ),
            Exit::CallerBadFrame(e) => {
                let code = match e {
                    FrameError::TooLong { .. } => sqlstate::PROGRAM_LIMIT,
                    _ => sqlstate::PROTOCOL_VIOLATION,
                };
                let m = fatal(code, &format!("invalid message: {e}"));
                (Outcome::CallerProtocolError, Some(m))
            }
            Exit::Refused(r) => (Outcome::Refused, Some(fatal(r.code, &r.message))),
            Exit::CredentialEnded(why) => (
                Outcome::CredentialEnded,
                Some(fatal(
                    sqlstate::INVALID_AUTHORIZATION,
                    &format!("portcullis: {why}; the session is closed"),
                )),
            ),
            Exit::AccessEnded(why) => (
                Outcome::AccessEnded,
                Some(fatal(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    &format!("portcullis: {why}; the session is closed"),
                )),
            ),
            Exit::Internal => (
                Outcome::InternalError,
                Some(fatal(
                    sqlstate::CONNECTION_FAILURE,
                    "internal error in the gateway",
                )),
            ),
        }
    }
}

/// A message for the caller that ends the session.
pub(crate) fn fatal(code: SqlState, message: &str) -> Message {
    messages::error(true, code, message, None)
}

pub(crate) async fn send<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) {
    let _ = w.write_all(&m.to_bytes()).await;
    let _ = w.flush().await;
}

/// Write what was batched, in one go.
async fn flush_to<W: AsyncWrite + Unpin>(w: &mut W, out: &mut BytesMut, count: &AtomicU64) -> bool {
    count.fetch_add(out.len() as u64, Ordering::Relaxed);
    let ok = w.write_all(out).await.is_ok() && w.flush().await.is_ok();
    out.clear();
    ok
}

/// Whether a ParameterStatus says `default_transaction_read_only` is
/// anything but `on` (PostgreSQL 14 and later report it).
fn guard_reported_off(body: &[u8]) -> bool {
    let mut parts = body.split(|b| *b == 0);
    parts.next() == Some(b"default_transaction_read_only".as_slice())
        && parts.next() != Some(b"on".as_slice())
}

/// A copy-in the relay cannot follow, as the caller's error.
fn copy_unfollowable(e: crate::copy_in::Unfollowable) -> Exit {
    Exit::Refused(Refusal {
        code: sqlstate::PROTOCOL_VIOLATION,
        message: format!("portcullis: {e}; the session is closed"),
    })
}

/// Whether a Query's text is one statement: no `;` before its trailing
/// ones. A `;` inside a literal or comment makes it count as several,
/// which only keeps a change under way longer (fail closed).
fn one_statement(sql: &[u8]) -> bool {
    let end = sql
        .iter()
        .rposition(|b| !b.is_ascii_whitespace() && *b != b';')
        .map_or(0, |i| i + 1);
    !sql[..end].contains(&b';')
}

/// How long the caller's last message may take to be written.
const GOODBYE: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a session over an agent's link waits for the agent to close
/// its side after the caller's goodbye.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a departed caller's schema change is waited for (its target
/// session closing) before proofs resume.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Over an agent's link the target stream is an HTTP/2 stream, and
/// dropping it resets it: whatever is still queued, the caller's
/// Terminate included, is discarded. Waiting for the agent to close its
/// side first lets it see the goodbye, and keep its target session if
/// the caller left it idle.
async fn linger<R: AsyncRead + Unpin>(up_r: &mut FrameReader<R>) {
    let drain = async { while let Ok(Some(_)) = up_r.next().await {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The state both directions share. (Atomics only because the future
/// must be Send; both directions run in one task.)
pub(crate) struct Relay<'a, W> {
    ctx: &'a SessionCtx<'a>,
    /// Both directions write to the caller: results from the target, and
    /// notices about held statements.
    caller_w: tokio::sync::Mutex<W>,
    chain: Mutex<Vec<Box<dyn Inspector>>>,
    pending: Mutex<Pending>,
    /// Approved statements running with their preview's counts checked.
    checks: Mutex<crate::checked::Checks>,
    /// Whether any is (the common path skips the lock).
    checking: AtomicBool,
    /// The budget's rows, bytes and writes, when the grant has one.
    results: Option<crate::budget::Results>,
    /// A result was cut: cancel the target's statement.
    cancel_now: AtomicBool,
    /// The target session's cancel key (pid, secret).
    cancel_key: (i32, i32),
    bytes_from_caller: AtomicU64,
    bytes_to_caller: AtomicU64,
    /// Answers a read of the target's passed before the session ended in
    /// it, delivered with the goodbye ([`Relay::answer_batch`]).
    passed: Mutex<BytesMut>,
    /// Sync points sent (Query, Sync, FunctionCall) that the target
    /// answers, and ReadyForQuery seen: equal means nothing is in flight.
    syncs_sent: AtomicU64,
    /// Which sync points the target ignores inside a COPY FROM STDIN
    /// (changed with `syncs_sent` under its lock).
    copy_in: Mutex<crate::copy_in::CopyIn>,
    /// An extended-protocol message was sent since the last Sync (its
    /// Execute may still be answering).
    unsynced: AtomicBool,
    ready_seen: AtomicU64,
    last_status: AtomicU8,
    /// A statement that may change the schema went to the target and its
    /// transaction has not been seen to end: no statement is proven on
    /// any connection meanwhile, the catalog's proofs are forgotten at
    /// each ReadyForQuery, and once more when it ends (until then other
    /// sessions still see the old schema).
    schema_change: Mutex<Option<crate::catalog::SchemaChange>>,
    /// `schema_change` is one one-statement Query sent alone, and nothing
    /// else since may have changed the schema: if its own ReadyForQuery
    /// (`change_answered_at`) says it failed inside a transaction, it
    /// changed nothing and no savepoint brings it back, so its change ends
    /// there (review: `BEGIN; CALL missing();` left idle held every
    /// read-only caller's proofs until the session closed).
    change_alone: AtomicBool,
    /// The ReadyForQuery (by count) that answers the latest statement of
    /// `schema_change`: only one at or after it can say its transaction
    /// ended. An earlier one answers what was sent before the change
    /// (review: a pipelined `select pg_sleep(0.3)` answered idle after
    /// `BEGIN; CREATE OR REPLACE VIEW …` was sent, and ended the change
    /// while it was uncommitted).
    change_answered_at: AtomicU64,
    /// An ErrorResponse came since the last ReadyForQuery.
    errored: AtomicBool,
    /// The target session was opened read-only: its report that the
    /// guard is off ends the session.
    read_only: bool,
    /// On a connection whose statements are not classified: the prepared
    /// statements whose text may change the schema (a Bind of one runs
    /// it); past [`MAX_SCHEMA_STATEMENTS`], every Bind counts.
    schema_statements: Mutex<SchemaStatements>,
}

/// Prepared statements a session's text may change the schema with.
#[derive(Default)]
struct SchemaStatements {
    names: std::collections::HashSet<Vec<u8>>,
    overflowed: bool,
}

/// Names [`SchemaStatements`] keeps before every Bind counts.
const MAX_SCHEMA_STATEMENTS: usize = 1024;

impl SchemaStatements {
    /// Statement `name` was prepared: whether its text may change the
    /// schema.
    fn note(&mut self, name: &[u8], changes: bool) {
        if !changes {
            self.names.remove(name);
        } else if self.names.len() < MAX_SCHEMA_STATEMENTS {
            self.names.insert(name.to_vec());
        } else {
            self.overflowed = true;
        }
    }

    /// Whether a Bind of statement `name` may change the schema.
    fn runs(&self, name: &[u8]) -> bool {
        self.overflowed || self.names.contains(name)
    }
}

/// A caller's message admitted (what goes to the target, and the answers
/// an approved run is checked against), or refused.
type Admission = Result<(Message, Option<crate::checked::Expected>), Refusal>;

/// What one message from the caller becomes.
enum Step {
    /// Encoded into the batch for the target.
    Sent,
    /// Terminate: the batch ends here.
    Terminate,
}

impl<'a, W: AsyncWrite + Unpin> Relay<'a, W> {
    /// Relay until either side ends.
    pub async fn run<R: AsyncRead + Unpin>(
        ctx: &'a SessionCtx<'a>,
        mut caller_r: FrameReader<R>,
        caller_w: W,
        up: UpstreamSession,
        chain: Vec<Box<dyn Inspector>>,
    ) -> RelayEnd {
        let relay = Relay {
            ctx,
            caller_w: tokio::sync::Mutex::new(caller_w),
            chain: Mutex::new(chain),
            pending: Mutex::new(Pending::default()),
            checks: Mutex::new(Default::default()),
            checking: AtomicBool::new(false),
            results: ctx.budget.map(|_| Default::default()),
            cancel_now: AtomicBool::new(false),
            cancel_key: (up.pid, up.secret),
            bytes_from_caller: AtomicU64::new(0),
            bytes_to_caller: AtomicU64::new(0),
            passed: Mutex::new(BytesMut::new()),
            syncs_sent: AtomicU64::new(0),
            copy_in: Mutex::new(Default::default()),
            unsynced: AtomicBool::new(false),
            ready_seen: AtomicU64::new(0),
            last_status: AtomicU8::new(up.status),
            schema_change: Mutex::new(None),
            change_alone: AtomicBool::new(false),
            change_answered_at: AtomicU64::new(0),
            errored: AtomicBool::new(false),
            read_only: up.read_only,
            schema_statements: Mutex::new(SchemaStatements::default()),
        };
        let UpstreamSession {
            reader: mut up_r,
            writer: mut up_w,
            startup_messages,
            pid,
            secret,
            status: _,
            read_only,
            owner,
            home,
        } = up;
        caller_r.set_max(ctx.max_message);
        let credential_ended = async {
            match ctx.watch {
                Some(w) => match w.ended().await {
                    portcullis_front::Ended::Credential(why) => Exit::CredentialEnded(why),
                    portcullis_front::Ended::Access(why) => Exit::AccessEnded(why),
                },
                None => std::future::pending().await,
            }
        };
        let exit = tokio::select! {
            e = relay.caller_to_target(&mut caller_r, &mut up_w) => e,
            e = relay.target_to_caller(&mut up_r) => e,
            e = credential_ended => e,
            e = just_in_time_ended(ctx) => e,
        };
        // What is still reserved when the session ends.
        relay.budget_settle(true).await;
        let (outcome, reusable, running) = relay.say_goodbye(&exit).await;
        // A schema change whose transaction was not seen to end (the
        // caller left first: a review's Query and Terminate in one write
        // left every proof of the old schema standing for 30 s).
        let change = relay.schema_change.lock().ok().and_then(|mut c| c.take());
        let reusable = if reusable {
            Some(UpstreamSession {
                reader: up_r,
                writer: up_w,
                startup_messages,
                pid,
                secret,
                status: b'I',
                read_only,
                owner,
                home,
            })
        } else {
            // The caller's own Terminate went through unless sessions are
            // kept here; a second one would reach an agent as bytes after
            // the goodbye and cost it the session it could keep.
            let said = matches!(exit, Exit::CallerTerminated) && !ctx.upstream.reuse();
            if !matches!(exit, Exit::UpstreamGone) {
                if running {
                    // A statement still runs: the target reads Terminate
                    // only when it ends, so it is cancelled first, while
                    // this session still holds its place (an agent's
                    // stream share). A review left 38 `pg_sleep`s running
                    // on the target under a share of 2 by killing its
                    // clients. Bounded by the connection's timeout.
                    if let Err(e) = ctx.upstream.cancel(pid, secret).await {
                        tracing::warn!(connection = %ctx.connection, error = %e, "cancelling the departed caller's statement failed");
                    }
                    // A statement may catch the cancel, and a caller may
                    // have turned off the check that ends it once its
                    // client is gone (review, 2026-12-05): ended for
                    // certain a little later, on a session of our own.
                    ctx.upstream.end_for_certain(pid);
                }
                // Tell the target we are done, so its backend ends now.
                crate::upstream::goodbye(&mut up_w, !said).await;
                if said && ctx.upstream.agent().is_some() {
                    linger(&mut up_r).await;
                }
                if change.is_some() {
                    // It ends (commits or not) before the target's
                    // backend reads the goodbye and closes.
                    let drain = async { while let Ok(Some(_)) = up_r.next().await {} };
                    let _ = tokio::time::timeout(SETTLE, drain).await;
                }
            }
            None
        };
        // Every reading is stale from here on; proofs resume.
        drop(change);
        RelayEnd {
            outcome,
            reusable,
            bytes_from_caller: relay.bytes_from_caller.load(Ordering::Relaxed),
            bytes_to_caller: relay.bytes_to_caller.load(Ordering::Relaxed),
        }
    }

    /// The caller's last word; the outcome, whether the target's session
    /// may serve another caller, and whether a statement may still run on
    /// it (sent and not answered with ReadyForQuery).
    async fn say_goodbye(&self, exit: &Exit) -> (Outcome, bool, bool) {
        let (outcome, last) = exit.outcome(self.ctx.connection);
        // Bounded: a caller that stops reading must not keep the target's
        // session, its transaction and its locks (review: a revoked
        // caller holding ACCESS EXCLUSIVE with a full receive buffer kept
        // it until it closed its socket). What follows cancels and ends
        // the target's session.
        let mut out = self
            .passed
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        if let Some(m) = last {
            m.encode(&mut out);
        }
        let bye = async {
            let mut w = self.caller_w.lock().await;
            // One write: the answers passed before the end, then the
            // goodbye, so a write cut short by the bound never leaves
            // half an answer in front of the refusal.
            if !out.is_empty() {
                flush_to(&mut *w, &mut out, &self.bytes_to_caller).await;
            }
            let _ = w.shutdown().await;
        };
        if tokio::time::timeout(GOODBYE, bye).await.is_err() {
            tracing::info!(connection = %self.ctx.connection, "the caller did not read the session's last message; closed");
        }
        let running = !self.nothing_in_flight();
        let idle = !running && self.last_status.load(Ordering::Relaxed) == b'I';
        let no_refusals = self
            .pending
            .lock()
            .map(|p| p.waiting.is_empty())
            .unwrap_or(false);
        let reusable = self.ctx.upstream.reuse()
            && matches!(exit, Exit::CallerTerminated)
            && idle
            && no_refusals;
        (outcome, reusable, running)
    }

    /// Caller → target, until either side ends.
    async fn caller_to_target<R, UW>(&self, caller_r: &mut FrameReader<R>, up_w: &mut UW) -> Exit
    where
        R: AsyncRead + Unpin,
        UW: AsyncWrite + Unpin,
    {
        let mut out = BytesMut::new();
        loop {
            let mut next = match caller_r.next_or_large(&[tag::COPY_DATA], STREAM_OVER).await {
                Ok(Some(Frame::Whole(m))) => Some(m),
                Ok(Some(Frame::Large { tag, len })) => {
                    if !flush_to(up_w, &mut out, &self.bytes_from_caller).await {
                        return Exit::UpstreamGone;
                    }
                    if let Err(exit) = self.pass_large(caller_r, up_w, tag, len).await {
                        return exit;
                    }
                    continue;
                }
                Ok(None) => return Exit::CallerGone,
                Err(ReadError::Frame(e)) => return Exit::CallerBadFrame(e),
                Err(_) => return Exit::CallerGone,
            };
            let mut terminate = false;
            while let Some(m) = next.take() {
                match self.on_caller_message(m, &mut out, up_w).await {
                    Ok(Step::Sent) => {}
                    Ok(Step::Terminate) => {
                        terminate = true;
                        break;
                    }
                    Err(exit) => return exit,
                }
                next = match caller_r.buffered() {
                    Ok(m) => m,
                    Err(e) => return Exit::CallerBadFrame(e),
                };
            }
            if !flush_to(up_w, &mut out, &self.bytes_from_caller).await {
                return Exit::UpstreamGone;
            }
            if terminate {
                return Exit::CallerTerminated;
            }
        }
    }

    /// A large COPY row from the caller, passed on as it arrives (no
    /// statement in it to prove) and
    /// recorded piece by piece; a piece that cannot be recorded ends the
    /// session before it is sent.
    async fn pass_large<R, UW>(
        &self,
        caller_r: &mut FrameReader<R>,
        up_w: &mut UW,
        tag: u8,
        len: usize,
    ) -> Result<(), Exit>
    where
        R: AsyncRead + Unpin,
        UW: AsyncWrite + Unpin,
    {
        self.count_sync_points(tag)?;
        let mut buf = BytesMut::with_capacity(STREAM_CHUNK + 5);
        buf.extend_from_slice(&[tag]);
        buf.extend_from_slice(&(len as u32 + 4).to_be_bytes());
        let mut text = Utf8Pieces::default();
        let mut left = len;
        while left > 0 {
            let chunk = caller_r
                .body_chunk(left, STREAM_CHUNK)
                .await
                .map_err(|_| Exit::CallerGone)?;
            left -= chunk.len();
            let event = portcullis_record::Event::PgCopyData {
                from_caller: true,
                data: text.push(&chunk, left == 0),
            };
            if let Err(e) = self.ctx.open.recorder.event(event) {
                return Err(Exit::Refused(Refusal {
                    code: sqlstate::CONNECTION_FAILURE,
                    message: format!(
                        "portcullis: the session cannot be recorded ({e}); it is closed"
                    ),
                }));
            }
            buf.extend_from_slice(&chunk);
            if !flush_to(up_w, &mut buf, &self.bytes_from_caller).await {
                return Err(Exit::UpstreamGone);
            }
        }
        Ok(())
    }

    /// One message from the caller: in protocol order, admitted (proven,
    /// counted, held where a rule says, inspected), then into `out`, or
    /// refused in its place.
    async fn on_caller_message<UW: AsyncWrite + Unpin>(
        &self,
        m: Message,
        out: &mut BytesMut,
        up_w: &mut UW,
    ) -> Result<Step, Exit> {
        let tag = m.tag;
        self.in_protocol_order(&m)?;
        // A Bind too: a statement prepared before a change and bound
        // after it runs the new definitions (review: bound with no Parse
        // or Query between, it was read by its old sources).
        if self.ctx.masked && matches!(tag, tag::QUERY | tag::PARSE | tag::BIND) {
            self.fresh_mask_catalog().await?;
        }
        let span = self.statement_span(tag);
        let (class, admitted) = self.admit(&m, out, up_w).await?;
        if let Some(c) = class {
            span.record("class", c.as_str());
        }
        let decision = if admitted.is_ok() {
            "allowed"
        } else {
            "refused"
        };
        span.record("decision", decision);
        drop(span);
        match admitted {
            Ok((passed, counts)) => self.pass(passed, class, counts, out)?,
            Err(refusal) => self.answer_refused(&m, refusal, class, out).await?,
        }
        self.count_sync_points(tag)?;
        if tag == tag::TERMINATE {
            if self.ctx.upstream.reuse() {
                // Not forwarded: the session may serve the next caller.
                out.truncate(out.len() - 5);
            }
            return Ok(Step::Terminate);
        }
        Ok(Step::Sent)
    }

    /// The masker's catalog as it is now, before a statement: closed
    /// while a schema change is under way, read again once its reading
    /// is stale ([`crate::masking::Need`]); closed too when it cannot be
    /// read (fail closed: outputs masked whole).
    async fn fresh_mask_catalog(&self) -> Result<(), Exit> {
        let need = {
            let chain = self.chain.lock().map_err(|_| Exit::Internal)?;
            chain.iter().find_map(|i| i.mask_catalog_need())
        };
        let renewed = match need {
            None => return Ok(()),
            Some(crate::masking::Need::Close) => None,
            Some(crate::masking::Need::Renew(rule)) => {
                match crate::masking::renew(&rule, self.ctx.upstream).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(connection = self.ctx.connection, error = %e, "the masker's catalog could not be read again: outputs are masked whole until it can");
                        None
                    }
                }
            }
        };
        let Some((catalog, reading)) = renewed else {
            return self.close_mask_catalog();
        };
        let mut chain = self.chain.lock().map_err(|_| Exit::Internal)?;
        for i in chain.iter_mut() {
            i.mask_catalog_renew(catalog.clone(), reading);
        }
        Ok(())
    }

    /// Every relation unknown to the masker (outputs masked whole) until
    /// its catalog is read again.
    fn close_mask_catalog(&self) -> Result<(), Exit> {
        let mut chain = self.chain.lock().map_err(|_| Exit::Internal)?;
        chain.iter_mut().for_each(|i| i.mask_catalog_close());
        Ok(())
    }

    /// Messages a session must not send where `m` comes: the session is
    /// closed.
    /// - A simple query or fast-path call inside an extended batch not yet
    ///   ended by Sync, on every connection: after an error the target
    ///   skips it without an answer, and the count of answers due (which
    ///   approved runs' checks, the end of a schema change and whether a
    ///   statement still runs are read from) would be off for the rest
    ///   of the session (re-review; review round 5 ended a schema change
    ///   early through it on a full-access connection). No driver sends
    ///   one there.
    /// - On a guarded session, anything but its Execute (or Close) after
    ///   an approved statement's Bind.
    fn in_protocol_order(&self, m: &Message) -> Result<(), Exit> {
        if matches!(m.tag, tag::QUERY | tag::FUNCTION_CALL) && self.unsynced.load(Ordering::Relaxed)
        {
            return Err(Exit::Refused(Refusal {
                code: sqlstate::PROTOCOL_VIOLATION,
                message: "portcullis: a simple query or function call was sent inside an extended-protocol batch before its Sync; the session is closed".into(),
            }));
        }
        if self.checking.load(Ordering::Relaxed)
            && self.checks.lock().map_err(|_| Exit::Internal)?.blocks(m)
        {
            return Err(Exit::Refused(Refusal {
                code: sqlstate::PROTOCOL_VIOLATION,
                message: "portcullis: an approved statement's portal must be run by its Execute (or closed) before anything else is sent; the session is closed".into(),
            }));
        }
        Ok(())
    }

    /// `m` proven (its class, where the connection classifies
    /// statements), counted against the grant's budget, held where a rule
    /// says, and through the inspectors: what goes to the target (with
    /// the answers an approved run is checked against), or the refusal.
    async fn admit<UW: AsyncWrite + Unpin>(
        &self,
        m: &Message,
        out: &mut BytesMut,
        up_w: &mut UW,
    ) -> Result<(Option<Class>, Admission), Exit> {
        let checked = statements::check(self.ctx, m).await;
        let class = checked
            .as_ref()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.class));
        let checked = match checked {
            Ok(c) => self.budget_gate(m, class).await.map(|()| c),
            Err(r) => Err(r),
        };
        let gated = match (checked, self.ctx.gate) {
            (Err(refusal), _) => Err(refusal),
            (Ok(checked), Some(g)) => {
                g.observe(m, class);
                // What was batched before goes first: only this statement waits.
                if g.may_wait(m)
                    && !out.is_empty()
                    && !flush_to(up_w, out, &self.bytes_from_caller).await
                {
                    return Err(Exit::UpstreamGone);
                }
                g.admit(m, checked.as_ref(), self.ctx.upstream, &self.caller_w)
                    .await
            }
            (Ok(_), None) => Ok(m.clone().into()),
        };
        let admission = match gated {
            Err(refusal) => Err(refusal),
            Ok(admitted) => {
                let counts = admitted.checked;
                if self.ctx.masked && self.text_changes_schema_of(&admitted.message, class) {
                    // Statements after a schema change in one text are
                    // not seen between: the masker reads this text under
                    // a closed catalog (review: a view replaced and read
                    // in one Query returned the protected column).
                    self.close_mask_catalog()?;
                }
                self.inspect_frontend(admitted.message)?
                    .map(|passed| (passed, counts))
            }
        };
        Ok((class, admission))
    }

    /// An admitted message into `out`; one that may change the schema
    /// makes the catalog's proofs end once it is done.
    fn pass(
        &self,
        passed: Message,
        class: Option<Class>,
        counts: Option<crate::checked::Expected>,
        out: &mut BytesMut,
    ) -> Result<(), Exit> {
        let changes_schema = self.may_change_schema(&passed, class)
            || self
                .ctx
                .gate
                .is_some_and(|g| g.binds_schema_change(&passed));
        if changes_schema {
            self.counts_exact("a schema change")?;
            let mut change = self.schema_change.lock().map_err(|_| Exit::Internal)?;
            // Alone: nothing else in flight, so the next ReadyForQuery is
            // its own whatever the counts say (review: a Sync the target
            // ignored, or a Query it skipped, put the counts out of step
            // and a later statement's error "failed" a change that had
            // succeeded). Counts that run ahead of the target never come
            // level again: no change is taken as alone after that.
            let alone = change.is_none()
                && passed.tag == tag::QUERY
                && self.nothing_in_flight()
                && one_statement(messages::cstr(&passed.body));
            // Counted after this message: its answer is the next sync
            // point's ReadyForQuery.
            let ends_at = self.syncs_sent.load(Ordering::Relaxed) + 1;
            self.change_alone.store(alone, Ordering::Relaxed);
            self.change_answered_at
                .fetch_max(ends_at, Ordering::Relaxed);
            change.get_or_insert_with(crate::catalog::SchemaChange::begin);
        }
        self.send_checked(passed, counts, out)
    }

    /// A refused message's stand-in into `out`, answered in protocol
    /// order; a refused message that has no stand-in ends the session.
    async fn answer_refused(
        &self,
        m: &Message,
        refusal: Refusal,
        class: Option<Class>,
        out: &mut BytesMut,
    ) -> Result<(), Exit> {
        if !matches!(
            m.tag,
            tag::QUERY | tag::PARSE | tag::BIND | tag::FUNCTION_CALL
        ) {
            return Err(Exit::Refused(refusal));
        }
        let stand_in = self.refuse(m, refusal, class).await;
        // The stand-in goes through the chain too, so every inspector
        // sees what the target will answer.
        match self.inspect_frontend(stand_in)? {
            Ok(m) => {
                m.encode(out);
                Ok(())
            }
            Err(_) => Err(Exit::Internal),
        }
    }

    /// A span per statement, exported over OTLP when asked: who, where,
    /// its class and the decision; never its text.
    fn statement_span(&self, tag: u8) -> tracing::Span {
        if !matches!(tag, tag::QUERY | tag::PARSE | tag::FUNCTION_CALL) {
            return tracing::Span::none();
        }
        tracing::debug_span!(
            target: portcullis_front::TRACE_TARGET,
            "pg_statement",
            otel.name = "SQL statement",
            principal = %self.ctx.principal.subject,
            connection = self.ctx.connection,
            class = tracing::field::Empty,
            decision = tracing::field::Empty,
        )
    }

    /// What was sent toward a sync point, before it goes: the target
    /// answers a Query, a Sync or a fast-path call with ReadyForQuery
    /// (but for a Sync it ignores inside a copy-in), and an extended
    /// message leaves the session unsynced until the next Sync. A
    /// copy-in whose answers cannot be followed closes the session.
    fn count_sync_points(&self, tag: u8) -> Result<(), Exit> {
        let mut copy_in = self.copy_in.lock().map_err(|_| Exit::Internal)?;
        let counted = copy_in.caller(tag).map_err(copy_unfollowable)?;
        if !counted && tag == tag::SYNC {
            return Ok(());
        }
        if counted {
            self.syncs_sent.fetch_add(1, Ordering::Relaxed);
            if let Some(res) = &self.results {
                res.names
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sync_point(tag == tag::QUERY);
            }
        }
        match tag {
            tag::SYNC => self.unsynced.store(false, Ordering::Relaxed),
            // (Not Flush: alone it starts nothing, and libpq's pipeline
            // mode sends one before a simple query; re-review round 5.)
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE => {
                self.unsynced.store(true, Ordering::Relaxed)
            }
            _ => {}
        }
        Ok(())
    }

    /// What a message from the target says of the sync points counted
    /// around a copy-in (see [`crate::copy_in`]).
    fn follow_copy_in(&self, tag: u8) -> Result<(), Exit> {
        use crate::copy_in::Adjust;
        if !matches!(
            tag,
            tag::COPY_IN_RESPONSE
                | tag::COMMAND_COMPLETE
                | tag::ERROR_RESPONSE
                | tag::READY_FOR_QUERY
        ) {
            return Ok(());
        }
        let mut copy_in = self.copy_in.lock().map_err(|_| Exit::Internal)?;
        match copy_in.target(tag).map_err(copy_unfollowable)? {
            Adjust::None => {}
            Adjust::TakeBack(n) => {
                // Anything counted after the copy's Sync would move back a
                // place now, and forward again if the copy fails before
                // the target reads that Sync: a checked run's answers, or
                // where a schema change ends (review: an extended change
                // pipelined behind the COPY was taken as ended at the
                // Sync's late answer, before it ran). No driver sends
                // either before the copy-in begins.
                let front = self.ready_seen.load(Ordering::Relaxed) + 1;
                let change_after = self.change_answered_at.load(Ordering::Relaxed) >= front
                    && self
                        .schema_change
                        .lock()
                        .map_err(|_| Exit::Internal)?
                        .is_some();
                if self.checking.load(Ordering::Relaxed) || change_after {
                    return Err(copy_unfollowable(crate::copy_in::Unfollowable::Pipelined));
                }
                self.syncs_sent.fetch_sub(n, Ordering::Relaxed);
                self.unsynced.store(true, Ordering::Relaxed);
            }
            Adjust::CountAgain(n) => {
                self.syncs_sent.fetch_add(n, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Whether the counts may have run ahead of the target for good: a
    /// statement that needs them exact closes the session instead
    /// (review round 5's LOW-A: left running ahead, a schema change
    /// stayed under way, holding every read-only caller's proofs, until
    /// the session ended).
    fn counts_exact(&self, what: &str) -> Result<(), Exit> {
        let unsure = self.copy_in.lock().map_err(|_| Exit::Internal)?.unsure();
        if !unsure {
            return Ok(());
        }
        Err(Exit::Refused(Refusal {
            code: sqlstate::PROTOCOL_VIOLATION,
            message: format!(
                "portcullis: {what} cannot be followed on this session (whether the target answers a Sync sent inside its COPY FROM STDIN is not known while the copy runs, nor after it failed, so its answers may not be matched to what was sent); the session is closed: run it on a new one"
            ),
        }))
    }

    /// Every sync point sent is answered and no extended message waits
    /// for a Sync.
    fn nothing_in_flight(&self) -> bool {
        self.syncs_sent.load(Ordering::Relaxed) == self.ready_seen.load(Ordering::Relaxed)
            && !self.unsynced.load(Ordering::Relaxed)
    }

    /// What the target's answers say of the Parses a budget took as reads
    /// (see [`crate::budget::Names`]): an error, and the point where every
    /// sync point sent is answered.
    fn names_follow_target(&self, res: &crate::budget::Results, tag: u8) {
        let names = || res.names.lock().unwrap_or_else(|e| e.into_inner());
        match tag {
            tag::ERROR_RESPONSE => names().target_error(),
            tag::READY_FOR_QUERY => {
                // This one not yet counted in `ready_seen`.
                let idle = self.syncs_sent.load(Ordering::Relaxed)
                    == self.ready_seen.load(Ordering::Relaxed) + 1
                    && !self.unsynced.load(Ordering::Relaxed);
                if idle {
                    names().idle();
                }
            }
            _ => {}
        }
    }

    /// Encode `m` for the target: an approved statement whose preview
    /// counted rows runs with the counts checked before it commits (see
    /// [`crate::checked`]; after the chain: inspectors and the recording
    /// see the caller's own messages).
    fn send_checked(
        &self,
        m: Message,
        counts: Option<crate::checked::Expected>,
        out: &mut BytesMut,
    ) -> Result<(), Exit> {
        let Some(expected) = counts else {
            m.encode(out);
            if !self.checking.load(Ordering::Relaxed) {
                return Ok(());
            }
            let mut checks = self.checks.lock().map_err(|_| Exit::Internal)?;
            // After the caller's Execute of an approved Bind: its check.
            for c in checks
                .after_caller(self.ctx.nonce, &m)
                .into_iter()
                .flatten()
            {
                c.encode(out);
            }
            return Ok(());
        };
        self.counts_exact("an approved statement's checked run")?;
        let mut checks = self.checks.lock().map_err(|_| Exit::Internal)?;
        self.checking.store(true, Ordering::Relaxed);
        let in_flight = self
            .syncs_sent
            .load(Ordering::Relaxed)
            .saturating_sub(self.ready_seen.load(Ordering::Relaxed));
        let too_many = || {
            Exit::Refused(Refusal {
                code: sqlstate::PROGRAM_LIMIT,
                message: format!(
                    "portcullis: more than {} approved statements in flight on one session",
                    crate::checked::MAX_IN_FLIGHT
                ),
            })
        };
        match m.tag {
            tag::QUERY => {
                let sql = messages::query_text(&m).ok_or(Exit::Internal)?;
                let text = checks
                    .queue(&sql, self.ctx.nonce, expected, in_flight)
                    .ok_or_else(too_many)?;
                messages::query(&text).encode(out);
            }
            tag::BIND => {
                let portal = messages::bind(&m.body).ok_or(Exit::Internal)?.portal;
                let before = checks
                    .queue_bound(&portal, self.ctx.nonce, expected, in_flight)
                    .ok_or_else(too_many)?;
                for b in before {
                    b.encode(out);
                }
                m.encode(out);
            }
            _ => m.encode(out),
        }
        Ok(())
    }

    /// The grant's budget before `m` (of `class`) goes on: a write is
    /// counted (refused when none is left), and before a statement runs
    /// the rows and bytes it may still return are read from the store.
    async fn budget_gate(&self, m: &Message, class: Option<Class>) -> Result<(), Refusal> {
        use portcullis_policy::budget::Measure;
        let (Some(b), Some(_)) = (self.ctx.budget, &self.results) else {
            return Ok(());
        };
        let text = match m.tag {
            tag::QUERY => messages::query_text(m),
            tag::PARSE => messages::parse_text(m).map(|(_, sql)| sql),
            _ => None,
        };
        if b.counts(Measure::Tables)
            && let Some(sql) = &text
        {
            self.budget_tables(b, sql).await?;
        }
        self.note_unseen_names(m, text.as_deref(), class);
        self.count_writes(b, m, text.as_deref(), class).await?;
        if matches!(m.tag, tag::QUERY | tag::EXECUTE | tag::FUNCTION_CALL)
            && (b.counts(Measure::Rows) || b.counts(Measure::Bytes))
        {
            self.reserve_results(b, m).await?;
        }
        Ok(())
    }

    /// What may create a named statement unseen: SQL PREPARE (found in the
    /// text, whatever the parser makes of it), or code the gateway cannot
    /// read. From then on a named statement is not trusted as a read.
    fn note_unseen_names(&self, m: &Message, text: Option<&str>, class: Option<Class>) {
        let Some(res) = &self.results else { return };
        let unreadable = class.is_none_or(|c| c == Class::Unknown);
        // Any case, without copying the text.
        let prepares = |t: &str| {
            t.as_bytes()
                .windows(7)
                .any(|w| w.eq_ignore_ascii_case(b"prepare"))
        };
        // `DO`, `CALL`, `EXECUTE` and the like run code that may prepare.
        let runs_code =
            |t: &str| crate::classify::may_redefine(t) && self.ctx.upstream.analyse(t).redefines;
        if m.tag == tag::FUNCTION_CALL
            || (text.is_some() && unreadable)
            || text.is_some_and(prepares)
            || text.is_some_and(runs_code)
        {
            res.unseen_names.store(true, Ordering::Relaxed);
        }
    }

    /// Whether `m` (of `class`, where the connection classifies it) may
    /// change the schema the read proofs of every connection rest on: DDL,
    /// admin or unknown, or a write to a system catalog (a review's
    /// superuser `UPDATE pg_proc SET prosrc = …` ran on the read-only
    /// connection under the old proof). A statement not classified (full
    /// access, no rule that reads statements) is looked at by words
    /// ([`crate::classify::may_change_schema`]); a function that runs DDL
    /// when called by its name alone is not seen (its changes are, after
    /// the catalog cache's 30 s). A Bind runs a prepared text: it counts
    /// when that text did.
    fn may_change_schema(&self, m: &Message, class: Option<Class>) -> bool {
        match m.tag {
            tag::QUERY => self.text_changes_schema_of(m, class),
            tag::PARSE => {
                let changes = self.text_changes_schema_of(m, class);
                if let Ok(mut kept) = self.schema_statements.lock() {
                    kept.note(messages::cstr(&m.body), changes);
                }
                changes
            }
            tag::BIND => {
                let rest = m.body.get(messages::cstr(&m.body).len() + 1..);
                let statement = messages::cstr(rest.unwrap_or_default());
                class.is_some_and(|c| c >= Class::Ddl)
                    || self
                        .schema_statements
                        .lock()
                        .map_or(true, |kept| kept.runs(statement))
            }
            tag::CLOSE => {
                if let Some((&b'S', rest)) = m.body.split_first()
                    && let Ok(mut kept) = self.schema_statements.lock()
                {
                    kept.names.remove(messages::cstr(rest));
                }
                false
            }
            _ => class.is_some_and(|c| c >= Class::Ddl),
        }
    }

    /// Whether a Query's or Parse's text may change the schema (no
    /// bookkeeping: [`Self::may_change_schema`] keeps that at `pass`).
    fn text_changes_schema_of(&self, m: &Message, class: Option<Class>) -> bool {
        let sql = match m.tag {
            tag::QUERY => messages::cstr(&m.body),
            tag::PARSE => {
                let name = messages::cstr(&m.body);
                messages::cstr(m.body.get(name.len() + 1..).unwrap_or_default())
            }
            _ => return false,
        };
        self.text_changes_schema(sql, class)
    }

    /// [`Self::may_change_schema`] of a statement's text.
    fn text_changes_schema(&self, sql: &[u8], class: Option<Class>) -> bool {
        match class {
            Some(c) if c >= Class::Ddl => true,
            Some(Class::Write) => std::str::from_utf8(sql).map_or(true, |sql| {
                crate::classify::writes_catalog(&self.ctx.upstream.analyse(sql))
            }),
            Some(_) => false,
            // The words first (most texts hold none); a text that holds
            // one is parsed, so a literal's `'do'` or `'create'` does not
            // count (review: a transaction left open after
            // `select 'do call execute'` held every proof); a text the
            // parser cannot read counts.
            None => {
                crate::classify::may_change_schema(sql)
                    && std::str::from_utf8(sql).map_or(true, |sql| {
                        let a = self.ctx.upstream.analyse(sql);
                        a.class >= Class::Ddl || crate::classify::writes_catalog(&a)
                    })
            }
        }
    }

    /// Writes against the budget: a statement that may write is counted
    /// (refused when none is left); named statements are tracked as reads
    /// or writes, so that a Bind of a read costs nothing.
    async fn count_writes(
        &self,
        b: &portcullis_front::Budget,
        m: &Message,
        text: Option<&str>,
        class: Option<Class>,
    ) -> Result<(), Refusal> {
        use portcullis_policy::budget::Measure;
        let Some(res) = &self.results else {
            return Ok(());
        };
        let writes = b.counts(Measure::Writes);
        let writing = class.is_some_and(|c| c >= Class::Write);
        let names = || res.names.lock().unwrap_or_else(|e| e.into_inner());
        match m.tag {
            tag::QUERY | tag::FUNCTION_CALL
                if writes && (writing || m.tag == tag::FUNCTION_CALL) =>
            {
                // Each statement of a multi-statement query that may write.
                // Unknown to the catalog (a view calling a volatile
                // function reads as a read to the parser): every statement.
                let n = match (m.tag, &text, class) {
                    (tag::QUERY, Some(sql), Some(c)) => {
                        self.ctx.upstream.analyse(sql).writes_under(c)
                    }
                    _ => 1,
                };
                self.take_write(b, n as u64).await?;
            }
            tag::PARSE => {
                if let Some((name, _)) = messages::parse_text(m) {
                    if writing && writes {
                        b.left(Measure::Writes, None)
                            .await
                            .map_err(budget_refusal)?;
                    }
                    names().parsed(&name, !writing);
                }
            }
            // Its result is not rows the gateway can count.
            tag::FUNCTION_CALL if b.counts(Measure::Rows) || b.counts(Measure::Bytes) => {
                return Err(Refusal {
                    code: sqlstate::INSUFFICIENT_PRIVILEGE,
                    message: format!(
                        "portcullis: grant \"{}\" limits rows or bytes returned: fast-path function calls are refused",
                        b.grant()
                    ),
                });
            }
            tag::BIND if writes => {
                let bound = messages::bind(&m.body).map(|x| x.statement);
                let unseen = res.unseen_names.load(Ordering::Relaxed);
                let read = bound.is_some_and(|s| names().is_read(&s) && (s.is_empty() || !unseen));
                if !read {
                    self.take_write(b, 1).await?;
                }
            }
            tag::CLOSE => {
                if let Some(name) = messages::statement_target(m) {
                    names().forget(&name);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Rows and bytes the statement may still return, reserved before it
    /// runs.
    async fn reserve_results(
        &self,
        b: &portcullis_front::Budget,
        m: &Message,
    ) -> Result<(), Refusal> {
        use portcullis_policy::budget::Measure;
        let Some(res) = &self.results else {
            return Ok(());
        };
        // What is left is reserved now (taken in the store, so concurrent
        // sessions see it gone) and the unused part given back once the
        // session is idle. Used up, nothing is reserved: a statement
        // that returns no row (COMMIT, an INSERT) still runs; the first
        // row is cut.
        for (i, measure) in [Measure::Rows, Measure::Bytes].into_iter().enumerate() {
            if !b.counts(measure) {
                continue;
            }
            let reserved = match b.reserve(measure).await {
                Ok(n) => n,
                Err(e @ portcullis_front::BudgetError::Exceeded { .. }) => {
                    // An approver may lift it for this session, when
                    // the statement may return rows at all.
                    let lifted = match self.ctx.gate {
                        Some(g) if returns_rows(self.ctx, m) => g.lift_budget(b, &e).await,
                        _ => None,
                    };
                    match lifted {
                        Some(Ok(())) => b.reserve(measure).await.map_err(budget_refusal)?,
                        _ => Some(0),
                    }
                }
                Err(e) => return Err(budget_refusal(e)),
            };
            match reserved {
                Some(n) => res.reserve(i, n),
                None => res.unlimit(i),
            }
        }
        Ok(())
    }

    /// The distinct tables `sql` names, against the budget (refused when
    /// they cannot be read from it); used up, an approver may lift it.
    async fn budget_tables(&self, b: &portcullis_front::Budget, sql: &str) -> Result<(), Refusal> {
        let a = self.ctx.upstream.analyse(sql);
        if a.refs.opaque {
            return Err(Refusal {
                code: sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                message: format!(
                    "portcullis: grant \"{}\" limits the distinct tables touched, and the tables this statement names cannot be read from it; write it so they can",
                    b.grant()
                ),
            });
        }
        let names: Vec<String> = a.refs.qualified.iter().cloned().collect();
        if let Err(e) = b.touch_tables(&names).await {
            let lifted = match self.ctx.gate {
                Some(g) => g.lift_budget(b, &e).await,
                None => None,
            };
            match lifted {
                Some(Ok(())) => b.touch_tables(&names).await.map_err(budget_refusal)?,
                _ => return Err(budget_refusal(e)),
            }
        }
        Ok(())
    }

    /// `n` writes against the budget, all or none; used up, an approver
    /// may lift the limit for this session (where the connection has
    /// approvers).
    async fn take_write(&self, b: &portcullis_front::Budget, n: u64) -> Result<(), Refusal> {
        use portcullis_policy::budget::Measure;
        let Err(e) = b.take_many(Measure::Writes, n).await else {
            return Ok(());
        };
        let lifted = match self.ctx.gate {
            Some(g) => g.lift_budget(b, &e).await,
            None => None,
        };
        match lifted {
            Some(Ok(())) => b
                .take_many(Measure::Writes, n)
                .await
                .map_err(budget_refusal),
            _ => Err(budget_refusal(e)),
        }
    }

    /// The rows and bytes reserved and not used, given back to the
    /// budget.
    async fn budget_settle(&self, ended: bool) {
        let (Some(b), Some(res)) = (self.ctx.budget, &self.results) else {
            return;
        };
        // Only when nothing is in flight (a pipelined statement may still
        // be using the reservation); given back, then forgotten: a session
        // that ends half way keeps it counted (more, never less).
        // An Execute (or any extended message) not yet followed by a Sync
        // may still be sending rows: not idle.
        let idle = self.nothing_in_flight();
        if !(idle || ended) {
            return;
        }
        res.settle(&Settled(b)).await;
    }

    /// The chain's verdict on a message to the target. (The poisoned
    /// guard is dropped here: it must not live across an await.)
    fn inspect_frontend(&self, m: Message) -> Result<Result<Message, Refusal>, Exit> {
        self.chain
            .lock()
            .map(|mut c| inspect::frontend(&mut c, m))
            .map_err(|_| Exit::Internal)
    }

    /// Leave the evidence of a refused statement and return the
    /// placeholder that takes its place: the target fails it in order,
    /// aborting the transaction as a real error would, and its error is
    /// swapped for the refusal on the way back.
    async fn refuse(&self, m: &Message, refusal: Refusal, class: Option<Class>) -> Message {
        let ctx = self.ctx;
        ctx.refused.inc();
        tracing::info!(
            target: "portcullis::access",
            principal = %ctx.principal.subject,
            connection = ctx.connection,
            reason = %refusal.message,
            "statement refused"
        );
        // Refusals are evidence: what the caller sent, in the recording
        // and the audit chain.
        ctx.open
            .refused(portcullis_front::Refused {
                principal: &ctx.principal.subject,
                connection: ctx.connection,
                rule: ctx.rule,
                class: class.map_or("-", Class::as_str),
                statement: &sent_text(m),
                code: refusal.code.code(),
                reason: &refusal.message,
            })
            .await;
        let marker = self
            .pending
            .lock()
            .map(|mut p| p.push(ctx.nonce, refusal))
            .unwrap_or_default();
        let placeholder = format!("SELECT {marker}()");
        match m.tag {
            tag::PARSE => {
                let name = messages::parse_text(m).map(|(n, _)| n).unwrap_or_default();
                messages::parse_named(&name, &placeholder)
            }
            // Binding a statement that cannot exist fails in order, like
            // the Parse above.
            tag::BIND => {
                let portal = messages::bind(&m.body)
                    .map(|b| b.portal)
                    .unwrap_or_default();
                messages::bind_message(&portal, &marker)
            }
            _ => messages::query(&placeholder),
        }
    }

    /// Target → caller, until either side ends.
    async fn target_to_caller<UR: AsyncRead + Unpin>(&self, up_r: &mut FrameReader<UR>) -> Exit {
        let mut out = BytesMut::new();
        // Work since the other connections on this worker last had a
        // turn, and the message the slice stopped before.
        let mut since_yield = 0;
        let mut carried = None;
        loop {
            let first = match carried.take() {
                Some(m) => m,
                None => match up_r.next().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => return Exit::UpstreamGone,
                },
            };
            let (ended, rest) = self.answer_batch(up_r, first, &mut out, &mut since_yield);
            if let Some(exit) = ended {
                // At once, with no wait before it: while this direction
                // waited, the caller's would go on sending to a session
                // being closed. What passed goes with the goodbye.
                if let Ok(mut p) = self.passed.lock() {
                    *p = out;
                }
                return exit;
            }
            carried = rest;
            // Settled before the caller sees the answer (a caller that
            // leaves at once leaves nothing unsettled).
            self.budget_settle(false).await;
            if self.cancel_now.swap(false, Ordering::Relaxed) {
                // A result was cut: the target stops the statement (and
                // what follows it in the same query) rather than finishing
                // it unseen.
                let _ = self
                    .ctx
                    .upstream
                    .cancel(self.cancel_key.0, self.cancel_key.1)
                    .await;
            }
            let mut cw = self.caller_w.lock().await;
            if !flush_to(&mut *cw, &mut out, &self.bytes_to_caller).await {
                return Exit::CallerGone;
            }
            drop(cw);
            if since_yield >= YIELD_AFTER {
                // A large result's masking and recording is CPU on the
                // connection's worker; the other connections there get
                // their turn between slices of it rather than after
                // tokio's budget of I/O calls runs out (review round 5
                // measured a probe's median at 11.6 ms beside a caller
                // masking 58 MB results; see docs/performance.md).
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
    }

    /// The target's answers already read, from `first` on, through the
    /// chain into `out`, until the read buffer is empty or a slice's work
    /// is done (the message it stopped before is handed back).
    ///
    /// An exit stops the batch. What passed before it stays in `out` only
    /// where the exit is found at the first answer in doubt: a copy-in
    /// the relay cannot follow is found at its CopyInResponse (or its
    /// end), and what came before answered statements ahead of it; a
    /// target that stopped making sense mid-read sent whole answers
    /// before. A refusal of the chain (a masker out of step may have
    /// masked what came before it by the wrong layout), the read-only
    /// guard reported off (the proofs were wrong somewhere in this read)
    /// or an internal fault withholds the whole read, as every exit did
    /// before (review, 2026-12-05: those statements ran, and a
    /// `pg_sleep`'s answer was lost to a close in the same read).
    fn answer_batch<UR: AsyncRead + Unpin>(
        &self,
        up_r: &mut FrameReader<UR>,
        first: Message,
        out: &mut BytesMut,
        since_yield: &mut usize,
    ) -> (Option<Exit>, Option<Message>) {
        // Masking and recording a byte costs about this many times what
        // passing it does.
        let weight = if self.ctx.masked { 8 } else { 1 };
        let mut next = Some(first);
        while let Some(m) = next.take() {
            *since_yield += m.body.len() * weight;
            // Only while an approved statement runs checked is an answer
            // taken apart (no lock, no allocation on the common path).
            let several = if self.checking.load(Ordering::Relaxed) {
                let Ok(mut checks) = self.checks.lock() else {
                    out.clear();
                    return (Some(Exit::Internal), None);
                };
                let v = checks.backend(self.ctx.nonce, m.clone());
                self.checking.store(!checks.is_idle(), Ordering::Relaxed);
                Some(v)
            } else {
                None
            };
            let single = several.is_none().then_some(m);
            for m in several.into_iter().flatten().chain(single) {
                if let Err(exit) = self.follow_copy_in(m.tag) {
                    return (Some(exit), None);
                }
                match self.on_target_message(m) {
                    Ok(Some(m)) => m.encode(out),
                    Ok(None) => {}
                    Err(exit) => {
                        out.clear();
                        return (Some(exit), None);
                    }
                }
            }
            next = match up_r.buffered() {
                Ok(m) => m,
                Err(_) => return (Some(Exit::UpstreamGone), None),
            };
            if *since_yield >= YIELD_AFTER {
                return (None, next);
            }
        }
        (None, None)
    }

    /// The bytes budget a withheld text crossed, in words.
    fn budget_words(&self) -> String {
        use portcullis_policy::budget::Measure;
        self.ctx
            .budget
            .map(|b| b.cut(Measure::Bytes, None).to_string())
            .unwrap_or_default()
    }

    /// One message from the target: a placeholder's error becomes its
    /// refusal; ReadyForQuery is counted; then the chain, which may
    /// withhold it (`None`).
    fn on_target_message(&self, mut m: Message) -> Result<Option<Message>, Exit> {
        if m.tag == tag::PARAMETER_STATUS && self.read_only && guard_reported_off(&m.body) {
            // Something the proofs missed turned it off (review round 5:
            // a view's function ran `set_config(…, 'off', false)`): the
            // target's own guard is the last one, and it is gone.
            tracing::warn!(connection = %self.ctx.connection, principal = %self.ctx.principal.subject, "the target reported default_transaction_read_only off on a read-only session; closed");
            return Err(Exit::Refused(Refusal {
                code: sqlstate::INSUFFICIENT_PRIVILEGE,
                message: "portcullis: the target's read-only guard was turned off in this session; the session is closed".into(),
            }));
        }
        if let (Some(g), tag::PARAMETER_STATUS) = (self.ctx.gate, m.tag) {
            g.reported(&m.body);
        }
        if let Some(res) = &self.results {
            self.names_follow_target(res, m.tag);
            match m.tag {
                // A COPY TO row is a row too.
                tag::DATA_ROW | tag::COPY_DATA => match res.row(m.body.len()) {
                    crate::budget::Row::Pass => {}
                    crate::budget::Row::Drop => return Ok(None),
                    crate::budget::Row::Cut { rows } => {
                        use portcullis_policy::budget::Measure;
                        let measure = if rows { Measure::Rows } else { Measure::Bytes };
                        let why = self
                            .ctx
                            .budget
                            .map(|b| b.cut(measure, None).to_string())
                            .unwrap_or_default();
                        tracing::info!(target: "portcullis::access", principal = %self.ctx.principal.subject, connection = self.ctx.connection, reason = %why, "result cut by a budget");
                        self.cancel_now.store(true, Ordering::Relaxed);
                        m = messages::error(
                            false,
                            sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                            &format!("portcullis: {why}; the result was cut at the limit"),
                            None,
                        );
                    }
                },
                tag::READY_FOR_QUERY => res.ready(),
                _ if res.cutting() => return Ok(None),
                // Not rows, but values can come back in them (a failed
                // cast quotes its input; pg_notify and set_config carry
                // any text): bytes, withheld past what is reserved.
                tag::ERROR_RESPONSE | tag::NOTICE_RESPONSE | tag::NOTIFICATION_RESPONSE
                    if !res.text(m.body.len()) =>
                {
                    let why = self.budget_words();
                    m = match m.tag {
                        tag::ERROR_RESPONSE => messages::withheld(
                            &m,
                            &format!("portcullis: {why}; the target's error text was withheld"),
                        ),
                        _ => messages::notice(
                            sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                            &format!("portcullis: {why}; a notice or notification was withheld"),
                        ),
                    };
                }
                tag::PARAMETER_STATUS
                    if !res.text(m.body.len()) && m.body.starts_with(b"application_name\0") =>
                {
                    // The one reported setting that holds any text; the
                    // others are the server's own values, passed.
                    return Ok(None);
                }
                _ => {}
            }
        }
        if m.tag == tag::ERROR_RESPONSE
            && let Some(r) = self
                .pending
                .lock()
                .ok()
                .and_then(|mut p| p.take_if_placeholder(self.ctx.nonce, &m))
        {
            m = messages::error(false, r.code, &r.message, None);
        }
        if m.tag == tag::ERROR_RESPONSE {
            self.errored.store(true, Ordering::Relaxed);
        }
        if m.tag == tag::READY_FOR_QUERY {
            let seen = self.ready_seen.fetch_add(1, Ordering::Relaxed) + 1;
            let status = m.body.first().copied().unwrap_or(b'E');
            self.last_status.store(status, Ordering::Relaxed);
            let errored = self.errored.swap(false, Ordering::Relaxed);
            if let Ok(mut change) = self.schema_change.lock()
                && change.is_some()
            {
                self.ctx.upstream.forget_catalog();
                let answered_at = self.change_answered_at.load(Ordering::Relaxed);
                let failed_alone = status == b'E'
                    && errored
                    && self.change_alone.load(Ordering::Relaxed)
                    && seen == answered_at;
                let answered = seen >= answered_at;
                if (status == b'I' && answered) || failed_alone {
                    // Its transaction ended, or the one statement that
                    // began it failed: every reading is stale again.
                    *change = None;
                    self.change_alone.store(false, Ordering::Relaxed);
                    self.change_answered_at.store(0, Ordering::Relaxed);
                }
            }
            if status == b'I' && self.nothing_in_flight() {
                self.ctx.prepared().transaction_ended();
            }
        }
        match self.chain.lock().map(|mut c| inspect::backend(&mut c, m)) {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(refusal)) => Err(Exit::Refused(refusal)),
            Err(_) => Err(Exit::Internal),
        }
    }
}

/// A COPY row from the caller longer than this is passed on as it
/// arrives rather than held whole: memory per session stays bounded by
/// the chunk, not by the message limit. (Rows from the target are held
/// whole: the masker and the recording read them by column.)
const STREAM_OVER: usize = 256 << 10;
/// Bytes of the target's answers handled (weighted: a masked byte counts
/// 8) before the relay lets the other connections on its worker run: a
/// slice of about half a millisecond of masking.
const YIELD_AFTER: usize = 256 << 10;
const STREAM_CHUNK: usize = 64 << 10;

/// The text of a byte stream cut into pieces: a character split between
/// two pieces is held back for the next, so the recording keeps text as
/// text; bytes that are not UTF-8 are recorded as `\x` hex from there on.
#[derive(Default)]
struct Utf8Pieces {
    carry: Vec<u8>,
    binary: bool,
}

impl Utf8Pieces {
    fn push(&mut self, piece: &[u8], last: bool) -> String {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(piece);
        if !self.binary {
            match std::str::from_utf8(&bytes) {
                Ok(s) => return s.to_owned(),
                // Cut inside a character: keep its start for the next piece.
                Err(e) if e.error_len().is_none() && !last => {
                    self.carry = bytes.split_off(e.valid_up_to());
                    return String::from_utf8(bytes).unwrap_or_default();
                }
                Err(_) => self.binary = true,
            }
        }
        format!("\\x{}", hex::encode(bytes))
    }
}

/// What the caller sent, for the evidence of a refusal.
fn sent_text(m: &Message) -> String {
    match m.tag {
        tag::QUERY => messages::query_text(m).unwrap_or_default(),
        tag::PARSE => messages::parse_text(m).map(|(_, s)| s).unwrap_or_default(),
        tag::BIND => messages::bind(&m.body).map_or_else(String::new, |b| {
            format!(
                "-- Bind of prepared statement \"{}\" with {} parameter(s)",
                b.statement,
                b.params.len()
            )
        }),
        tag::FUNCTION_CALL => format!("-- fast-path function call: \\x{}", hex::encode(&m.body)),
        t => format!("-- message '{}'", t.escape_ascii()),
    }
}

/// Refusals waiting for their placeholder's error to come back from the
/// target, keyed by sequence number.
#[derive(Default)]
struct Pending {
    seq: u64,
    waiting: VecDeque<(u64, Refusal)>,
}

impl Pending {
    /// Queue `r` and return the name of a placeholder to send in its
    /// place: a function or prepared statement that cannot exist, which
    /// the target rejects in order, aborting the transaction just as a
    /// real error would, with the name in its message.
    fn push(&mut self, nonce: &str, r: Refusal) -> String {
        self.seq += 1;
        if self.waiting.len() >= MAX_PENDING_REFUSALS {
            self.waiting.pop_front();
        }
        self.waiting.push_back((self.seq, r));
        format!("portcullis_refused_{nonce}_{}", self.seq)
    }

    /// If `m` is the target's error for one of our placeholders, the
    /// refusal to send instead.
    fn take_if_placeholder(&mut self, nonce: &str, m: &Message) -> Option<Refusal> {
        if self.waiting.is_empty() {
            return None;
        }
        let fields = messages::parse_fields(&m.body);
        let text = messages::field(&fields, b'M')?;
        let marker = format!("portcullis_refused_{nonce}_");
        let at = text.find(&marker)? + marker.len();
        let seq: u64 = text[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let i = self.waiting.iter().position(|(s, _)| *s == seq)?;
        self.waiting.remove(i).map(|(_, r)| r)
    }
}

/// Whether `m` may return rows: a portal's Execute, or a query that reads
/// a relation or evaluates anything (not COMMIT, SET and the like).
fn returns_rows(ctx: &SessionCtx<'_>, m: &Message) -> bool {
    match m.tag {
        tag::EXECUTE => true,
        tag::QUERY => messages::query_text(m).is_some_and(|sql| {
            let a = ctx.upstream.analyse(&sql);
            a.evaluates || !a.refs.relations.is_empty()
        }),
        _ => false,
    }
}

/// A budget's refusal as the caller hears it: 53400 when used up.
fn budget_refusal(e: portcullis_front::BudgetError) -> Refusal {
    let code = match e {
        portcullis_front::BudgetError::Exceeded { .. } => sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
        portcullis_front::BudgetError::Unavailable(_) => sqlstate::INSUFFICIENT_PRIVILEGE,
    };
    Refusal {
        code,
        message: format!("portcullis: {e}"),
    }
}

/// A session's budget as the ledger its rows and bytes are settled with.
struct Settled<'a>(&'a portcullis_front::Budget);

impl crate::budget::Ledger for Settled<'_> {
    async fn spend(&self, i: usize, n: u64) {
        self.0.spend(measure(i), None, n).await;
    }

    async fn refund(&self, i: usize, n: u64) {
        self.0.refund(measure(i), n).await;
    }
}

/// Measure `i` of [`crate::budget::Results`]: rows, then bytes.
fn measure(i: usize) -> portcullis_policy::budget::Measure {
    use portcullis_policy::budget::Measure;
    if i == 0 {
        Measure::Rows
    } else {
        Measure::Bytes
    }
}

#[cfg(test)]
mod stream_tests {
    use super::Utf8Pieces;

    #[test]
    fn text_cut_inside_a_character_stays_text() {
        let text = "caf\u{e9} \u{1f600} ok";
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let mut p = Utf8Pieces::default();
            let joined = p.push(&bytes[..cut], false) + &p.push(&bytes[cut..], true);
            assert_eq!(joined, text, "cut at {cut}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_hex() {
        let mut p = Utf8Pieces::default();
        assert_eq!(p.push(b"ab", false), "ab");
        assert_eq!(p.push(&[0xff, 0x00], false), "\\xff00");
        assert_eq!(p.push(b"c", true), "\\x63");
        // A character cut at the very end is not waited for.
        let mut p = Utf8Pieces::default();
        assert_eq!(p.push(&[b'a', 0xc3], true), "\\x61c3");
    }
}

#[cfg(test)]
mod one_statement_tests {
    use super::one_statement;

    #[test]
    fn a_text_is_one_statement_only_with_no_inner_semicolon() {
        assert!(one_statement(b"CALL p()"));
        assert!(one_statement(b"DROP TABLE t;  \n"));
        assert!(one_statement(b""));
        assert!(!one_statement(
            b"CREATE VIEW v AS SELECT 1; SAVEPOINT s; SELECT 1/0"
        ));
        // A semicolon in a literal counts as two (fail closed: the change
        // stays under way).
        assert!(!one_statement(b"SELECT ';'"));
    }
}

#[cfg(test)]
mod guard_tests {
    use super::guard_reported_off;

    #[test]
    fn only_the_guard_reported_on_keeps_a_read_only_session() {
        assert!(guard_reported_off(b"default_transaction_read_only\0off\0"));
        assert!(guard_reported_off(b"default_transaction_read_only\0\0"));
        assert!(!guard_reported_off(b"default_transaction_read_only\0on\0"));
        assert!(!guard_reported_off(b"application_name\0off\0"));
        assert!(!guard_reported_off(b"in_hot_standby\0off\0"));
    }
}
