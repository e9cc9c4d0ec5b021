//! Where a relayed byte stream of protocol-3 messages stands, free of I/O.
//!
//! A relay that copies bytes (the agent's end of a link) still has to
//! know, when a caller leaves, whether the target's session is between
//! messages and idle before it can serve another caller: a session handed
//! on mid-message or with answers still in flight would give the next
//! caller the previous one's rows. [`Bounds`] follows the length prefixes
//! of the messages a stream carries, without buffering them, and counts
//! the ones that matter for that decision; [`Bounds::idle_after`] makes
//! it.

use crate::frame::tag;

/// The last whole message a stream carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Last {
    pub tag: u8,
    /// The length field (4 + body).
    pub len: u32,
    /// The body's first byte, if it has one (ReadyForQuery's status).
    pub first: Option<u8>,
    /// Where the message began in the chunk last fed, if it began there.
    pub began_at: Option<usize>,
}

/// The framing state of one direction of a session after its startup.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// The tags counted (see [`Bounds::counted`]).
    counts: &'static [u8],
    counted: u64,
    /// Tags that leave work unsynced until the next counted one.
    opens: &'static [u8],
    /// Such a message came after the last counted one.
    unsynced: bool,
    header: [u8; 5],
    /// Header bytes of the current message seen so far (0 between
    /// messages).
    have: usize,
    /// Body bytes of the current message still to come.
    left: usize,
    /// The current message's first body byte, once seen.
    first: Option<u8>,
    began_at: Option<usize>,
    last: Option<Last>,
    /// A length field under 4: the stream is not protocol 3 and nothing
    /// about it can be trusted again.
    broken: bool,
}

/// Messages from the caller that the target answers with exactly one
/// ReadyForQuery (except where it ignores them, which only makes the
/// counts disagree: see [`Bounds::idle_after`]).
pub const SYNC_POINTS: &[u8] = &[tag::QUERY, tag::SYNC, tag::FUNCTION_CALL];
/// The target's answer that closes each sync point.
pub const READY: &[u8] = &[tag::READY_FOR_QUERY];
/// Extended-protocol messages from the caller: the target answers them
/// only once a sync point follows (and, after an error, discards what
/// comes before it).
pub const UNSYNCED: &[u8] = &[
    tag::PARSE,
    tag::BIND,
    tag::DESCRIBE,
    tag::EXECUTE,
    tag::CLOSE,
    tag::FLUSH,
];

impl Bounds {
    /// A stream at a message boundary, counting messages tagged `counts`.
    fn counting(counts: &'static [u8], opens: &'static [u8]) -> Self {
        Self {
            counts,
            counted: 0,
            opens,
            unsynced: false,
            header: [0; 5],
            have: 0,
            left: 0,
            first: None,
            began_at: None,
            last: None,
            broken: false,
        }
    }

    /// The target's side of a session whose startup ended with
    /// ReadyForQuery(`status`) (not counted: no caller's sync asked for it).
    pub fn after_startup(status: u8) -> Self {
        let mut b = Self::counting(READY, &[]);
        b.last = Some(Last {
            tag: tag::READY_FOR_QUERY,
            len: 5,
            first: Some(status),
            began_at: None,
        });
        b
    }

    /// The caller's side of a session: its [`SYNC_POINTS`] counted, and
    /// whether [`UNSYNCED`] work follows the last of them.
    pub fn caller() -> Self {
        Self::counting(SYNC_POINTS, UNSYNCED)
    }

    /// Follow `chunk`, the next bytes of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        if let Some(l) = self.last.as_mut() {
            l.began_at = None;
        }
        // A message under way began in an earlier chunk.
        self.began_at = None;
        let mut at = 0;
        while at < chunk.len() && !self.broken {
            if self.have < 5 {
                if self.have == 0 {
                    self.began_at = Some(at);
                    self.first = None;
                }
                let take = (5 - self.have).min(chunk.len() - at);
                self.header[self.have..self.have + take].copy_from_slice(&chunk[at..at + take]);
                self.have += take;
                at += take;
                if self.have < 5 {
                    break;
                }
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                if len < 4 {
                    self.broken = true;
                    break;
                }
                self.left = len as usize - 4;
            }
            if self.left > 0 && at < chunk.len() {
                if self.first.is_none() {
                    self.first = Some(chunk[at]);
                }
                let take = self.left.min(chunk.len() - at);
                self.left -= take;
                at += take;
            }
            if self.left == 0 {
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        let t = self.header[0];
        if self.counts.contains(&t) {
            self.counted += 1;
            self.unsynced = false;
        } else if self.opens.contains(&t) {
            self.unsynced = true;
        }
        self.last = Some(Last {
            tag: t,
            len: u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]),
            first: self.first,
            began_at: self.began_at,
        });
        self.have = 0;
        self.began_at = None;
    }

    /// Between two messages (and never misframed).
    pub fn at_boundary(&self) -> bool {
        !self.broken && self.have == 0 && self.left == 0
    }

    /// How many messages with a counted tag have passed.
    pub fn counted(&self) -> u64 {
        self.counted
    }

    pub fn last(&self) -> Option<Last> {
        self.last
    }

    /// The chunk just fed ended with a whole Terminate that began in it,
    /// after whole messages: the caller's clean goodbye, which the relay
    /// keeps from the target. Returns where it began.
    pub fn ends_with_terminate(&self, chunk_len: usize) -> Option<usize> {
        let l = self.last?;
        (self.at_boundary()
            && l.tag == tag::TERMINATE
            && l.len == 4
            && l.began_at == Some(chunk_len.checked_sub(5)?))
        .then_some(chunk_len - 5)
    }

    /// Whether a target session is idle once the caller's side (`sent`,
    /// counting [`SYNC_POINTS`]) and the target's side (`answered`,
    /// counting [`READY`] after [`Bounds::after_startup`]) have stopped:
    /// both between messages, no extended-protocol work after the last
    /// sync point, every sync point answered, and the last answer "idle,
    /// no transaction". Any doubt is a no: the session is
    /// then closed rather than handed on.
    pub fn idle_after(sent: &Bounds, answered: &Bounds) -> bool {
        sent.at_boundary()
            && !sent.unsynced
            && answered.at_boundary()
            && sent.counted() == answered.counted()
            && answered.last().is_some_and(|l| {
                l.tag == tag::READY_FOR_QUERY && l.len == 5 && l.first == Some(b'I')
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages;
    use proptest::prelude::*;

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        crate::frame::Message::new(t, body.to_vec())
            .to_bytes()
            .to_vec()
    }

    fn feed_split(b: &mut Bounds, bytes: &[u8], cuts: &[usize]) {
        let mut at = 0;
        for &c in cuts {
            let c = c.min(bytes.len());
            if c > at {
                b.feed(&bytes[at..c]);
                at = c;
            }
        }
        b.feed(&bytes[at..]);
    }

    #[test]
    fn a_query_and_its_answer_leave_the_session_idle() {
        let mut up = Bounds::caller();
        let mut down = Bounds::after_startup(b'I');
        up.feed(&messages::query("SELECT 1").to_bytes());
        assert!(!Bounds::idle_after(&up, &down), "the answer is still due");
        let mut answer = msg(tag::ROW_DESCRIPTION, b"\0\0");
        answer.extend(msg(tag::DATA_ROW, b"\0\x01\0\0\0\x011"));
        answer.extend(msg(tag::COMMAND_COMPLETE, b"SELECT 1\0"));
        answer.extend(messages::ready_for_query(b'I').to_bytes());
        down.feed(&answer);
        assert!(Bounds::idle_after(&up, &down));
    }

    #[test]
    fn an_open_transaction_or_a_half_message_is_not_idle() {
        let mut up = Bounds::caller();
        up.feed(&messages::query("BEGIN").to_bytes());
        let mut down = Bounds::after_startup(b'I');
        down.feed(&messages::ready_for_query(b'T').to_bytes());
        assert!(!Bounds::idle_after(&up, &down));

        let mut down = Bounds::after_startup(b'I');
        let rfq = messages::ready_for_query(b'I').to_bytes();
        down.feed(&rfq[..4]);
        assert!(!Bounds::idle_after(&up, &down));
        down.feed(&rfq[4..]);
        assert!(Bounds::idle_after(&up, &down));
    }

    #[test]
    fn terminate_counts_only_whole_and_last_in_its_chunk() {
        let mut up = Bounds::caller();
        let mut chunk = messages::query("SELECT 1").to_bytes().to_vec();
        chunk.extend(msg(tag::TERMINATE, b""));
        up.feed(&chunk);
        assert_eq!(up.ends_with_terminate(chunk.len()), Some(chunk.len() - 5));

        // Split across chunks: the first part already went to the target.
        let mut up = Bounds::caller();
        up.feed(&chunk[..chunk.len() - 2]);
        up.feed(&chunk[chunk.len() - 2..]);
        assert_eq!(up.ends_with_terminate(2), None);

        // Something after it, or a Terminate with a body, is not a goodbye.
        let mut up = Bounds::caller();
        let mut more = chunk.clone();
        more.extend(messages::query("SELECT 2").to_bytes());
        up.feed(&more);
        assert_eq!(up.ends_with_terminate(more.len()), None);
        let mut up = Bounds::caller();
        let odd = msg(tag::TERMINATE, b"x");
        up.feed(&odd);
        assert_eq!(up.ends_with_terminate(odd.len()), None);
    }

    #[test]
    fn extended_work_without_a_sync_is_not_idle() {
        let down = Bounds::after_startup(b'I');
        for t in UNSYNCED {
            let mut up = Bounds::caller();
            up.feed(&msg(*t, b"\0\0\0"));
            assert!(!Bounds::idle_after(&up, &down), "{}", *t as char);
            // A sync point after it, answered, settles it.
            up.feed(&msg(tag::SYNC, b""));
            let mut down = down.clone();
            down.feed(&messages::ready_for_query(b'I').to_bytes());
            assert!(Bounds::idle_after(&up, &down), "{}", *t as char);
        }
    }

    #[test]
    fn a_length_under_four_breaks_the_stream_for_good() {
        let mut b = Bounds::caller();
        b.feed(b"Q\0\0\0\x02");
        assert!(!b.at_boundary());
        b.feed(&messages::query("SELECT 1").to_bytes());
        assert!(!b.at_boundary());
    }

    proptest! {
        /// However the bytes are cut into chunks, the state is the one the
        /// whole stream gives: the messages counted, the last one, and
        /// whether it ends between messages.
        #[test]
        fn chunking_never_changes_the_verdict(
            msgs in proptest::collection::vec(
                (prop::sample::select(vec![b'Q', b'S', b'Z', b'D', b'X', b'd']),
                 proptest::collection::vec(any::<u8>(), 0..40)),
                0..12),
            cuts in proptest::collection::vec(0usize..600, 0..20),
            trim in 0usize..5,
        ) {
            let mut bytes = Vec::new();
            for (t, body) in &msgs {
                bytes.extend(msg(*t, body));
            }
            let bytes = &bytes[..bytes.len().saturating_sub(trim)];
            let mut cuts = cuts;
            cuts.sort();
            let mut whole = Bounds::caller();
            whole.feed(bytes);
            let mut split = Bounds::caller();
            feed_split(&mut split, bytes, &cuts);
            prop_assert_eq!(whole.at_boundary(), split.at_boundary());
            prop_assert_eq!(whole.counted(), split.counted());
            prop_assert_eq!(
                whole.last().map(|l| (l.tag, l.len, l.first)),
                split.last().map(|l| (l.tag, l.len, l.first))
            );
            // The oracle: a boundary exactly when nothing was trimmed.
            prop_assert_eq!(whole.at_boundary(), trim == 0 || msgs.is_empty());
            let syncs = msgs.iter().filter(|(t, _)| SYNC_POINTS.contains(t)).count();
            let whole_syncs = if trim == 0 {
                syncs
            } else {
                syncs - usize::from(msgs.last().is_some_and(|(t, _)| SYNC_POINTS.contains(t)))
            };
            prop_assert_eq!(whole.counted() as usize, whole_syncs);
        }
    }
}
