//! Walking JSON: key and path rules first, detectors on every string (and
//! on numbers that could be card or phone numbers) after.

use serde_json::Value;

use crate::{ActionKind, Masker, Stats};

/// One step of a concrete position in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
    Any,
}

/// A small JSONPath subset: `$`, `.key`, `['key']`, `[N]`, `[*]`, `.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<Seg>);

impl JsonPath {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix('$')
            .ok_or_else(|| format!("{s:?}: a path starts with $"))?;
        let b = rest.as_bytes();
        let mut segs = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'.' => {
                    let start = i + 1;
                    let mut j = start;
                    while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                        j += 1;
                    }
                    let name = &rest[start..j];
                    if name.is_empty() {
                        return Err(format!("{s:?}: empty key after '.'"));
                    }
                    segs.push(if name == "*" {
                        Seg::Any
                    } else {
                        Seg::Key(name.to_string())
                    });
                    i = j;
                }
                b'[' => {
                    let end = rest[i..]
                        .find(']')
                        .ok_or_else(|| format!("{s:?}: unclosed '['"))?
                        + i;
                    let inner = &rest[i + 1..end];
                    let seg = if inner == "*" {
                        Seg::Any
                    } else if let Some(q) = inner
                        .strip_prefix('\'')
                        .and_then(|x| x.strip_suffix('\''))
                        .or_else(|| inner.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
                    {
                        Seg::Key(q.to_string())
                    } else {
                        Seg::Index(
                            inner
                                .parse()
                                .map_err(|_| format!("{s:?}: bad index [{inner}]"))?,
                        )
                    };
                    segs.push(seg);
                    i = end + 1;
                }
                _ => return Err(format!("{s:?}: unexpected character at {}", i + 1)),
            }
        }
        Ok(Self(segs))
    }

    /// The key the path ends in (`$.user.ssn`: `ssn`), if it names one:
    /// what a body that cannot be read as JSON is searched for.
    pub(crate) fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }

    pub fn matches(&self, at: &[Step]) -> bool {
        self.0.len() == at.len()
            && self.0.iter().zip(at).all(|(seg, step)| match (seg, step) {
                (Seg::Any, _) => true,
                (Seg::Key(k), Step::Key(s)) => k == s,
                (Seg::Index(n), Step::Index(m)) => n == m,
                _ => false,
            })
    }
}

/// JSON documents inside JSON strings (an MCP tool's `content[].text`
/// beside its `structuredContent`) are walked to this many levels; one
/// deeper is withheld whole. Each level is a fresh parse of at most 128
/// containers (serde_json's bound), so the bound keeps the walk's stack
/// and time within a small multiple of one document's.
pub(crate) const MAX_EMBEDDED: usize = 4;

/// What a withheld embedded document becomes (and counts as).
const WITHHELD: &str = "EMBEDDED_JSON";

/// Whether a string may hold a JSON document: its first character past
/// JSON's whitespace opens an object or array.
pub(crate) fn looks_embedded(s: &str) -> bool {
    s.trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with(['{', '['])
}

/// Whether a string that is not a document may still carry a key rule's
/// value beside the key's name: it names the key, in any shape (JSON after
/// a prefix or in a Markdown fence, JSON encoded twice, `name: value`, a
/// CSV or Markdown table, XML, prose; reviews found each passed key rules
/// in an MCP tool's text). As with text bodies over HTTP, a mention of the
/// name alone is withheld too.
pub(crate) fn keyed_text(m: &Masker, s: &str) -> bool {
    m.names_a_key(s)
}

/// Mask a parsed document in place: key and path rules first, detectors
/// on every string (and on numbers that could be card or phone numbers)
/// after. With key or path rules, a string holding a JSON object or array
/// is masked as a document of its own, paths rooted at its own `$`.
pub(crate) fn walk(
    m: &Masker,
    v: &mut Value,
    at: &mut Vec<Step>,
    stats: &mut Stats,
    vault: &mut Option<&mut crate::Vault>,
) {
    Walker {
        m,
        stats,
        vault,
        nest: 0,
    }
    .value(v, at);
}

struct Walker<'a, 'b, 'c> {
    m: &'a Masker,
    stats: &'b mut Stats,
    vault: &'b mut Option<&'c mut crate::Vault>,
    /// How many string-embedded documents enclose the current value.
    nest: usize,
}

impl<'a> Walker<'a, '_, '_> {
    fn value(&mut self, v: &mut Value, at: &mut Vec<Step>) {
        if self.field(v, at) {
            return;
        }
        let (m, stats) = (self.m, &mut *self.stats);
        match v {
            Value::String(s) => self.string(s),
            Value::Number(n) => {
                // 4111111111111111 written as a number is still a card number.
                let text = n.to_string();
                if text.len() >= 8
                    && let std::borrow::Cow::Owned(masked) = m.mask_str_in(&text, stats, self.vault)
                {
                    *v = Value::String(masked);
                }
            }
            Value::Array(items) => {
                // A table whose first row is its header: the header's
                // columns that a key rule names are that key in each row.
                let columns = items
                    .first()
                    .map(|h| self.keyed_columns(h))
                    .unwrap_or_default();
                self.rows(&columns, items, at, 1);
            }
            Value::Object(map) => {
                // A table with its header beside it (`{"columns": [...],
                // "rows": [[...]]}`): the same, for every array of rows.
                let columns: Vec<_> = map.values().flat_map(|h| self.keyed_columns(h)).collect();
                // Keys carry data too (`{"ada@example.com": {...}}`): each is
                // masked like a string. Rules still see the original key.
                for (k, item) in map.iter_mut() {
                    at.push(Step::Key(k.clone()));
                    if columns.is_empty() || !item.is_array() {
                        self.value(item, at);
                    } else if !self.field(item, at)
                        && let Value::Array(rows) = item
                    {
                        self.rows(&columns, rows, at, 0);
                    }
                    at.pop();
                }
                rename_keys(m, map, self.stats, self.vault);
            }
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// Where a header row names keys a rule looks for: each such column,
    /// the rule, and the label it writes. A review read a key rule's value
    /// from the row after a header naming it (`[["name","api_key"],
    /// ["Ada","sk-…"]]`): the header's mention was withheld, the value not.
    fn keyed_columns(&self, header: &Value) -> Vec<(usize, &'a crate::Field, String)> {
        let (m, Value::Array(cells)) = (self.m, header) else {
            return Vec::new();
        };
        if !m.has_key_rules() || !cells.iter().all(Value::is_string) {
            return Vec::new();
        }
        cells
            .iter()
            .enumerate()
            .filter_map(|(j, c)| {
                let name = c.as_str()?.trim().to_ascii_lowercase();
                let f = m.fields.iter().find(|f| f.keys.contains(&name))?;
                Some((j, f, name.to_ascii_uppercase()))
            })
            .collect()
    }

    /// The items of an array; from index `from` on, each that is a row
    /// of a table takes the rules of its keyed `columns` (its other cells,
    /// and items that are not rows, are walked as usual).
    fn rows(
        &mut self,
        columns: &[(usize, &'a crate::Field, String)],
        items: &mut [Value],
        at: &mut Vec<Step>,
        from: usize,
    ) {
        for (i, item) in items.iter_mut().enumerate() {
            at.push(Step::Index(i));
            match item {
                Value::Array(cells) if i >= from && !columns.is_empty() => {
                    for (j, cell) in cells.iter_mut().enumerate() {
                        at.push(Step::Index(j));
                        match columns.iter().find(|c| c.0 == j) {
                            Some((_, f, label)) => self.apply(f, label.clone(), cell),
                            None => self.value(cell, at),
                        }
                        at.pop();
                    }
                }
                _ => self.value(item, at),
            }
            at.pop();
        }
    }

    /// A rule on this exact position or key takes the whole value: true
    /// when one did.
    fn field(&mut self, v: &mut Value, at: &[Step]) -> bool {
        let m = self.m;
        let key = match at.last() {
            Some(Step::Key(k)) => Some(k.to_ascii_lowercase()),
            _ => None,
        };
        let Some(f) = m.fields.iter().find(|f| {
            key.as_ref().is_some_and(|k| f.keys.contains(k))
                || f.paths.iter().any(|p| p.matches(at))
        }) else {
            return false;
        };
        let label = match at.last() {
            Some(Step::Key(k)) => k.to_ascii_uppercase(),
            _ => "REDACTED".to_string(),
        };
        self.apply(f, label, v);
        true
    }

    /// Rule `f`'s action on `v`, written under `label`, counted.
    fn apply(&mut self, f: &crate::Field, label: String, v: &mut Value) {
        let m = self.m;
        *self
            .stats
            .entry(format!("field:{}", label.to_ascii_lowercase()))
            .or_default() += 1;
        let vault = &mut *self.vault;
        *v = match (&f.action.kind, &*v) {
            (ActionKind::Drop, _) | (_, Value::Null) => Value::Null,
            (_, Value::String(s)) => Value::String(m.apply_in(&f.action, &label, s, vault)),
            (_, Value::Number(n)) => {
                Value::String(m.apply_in(&f.action, &label, &n.to_string(), vault))
            }
            (_, Value::Bool(b)) => {
                Value::String(m.apply_in(&f.action, &label, &b.to_string(), vault))
            }
            // A whole object or array under a sensitive key goes, whatever
            // the action: there is no part of it to keep.
            _ => Value::String(format!("[{label}]")),
        };
    }

    fn string(&mut self, s: &mut String) {
        if self.m.has_key_rules() {
            if looks_embedded(s) {
                if let Some(inner) = self.embedded(s) {
                    *s = inner;
                }
            } else if keyed_text(self.m, s) {
                *s = withheld(self.stats);
                return;
            }
        }
        if let std::borrow::Cow::Owned(masked) = self.m.mask_str_in(s, self.stats, self.vault) {
            *s = masked;
        }
    }

    /// A string that holds a JSON document, masked as one and written back
    /// (`None`: not a document, or nothing in it changed). A key rule's
    /// value is as sensitive serialised inside a string as beside it.
    /// Fail closed: one nested past [`MAX_EMBEDDED`], or one that does not
    /// parse (too deep for serde_json, JSON5, a Python repr) yet names a
    /// rule's key, is withheld whole.
    fn embedded(&mut self, s: &str) -> Option<String> {
        let Ok(mut doc) = serde_json::from_str::<Value>(s) else {
            return self.m.names_a_key(s).then(|| withheld(self.stats));
        };
        if !doc.is_object() && !doc.is_array() {
            return None;
        }
        if self.nest >= MAX_EMBEDDED {
            return Some(withheld(self.stats));
        }
        let before = doc.clone();
        self.nest += 1;
        self.value(&mut doc, &mut Vec::new());
        self.nest -= 1;
        // Written back when anything changed, or when the text names a
        // rule's key: a key given twice (`{"api_key":"zz","api_key":null}`)
        // parses as its last value, which the rule may leave as it is,
        // while the text still holds the first (code review). Serialising
        // a `Value` cannot fail; withheld if it ever did.
        (doc != before || self.m.names_a_key(s))
            .then(|| serde_json::to_string(&doc).unwrap_or_else(|_| format!("[{WITHHELD}]")))
    }
}

/// A string withheld whole, counted.
fn withheld(stats: &mut Stats) -> String {
    *stats.entry(WITHHELD.to_ascii_lowercase()).or_default() += 1;
    format!("[{WITHHELD}]")
}

/// Keys masked as strings. A cheap first look at each key; only one that
/// may match is masked in full.
fn rename_keys(
    m: &Masker,
    map: &mut serde_json::Map<String, Value>,
    stats: &mut Stats,
    vault: &mut Option<&mut crate::Vault>,
) {
    let renamed = map.keys().any(|k| {
        m.may_match(k) && matches!(m.mask_str(k, &mut Stats::new()), std::borrow::Cow::Owned(_))
    });
    if !renamed {
        return;
    }
    let old = std::mem::take(map);
    for (k, item) in old {
        let mut key = m.mask_str_in(&k, stats, vault).into_owned();
        // Two keys masked alike stay two entries.
        let mut n = 1;
        while map.contains_key(&key) {
            n += 1;
            key = format!("{} ({n})", m.mask_str(&k, &mut Stats::new()));
        }
        map.insert(key, item);
    }
}
