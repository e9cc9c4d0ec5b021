//! The inspector chain: every message crossing a session passes through
//! it, in order: masking (DataRow cells) and recording are inspectors.
//! The statement rules (read-only, approvals) are decided just before the
//! chain, because proving a statement may need the target's catalog
//! (`front.rs`); [`read_only`] is their pure half.

use crate::classify::Class;
use crate::frame::Message;
use crate::messages::sqlstate;

/// A refusal, said to the caller as an ErrorResponse in protocol order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: crate::messages::SqlState,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Send this message instead.
    Rewrite(Message),
    /// Do not send it, and say nothing in its place (only from the
    /// target: the masker withholding the rest of a statement it ended).
    Drop,
    /// Do not send it; the caller gets an error in its place. Only for
    /// statements (`Q`, `P`, `F`); on any other message it ends the
    /// session (fail closed).
    Refuse(Refusal),
}

pub trait Inspector: Send {
    /// A message from the caller, before it reaches the target.
    fn frontend(&mut self, _msg: &Message) -> Verdict {
        Verdict::Pass
    }
    /// A message from the target, before it reaches the caller.
    fn backend(&mut self, _msg: &Message) -> Verdict {
        Verdict::Pass
    }
    /// A masker's catalog, when it must be closed or read again before
    /// the next statement ([`crate::masking::Need`]).
    fn mask_catalog_need(&self) -> Option<crate::masking::Need> {
        None
    }
    fn mask_catalog_close(&mut self) {}
    fn mask_catalog_renew(
        &mut self,
        _catalog: std::sync::Arc<crate::masking::Catalog>,
        _reading: crate::catalog::Reading,
    ) {
    }
}

/// The read-only rule (`access = "read-only"`): only a statement proven
/// to be a read passes (see [`crate::classify`]); anything else is
/// refused, naming the rule.
pub fn read_only(connection: &str, class: Class) -> Option<Refusal> {
    if class == Class::Read {
        return None;
    }
    let what = class.statement();
    Some(Refusal {
        code: sqlstate::INSUFFICIENT_PRIVILEGE,
        message: format!(
            "portcullis: connection \"{connection}\" is read-only (rule access = \"read-only\"): {what} was refused"
        ),
    })
}

/// Run `msg` through the chain; the first non-pass verdict wins, and a
/// rewrite is what the next inspector sees.
pub fn frontend(chain: &mut [Box<dyn Inspector>], msg: Message) -> Result<Message, Refusal> {
    let mut msg = msg;
    for i in chain.iter_mut() {
        match i.frontend(&msg) {
            Verdict::Pass => {}
            Verdict::Rewrite(m) => msg = m,
            Verdict::Refuse(r) => return Err(r),
            // Nothing from the caller is dropped silently.
            Verdict::Drop => {
                return Err(Refusal {
                    code: sqlstate::PROTOCOL_VIOLATION,
                    message: "portcullis: a message was withheld".into(),
                });
            }
        }
    }
    Ok(msg)
}

/// `Ok(None)`: the message is withheld (an inspector dropped it; the
/// later ones never see it).
pub fn backend(chain: &mut [Box<dyn Inspector>], msg: Message) -> Result<Option<Message>, Refusal> {
    let mut msg = msg;
    for i in chain.iter_mut() {
        match i.backend(&msg) {
            Verdict::Pass => {}
            Verdict::Rewrite(m) => msg = m,
            Verdict::Drop => return Ok(None),
            Verdict::Refuse(r) => return Err(r),
        }
    }
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    #[test]
    fn read_only_refuses_all_but_proven_reads_naming_the_rule() {
        assert!(read_only("db", classify("select 1")).is_none());
        let r = read_only("db", classify("DELETE FROM t")).unwrap();
        assert_eq!(r.code, crate::messages::sqlstate::INSUFFICIENT_PRIVILEGE);
        assert!(
            r.message.contains("read-only") && r.message.contains("write"),
            "{}",
            r.message
        );
        let r = read_only("db", classify("CREATE TABLE x (a int)")).unwrap();
        assert!(r.message.contains("a DDL statement"), "{}", r.message);
        let r = read_only("db", classify("SELEC garbage")).unwrap();
        assert!(r.message.contains("could not be proven"), "{}", r.message);
        let r = read_only("db", classify("SELECT purge(1)")).unwrap();
        assert!(r.message.contains("could not be proven"), "{}", r.message);
    }
}
