//! Which of a caller's sync points the target answers around a COPY FROM
//! STDIN, free of I/O.
//!
//! The relay counts the sync points it sends (Query, Sync, FunctionCall)
//! against the ReadyForQuery answers it sees, and reads from that count
//! whether a statement still runs, where a schema change ends and which
//! answer an approved run is checked against. The target breaks the
//! one-answer-per-sync-point rule in one place: during copy-in it ignores
//! a Sync, and it takes any other message but copy data as the end of the
//! copy (a Query or fast-path call fails it mid-message, and PostgreSQL 15
//! then ends the session: "protocol synchronization was lost"). Drivers
//! lean on the first: libpq and tokio-postgres send an extended-protocol
//! COPY as `Bind, Execute, Sync`, then the data, `CopyDone, Sync`, and
//! the first Sync is never answered.
//!
//! The copy-in begins where the target says (CopyInResponse), not where
//! the relay sent the COPY: a Sync already sent by then is taken back
//! when it lies between the COPY's Execute and any data. What cannot be
//! followed exactly closes the session, as the masker's queue does
//! ([`crate::masking`]): a sync point after copy data or behind a simple
//! COPY, a message inside an extended batch with two Executes that began
//! a copy. A copy the target ended with an error leaves Syncs taken back
//! in doubt (the error may have come before the target read them): they
//! are counted again, which may run the count ahead of the target but
//! never behind, and the session is marked [`CopyIn::unsure`].
//!
//! Hand-written: this follows PostgreSQL's own copy-in rules
//! (`CopyGetData` and the error path of `PostgresMain`); no crate does.

use std::collections::VecDeque;

use crate::frame::tag;

/// Sync points kept awaiting an answer at most; past it the session can
/// no longer be followed ([`CopyIn::unsure`]).
const MAX_POINTS: usize = 100_000;

/// How far a copy-in that began at some point has got in what the
/// caller sent after that point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Progress {
    /// Nothing but Flush.
    #[default]
    Nothing,
    /// Copy data, and nothing that ends it.
    Data,
    /// CopyDone, CopyFail or any other message (the target takes it as
    /// the end).
    Ended,
}

impl Progress {
    fn after(self, t: u8) -> Self {
        match (self, t) {
            (p, tag::FLUSH | tag::SYNC) => p,
            (Progress::Nothing, tag::COPY_DATA) => Progress::Data,
            (p, tag::COPY_DATA) => p,
            _ => Progress::Ended,
        }
    }
}

/// What the caller sent since a sync point, as a copy-in begun in it
/// needs to know.
#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    /// Executes (saturating).
    executes: u8,
    /// Since the first Execute.
    after_execute: Progress,
    /// Messages that end a copy-in (saturating).
    enders: u32,
    /// Copy data since the segment began or its last ender.
    data_since_ender: bool,
}

impl Segment {
    fn note(&mut self, t: u8) {
        match t {
            tag::EXECUTE => {
                self.after_execute = if self.executes == 0 {
                    Progress::Nothing
                } else {
                    Progress::Ended
                };
                self.executes = self.executes.saturating_add(1);
            }
            _ if self.executes > 0 => self.after_execute = self.after_execute.after(t),
            _ => {}
        }
        match t {
            tag::FLUSH | tag::SYNC => {}
            tag::COPY_DATA => self.data_since_ender = true,
            _ => {
                self.enders = self.enders.saturating_add(1);
                self.data_since_ender = false;
            }
        }
    }
}

/// A sync point sent and not yet answered.
#[derive(Debug, Clone, Copy)]
struct Point {
    tag: u8,
    /// What came before it since the previous one.
    before: Segment,
}

/// Where the caller stands in the target's copy-in, as far as the relay
/// knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// No copy-in, or one the caller has ended: sync points count.
    #[default]
    Off,
    /// The target is in copy-in and the caller has not ended it.
    Active {
        /// Begun by an Execute (a Sync before data is ignored) rather
        /// than a Query (no sync point may come).
        extended: bool,
        data: bool,
    },
}

/// What the relay's counts become after a message from the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Adjust {
    None,
    /// Syncs already counted were ignored by the target: take them back
    /// (the last ones counted; the extended batch they would have ended
    /// is still open there).
    TakeBack(u64),
    /// Syncs taken back may have been answered after all: count them
    /// again.
    CountAgain(u64),
}

/// A copy-in the relay cannot follow: the session is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unfollowable {
    #[error("a Sync was sent between COPY data and its end")]
    SyncAfterData,
    #[error("a simple query, function call or Sync was sent inside a COPY FROM STDIN")]
    SyncPointInside,
    #[error("a COPY FROM STDIN began where the session's messages cannot place it")]
    Unplaced,
    #[error("a sync point was pipelined behind a COPY FROM STDIN before its copy-in began")]
    Pipelined,
    #[error("the target ended a COPY FROM STDIN the caller had not ended")]
    EndedEarly,
}

/// The relay's view of copy-in on one session (see the module's
/// documentation).
#[derive(Debug, Default)]
pub(crate) struct CopyIn {
    points: VecDeque<Point>,
    open: Segment,
    overflowed: bool,
    state: State,
    /// Syncs the caller sent inside the current copy-in, not counted.
    taken_back: u64,
    /// The target is in copy-in (CopyInResponse seen, its end not yet).
    target_copying: bool,
    /// Copy-ins begun while the front sync point is answered (a simple
    /// query may hold several COPY statements).
    begun_in_front: u32,
    unsure: bool,
}

fn is_sync_point(t: u8) -> bool {
    matches!(t, tag::QUERY | tag::SYNC | tag::FUNCTION_CALL)
}

impl CopyIn {
    /// The relay's count may not be the target's: for the rest of the
    /// session (ahead), or until a copy-in that took a Sync back ends
    /// (if the target fails it before reading that Sync, it answers it
    /// after all, and every index counted meanwhile moves up a place:
    /// review of this module, a schema change sent there was taken as
    /// ended before it ran). Nothing that needs the count exact may be
    /// read from it meanwhile.
    pub(crate) fn unsure(&self) -> bool {
        self.unsure || self.overflowed || self.taken_back > 0
    }

    /// A message from the caller, before it goes to the target: whether
    /// it is a sync point the target will answer.
    pub(crate) fn caller(&mut self, t: u8) -> Result<bool, Unfollowable> {
        if let State::Active { extended, data } = self.state {
            match t {
                tag::COPY_DATA => {
                    self.state = State::Active {
                        extended,
                        data: true,
                    };
                    return Ok(false);
                }
                tag::FLUSH => return Ok(false),
                // Ignored by the target. After data it is not knowable
                // whether the data failed first (the target leaves
                // copy-in at the error and answers the Sync).
                tag::SYNC if extended && !data => {
                    self.taken_back += 1;
                    return Ok(false);
                }
                tag::SYNC if extended => return Err(Unfollowable::SyncAfterData),
                t if is_sync_point(t) => return Err(Unfollowable::SyncPointInside),
                // Any other message ends the copy-in.
                _ => self.state = State::Off,
            }
        }
        self.note(t);
        Ok(is_sync_point(t))
    }

    fn note(&mut self, t: u8) {
        if !is_sync_point(t) {
            self.open.note(t);
            return;
        }
        if self.points.len() >= MAX_POINTS {
            self.overflowed = true;
        } else if !self.overflowed {
            self.points.push_back(Point {
                tag: t,
                before: self.open,
            });
        }
        self.open = Segment::default();
    }

    /// A message from the target (only CopyInResponse, CommandComplete,
    /// ErrorResponse and ReadyForQuery matter).
    pub(crate) fn target(&mut self, t: u8) -> Result<Adjust, Unfollowable> {
        match t {
            tag::COPY_IN_RESPONSE => self.began(),
            tag::COMMAND_COMPLETE if self.target_copying => {
                self.target_copying = false;
                if matches!(self.state, State::Active { .. }) {
                    return Err(Unfollowable::EndedEarly);
                }
                // Ended by the caller's CopyDone: what it sent inside was
                // ignored, as taken.
                self.taken_back = 0;
                Ok(Adjust::None)
            }
            tag::ERROR_RESPONSE if self.target_copying => {
                self.target_copying = false;
                self.state = State::Off;
                let n = std::mem::take(&mut self.taken_back);
                if n == 0 {
                    return Ok(Adjust::None);
                }
                self.unsure = true;
                for _ in 0..n.min(MAX_POINTS as u64) {
                    self.points.push_front(Point {
                        tag: tag::SYNC,
                        before: Segment::default(),
                    });
                }
                Ok(Adjust::CountAgain(n))
            }
            tag::READY_FOR_QUERY => {
                self.points.pop_front();
                self.begun_in_front = 0;
                Ok(Adjust::None)
            }
            _ => Ok(Adjust::None),
        }
    }

    /// CopyInResponse: the copy-in began in the front sync point's
    /// segment (the oldest not yet answered), or in the open one.
    fn began(&mut self) -> Result<Adjust, Unfollowable> {
        if self.target_copying || self.state != State::Off {
            return Err(Unfollowable::Unplaced);
        }
        self.target_copying = true;
        if self.unsure || self.overflowed {
            // The front may be one the target will never answer: nothing
            // is taken back, and whatever the caller sends inside counts
            // (ahead, never behind).
            return Ok(Adjust::None);
        }
        self.begun_in_front += 1;
        match self.points.front().copied() {
            Some(Point {
                tag: tag::QUERY, ..
            }) => self.began_in_query(),
            Some(Point {
                tag: tag::SYNC,
                before,
            }) => self.began_before_sync(before),
            Some(_) => Err(Unfollowable::Unplaced),
            None => self.began_unsynced(),
        }
    }

    /// A simple query's COPY (the front sync point): nothing sent after
    /// it may be a sync point until the copy's end (the k-th COPY of the
    /// query ends at the k-th ender).
    fn began_in_query(&mut self) -> Result<Adjust, Unfollowable> {
        let seg = self.points.get(1).map_or(self.open, |p| p.before);
        let k = self.begun_in_front;
        if seg.enders >= k {
            return Ok(Adjust::None);
        }
        if seg.enders + 1 < k {
            return Err(Unfollowable::Unplaced);
        }
        if self.points.len() > 1 {
            return Err(Unfollowable::SyncPointInside);
        }
        self.state = State::Active {
            extended: false,
            data: seg.data_since_ender,
        };
        Ok(Adjust::None)
    }

    /// An Execute's COPY, its Sync (the front sync point, with `before`)
    /// already sent.
    fn began_before_sync(&mut self, before: Segment) -> Result<Adjust, Unfollowable> {
        if before.executes != 1 || self.begun_in_front != 1 {
            return Err(Unfollowable::Unplaced);
        }
        match before.after_execute {
            Progress::Ended => Ok(Adjust::None),
            Progress::Data => Err(Unfollowable::SyncAfterData),
            Progress::Nothing => {
                // Anything counted after it would move back a place,
                // with every index read from it (no driver sends one
                // before the copy-in begins).
                if self.points.len() > 1 {
                    return Err(Unfollowable::Pipelined);
                }
                self.points.pop_front();
                if self.open.enders == 0 {
                    self.state = State::Active {
                        extended: true,
                        data: self.open.data_since_ender,
                    };
                }
                self.taken_back = 1;
                Ok(Adjust::TakeBack(1))
            }
        }
    }

    /// An Execute's COPY, no Sync sent yet.
    fn began_unsynced(&mut self) -> Result<Adjust, Unfollowable> {
        if self.open.executes != 1 || self.begun_in_front != 1 {
            return Err(Unfollowable::Unplaced);
        }
        if let p @ (Progress::Nothing | Progress::Data) = self.open.after_execute {
            self.state = State::Active {
                extended: true,
                data: p == Progress::Data,
            };
        }
        Ok(Adjust::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed the caller's tags; the sync points counted.
    fn send(c: &mut CopyIn, tags: &[u8]) -> Result<u64, Unfollowable> {
        let mut n = 0;
        for &t in tags {
            n += u64::from(c.caller(t)?);
        }
        Ok(n)
    }

    const G: u8 = tag::COPY_IN_RESPONSE;
    const Z: u8 = tag::READY_FOR_QUERY;
    const C: u8 = tag::COMMAND_COMPLETE;
    const E: u8 = tag::ERROR_RESPONSE;

    #[test]
    fn an_extended_copy_takes_back_the_sync_behind_its_execute() {
        // tokio-postgres and libpq: Bind, Execute, Sync; data; CopyDone, Sync.
        let mut c = CopyIn::default();
        assert_eq!(send(&mut c, b"BES"), Ok(1));
        assert_eq!(c.target(b'2'), Ok(Adjust::None));
        assert_eq!(c.target(G), Ok(Adjust::TakeBack(1)));
        assert!(c.unsure(), "until the copy's end");
        assert_eq!(send(&mut c, b"ddcS"), Ok(1));
        assert!(c.unsure());
        assert_eq!(c.target(C), Ok(Adjust::None));
        assert!(!c.unsure(), "ended by the caller: the Sync was ignored");
        assert_eq!(c.target(Z), Ok(Adjust::None));
        assert!(c.points.is_empty() && !c.unsure());
        // The next statement counts as usual.
        assert_eq!(send(&mut c, b"Q"), Ok(1));
    }

    #[test]
    fn a_copy_response_before_the_sync_leaves_it_uncounted() {
        let mut c = CopyIn::default();
        assert_eq!(send(&mut c, b"PBE"), Ok(0));
        assert_eq!(c.target(G), Ok(Adjust::None));
        assert_eq!(send(&mut c, b"SH"), Ok(0), "ignored before data");
        assert_eq!(send(&mut c, b"dfS"), Ok(1));
        assert_eq!(c.target(E), Ok(Adjust::CountAgain(1)));
        assert!(c.unsure(), "the Sync may have been answered");
    }

    #[test]
    fn a_copy_that_failed_counts_its_syncs_again_and_is_unsure() {
        let mut c = CopyIn::default();
        send(&mut c, b"BES").unwrap();
        assert_eq!(c.target(G), Ok(Adjust::TakeBack(1)));
        send(&mut c, b"d").unwrap();
        // The target failed the data before the caller ended the copy.
        assert_eq!(c.target(E), Ok(Adjust::CountAgain(1)));
        assert!(c.unsure());
        // Its later data and end are dropped by the target; the Sync counts.
        assert_eq!(send(&mut c, b"dcS"), Ok(1));
        c.target(Z).unwrap();
        // On an unsure session nothing is taken back again, and what is
        // sent inside a copy counts.
        send(&mut c, b"BES").unwrap();
        assert_eq!(c.target(G), Ok(Adjust::None));
        assert_eq!(send(&mut c, b"dScS"), Ok(2));
    }

    #[test]
    fn nothing_counted_behind_a_sync_taken_back() {
        // The copy's end and a Sync sent before the copy-in began.
        let mut c = CopyIn::default();
        send(&mut c, b"BESdcS").unwrap();
        assert_eq!(c.target(G), Err(Unfollowable::Pipelined));
        // A second Sync before data, as well.
        let mut c = CopyIn::default();
        send(&mut c, b"BESS").unwrap();
        assert_eq!(c.target(G), Err(Unfollowable::Pipelined));
        // The copy's end alone, sent ahead: taken back, and ended.
        let mut c = CopyIn::default();
        send(&mut c, b"BESdc").unwrap();
        assert_eq!(c.target(G), Ok(Adjust::TakeBack(1)));
        assert_eq!(c.state, State::Off);
        assert_eq!(c.target(C), Ok(Adjust::None));
        assert_eq!(send(&mut c, b"S"), Ok(1));
        c.target(Z).unwrap();
        assert!(c.points.is_empty() && !c.unsure());
    }

    #[test]
    fn a_sync_after_copy_data_is_not_followed() {
        let mut c = CopyIn::default();
        send(&mut c, b"BES").unwrap();
        c.target(G).unwrap();
        send(&mut c, b"d").unwrap();
        assert_eq!(c.caller(b'S'), Err(Unfollowable::SyncAfterData));
        // Sent before the copy-in was seen, too.
        let mut c = CopyIn::default();
        send(&mut c, b"BEdS").unwrap();
        assert_eq!(c.target(G), Err(Unfollowable::SyncAfterData));
    }

    #[test]
    fn a_simple_copy_allows_no_sync_point_until_its_end() {
        for t in [b'S', b'Q', b'F'] {
            let mut c = CopyIn::default();
            assert_eq!(send(&mut c, b"Q"), Ok(1));
            c.target(G).unwrap();
            assert_eq!(c.caller(t), Err(Unfollowable::SyncPointInside), "{t}");
            // Sent before the copy-in was seen, too.
            let mut c = CopyIn::default();
            send(&mut c, &[b'Q', t]).unwrap();
            assert_eq!(c.target(G), Err(Unfollowable::SyncPointInside), "{t}");
        }
        // After its end, they count.
        let mut c = CopyIn::default();
        send(&mut c, b"Q").unwrap();
        c.target(G).unwrap();
        assert_eq!(send(&mut c, b"dHcQ"), Ok(1));
        assert_eq!(c.target(C), Ok(Adjust::None));
        assert_eq!(c.target(Z), Ok(Adjust::None));
        assert_eq!(c.points.len(), 1);
    }

    #[test]
    fn data_sent_ahead_of_the_copy_response_is_placed() {
        // The data and its end sent at once behind the Query, then a Query.
        let mut c = CopyIn::default();
        send(&mut c, b"QdcQ").unwrap();
        assert_eq!(c.target(G), Ok(Adjust::None));
        assert_eq!(c.state, State::Off);
        assert_eq!(c.target(C), Ok(Adjust::None));
        c.target(Z).unwrap();
        c.target(Z).unwrap();
        assert!(c.points.is_empty() && !c.unsure());
    }

    #[test]
    fn several_copies_in_one_query_end_one_by_one() {
        let mut c = CopyIn::default();
        send(&mut c, b"Q").unwrap();
        c.target(G).unwrap();
        send(&mut c, b"dc").unwrap();
        c.target(C).unwrap();
        c.target(G).unwrap();
        assert!(matches!(c.state, State::Active { .. }), "the second began");
        assert_eq!(c.caller(b'S'), Err(Unfollowable::SyncPointInside));
    }

    #[test]
    fn a_message_inside_a_copy_ends_it_for_the_target() {
        // Not a sync point: the target fails the copy on it and counts
        // stay exact.
        let mut c = CopyIn::default();
        send(&mut c, b"Q").unwrap();
        c.target(G).unwrap();
        assert_eq!(send(&mut c, b"P"), Ok(0));
        assert_eq!(c.state, State::Off);
        assert_eq!(c.target(E), Ok(Adjust::None));
        assert!(!c.unsure());
    }

    #[test]
    fn a_copy_response_no_message_can_have_begun_is_refused() {
        // Two Executes before the Sync: which began the copy is unknown.
        let mut c = CopyIn::default();
        send(&mut c, b"BEBES").unwrap();
        assert_eq!(c.target(G), Err(Unfollowable::Unplaced));
        // Nothing that can begin one.
        let mut c = CopyIn::default();
        send(&mut c, b"PS").unwrap();
        assert_eq!(c.target(G), Err(Unfollowable::Unplaced));
        let mut c = CopyIn::default();
        assert_eq!(c.target(G), Err(Unfollowable::Unplaced));
        // A second one before the first ended.
        let mut c = CopyIn::default();
        send(&mut c, b"Q").unwrap();
        c.target(G).unwrap();
        assert_eq!(c.target(G), Err(Unfollowable::Unplaced));
    }

    #[test]
    fn the_target_cannot_complete_a_copy_the_caller_has_not_ended() {
        let mut c = CopyIn::default();
        send(&mut c, b"Q").unwrap();
        c.target(G).unwrap();
        assert_eq!(c.target(C), Err(Unfollowable::EndedEarly));
    }

    #[test]
    fn counts_stay_bounded() {
        let mut c = CopyIn::default();
        for _ in 0..MAX_POINTS + 10 {
            c.caller(b'S').unwrap();
        }
        assert!(c.unsure());
        assert_eq!(c.points.len(), MAX_POINTS);
    }
}
