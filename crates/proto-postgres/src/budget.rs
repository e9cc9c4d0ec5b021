//! A session's budget at the wire: writes are counted when a statement
//! that writes is admitted (a Query, or the Bind of a prepared one);
//! rows and bytes of results as the target sends them. Before a
//! statement runs, what is left of the rows and bytes is *reserved*: taken
//! in the store at once, so a concurrent session (here or on another
//! gateway) sees it gone while this one streams; what was not used is
//! given back once the session is idle. A result that would cross the
//! reservation is cut where it crosses, with a 53400 error in place of
//! the row, and nothing else of that statement reaches the caller (never
//! a silently shorter result).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What the target's next DataRow does to the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// Within it: passed on.
    Pass,
    /// It crosses the rows (`true`) or bytes (`false`) reservation: the
    /// error goes in its place.
    Cut { rows: bool },
    /// After a cut: dropped until ReadyForQuery.
    Drop,
}

/// Rows (`[0]`) and bytes (`[1]`) of one session: what is reserved and
/// what was taken of it. (Atomics only because the relay's future must be
/// Send; both directions run in one task.)
#[derive(Debug, Default)]
pub struct Results {
    limited: [AtomicBool; 2],
    reserved: [AtomicU64; 2],
    taken: [AtomicU64; 2],
    cutting: AtomicBool,
    /// Prepared statements a Bind may run as a read (see [`Names`]).
    pub names: Mutex<Names>,
    /// Set for good once the session ran something that may have made a
    /// named prepared statement the gateway did not see parsed (SQL
    /// `PREPARE`, or code it cannot read): from then on a Parse of a name
    /// is not trusted (it fails on the target when the name exists), so
    /// every Bind of a named statement counts as a write.
    pub unseen_names: AtomicBool,
}

impl Results {
    /// `n` more of measure `i` (0 rows, 1 bytes) was reserved.
    pub fn reserve(&self, i: usize, n: u64) {
        self.limited[i].store(true, Ordering::Relaxed);
        self.reserved[i].fetch_add(n, Ordering::Relaxed);
    }

    /// No limit applies to measure `i` any more (an approver lifted it for
    /// this session).
    pub fn unlimit(&self, i: usize) {
        self.limited[i].store(false, Ordering::Relaxed);
    }

    /// A DataRow of `len` bytes from the target.
    pub fn row(&self, len: usize) -> Row {
        if self.cutting.load(Ordering::Relaxed) {
            return Row::Drop;
        }
        let add = [1, len as u64];
        for i in 0..2 {
            let taken = self.taken[i].fetch_add(add[i], Ordering::Relaxed) + add[i];
            if self.limited[i].load(Ordering::Relaxed)
                && taken > self.reserved[i].load(Ordering::Relaxed)
            {
                // Not taken: it is not sent.
                for (j, a) in add.iter().enumerate().take(i + 1) {
                    self.taken[j].fetch_sub(*a, Ordering::Relaxed);
                }
                self.cutting.store(true, Ordering::Relaxed);
                return Row::Cut { rows: i == 0 };
            }
        }
        Row::Pass
    }

    /// A message of `len` bytes from the target that is not a row but
    /// can carry values (an error's or notice's text, a notification's
    /// payload, a reported setting): whether it fits in what is reserved
    /// (then counted). One that does not is not taken: the relay
    /// withholds its text.
    pub fn text(&self, len: usize) -> bool {
        let len = len as u64;
        if self.limited[1].load(Ordering::Relaxed)
            && self.taken[1].load(Ordering::Relaxed) + len
                > self.reserved[1].load(Ordering::Relaxed)
        {
            return false;
        }
        self.taken[1].fetch_add(len, Ordering::Relaxed);
        true
    }

    /// Whether a cut is dropping the rest of a statement's answer.
    pub fn cutting(&self) -> bool {
        self.cutting.load(Ordering::Relaxed)
    }

    /// ReadyForQuery: the cut (if any) is over.
    pub fn ready(&self) {
        self.cutting.store(false, Ordering::Relaxed);
    }

    /// What is reserved and taken now, to settle: its
    /// [`Settle::balance`] is given back (or counted), then
    /// [`Self::settled`] takes exactly it off, so a reservation made
    /// while the give-back was awaited stays whole.
    pub fn snapshot(&self) -> Settle {
        Settle {
            reserved: [0, 1].map(|i| self.reserved[i].load(Ordering::Relaxed)),
            taken: [0, 1].map(|i| self.taken[i].load(Ordering::Relaxed)),
        }
    }

    /// `s` was given back or counted: taken off. Whether a limit applies
    /// stays as it was (the next statement reserves again; a row with
    /// nothing reserved is cut).
    pub fn settled(&self, s: &Settle) {
        for i in 0..2 {
            self.reserved[i].fetch_sub(s.reserved[i], Ordering::Relaxed);
            self.taken[i].fetch_sub(s.taken[i], Ordering::Relaxed);
        }
    }

    /// Settle what is reserved and taken now with `ledger`: what was used
    /// beyond the reservation is spent, what was not used given back.
    /// Each await may be the last (the relay's `select!` drops the half
    /// that settles when the caller leaves, and the session's own
    /// settling runs next), so what is owed is spent before the snapshot
    /// is marked settled (dropped half way, it is spent again: more,
    /// never less) and what is given back is given after (dropped, it is
    /// not given back). Marked after the refunds, a refund whose store
    /// write landed was given back a second time by the session's end,
    /// and a caller who timed its goodbye raised its budget (review of
    /// cancellation, 2026-12-05).
    pub async fn settle(&self, ledger: &impl Ledger) {
        let snapshot = self.snapshot();
        let balance = snapshot.balance();
        for (i, b) in balance.iter().enumerate() {
            if *b < 0 {
                ledger.spend(i, b.unsigned_abs()).await;
            }
        }
        self.settled(&snapshot);
        for (i, b) in balance.iter().enumerate() {
            if let Ok(unused @ 1..) = u64::try_from(*b) {
                ledger.refund(i, unused).await;
            }
        }
    }
}

/// Where a session's rows (`0`) and bytes (`1`) are counted: the
/// principal's budget ([`Results::settle`]).
pub trait Ledger {
    /// `n` of measure `i` used beyond what was reserved.
    fn spend(&self, i: usize, n: u64) -> impl std::future::Future<Output = ()> + Send;
    /// `n` of measure `i` reserved and not used.
    fn refund(&self, i: usize, n: u64) -> impl std::future::Future<Output = ()> + Send;
}

/// A session's reservation and use at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settle {
    reserved: [u64; 2],
    taken: [u64; 2],
}

impl Settle {
    /// What was reserved and not used (to give back) or, negative, used
    /// beyond it (a lifted limit: to count): rows, bytes.
    pub fn balance(&self) -> [i64; 2] {
        [0, 1].map(|i| self.reserved[i] as i64 - self.taken[i] as i64)
    }
}

/// Prepared statements proven reads, by the caller's name (the unnamed
/// one as ""): a Bind of any other counts as a write. A Parse is taken at
/// its word only where the target cannot have refused or skipped it
/// unseen. A review ran writes past the budget as reads: a read Parse
/// sent after an error (the target skips it until Sync), or of a name
/// still taken by a write (the target refuses it), had made the write
/// statement still there a read.
/// - In the batch it was sent in (up to the next Sync): if the Parse
///   failed, the target skips the rest of the batch, the Bind included.
/// - After that, once the target answered every sync point sent with no
///   error in between: the Parse then did happen.
///
/// A read whose batch saw an error is forgotten (its Binds count as
/// writes: more, never less). So is any name a Close or a Parse of a
/// write names, at once.
#[derive(Debug, Default)]
pub struct Names {
    /// Proven: parsed in a batch the target finished with no error.
    reads: HashSet<String>,
    /// Parsed as reads since the last sync point sent.
    batch: HashSet<String>,
    /// Parsed as reads in batches the target has not finished answering.
    unconfirmed: HashSet<String>,
    /// The target sent an error since it last finished every batch.
    failed: bool,
}

/// Names kept at most (each is also a statement on the target): past it,
/// what is kept is forgotten and Binds of those count as writes.
const MAX_NAMES: usize = 10_000;

impl Names {
    /// A Parse of `name` went to the target: a read (`read`) or anything
    /// else.
    pub fn parsed(&mut self, name: &str, read: bool) {
        self.forget(name);
        if !read {
            return;
        }
        if self.reads.len() + self.batch.len() + self.unconfirmed.len() >= MAX_NAMES {
            self.reads.clear();
            self.unconfirmed.clear();
            if self.batch.len() >= MAX_NAMES {
                // Not kept: its Binds count as writes.
                return;
            }
        }
        self.batch.insert(name.to_string());
    }

    /// A Close of `name` went to the target (it may be skipped: the name
    /// is then no longer trusted either way).
    pub fn forget(&mut self, name: &str) {
        self.reads.remove(name);
        self.batch.remove(name);
        self.unconfirmed.remove(name);
    }

    /// Whether a Bind of `name` now runs a proven read.
    pub fn is_read(&self, name: &str) -> bool {
        self.batch.contains(name) || self.reads.contains(name)
    }

    /// The caller sent a sync point (Sync, a simple query or a fast-path
    /// call): the batch is over. A simple query also drops the unnamed
    /// statement on the target.
    pub fn sync_point(&mut self, query: bool) {
        self.unconfirmed.extend(self.batch.drain());
        if query {
            self.forget("");
        }
    }

    /// The target sent an ErrorResponse.
    pub fn target_error(&mut self) {
        self.failed = true;
    }

    /// The target answered every sync point sent, and nothing is sent
    /// after the last: what it was asked to parse as reads, it did,
    /// unless an error came in between.
    pub fn idle(&mut self) {
        if self.failed {
            self.unconfirmed.clear();
        } else {
            self.reads.extend(self.unconfirmed.drain());
        }
        self.failed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A ledger whose writes never finish, as a store write looks to a
    /// relay half dropped while it waits; it notes what was asked.
    #[derive(Default)]
    struct Stalled(Mutex<Vec<(&'static str, usize, u64)>>);

    impl Ledger for Stalled {
        async fn spend(&self, i: usize, n: u64) {
            self.0.lock().unwrap().push(("spend", i, n));
            std::future::pending::<()>().await
        }
        async fn refund(&self, i: usize, n: u64) {
            self.0.lock().unwrap().push(("refund", i, n));
            std::future::pending::<()>().await
        }
    }

    /// Settling dropped while a refund is written leaves nothing to give
    /// back again (a second settling gave the same refund twice: review
    /// of cancellation, 2026-12-05); dropped while what is owed is
    /// spent, it leaves that to spend again (more, never less).
    #[tokio::test]
    async fn a_settling_dropped_half_way_never_gives_back_twice() {
        let res = Results::default();
        res.reserve(0, 10);
        res.reserve(1, 1000);
        assert_eq!(res.row(100), Row::Pass);
        let ledger = Stalled::default();
        let once = tokio::time::timeout(Duration::ZERO, res.settle(&ledger)).await;
        assert!(once.is_err(), "the refund is still being written");
        assert_eq!(*ledger.0.lock().unwrap(), [("refund", 0, 9)]);
        assert_eq!(
            res.snapshot().balance(),
            [0, 0],
            "nothing left to give back"
        );

        // Bytes taken with none reserved (no bytes limit): owed.
        let res = Results::default();
        res.reserve(0, 10);
        assert_eq!(res.row(100), Row::Pass);
        let ledger = Stalled::default();
        let once = tokio::time::timeout(Duration::ZERO, res.settle(&ledger)).await;
        assert!(once.is_err());
        assert_eq!(*ledger.0.lock().unwrap(), [("spend", 1, 100)]);
        assert_eq!(
            res.snapshot().balance(),
            [9, -100],
            "still owed, still to give back"
        );
    }

    #[test]
    fn a_parse_is_trusted_in_its_batch_and_once_the_target_finished_it() {
        let mut n = Names::default();
        n.parsed("s", true);
        assert!(n.is_read("s"), "a failed Parse skips the Bind after it");
        n.sync_point(false);
        assert!(!n.is_read("s"), "not yet answered");
        n.idle();
        assert!(n.is_read("s"));
        // A write under the name, or a Close, ends it at once.
        n.parsed("s", false);
        assert!(!n.is_read("s"));
        n.parsed("s", true);
        n.forget("s");
        assert!(!n.is_read("s"));
    }

    #[test]
    fn an_error_before_the_target_finished_forgets_the_batch() {
        // Review: a read Parse the target skipped after an error, or
        // refused (the name was a write's), made the write a read.
        let mut n = Names::default();
        n.parsed("", true);
        n.parsed("w", true);
        n.sync_point(false);
        n.target_error();
        n.idle();
        assert!(!n.is_read(""));
        assert!(!n.is_read("w"));
        // The next clean batch is trusted again.
        n.parsed("w", true);
        n.sync_point(false);
        n.idle();
        assert!(n.is_read("w"));
        // A simple query drops the unnamed statement on the target.
        n.parsed("", true);
        n.sync_point(false);
        n.idle();
        n.sync_point(true);
        assert!(!n.is_read(""));
        assert!(n.is_read("w"));
    }

    #[test]
    fn names_are_bounded() {
        let mut n = Names::default();
        for i in 0..MAX_NAMES + 5 {
            n.parsed(&i.to_string(), true);
            n.sync_point(false);
            n.idle();
        }
        assert!(n.reads.len() <= MAX_NAMES);
        assert!(!n.is_read("0"));
    }

    #[test]
    fn a_result_is_cut_where_it_crosses_the_reservation() {
        let r = Results::default();
        r.reserve(0, 2);
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(r.row(10), Row::Cut { rows: true });
        assert_eq!(r.row(10), Row::Drop);
        assert!(r.cutting());
        r.ready();
        assert!(!r.cutting());
        let s = r.snapshot();
        assert_eq!(s.balance(), [0, -20]);
        // A reservation made while the give-back is awaited survives it.
        r.reserve(0, 5);
        r.settled(&s);
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(r.snapshot().balance(), [4, -10]);
    }

    #[test]
    fn bytes_cut_too() {
        let r = Results::default();
        r.reserve(1, 25);
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(r.row(10), Row::Cut { rows: false });
        assert_eq!(r.snapshot().balance(), [-2, 5]);
        // An error's text is bytes too: within what is left it is taken,
        // past it it is not (the relay withholds the text).
        assert!(r.text(5));
        assert!(!r.text(1));
        assert_eq!(r.snapshot().balance(), [-2, 0]);
        // Settled, a limit still applies: nothing reserved cuts the next.
        r.settled(&r.snapshot());
        r.ready();
        assert_eq!(r.row(1), Row::Cut { rows: false });
        assert!(!r.text(1));
    }

    #[test]
    fn nothing_reserved_means_no_limit() {
        let r = Results::default();
        for _ in 0..1000 {
            assert_eq!(r.row(1 << 20), Row::Pass);
        }
    }
}
