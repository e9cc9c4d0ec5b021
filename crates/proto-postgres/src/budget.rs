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
    /// Prepared statements that write, by the caller's name: their Binds
    /// count as writes.
    pub writes: Mutex<HashSet<String>>,
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

    /// A notice or error of `len` bytes from the target: bytes returned
    /// too (a value can come back in its text), counted but never cut
    /// (an error must reach the caller; what it takes past the
    /// reservation is counted when the session settles).
    pub fn text(&self, len: usize) {
        self.taken[1].fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Whether a cut is dropping the rest of a statement's answer.
    pub fn cutting(&self) -> bool {
        self.cutting.load(Ordering::Relaxed)
    }

    /// ReadyForQuery: the cut (if any) is over.
    pub fn ready(&self) {
        self.cutting.store(false, Ordering::Relaxed);
    }

    /// What was reserved and not used (to give back) or, negative, used
    /// beyond it (notices and errors, a lifted limit: to count): rows,
    /// bytes.
    pub fn balance(&self) -> [i64; 2] {
        [0, 1].map(|i| {
            let reserved = self.reserved[i].load(Ordering::Relaxed) as i64;
            reserved - self.taken[i].load(Ordering::Relaxed) as i64
        })
    }

    /// The unused part was given back: the session starts again from
    /// nothing reserved.
    pub fn settled(&self) {
        for i in 0..2 {
            self.limited[i].store(false, Ordering::Relaxed);
            self.reserved[i].store(0, Ordering::Relaxed);
            self.taken[i].store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(r.balance(), [0, -20]);
        r.settled();
        r.reserve(0, 5);
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(r.balance(), [4, -10]);
    }

    #[test]
    fn bytes_cut_too() {
        let r = Results::default();
        r.reserve(1, 25);
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(r.row(10), Row::Cut { rows: false });
        assert_eq!(r.balance(), [-2, 5]);
        // An error's text is bytes too, never cut: counted past it.
        r.text(40);
        assert_eq!(r.balance(), [-2, -35]);
    }

    #[test]
    fn nothing_reserved_means_no_limit() {
        let r = Results::default();
        for _ in 0..1000 {
            assert_eq!(r.row(1 << 20), Row::Pass);
        }
    }
}
