//! Binary-format values: find the text inside them, let the masker see it,
//! and re-encode what it changed. Pure and bounded (nesting depth, the
//! lengths each value declares are checked against what is there).
//!
//! Written by hand: no crate decodes PostgreSQL's binary send formats
//! without a database connection's type registry (`postgres-types` needs
//! typed Rust targets, not "find the text in any value"), and the formats
//! needed here are few and documented (`src/backend/utils/adt/*send`).

use std::collections::{HashMap, HashSet};

/// What the masker makes of one binary value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Keep,
    Replace(Vec<u8>),
    /// The type cannot hold the masked form: the value becomes NULL.
    Null,
}

/// The value cannot be read: the caller must not get it.
pub type Unreadable = &'static str;

/// Types only the target's catalog knows: the base of each domain, which
/// OIDs are arrays or composites, and extension types whose binary form
/// is their text (`citext`, enums).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Types {
    pub text: HashSet<u32>,
    pub domains: HashMap<u32, u32>,
    pub arrays: HashSet<u32>,
    pub composites: HashSet<u32>,
    /// Types the rule lets pass uninspected (`pass_pg_types`).
    pub passed: HashSet<u32>,
}

pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const TID: u32 = 27;
    pub const XID: u32 = 28;
    pub const CID: u32 = 29;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const POINT: u32 = 600;
    pub const CIDR: u32 = 650;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const MONEY: u32 = 790;
    pub const MACADDR: u32 = 829;
    pub const INET: u32 = 869;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const RECORD: u32 = 2249;
    pub const UUID: u32 = 2950;
    pub const PG_LSN: u32 = 3220;
    pub const JSONB: u32 = 3802;
    pub const JSONPATH: u32 = 4072;
    pub const MACADDR8: u32 = 774;
    pub const XID8: u32 = 5069;
    pub const REGCLASS: u32 = 2205;
    pub const REGTYPE: u32 = 2206;
    pub const REGPROC: u32 = 24;
}

/// Built-in array types whose element the header names; the catalog adds
/// the rest (arrays of user types).
const BUILTIN_ARRAYS: &[u32] = &[
    1000, 1001, 1002, 1003, 1005, 1007, 1009, 1014, 1015, 1016, 1021, 1022, 1028, 1115, 1182, 1183,
    1185, 1187, 1231, 1270, 2951, 199, 143, 3807, 1040, 1041, 651, 2287,
];

/// Fixed-layout types that hold numbers, times or addresses, never text.
const NO_TEXT: &[u32] = &[
    oid::BOOL,
    oid::OID,
    oid::TID,
    oid::XID,
    oid::CID,
    oid::XID8,
    oid::DATE,
    oid::TIME,
    oid::TIMETZ,
    oid::TIMESTAMP,
    oid::TIMESTAMPTZ,
    oid::INTERVAL,
    oid::UUID,
    oid::PG_LSN,
    oid::INET,
    oid::CIDR,
    oid::MACADDR,
    oid::MACADDR8,
    oid::POINT,
    oid::REGCLASS,
    oid::REGTYPE,
    oid::REGPROC,
];

/// Types whose binary form is their text (after a version byte for
/// jsonb and jsonpath).
pub fn is_text(t: u32, types: &Types) -> bool {
    matches!(
        t,
        oid::TEXT
            | oid::VARCHAR
            | oid::BPCHAR
            | oid::NAME
            | oid::CHAR
            | oid::JSON
            | oid::XML
            | oid::UNKNOWN
            | oid::JSONB
            | oid::JSONPATH
    ) || types.text.contains(&t)
}

/// The type a domain stands on (domains are sent as their base type).
pub fn base(mut t: u32, types: &Types) -> u32 {
    for _ in 0..8 {
        match types.domains.get(&t) {
            Some(b) => t = *b,
            None => break,
        }
    }
    t
}

const MAX_DEPTH: u8 = 8;

/// Mask the text in a binary value of type `t`. `mask` gets each piece of
/// text and returns its masked form if it changed anything.
pub fn mask(
    t: u32,
    v: &[u8],
    types: &Types,
    mask: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<Out, Unreadable> {
    walk(t, v, types, mask, 0)
}

fn walk(
    t: u32,
    v: &[u8],
    types: &Types,
    mask: &mut dyn FnMut(&str) -> Option<String>,
    depth: u8,
) -> Result<Out, Unreadable> {
    if depth > MAX_DEPTH {
        return Err("a value is nested too deeply");
    }
    if types.passed.contains(&t) {
        return Ok(Out::Keep);
    }
    let t = base(t, types);
    if types.passed.contains(&t) {
        return Ok(Out::Keep);
    }
    if t == oid::JSONB || t == oid::JSONPATH {
        let (version, text) = v.split_first().ok_or("a jsonb value is empty")?;
        let text = std::str::from_utf8(text).map_err(|_| "a jsonb value is not UTF-8")?;
        return Ok(match mask(text) {
            Some(s) => Out::Replace([&[*version][..], s.as_bytes()].concat()),
            None => Out::Keep,
        });
    }
    if is_text(t, types) {
        let text = std::str::from_utf8(v).map_err(|_| "a text value is not UTF-8")?;
        return Ok(mask(text).map_or(Out::Keep, |s| Out::Replace(s.into_bytes())));
    }
    match t {
        oid::BYTEA => Ok(bytes(v, mask).map_or(Out::Keep, Out::Replace)),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::MONEY => {
            let n = match v.len() {
                8 => i64::from_be_bytes(v.try_into().map_err(|_| "bad integer")?),
                4 => i32::from_be_bytes(v.try_into().map_err(|_| "bad integer")?) as i64,
                2 => i16::from_be_bytes(v.try_into().map_err(|_| "bad integer")?) as i64,
                _ => return Err("a binary integer has a bad length"),
            };
            // A number can be a card or a phone number; a binary integer
            // cannot hold a mask, so a hit becomes NULL.
            Ok(number(&n.to_string(), mask))
        }
        oid::FLOAT4 | oid::FLOAT8 => {
            let f = match v.len() {
                8 => f64::from_be_bytes(v.try_into().map_err(|_| "bad float")?),
                4 => f32::from_be_bytes(v.try_into().map_err(|_| "bad float")?) as f64,
                _ => return Err("a binary float has a bad length"),
            };
            if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e20 {
                Ok(number(&format!("{f:.0}"), mask))
            } else {
                Ok(Out::Keep)
            }
        }
        oid::NUMERIC => Ok(number(&numeric(v)?, mask)),
        t if NO_TEXT.contains(&t) => Ok(Out::Keep),
        t if t == oid::RECORD || types.composites.contains(&t) => record(v, types, mask, depth),
        t if BUILTIN_ARRAYS.contains(&t) || types.arrays.contains(&t) => {
            array(v, types, mask, depth)
        }
        _ => Err("a binary value of a type the masker cannot read"),
    }
}

fn number(text: &str, mask: &mut dyn FnMut(&str) -> Option<String>) -> Out {
    match mask(text) {
        Some(_) => Out::Null,
        None => Out::Keep,
    }
}

/// Raw bytes: each run of valid UTF-8 is text to the masker; the bytes
/// between runs are kept as they are. `None`: nothing changed.
pub fn bytes(v: &[u8], mask: &mut dyn FnMut(&str) -> Option<String>) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut at = 0;
    for chunk in v.utf8_chunks() {
        let text = chunk.valid();
        if let Some(s) = mask(text) {
            let o = out.get_or_insert_with(|| v[..at].to_vec());
            o.extend_from_slice(s.as_bytes());
        } else if let Some(o) = out.as_mut() {
            o.extend_from_slice(text.as_bytes());
        }
        if let Some(o) = out.as_mut() {
            o.extend_from_slice(chunk.invalid());
        }
        at += text.len() + chunk.invalid().len();
    }
    out
}

/// `bytea` in text form: `\x` and hex digits (the default output), else
/// the escape form's bytes as they are.
pub fn bytea_text(v: &str, mask: &mut dyn FnMut(&str) -> Option<String>) -> Option<String> {
    let raw = match v.strip_prefix("\\x") {
        Some(h) => hex::decode(h).ok()?,
        None => return mask(v),
    };
    bytes(&raw, mask).map(|b| format!("\\x{}", hex::encode(b)))
}

/// The decimal digits of a binary `numeric`.
fn numeric(v: &[u8]) -> Result<String, Unreadable> {
    let mut b = v;
    let ndigits = take_i16(&mut b).ok_or("truncated numeric")?;
    let weight = take_i16(&mut b).ok_or("truncated numeric")?;
    let sign = take_i16(&mut b).ok_or("truncated numeric")? as u16;
    let _dscale = take_i16(&mut b).ok_or("truncated numeric")?;
    if !(0..=1000).contains(&ndigits) || b.len() != ndigits as usize * 2 {
        return Err("a numeric value has a bad length");
    }
    if sign != 0x0000 && sign != 0x4000 {
        // NaN and the infinities hold no digits.
        return Ok(String::new());
    }
    let digits: Vec<i16> = b
        .chunks_exact(2)
        .map(|c| i16::from_be_bytes([c[0], c[1]]))
        .collect();
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    // Base-10000 digits; `weight` is the power of the first.
    let int_groups = (weight as i32 + 1).max(0);
    for i in 0..int_groups {
        let d = digits.get(i as usize).copied().unwrap_or(0);
        if s.is_empty() || s == "-" {
            s.push_str(&d.to_string());
        } else {
            s.push_str(&format!("{d:04}"));
        }
    }
    if int_groups == 0 {
        s.push('0');
    }
    let frac: Vec<i16> = digits.iter().skip(int_groups as usize).copied().collect();
    if !frac.is_empty() {
        s.push('.');
        for _ in 0..(-(weight as i32) - 1).max(0) {
            s.push_str("0000");
        }
        for d in frac {
            s.push_str(&format!("{d:04}"));
        }
    }
    Ok(s)
}

/// A binary array: header, then each element with its length.
fn array(
    v: &[u8],
    types: &Types,
    mask: &mut dyn FnMut(&str) -> Option<String>,
    depth: u8,
) -> Result<Out, Unreadable> {
    let mut b = v;
    let ndim = take_i32(&mut b).ok_or("truncated array")?;
    let _flags = take_i32(&mut b).ok_or("truncated array")?;
    let elem = take_i32(&mut b).ok_or("truncated array")? as u32;
    if !(0..=6).contains(&ndim) {
        return Err("an array has a bad dimension count");
    }
    let mut count: i64 = if ndim == 0 { 0 } else { 1 };
    for _ in 0..ndim {
        let n = take_i32(&mut b).ok_or("truncated array")?;
        let _lower = take_i32(&mut b).ok_or("truncated array")?;
        if n < 0 {
            return Err("an array has a negative dimension");
        }
        count = count.saturating_mul(n as i64);
    }
    let header = &v[..v.len() - b.len()];
    let element = move |b| Ok((elem, b));
    let (elements, changed, nulls) = items(b, count, element, types, mask, depth)?;
    if !changed {
        return Ok(Out::Keep);
    }
    let mut out = header.to_vec();
    if nulls {
        out[4..8].copy_from_slice(&1i32.to_be_bytes());
    }
    out.extend_from_slice(&elements);
    Ok(Out::Replace(out))
}

/// A binary record: field count, then each field's type and value.
fn record(
    v: &[u8],
    types: &Types,
    mask: &mut dyn FnMut(&str) -> Option<String>,
    depth: u8,
) -> Result<Out, Unreadable> {
    let mut b = v;
    let n = take_i32(&mut b).ok_or("truncated record")?;
    if n < 0 {
        return Err("a record has a negative field count");
    }
    let (fields, changed, _) = items(b, n as i64, field_type, types, mask, depth)?;
    if !changed {
        return Ok(Out::Keep);
    }
    let mut out = n.to_be_bytes().to_vec();
    out.extend_from_slice(&fields);
    Ok(Out::Replace(out))
}

/// `count` length-prefixed items, each after what `prefix` reads (a
/// record field's type; nothing for an array). Returns the re-encoded
/// items, whether any changed, and whether any became NULL.
fn items<'a>(
    mut b: &'a [u8],
    count: i64,
    prefix: impl Fn(&'a [u8]) -> Result<(u32, &'a [u8]), Unreadable>,
    types: &Types,
    mask: &mut dyn FnMut(&str) -> Option<String>,
    depth: u8,
) -> Result<(Vec<u8>, bool, bool), Unreadable> {
    let mut out = Vec::with_capacity(b.len());
    let (mut changed, mut nulls) = (false, false);
    for _ in 0..count {
        let before = b;
        let (t, rest) = prefix(b)?;
        let head = &before[..before.len() - rest.len()];
        b = rest;
        out.extend_from_slice(head);
        let len = take_i32(&mut b).ok_or("truncated element")?;
        if len < 0 {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            continue;
        }
        let len = len as usize;
        if b.len() < len {
            return Err("truncated element");
        }
        let (value, rest) = b.split_at(len);
        b = rest;
        match walk(t, value, types, mask, depth + 1)? {
            Out::Keep => {
                out.extend_from_slice(&(len as i32).to_be_bytes());
                out.extend_from_slice(value);
            }
            Out::Replace(new) => {
                changed = true;
                out.extend_from_slice(&(new.len() as i32).to_be_bytes());
                out.extend_from_slice(&new);
            }
            Out::Null => {
                changed = true;
                nulls = true;
                out.extend_from_slice(&(-1i32).to_be_bytes());
            }
        }
    }
    if !b.is_empty() {
        return Err("a value has bytes after its last element");
    }
    Ok((out, changed, nulls))
}

/// A record field's type, before its length.
fn field_type(mut b: &[u8]) -> Result<(u32, &[u8]), Unreadable> {
    let t = take_i32(&mut b).ok_or("truncated record")?;
    Ok((t as u32, b))
}

fn take_i16(b: &mut &[u8]) -> Option<i16> {
    let (h, t) = b.split_first_chunk::<2>()?;
    *b = t;
    Some(i16::from_be_bytes(*h))
}

fn take_i32(b: &mut &[u8]) -> Option<i32> {
    let (h, t) = b.split_first_chunk::<4>()?;
    *b = t;
    Some(i32::from_be_bytes(*h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emails(s: &str) -> Option<String> {
        s.contains('@').then(|| "[EMAIL]".to_string())
    }

    fn cards(s: &str) -> Option<String> {
        s.contains("4111111111111111").then(|| "[CARD]".to_string())
    }

    fn text_array(elem: u32, items: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&1i32.to_be_bytes());
        let nulls = items.iter().any(Option::is_none) as i32;
        v.extend_from_slice(&nulls.to_be_bytes());
        v.extend_from_slice(&elem.to_be_bytes());
        v.extend_from_slice(&(items.len() as i32).to_be_bytes());
        v.extend_from_slice(&1i32.to_be_bytes());
        for i in items {
            match i {
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        v
    }

    #[test]
    fn text_types_and_bytea_are_masked() {
        let t = Types::default();
        let m = &mut emails;
        assert_eq!(
            mask(oid::TEXT, b"a@b.c", &t, m),
            Ok(Out::Replace(b"[EMAIL]".to_vec()))
        );
        assert_eq!(
            mask(oid::JSONB, b"\x01\"a@b.c\"", &t, m),
            Ok(Out::Replace(b"\x01[EMAIL]".to_vec()))
        );
        // bytea: the text runs between invalid bytes are masked, the rest kept.
        assert_eq!(
            mask(oid::BYTEA, b"\xffa@b.c\xfe", &t, m),
            Ok(Out::Replace(b"\xff[EMAIL]\xfe".to_vec()))
        );
        assert_eq!(mask(oid::BYTEA, b"\xff\x00plain", &t, m), Ok(Out::Keep));
        assert_eq!(
            bytea_text("\\x6140622e63", m).as_deref(),
            Some("\\x5b454d41494c5d")
        );
    }

    #[test]
    fn numbers_that_hit_become_null() {
        let t = Types::default();
        let m = &mut cards;
        assert_eq!(
            mask(oid::INT8, &4111111111111111i64.to_be_bytes(), &t, m),
            Ok(Out::Null)
        );
        assert_eq!(
            mask(oid::FLOAT8, &4111111111111111f64.to_be_bytes(), &t, m),
            Ok(Out::Null)
        );
        // numeric 4111111111111111: base-10000 digits 4111 1111 1111 1111, weight 3.
        let mut n = Vec::new();
        for x in [4i16, 3, 0, 0, 4111, 1111, 1111, 1111] {
            n.extend_from_slice(&x.to_be_bytes());
        }
        assert_eq!(numeric(&n).unwrap(), "4111111111111111");
        assert_eq!(mask(oid::NUMERIC, &n, &t, m), Ok(Out::Null));
        // 12.5: digits 12, 5000; weight 0.
        let mut n = Vec::new();
        for x in [2i16, 0, 0, 1, 12, 5000] {
            n.extend_from_slice(&x.to_be_bytes());
        }
        assert_eq!(numeric(&n).unwrap(), "12.5000");
        assert_eq!(mask(oid::NUMERIC, &n, &t, m), Ok(Out::Keep));
    }

    #[test]
    fn arrays_and_records_are_masked_in_place() {
        let t = Types::default();
        let a = text_array(oid::TEXT, &[Some(b"x"), Some(b"a@b.c"), None]);
        let want = text_array(oid::TEXT, &[Some(b"x"), Some(b"[EMAIL]"), None]);
        assert_eq!(mask(1009, &a, &t, &mut emails), Ok(Out::Replace(want)));
        // A card in an int8[] becomes a NULL element, and the null flag is set.
        let card = 4111111111111111i64.to_be_bytes();
        let a = text_array(oid::INT8, &[Some(&card)]);
        let mut want = text_array(oid::INT8, &[None]);
        want[4..8].copy_from_slice(&1i32.to_be_bytes());
        assert_eq!(mask(1016, &a, &t, &mut cards), Ok(Out::Replace(want)));
        // record(int4, text)
        let mut r = 2i32.to_be_bytes().to_vec();
        r.extend_from_slice(&oid::INT4.to_be_bytes());
        r.extend_from_slice(&4i32.to_be_bytes());
        r.extend_from_slice(&7i32.to_be_bytes());
        r.extend_from_slice(&oid::TEXT.to_be_bytes());
        r.extend_from_slice(&5i32.to_be_bytes());
        r.extend_from_slice(b"a@b.c");
        let Ok(Out::Replace(out)) = mask(oid::RECORD, &r, &t, &mut emails) else {
            panic!("record not masked");
        };
        assert!(out.ends_with(b"[EMAIL]") && !out.windows(5).any(|w| w == b"a@b.c"));
    }

    #[test]
    fn what_cannot_be_read_is_refused() {
        let t = Types::default();
        assert!(mask(99999, b"a@b.c", &t, &mut emails).is_err());
        assert!(mask(oid::TEXT, b"\xff", &t, &mut emails).is_err());
        assert!(mask(oid::INT4, b"\x00", &t, &mut emails).is_err());
        // An array that says it has more elements than it holds.
        let mut a = text_array(oid::TEXT, &[Some(b"x")]);
        a[12..16].copy_from_slice(&5i32.to_be_bytes());
        assert!(mask(1009, &a, &t, &mut emails).is_err());
        // An array of a type the masker cannot read.
        let a = text_array(99999, &[Some(b"a@b.c")]);
        assert!(mask(1009, &a, &t, &mut emails).is_err());
        // A domain over text is text; a user composite is a record.
        let t = Types {
            domains: [(50000, oid::TEXT)].into(),
            composites: [50001].into(),
            ..Types::default()
        };
        assert_eq!(
            mask(50000, b"a@b.c", &t, &mut emails),
            Ok(Out::Replace(b"[EMAIL]".to_vec()))
        );
        assert!(mask(50001, &0i32.to_be_bytes(), &t, &mut emails).is_ok());
        // A type the rule lets pass.
        let t = Types {
            passed: [99999].into(),
            ..Types::default()
        };
        assert_eq!(mask(99999, b"a@b.c", &t, &mut emails), Ok(Out::Keep));
        // Fixed types with no text pass.
        assert_eq!(
            mask(oid::UUID, &[0u8; 16], &Types::default(), &mut emails),
            Ok(Out::Keep)
        );
    }
}
