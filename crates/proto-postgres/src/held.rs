//! Prepared statements that need approval, and how they stay bound to
//! their parameters.
//!
//! In the extended protocol a statement is parsed once and run by later
//! Binds, each with its own parameters: `DELETE FROM t WHERE id = $1`
//! approved for `$1 = 1` must not run for `$1 = 2`. So a statement whose
//! class needs approval is not held at Parse; it is prepared on the
//! target under a name only the gateway uses, and every Bind of the
//! caller's name is held with the statement *and* its parameters as the
//! action. The caller's own name never reaches the target for such a
//! statement, so no Bind the gateway did not hold can run it — even when
//! a later Parse under the same name is skipped by the target after an
//! error, which a table of "what the target holds" could not know.

use std::collections::HashMap;

use crate::messages::Bind;

/// Prefixes of names the gateway uses on the target; a caller binding
/// one (it can read them in `pg_prepared_statements`) is refused.
const RESERVED: [&str; 4] = [
    "portcullis_held_",
    "portcullis_plain_",
    "portcullis_refused_",
    "portcullis_checked_",
];

/// At most this many statements are prepared under private names per
/// session: statements replaced in a loop would otherwise pile up on the
/// target until the session ends.
pub const MAX_PRIVATE: u64 = 10_000;

/// Whether `name` is one of the gateway's own statement names.
pub fn reserved(name: &str) -> bool {
    RESERVED.iter().any(|p| name.starts_with(p))
}

/// Whether SQL text may name one of the gateway's own statements: a
/// reserved prefix in any case, or a Unicode-escaped identifier (`U&"…"`,
/// whose name only PostgreSQL's unescaping gives; code review).
pub fn names_reserved(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    RESERVED.iter().any(|p| lower.contains(p)) || lower.contains("u&\"")
}

/// A statement held at every Bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldStatement {
    /// The name it is prepared under on the target.
    pub private: String,
    pub sql: String,
    /// The parameter types the caller's Parse named (for the preview).
    pub types: Vec<u32>,
    pub class: &'static str,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeldError {
    #[error(
        "prepared statement names starting with \"portcullis_\" are the gateway's own: \"{0}\" cannot be used"
    )]
    Reserved(String),
    #[error(
        "more than {MAX_PRIVATE} statements were prepared in this session on a connection with an approval rule; reconnect"
    )]
    TooMany,
}

/// One session's statements that need approval, by the caller's name,
/// and the private names of its other named statements.
#[derive(Debug)]
pub struct HeldStatements {
    nonce: String,
    created: u64,
    by_name: HashMap<String, HeldStatement>,
    /// Named statements the caller parsed through the protocol that need
    /// no approval, and the private name each is prepared under. A review
    /// ran a `DELETE` prepared in SQL and approved once as a `PREPARE`
    /// by Binds with new parameters; marking a name as parsed did not
    /// hold either, since a Parse the target refuses (the name is taken)
    /// or skips (after an error) leaves the SQL one in place. Under a
    /// private name, a Parse that did not happen leaves nothing to bind;
    /// a named statement the gate did not parse has no private name, and
    /// a Bind of it is held as unknown. (The unnamed statement needs
    /// none: only a Parse makes it, and a failed Parse drops it.)
    plain: HashMap<String, String>,
    /// Private statements replaced for the caller without a Close: out
    /// of its reach, still on the target until the session ends.
    orphans: u64,
}

impl HeldStatements {
    pub fn new(nonce: &str) -> Self {
        Self {
            nonce: nonce.to_string(),
            created: 0,
            by_name: HashMap::new(),
            plain: HashMap::new(),
            orphans: 0,
        }
    }

    /// A fresh private name with `prefix`, within the bound.
    fn private(&mut self, name: &str, prefix: &str) -> Result<String, HeldError> {
        if reserved(name) {
            return Err(HeldError::Reserved(name.to_string()));
        }
        // Live ones count, not every one made: a pooled session whose
        // driver closes and prepares again runs for ever (code review).
        let live = (self.by_name.len() + self.plain.len()) as u64 + self.orphans;
        if live >= MAX_PRIVATE {
            return Err(HeldError::TooMany);
        }
        self.created += 1;
        Ok(format!("{prefix}{}_{}", self.nonce, self.created))
    }

    /// A Parse of `sql` as `name` that needs approval (its class): the
    /// name to prepare it under on the target.
    pub fn prepare(
        &mut self,
        name: &str,
        sql: &str,
        types: Vec<u32>,
        class: &'static str,
    ) -> Result<String, HeldError> {
        let private = self.private(name, "portcullis_held_")?;
        self.replaced(name);
        self.by_name.insert(
            name.to_string(),
            HeldStatement {
                private: private.clone(),
                sql: sql.to_string(),
                types,
                class,
            },
        );
        Ok(private)
    }

    /// A Parse of a statement that needs no approval as `name`: binding
    /// `name` no longer means the held one (which stays, unreachable, on
    /// the target until the session ends). The name to prepare it under:
    /// a private one for a named statement, the unnamed one as it is.
    pub fn parse_plain(&mut self, name: &str) -> Result<String, HeldError> {
        if name.is_empty() {
            self.replaced(name);
            return Ok(String::new());
        }
        let private = self.private(name, "portcullis_plain_")?;
        self.replaced(name);
        self.plain.insert(name.to_string(), private.clone());
        Ok(private)
    }

    /// `name` is parsed again without a Close: what it was stays on the
    /// target, out of the caller's reach.
    fn replaced(&mut self, name: &str) {
        let held = self.by_name.remove(name).is_some();
        let plain = self.plain.remove(name).is_some();
        if held || plain {
            self.orphans += 1;
        }
    }

    /// The private name of a named statement parsed without approval;
    /// `None` for the unnamed statement and for names the gate did not
    /// see parsed.
    pub fn plain(&self, name: &str) -> Option<&str> {
        self.plain.get(name).map(String::as_str)
    }

    /// Whether a Bind of `name` runs something the gate did not read:
    /// a named statement it neither holds nor parsed.
    pub fn unread(&self, name: &str) -> bool {
        !name.is_empty() && !self.by_name.contains_key(name) && !self.plain.contains_key(name)
    }

    /// What a Bind, Describe or Close of `name` refers to, if held.
    pub fn get(&self, name: &str) -> Option<&HeldStatement> {
        self.by_name.get(name)
    }

    /// A Close of `name`: the private name to close instead.
    pub fn close(&mut self, name: &str) -> Option<String> {
        let plain = self.plain.remove(name);
        self.by_name.remove(name).map(|h| h.private).or(plain)
    }
}

/// The action a reviewer approves for one Bind: the statement and every
/// parameter as the target will receive it (text quoted as SQL literals,
/// binary as hex, NULL as NULL), with the type its Parse declared for it
/// (`types`, by OID; 0 or none: the target infers it). A review had the
/// same bytes approved as a float8 run again as an int8, deleting every
/// row: the same text under another type is another action.
pub fn action(sql: &str, types: &[u32], bind: &Bind<'_>) -> String {
    if bind.params.is_empty() {
        return sql.to_string();
    }
    let params: Vec<String> = bind
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let value = match p {
                None => "NULL".to_string(),
                Some(v) if bind.param_format(i) == 0 => match std::str::from_utf8(v) {
                    Ok(s) => format!("'{}'", s.replace('\'', "''")),
                    Err(_) => format!("'\\x{}' (not UTF-8)", hex::encode(v)),
                },
                Some(v) => format!("'\\x{}' (binary)", hex::encode(v)),
            };
            match types.get(i).copied().filter(|t| *t != 0) {
                Some(t) => format!("${} = {value} as type {t}", i + 1),
                None => format!("${} = {value}", i + 1),
            }
        })
        .collect();
    format!("{sql}\n-- parameters: {}", params.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind<'a>(formats: Vec<i16>, params: Vec<Option<&'a [u8]>>) -> Bind<'a> {
        Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: formats,
            params,
            result_formats: vec![],
        }
    }

    #[test]
    fn each_parameter_is_part_of_the_action() {
        let sql = "DELETE FROM t WHERE id = $1 AND name = $2";
        let one = action(sql, &[], &bind(vec![], vec![Some(b"1"), Some(b"o'hara")]));
        let two = action(sql, &[], &bind(vec![], vec![Some(b"2"), Some(b"o'hara")]));
        assert_ne!(one, two);
        assert_eq!(
            one,
            "DELETE FROM t WHERE id = $1 AND name = $2\n-- parameters: $1 = '1', $2 = 'o''hara'"
        );
        // Binary and NULL are told apart from text.
        let b = action(sql, &[], &bind(vec![1, 0], vec![Some(&[0, 0, 0, 1]), None]));
        assert_eq!(
            b,
            "DELETE FROM t WHERE id = $1 AND name = $2\n-- parameters: $1 = '\\x00000001' (binary), $2 = NULL"
        );
        assert_ne!(
            action(sql, &[], &bind(vec![], vec![Some(b"NULL")])),
            action(sql, &[], &bind(vec![], vec![None]))
        );
        // The same bytes under another declared type are another action.
        let bytes: &[u8] = &[0x3f, 0xf0, 0, 0, 0, 0, 0, 0];
        let float = action(sql, &[701], &bind(vec![1], vec![Some(bytes)]));
        let int = action(sql, &[20], &bind(vec![1], vec![Some(bytes)]));
        assert_ne!(float, int);
        assert!(float.ends_with("(binary) as type 701"), "{float}");
        assert_eq!(
            action("DROP TABLE t", &[], &bind(vec![], vec![])),
            "DROP TABLE t"
        );
    }

    #[test]
    fn held_statements_live_under_private_names() {
        let mut h = HeldStatements::new("abc");
        let p = h
            .prepare("", "DELETE FROM t WHERE id = $1", vec![], "write")
            .unwrap();
        assert!(reserved(&p), "{p}");
        assert_eq!(h.get("").unwrap().private, p);
        // A new unnamed statement that needs no approval replaces it for
        // the caller; the private one is out of reach.
        assert_eq!(h.parse_plain("").unwrap(), "");
        assert!(h.get("").is_none());
        // A named statement that needs no approval lives under a private
        // name too; one the gate did not parse is unread.
        let q = h.parse_plain("q1").unwrap();
        assert!(reserved(&q), "{q}");
        assert_eq!(h.plain("q1"), Some(q.as_str()));
        assert!(h.unread("sqlp") && !h.unread("q1") && !h.unread(""));
        assert_eq!(h.close("q1"), Some(q));
        assert!(h.unread("q1"));
        // Each held Parse gets its own private name.
        let a = h.prepare("s1", "DELETE FROM t", vec![], "write").unwrap();
        let b = h.prepare("s2", "DELETE FROM t", vec![], "write").unwrap();
        assert_ne!(a, b);
        assert_eq!(h.close("s1"), Some(a));
        assert!(h.get("s1").is_none());
        assert_eq!(h.close("s1"), None);
    }

    #[test]
    fn gateway_names_cannot_be_used_by_callers() {
        let mut h = HeldStatements::new("abc");
        assert!(reserved("portcullis_held_abc_1"));
        assert!(reserved("portcullis_refused_abc_1"));
        assert!(!reserved("portcullis"));
        assert!(!reserved("s1"));
        assert_eq!(
            h.prepare("portcullis_held_x", "DELETE FROM t", vec![], "write"),
            Err(HeldError::Reserved("portcullis_held_x".into()))
        );
    }

    #[test]
    fn private_statements_are_bounded_per_session() {
        let mut h = HeldStatements::new("n");
        for _ in 0..MAX_PRIVATE {
            h.prepare("", "DELETE FROM t", vec![], "write").unwrap();
        }
        assert_eq!(
            h.prepare("", "DELETE FROM t", vec![], "write"),
            Err(HeldError::TooMany)
        );
    }
}
