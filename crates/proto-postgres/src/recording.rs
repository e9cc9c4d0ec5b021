//! The recording tap: the last inspector in the chain, so it records what
//! the target was sent and what the caller saw (after masking). No
//! inspector rewrites a caller's message, so what the target was sent is
//! what the caller sent: when masking swapped reversible tokens back
//! there, the recording held the values, which the caller could read in
//! its own recording (review, 2026-12-03; the swap is gone).

use portcullis_record::{Event, Recorder};

use crate::frame::{Message, tag, take_cstr};
use crate::inspect::{Inspector, Refusal, Verdict};
use crate::messages::{self, sqlstate};

pub struct RecordInspector {
    recorder: Recorder,
    /// The gateway's placeholder names for refused statements: the
    /// relay records what the caller sent instead of the stand-in.
    placeholder: Option<String>,
}

impl RecordInspector {
    pub fn new(recorder: Recorder) -> Self {
        Self {
            recorder,
            placeholder: None,
        }
    }

    /// Skip the stand-ins named with `marker` (unguessable: it carries the
    /// gateway's nonce, so a caller cannot hide its own statements).
    pub fn skipping(mut self, marker: String) -> Self {
        self.placeholder = Some(marker);
        self
    }

    fn is_stand_in(&self, msg: &Message) -> bool {
        let Some(marker) = &self.placeholder else {
            return false;
        };
        let mut b = &msg.body[..];
        match msg.tag {
            tag::QUERY => b
                .strip_prefix(b"SELECT ".as_slice())
                .is_some_and(|r| r.starts_with(marker.as_bytes())),
            tag::PARSE | tag::BIND => {
                if take_cstr(&mut b).is_none() {
                    return false;
                }
                let b = if msg.tag == tag::PARSE {
                    b.strip_prefix(b"SELECT ".as_slice()).unwrap_or(&[])
                } else {
                    b
                };
                b.starts_with(marker.as_bytes())
            }
            _ => false,
        }
    }

    fn record(&self, e: Option<Event>) -> Verdict {
        let Some(e) = e else { return Verdict::Pass };
        match self.recorder.event(e) {
            Ok(()) => Verdict::Pass,
            // Fail closed: a session that cannot be recorded ends.
            Err(err) => Verdict::Refuse(Refusal {
                code: sqlstate::CONNECTION_FAILURE,
                message: format!(
                    "portcullis: the session cannot be recorded ({err}); it is closed"
                ),
            }),
        }
    }
}

fn cell_text(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) => s.to_string(),
        Err(_) => format!("\\x{}", hex::encode(v)),
    }
}

fn frontend_event(msg: &Message) -> Option<Event> {
    let mut b = &msg.body[..];
    match msg.tag {
        tag::QUERY => Some(Event::PgQuery {
            sql: messages::query_text(msg)?,
        }),
        tag::PARSE => {
            let (statement, sql) = messages::parse_text(msg)?;
            Some(Event::PgParse { statement, sql })
        }
        tag::BIND => {
            let bind = messages::bind(&msg.body)?;
            Some(Event::PgBind {
                params: bind.params.iter().map(|p| p.map(cell_text)).collect(),
                portal: bind.portal,
                statement: bind.statement,
            })
        }
        tag::EXECUTE => Some(Event::PgExecute {
            portal: take_cstr(&mut b)?,
        }),
        tag::COPY_DATA => Some(Event::PgCopyData {
            from_caller: true,
            data: cell_text(&msg.body),
        }),
        tag::FUNCTION_CALL => function_call(&msg.body),
        _ => None,
    }
}

/// 'F': OID, argument formats, arguments (length-prefixed), result format.
fn function_call(body: &[u8]) -> Option<Event> {
    let oid = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    let mut b = body.get(4..)?;
    let formats = i16::from_be_bytes(b.get(..2)?.try_into().ok()?).max(0) as usize;
    b = b.get(2 + 2 * formats..)?;
    let n = i16::from_be_bytes(b.get(..2)?.try_into().ok()?).max(0) as usize;
    b = b.get(2..)?;
    let mut args = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let len = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
        b = b.get(4..)?;
        if len < 0 {
            args.push(None);
        } else {
            args.push(Some(cell_text(b.get(..len as usize)?)));
            b = b.get(len as usize..)?;
        }
    }
    Some(Event::PgFunctionCall { oid, args })
}

fn backend_event(msg: &Message) -> Option<Event> {
    let mut b = &msg.body[..];
    match msg.tag {
        tag::ROW_DESCRIPTION => {
            let n = i16::from_be_bytes(b.get(..2)?.try_into().ok()?);
            b = &b[2..];
            let mut columns = Vec::new();
            for _ in 0..n {
                columns.push(take_cstr(&mut b)?);
                b = b.get(18..)?;
            }
            Some(Event::PgRowDescription { columns })
        }
        tag::DATA_ROW => {
            let n = i16::from_be_bytes(b.get(..2)?.try_into().ok()?);
            b = &b[2..];
            let mut cells = Vec::new();
            for _ in 0..n {
                let len = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
                b = &b[4..];
                if len < 0 {
                    cells.push(None);
                } else {
                    let v = b.get(..len as usize)?;
                    cells.push(Some(cell_text(v)));
                    b = &b[len as usize..];
                }
            }
            Some(Event::PgDataRow { cells })
        }
        tag::COMMAND_COMPLETE => Some(Event::PgCommandComplete {
            tag: take_cstr(&mut b)?,
        }),
        tag::COPY_DATA => Some(Event::PgCopyData {
            from_caller: false,
            data: cell_text(&msg.body),
        }),
        tag::FUNCTION_CALL_RESPONSE => {
            let len = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
            let value = match len {
                l if l < 0 => None,
                l => Some(cell_text(b.get(4..4 + l as usize)?)),
            };
            Some(Event::PgFunctionResult { value })
        }
        tag::ERROR_RESPONSE | tag::NOTICE_RESPONSE => {
            let f = messages::parse_fields(&msg.body);
            let message = messages::field(&f, b'M').unwrap_or_default().to_string();
            if msg.tag == tag::ERROR_RESPONSE {
                Some(Event::PgError {
                    code: messages::field(&f, b'C').unwrap_or_default().to_string(),
                    message,
                })
            } else {
                Some(Event::PgNotice { message })
            }
        }
        _ => None,
    }
}

impl Inspector for RecordInspector {
    fn frontend(&mut self, msg: &Message) -> Verdict {
        if self.is_stand_in(msg) {
            return Verdict::Pass;
        }
        self.record(frontend_event(msg))
    }

    fn backend(&mut self, msg: &Message) -> Verdict {
        self.record(backend_event(msg))
    }
}
