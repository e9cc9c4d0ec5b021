//! A session's budget at the wire: writes are counted when a statement
//! that writes is admitted (a Query, or the Bind of a prepared one);
//! rows and bytes of results as the target sends them. The allowance is
//! read from the store before each statement runs; a result that would
//! cross it is cut where it crosses, with a 53400 error in place of the
//! row, and nothing else of that statement reaches the caller (never a
//! silently shorter result). What was taken is written back at each
//! ReadyForQuery.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What the target's next DataRow does to the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// Within it: passed on.
    Pass,
    /// It crosses the rows (`true`) or bytes (`false`) allowance: the
    /// error goes in its place.
    Cut { rows: bool, used: u64 },
    /// After a cut: dropped until ReadyForQuery.
    Drop,
}

/// Rows and bytes of one session: what is left, and what was taken since
/// the last write-back. (Atomics only because the relay's future must be
/// Send; both directions run in one task.)
#[derive(Debug)]
pub struct Results {
    rows_left: AtomicU64,
    bytes_left: AtomicU64,
    rows: AtomicU64,
    bytes: AtomicU64,
    /// Taken since the allowance was last read.
    rows_since: AtomicU64,
    bytes_since: AtomicU64,
    cutting: AtomicBool,
    /// Prepared statements that write, by the caller's name: their Binds
    /// count as writes.
    pub writes: Mutex<HashSet<String>>,
}

impl Default for Results {
    fn default() -> Self {
        Self {
            rows_left: AtomicU64::new(u64::MAX),
            bytes_left: AtomicU64::new(u64::MAX),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            rows_since: AtomicU64::new(0),
            bytes_since: AtomicU64::new(0),
            cutting: AtomicBool::new(false),
            writes: Mutex::default(),
        }
    }
}

impl Results {
    /// The allowance as the store gives it now (`None`: no limit).
    pub fn allow(&self, rows: Option<u64>, bytes: Option<u64>) {
        self.rows_left
            .store(rows.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.bytes_left
            .store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.rows_since.store(0, Ordering::Relaxed);
        self.bytes_since.store(0, Ordering::Relaxed);
    }

    /// A DataRow of `len` bytes from the target.
    pub fn row(&self, len: usize) -> Row {
        if self.cutting.load(Ordering::Relaxed) {
            return Row::Drop;
        }
        let rows = self.rows_since.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes_since.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        let cut = if rows > self.rows_left.load(Ordering::Relaxed) {
            Some((true, rows - 1))
        } else if bytes > self.bytes_left.load(Ordering::Relaxed) {
            Some((false, bytes - len as u64))
        } else {
            None
        };
        if let Some((rows, used)) = cut {
            self.cutting.store(true, Ordering::Relaxed);
            return Row::Cut { rows, used };
        }
        self.rows.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        Row::Pass
    }

    /// Whether a cut is dropping the rest of a statement's answer.
    pub fn cutting(&self) -> bool {
        self.cutting.load(Ordering::Relaxed)
    }

    /// ReadyForQuery: the cut (if any) is over.
    pub fn ready(&self) {
        self.cutting.store(false, Ordering::Relaxed);
    }

    /// What was taken and not yet written back.
    pub fn pending(&self) -> (u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// `rows` and `bytes` were written back.
    pub fn spent(&self, rows: u64, bytes: u64) {
        self.rows.fetch_sub(rows, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_cut_where_it_crosses_and_the_rest_dropped() {
        let r = Results::default();
        r.allow(Some(2), None);
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(
            r.row(10),
            Row::Cut {
                rows: true,
                used: 2
            }
        );
        assert_eq!(r.row(10), Row::Drop);
        assert!(r.cutting());
        r.ready();
        assert!(!r.cutting());
        assert_eq!(r.pending(), (2, 20));
        r.spent(2, 20);
        assert_eq!(r.pending(), (0, 0));
    }

    #[test]
    fn bytes_cut_too() {
        let r = Results::default();
        r.allow(None, Some(25));
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(r.row(10), Row::Pass);
        assert_eq!(
            r.row(10),
            Row::Cut {
                rows: false,
                used: 20
            }
        );
    }

    #[test]
    fn no_allowance_means_no_limit() {
        let r = Results::default();
        for _ in 0..1000 {
            assert_eq!(r.row(1 << 20), Row::Pass);
        }
    }
}
