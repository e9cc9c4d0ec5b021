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

pub(crate) fn walk(
    m: &Masker,
    v: &mut Value,
    at: &mut Vec<Step>,
    stats: &mut Stats,
    vault: &mut Option<&mut crate::Vault>,
) {
    // A rule on this exact position or key takes the whole value.
    let key = match at.last() {
        Some(Step::Key(k)) => Some(k.to_ascii_lowercase()),
        _ => None,
    };
    if let Some(f) = m.fields.iter().find(|f| {
        key.as_ref().is_some_and(|k| f.keys.contains(k)) || f.paths.iter().any(|p| p.matches(at))
    }) {
        let label = match at.last() {
            Some(Step::Key(k)) => k.to_ascii_uppercase(),
            _ => "REDACTED".to_string(),
        };
        *stats
            .entry(format!("field:{}", label.to_ascii_lowercase()))
            .or_default() += 1;
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
        return;
    }
    match v {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(masked) = m.mask_str_in(s, stats, vault) {
                *s = masked;
            }
        }
        Value::Number(n) => {
            // 4111111111111111 written as a number is still a card number.
            let text = n.to_string();
            if text.len() >= 8
                && let std::borrow::Cow::Owned(masked) = m.mask_str_in(&text, stats, vault)
            {
                *v = Value::String(masked);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                at.push(Step::Index(i));
                walk(m, item, at, stats, vault);
                at.pop();
            }
        }
        Value::Object(map) => {
            // Keys carry data too (`{"ada@example.com": {...}}`): each is
            // masked like a string. Rules still see the original key.
            for (k, item) in map.iter_mut() {
                at.push(Step::Key(k.clone()));
                walk(m, item, at, stats, vault);
                at.pop();
            }
            // A cheap first look at each key; only one that may match is
            // masked in full.
            let renamed = map.keys().any(|k| {
                m.may_match(k)
                    && matches!(m.mask_str(k, &mut Stats::new()), std::borrow::Cow::Owned(_))
            });
            if renamed {
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
        }
        Value::Null | Value::Bool(_) => {}
    }
}
