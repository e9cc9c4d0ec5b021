//! What a held statement would do, attached to its review: the rows each
//! table would gain, change or lose, and a small masked sample, found by
//! running the statement once in a transaction the gateway rolls back
//! (see `portcullis_postgres::preview`). Pure: the types, and whether a
//! fresh preview still matches the one a person approved.

use serde::{Deserialize, Serialize};

/// Rows of one table a statement would insert, update and delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableChange {
    /// `schema.table`, as the target names it.
    pub table: String,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// One affected row: its values before the statement (updated and
/// deleted rows) and after it (inserted and updated rows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRow {
    pub before: Option<Vec<Option<String>>>,
    pub after: Option<Vec<Option<String>>>,
}

/// Some rows of the table the statement names, masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub table: String,
    pub columns: Vec<String>,
    pub rows: Vec<SampleRow>,
    /// Why part of the sample is missing (no primary key to find the
    /// old values by, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A held statement's preview, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Preview {
    /// Run and rolled back: what it would change.
    Counted {
        /// Every table with a changed row, by name.
        tables: Vec<TableChange>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sample: Option<Sample>,
    },
    /// Not run, and why (a trigger could act outside the transaction, a
    /// function is not proven, the preview timed out…).
    NotPreviewed { reason: String },
}

impl Preview {
    pub fn not_previewed(reason: impl Into<String>) -> Self {
        Preview::NotPreviewed {
            reason: reason.into(),
        }
    }

    /// The counts, when it was run.
    pub fn tables(&self) -> Option<&[TableChange]> {
        match self {
            Preview::Counted { tables, .. } => Some(tables),
            Preview::NotPreviewed { .. } => None,
        }
    }

    /// Whether `now` (a fresh preview of the same action) still matches
    /// this one, the one a person saw: every count of every table within
    /// `tolerance` rows. `Err` says what differs, for the caller and the
    /// audit log. Only counted previews bind: an approval given without
    /// counts is not voided by counts appearing later, nor the reverse
    /// by their disappearing (the statement is the same statement).
    pub fn still_matches(&self, now: &Preview, tolerance: u64) -> Result<(), String> {
        let (Some(was), Some(now)) = (self.tables(), now.tables()) else {
            return Ok(());
        };
        let find = |set: &[TableChange], t: &str| set.iter().find(|c| c.table == t).cloned();
        let zero = |t: &str| TableChange {
            table: t.to_string(),
            inserted: 0,
            updated: 0,
            deleted: 0,
        };
        let mut names: Vec<&str> = was.iter().chain(now).map(|c| c.table.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut differs = Vec::new();
        for t in names {
            let a = find(was, t).unwrap_or_else(|| zero(t));
            let b = find(now, t).unwrap_or_else(|| zero(t));
            for (what, x, y) in [
                ("inserted", a.inserted, b.inserted),
                ("updated", a.updated, b.updated),
                ("deleted", a.deleted, b.deleted),
            ] {
                if x.abs_diff(y) > tolerance {
                    differs.push(format!("{t}: {x} {what} when approved, {y} now"));
                }
            }
        }
        if differs.is_empty() {
            Ok(())
        } else {
            Err(differs.join("; "))
        }
    }

    /// One line for a terminal or a chat message.
    pub fn summary(&self) -> String {
        match self {
            Preview::NotPreviewed { reason } => format!("not previewed: {reason}"),
            Preview::Counted { tables, .. } if tables.is_empty() => "changes no rows".into(),
            Preview::Counted { tables, .. } => tables
                .iter()
                .map(|c| {
                    let mut parts = Vec::new();
                    for (n, what) in [
                        (c.inserted, "inserted"),
                        (c.updated, "updated"),
                        (c.deleted, "deleted"),
                    ] {
                        if n > 0 {
                            parts.push(format!("{n} {what}"));
                        }
                    }
                    format!("{}: {}", c.table, parts.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(rows: &[(&str, u64, u64, u64)]) -> Preview {
        Preview::Counted {
            tables: rows
                .iter()
                .map(|(t, i, u, d)| TableChange {
                    table: t.to_string(),
                    inserted: *i,
                    updated: *u,
                    deleted: *d,
                })
                .collect(),
            sample: None,
        }
    }

    #[test]
    fn same_counts_match() {
        let p = counted(&[("public.orders", 0, 0, 10)]);
        assert_eq!(p.still_matches(&p.clone(), 0), Ok(()));
    }

    #[test]
    fn a_count_beyond_the_tolerance_differs() {
        let was = counted(&[("public.orders", 0, 0, 10)]);
        let now = counted(&[("public.orders", 0, 0, 12)]);
        let why = was.still_matches(&now, 0).unwrap_err();
        assert!(
            why.contains("public.orders: 10 deleted when approved, 12 now"),
            "{why}"
        );
        assert_eq!(was.still_matches(&now, 2), Ok(()));
        assert!(was.still_matches(&now, 1).is_err());
    }

    #[test]
    fn a_table_newly_touched_differs() {
        // A cascade that reaches a table the approved preview never
        // touched is a different action, even with the same main count.
        let was = counted(&[("public.orders", 0, 0, 10)]);
        let now = counted(&[("public.orders", 0, 0, 10), ("public.lines", 0, 0, 3)]);
        let why = was.still_matches(&now, 0).unwrap_err();
        assert!(
            why.contains("public.lines: 0 deleted when approved, 3 now"),
            "{why}"
        );
        assert!(
            now.still_matches(&was, 0).is_err(),
            "and a table no longer touched"
        );
    }

    #[test]
    fn only_counted_previews_bind() {
        let was = counted(&[("public.orders", 0, 0, 10)]);
        let none = Preview::not_previewed("timed out");
        assert_eq!(was.still_matches(&none, 0), Ok(()));
        assert_eq!(none.still_matches(&was, 0), Ok(()));
    }

    #[test]
    fn summary_names_each_table() {
        let p = counted(&[("public.orders", 0, 2, 10), ("public.lines", 5, 0, 0)]);
        assert_eq!(
            p.summary(),
            "public.orders: 2 updated, 10 deleted; public.lines: 5 inserted"
        );
        assert_eq!(counted(&[]).summary(), "changes no rows");
    }

    #[test]
    fn serialises_with_a_status() {
        let p = Preview::not_previewed("a trigger");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["status"], "not_previewed");
        assert_eq!(v["reason"], "a trigger");
        let back: Preview = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }
}
