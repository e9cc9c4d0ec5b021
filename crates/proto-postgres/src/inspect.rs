//! The inspector chain: every message crossing a session passes through
//! it, in order. Statement rules live here now; masking (DataRow cells)
//! and recording plug in as further inspectors.

use crate::classify::{Class, classify};
use crate::frame::Message;
use crate::messages::{self, sqlstate};

/// A refusal, said to the caller as an ErrorResponse in protocol order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Send this message instead.
    Rewrite(Message),
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
}

/// Per-connection statement rules (`access = "read-only"`).
pub struct StatementRules {
    pub connection: String,
    pub read_only: bool,
}

impl StatementRules {
    fn check(&self, sql: &str) -> Verdict {
        let class = classify(sql);
        if class == Class::Read {
            return Verdict::Pass;
        }
        let what = match class {
            Class::Unknown => "a statement that could not be parsed".to_string(),
            c => format!("a {} statement", c.as_str()),
        };
        Verdict::Refuse(Refusal {
            code: sqlstate::INSUFFICIENT_PRIVILEGE,
            message: format!(
                "portcullis: connection \"{}\" is read-only (rule access = \"read-only\"): {what} was refused",
                self.connection
            ),
        })
    }
}

impl Inspector for StatementRules {
    fn frontend(&mut self, msg: &Message) -> Verdict {
        if !self.read_only {
            return Verdict::Pass;
        }
        match msg.tag {
            b'Q' => match messages::query_text(msg) {
                Some(sql) => self.check(&sql),
                None => self.check("\u{0}"),
            },
            b'P' => match messages::parse_text(msg) {
                Some((_, sql)) => self.check(&sql),
                None => self.check("\u{0}"),
            },
            // The fast-path function call can run anything.
            b'F' => Verdict::Refuse(Refusal {
                code: sqlstate::INSUFFICIENT_PRIVILEGE,
                message: format!(
                    "portcullis: connection \"{}\" is read-only: function calls are refused",
                    self.connection
                ),
            }),
            _ => Verdict::Pass,
        }
    }
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
        }
    }
    Ok(msg)
}

pub fn backend(chain: &mut [Box<dyn Inspector>], msg: Message) -> Result<Message, Refusal> {
    let mut msg = msg;
    for i in chain.iter_mut() {
        match i.backend(&msg) {
            Verdict::Pass => {}
            Verdict::Rewrite(m) => msg = m,
            Verdict::Refuse(r) => return Err(r),
        }
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(read_only: bool) -> Vec<Box<dyn Inspector>> {
        vec![Box::new(StatementRules {
            connection: "db".into(),
            read_only,
        })]
    }

    #[test]
    fn read_only_refuses_writes_and_ddl_naming_the_rule() {
        let mut c = rules(true);
        assert!(frontend(&mut c, messages::query("select 1")).is_ok());
        let r = frontend(&mut c, messages::query("DELETE FROM t")).unwrap_err();
        assert_eq!(r.code, "42501");
        assert!(
            r.message.contains("read-only") && r.message.contains("write"),
            "{}",
            r.message
        );
        let r = frontend(&mut c, messages::parse("CREATE TABLE x (a int)")).unwrap_err();
        assert!(r.message.contains("ddl"), "{}", r.message);
        let r = frontend(&mut c, messages::query("SELEC garbage")).unwrap_err();
        assert!(r.message.contains("could not be parsed"), "{}", r.message);
        assert!(frontend(&mut c, Message::new(b'F', &b"\0\0\0\0"[..])).is_err());
        // Other messages pass.
        assert!(frontend(&mut c, Message::new(b'S', &b""[..])).is_ok());
    }

    #[test]
    fn read_write_passes_everything() {
        let mut c = rules(false);
        assert!(frontend(&mut c, messages::query("DROP TABLE t")).is_ok());
    }
}
