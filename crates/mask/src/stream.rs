//! JSON masked in one pass over its bytes: the document is checked against
//! JSON's grammar, copied as it is, and only the tokens that may hold a
//! finding (or that a key rule names) are decoded, masked and written anew.
//!
//! Each string is looked at on its own, as the walk ([`crate::json::walk`])
//! looks at it: the built-ins' first look ([`prefilter::decide`]) is fed
//! by the scan that finds the string's end, and only where it (or a custom
//! pattern or word list, [`Masker::may_match_looked`]) says yes, or the
//! string holds an escape, is it decoded and masked. No scan crosses a
//! token, so every pattern sees exactly the text the walk gives it, and the
//! cost stays linear in the body (a scan of the whole body with patterns
//! that can span tokens was quadratic: review of 2026-12-02). Numbers are
//! read and written back as the walk writes them. A masker with path rules
//! takes the walk, as does a document where a key would be renamed, a key
//! rule takes a whole object or array, a masker with key rules meets a
//! string that may hold a JSON document, or nesting is deeper than the
//! walk reads. Both paths give the same document (as JSON values) and the same
//! counts; a differential test holds them to it.
//!
//! The grammar is checked here rather than by serde_json first because
//! that was a third pass over every byte (a fifth of the time, measured
//! 2026-12-03). It accepts exactly what serde_json accepts: a document
//! refused here is refused with serde_json's own message, and one serde_json
//! would accept after all goes to the walk; a differential test over
//! mutated documents holds the two to the same answer.
//!
//! Written by hand because the parse-walk-serialise path spent most of its
//! time building and writing back a `serde_json::Value`, and no crate
//! scans JSON tokens in place and hands back their spans.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::prefilter::{self, CLASS};
use crate::{ActionKind, MaskError, Masker, Stats, Vault};

/// Containers nested deeper than this go to the walk, which refuses them
/// (serde_json reads at most 128 levels).
const MAX_DEPTH: usize = 127;

/// The bytes that end a string's plain run: the quote, an escape, and the
/// control characters JSON refuses inside a string.
const STOP: u8 = 128;

/// [`CLASS`] with [`STOP`] added: one look-up per byte of a string serves
/// both its scan and the first look.
static SCAN: [u8; 256] = {
    let mut t = CLASS;
    let mut c = 0;
    while c < 256 {
        if c < 0x20 || c == b'"' as usize || c == b'\\' as usize {
            t[c] |= STOP;
        }
        c += 1;
    }
    t
};

/// What the pass needs to know about the enclosing container.
enum Frame<'a> {
    Object {
        /// The key rule naming the current member (its index in the
        /// masker's fields) and the label it writes (the key, upper-case):
        /// resolved once, when the key is read.
        rule: Option<(usize, String)>,
        /// The object's keys so far, to find one it repeats.
        keys: Keys<'a>,
    },
    Array,
}

/// An object's keys so far: a few are kept on the pass's shared stack of
/// keys (from this index on), more in a set of their own.
enum Keys<'a> {
    Few(usize),
    Many(HashSet<Cow<'a, str>>),
}

/// Keys an object keeps on the shared stack before it takes a set: a
/// linear search is cheaper below this, and quadratic above it.
const FEW_KEYS: usize = 16;

/// What JSON's grammar allows next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A value: at the top, after `:`, after `,` in an array.
    Value,
    /// A value or `]`, just after `[`.
    ValueOrClose,
    /// A key or `}`, just after `{`.
    KeyOrClose,
    /// A key, after `,` in an object.
    Key,
    /// The `:` after a key.
    Colon,
    /// `,` or the container's close, after a member.
    Next,
    /// Nothing more: the top-level value is read.
    End,
}

/// Why the pass stopped before the end.
enum Stop {
    /// This document needs the walk.
    Fallback,
    /// A token the walk would refuse (a number out of range, a string
    /// whose escapes do not decode).
    Invalid(MaskError),
    /// Not JSON.
    Syntax,
}

/// A string token: where it ends (after the closing quote), whether it
/// holds an escape, whether the first look flagged its raw text, and
/// whether its raw text holds a byte another spelling starts with.
/// Packed in one word so that [`scan_string`] hands it back in a register:
/// as a struct it went through memory, where the caller's wide load
/// stalled on the callee's narrow stores (a tenth of the pass's time in
/// `perf`).
#[derive(Clone, Copy)]
struct Token(usize);

impl Token {
    fn new(end: usize, escaped: bool, flagged: bool, spelled: bool) -> Self {
        Self(
            end << 3 | usize::from(spelled) << 2 | usize::from(escaped) << 1 | usize::from(flagged),
        )
    }

    fn end(self) -> usize {
        self.0 >> 3
    }

    fn spelled(self) -> bool {
        self.0 & 4 != 0
    }

    fn escaped(self) -> bool {
        self.0 & 2 != 0
    }

    fn flagged(self) -> bool {
        self.0 & 1 != 0
    }
}

/// Mask `body` in one pass, or `None` when this masker or this document
/// needs the full path.
pub(crate) fn mask(
    m: &Masker,
    body: &[u8],
    stats: &mut Stats,
    vault: &mut Option<&mut Vault>,
) -> Option<Result<Vec<u8>, MaskError>> {
    if !m.streamable {
        return None;
    }
    // Not UTF-8: the walk refuses it (serde_json reads text as UTF-8).
    let text = std::str::from_utf8(body).ok()?;
    let mut pass = Pass {
        m,
        text,
        out: Vec::new(),
        copied: 0,
        stack: Vec::new(),
        keys: Vec::new(),
    };
    // Counts and reversible tokens are kept aside until the pass is known
    // to stand: a fallback or a syntax error half way must count nothing.
    let mut counted = Stats::new();
    let mut remembered = Vault::default();
    let keeps_tokens = vault.is_some();
    let mut local = keeps_tokens.then_some(&mut remembered);
    match pass.run(&mut counted, &mut local) {
        Ok(()) => {}
        Err(Stop::Fallback) => return None,
        Err(Stop::Invalid(e)) => return Some(Err(e)),
        Err(Stop::Syntax) => return refused(body),
    }
    for (name, n) in counted {
        *stats.entry(name).or_default() += n;
    }
    if let Some(v) = vault.as_deref_mut() {
        v.absorb(remembered);
    }
    if pass.out.is_empty() && pass.copied == 0 {
        return Some(Ok(body.to_vec()));
    }
    pass.out.extend_from_slice(&body[pass.copied..]);
    Some(Ok(pass.out))
}

/// A document the grammar refused, refused in serde_json's words; should
/// serde_json read it after all, the walk decides.
fn refused(body: &[u8]) -> Option<Result<Vec<u8>, MaskError>> {
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Err(e) => Some(Err(MaskError::InvalidJson(e.to_string()))),
        Ok(_) => None,
    }
}

struct Pass<'a> {
    m: &'a Masker,
    text: &'a str,
    out: Vec<u8>,
    /// Bytes of `text` before this are in `out` (or replaced there).
    copied: usize,
    stack: Vec<Frame<'a>>,
    /// The keys of each open object that has [`Keys::Few`], innermost
    /// last, each with its [`fingerprint`].
    keys: Vec<(u64, Cow<'a, str>)>,
}

impl<'a> Pass<'a> {
    fn run(&mut self, stats: &mut Stats, vault: &mut Option<&mut Vault>) -> Result<(), Stop> {
        let b = self.text.as_bytes();
        let mut want = Want::Value;
        let mut i = 0;
        loop {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
                i += 1;
            }
            let Some(&c) = b.get(i) else {
                return if want == Want::End {
                    Ok(())
                } else {
                    Err(Stop::Syntax)
                };
            };
            want = match (want, c) {
                (Want::ValueOrClose, b']') | (Want::KeyOrClose, b'}') => self.close(&mut i),
                (Want::Value | Want::ValueOrClose, _) => self.value(&mut i, stats, vault)?,
                (Want::KeyOrClose | Want::Key, b'"') => self.key(&mut i)?,
                (Want::Colon, b':') => {
                    i += 1;
                    Want::Value
                }
                (Want::Next, b',') => {
                    i += 1;
                    match self.stack.last() {
                        Some(Frame::Object { .. }) => Want::Key,
                        _ => Want::Value,
                    }
                }
                (Want::Next, b'}') if matches!(self.stack.last(), Some(Frame::Object { .. })) => {
                    self.close(&mut i)
                }
                (Want::Next, b']') if matches!(self.stack.last(), Some(Frame::Array)) => {
                    self.close(&mut i)
                }
                _ => return Err(Stop::Syntax),
            };
        }
    }

    /// What follows a whole value.
    fn after_value(&self) -> Want {
        if self.stack.is_empty() {
            Want::End
        } else {
            Want::Next
        }
    }

    fn close(&mut self, i: &mut usize) -> Want {
        if let Some(Frame::Object {
            keys: Keys::Few(from),
            ..
        }) = self.stack.pop()
        {
            self.keys.truncate(from);
        }
        *i += 1;
        self.then(i)
    }

    /// The value starting at `*i`.
    fn value(
        &mut self,
        i: &mut usize,
        stats: &mut Stats,
        vault: &mut Option<&mut Vault>,
    ) -> Result<Want, Stop> {
        let b = self.text.as_bytes();
        let start = *i;
        match b[start] {
            b'"' => {
                // `let else`, not `ok_or`: a refusal built on every token
                // and dropped was 2% of the pass (cachegrind).
                let Some(t) = scan_string(b, start) else {
                    return Err(Stop::Syntax);
                };
                self.string(start, t, stats, vault)?;
                *i = t.end();
            }
            open @ (b'{' | b'[') => {
                // A key rule takes a whole object or array, and nesting
                // the walk would refuse is refused by it: the full path.
                if self.field().is_some() || self.stack.len() >= MAX_DEPTH {
                    return Err(Stop::Fallback);
                }
                *i += 1;
                return Ok(if open == b'{' {
                    self.stack.push(Frame::Object {
                        rule: None,
                        keys: Keys::Few(self.keys.len()),
                    });
                    Want::KeyOrClose
                } else {
                    self.stack.push(Frame::Array);
                    Want::ValueOrClose
                });
            }
            b'-' | b'0'..=b'9' => {
                let Some(end) = number_end(b, start) else {
                    return Err(Stop::Syntax);
                };
                self.number(start, end, stats, vault)?;
                *i = end;
            }
            first @ (b't' | b'f' | b'n') => {
                let word: &[u8] = match first {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !b[start..].starts_with(word) {
                    return Err(Stop::Syntax);
                }
                *i = start + word.len();
                self.literal(start, *i, stats, vault);
            }
            _ => return Err(Stop::Syntax),
        }
        Ok(self.then(i))
    }

    /// What follows a value ending at `*i`: the `,` read here when it
    /// follows at once (as the colon in [`Self::key`]), else whatever
    /// follows a value.
    fn then(&self, i: &mut usize) -> Want {
        if self.text.as_bytes().get(*i) == Some(&b',') {
            match self.stack.last() {
                Some(Frame::Object { .. }) => {
                    *i += 1;
                    return Want::Key;
                }
                Some(Frame::Array) => {
                    *i += 1;
                    return Want::Value;
                }
                None => {}
            }
        }
        self.after_value()
    }

    /// The key rule for the value about to be read, and its label.
    fn field(&self) -> Option<(&crate::Field, &str)> {
        match self.stack.last() {
            Some(Frame::Object {
                rule: Some((i, label)),
                ..
            }) => Some((&self.m.fields[*i], label.as_str())),
            _ => None,
        }
    }

    /// Whether the string token at `start` may hold a finding: an escape
    /// (decoded, it reads otherwise), or the first look says so.
    ///
    /// Inlined, and the token's text taken only where the flags leave the
    /// answer open: a slice of a `str` checks its bounds and may panic, so
    /// the compiler cannot move it past an early answer; as it was (a
    /// call, slicing first) it was 4% of masking JSON with few hits
    /// (cachegrind, 2026-12-05).
    ///
    /// Always inlined, the text's own look out of line: inlined whole, it
    /// kept its call's prologue and epilogue (saving the registers the
    /// look needs) on every string, 3% of the pass (cachegrind).
    #[inline(always)]
    fn may_hold(&self, start: usize, t: Token) -> bool {
        if t.escaped() {
            return true;
        }
        let set_may = t.flagged() || self.m.has_custom();
        self.m.may_match_open(set_may, t.spelled()) && self.text_may_hold(start, t, set_may)
    }

    /// [`Self::may_hold`] where the flags leave the answer open.
    #[inline(never)]
    fn text_may_hold(&self, start: usize, t: Token, set_may: bool) -> bool {
        self.m
            .may_match_scanned(&self.text[start + 1..t.end() - 1], set_may, t.spelled())
    }

    /// Replace `start..end` of the input with `with`.
    fn replace(&mut self, start: usize, end: usize, with: &[u8]) {
        if self.out.is_empty() {
            self.out.reserve(self.text.len() + 64);
        }
        self.out
            .extend_from_slice(&self.text.as_bytes()[self.copied..start]);
        self.out.extend_from_slice(with);
        self.copied = end;
    }

    /// The string token at `start`, decoded. Borrowed from the input (not
    /// from the pass), so the pass can go on writing while it is held.
    ///
    /// Always inlined, the unescaping out of line (as [`Self::may_hold`]).
    #[inline(always)]
    fn decode(&self, start: usize, t: Token) -> Result<Cow<'a, str>, Stop> {
        let text: &'a str = self.text;
        if !t.escaped() {
            return Ok(Cow::Borrowed(&text[start + 1..t.end() - 1]));
        }
        self.unescape(start, t)
    }

    /// [`Self::decode`] of a string with an escape.
    #[inline(never)]
    fn unescape(&self, start: usize, t: Token) -> Result<Cow<'a, str>, Stop> {
        let text: &'a str = self.text;
        serde_json::from_str::<String>(&text[start..t.end()])
            .map(Cow::Owned)
            .map_err(|e| Stop::Invalid(MaskError::InvalidJson(e.to_string())))
    }

    /// The key starting at `*i`.
    fn key(&mut self, i: &mut usize) -> Result<Want, Stop> {
        let start = *i;
        let Some(t) = scan_string(self.text.as_bytes(), start) else {
            return Err(Stop::Syntax);
        };
        *i = t.end();
        let key = self.decode(start, t)?;
        let flagged = self.may_hold(start, t);
        // A key that would be masked is renamed, and two renamed alike are
        // told apart: the full path does that.
        if flagged
            && self.m.may_match(&key)
            && matches!(self.m.mask_str(&key, &mut Stats::new()), Cow::Owned(_))
        {
            return Err(Stop::Fallback);
        }
        // The first rule naming the key (rules keep keys lower-case).
        let rule = self
            .m
            .fields
            .iter()
            .position(|f| f.keys.iter().any(|k| k.eq_ignore_ascii_case(&key)))
            .map(|i| (i, key.to_ascii_uppercase()));
        if let Some(Frame::Object { rule: r, .. }) = self.stack.last_mut() {
            *r = rule;
        }
        // serde_json keeps the last of repeated keys, and the walk masks
        // and counts only what it kept: it decides such an object.
        if self.repeats(key) {
            return Err(Stop::Fallback);
        }
        // The colon read here when it follows at once, as it does in
        // compact JSON: one turn of [`Self::run`]'s dispatch fewer per
        // member (the dispatch was a fifth of the pass). Anything else
        // (whitespace first, or no colon) is the dispatch's to read.
        Ok(if self.text.as_bytes().get(*i) == Some(&b':') {
            *i += 1;
            Want::Value
        } else {
            Want::Colon
        })
    }

    /// Whether the current object has read `key` before; notes it if not.
    fn repeats(&mut self, key: Cow<'a, str>) -> bool {
        let Some(Frame::Object { keys, .. }) = self.stack.last_mut() else {
            return false;
        };
        match keys {
            Keys::Many(set) => !set.insert(key),
            Keys::Few(from) => {
                let mine = &self.keys[*from..];
                let print = fingerprint(&key);
                if mine.iter().any(|(p, k)| *p == print && *k == key) {
                    return true;
                }
                if mine.len() < FEW_KEYS {
                    self.keys.push((print, key));
                } else {
                    let mut set: HashSet<_> = self.keys.drain(*from..).map(|(_, k)| k).collect();
                    set.insert(key);
                    *keys = Keys::Many(set);
                }
                false
            }
        }
    }

    fn string(
        &mut self,
        start: usize,
        t: Token,
        stats: &mut Stats,
        vault: &mut Option<&mut Vault>,
    ) -> Result<(), Stop> {
        if let Some((f, label)) = self.field() {
            let value = self.decode(start, t)?;
            let with = field_value(self.m, f, label, Some(&value), stats, vault);
            self.replace(start, t.end(), with.as_bytes());
            return Ok(());
        }
        // A document inside a string is masked as one by the walk; only
        // a masker with key rules looks, and only at strings that open an
        // object or array (so every other string keeps this pass).
        if self.m.has_key_rules() {
            let value = self.decode(start, t)?;
            if crate::json::looks_embedded(&value) || crate::json::keyed_text(self.m, &value) {
                return Err(Stop::Fallback);
            }
        }
        if !self.may_hold(start, t) {
            return Ok(());
        }
        let value = self.decode(start, t)?;
        if let Cow::Owned(masked) = self.m.mask_str_in(&value, stats, vault) {
            self.replace(start, t.end(), json_string(&masked).as_bytes());
        }
        Ok(())
    }

    fn number(
        &mut self,
        start: usize,
        end: usize,
        stats: &mut Stats,
        vault: &mut Option<&mut Vault>,
    ) -> Result<(), Stop> {
        let raw = &self.text[start..end];
        let field = self.field();
        // The full path reads the number and masks its written form when
        // it has 8 characters or more; a plain number shorter than 8 (no
        // exponent) is never written longer, so it is left as it is.
        let short = raw.len() < 8 && !raw.contains(['e', 'E']);
        if field.is_none() && short {
            return Ok(());
        }
        let n: serde_json::Number = serde_json::from_str(raw)
            .map_err(|e| Stop::Invalid(MaskError::InvalidJson(e.to_string())))?;
        let written = n.to_string();
        if let Some((f, label)) = field {
            let with = field_value(self.m, f, label, Some(&written), stats, vault);
            self.replace(start, end, with.as_bytes());
            return Ok(());
        }
        if written.len() >= 8
            && self.m.may_match(&written)
            && let Cow::Owned(masked) = self.m.mask_str_in(&written, stats, vault)
        {
            self.replace(start, end, json_string(&masked).as_bytes());
        } else if written != raw {
            // Written back as the walk writes it: the number it read, not
            // the digits the target sent (4111111111111111.9999 reads as
            // 4111111111111112.0; the raw digits must not pass).
            self.replace(start, end, written.as_bytes());
        }
        Ok(())
    }

    fn literal(
        &mut self,
        start: usize,
        end: usize,
        stats: &mut Stats,
        vault: &mut Option<&mut Vault>,
    ) {
        let Some((f, label)) = self.field() else {
            return;
        };
        let value = match &self.text[start..end] {
            "null" => None,
            other => Some(other.to_owned()),
        };
        let with = field_value(self.m, f, label, value.as_deref(), stats, vault);
        self.replace(start, end, with.as_bytes());
    }
}

/// A key's length and first seven bytes in one word: two keys that
/// differ there are told apart without comparing them (comparing each key
/// with the object's others was 6% of the pass: `perf`, 2026-12-05).
fn fingerprint(key: &str) -> u64 {
    let b = key.as_bytes();
    let mut word = [0u8; 8];
    let n = b.len().min(7);
    word[..n].copy_from_slice(&b[..n]);
    word[7] = b.len() as u8;
    u64::from_le_bytes(word)
}

/// What a key rule makes of a scalar (`None`: null), as the full path
/// does: counted, dropped to null, or replaced by its action.
fn field_value(
    m: &Masker,
    f: &crate::Field,
    label: &str,
    value: Option<&str>,
    stats: &mut Stats,
    vault: &mut Option<&mut Vault>,
) -> String {
    *stats
        .entry(format!("field:{}", label.to_ascii_lowercase()))
        .or_default() += 1;
    match (&f.action.kind, value) {
        (ActionKind::Drop, _) | (_, None) => "null".to_owned(),
        (_, Some(v)) => json_string(&m.apply_in(&f.action, label, v, vault)),
    }
}

fn json_string(s: &str) -> String {
    // Serialising a `str` cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// The string starting at `start` (a quote), checked as serde_json checks
/// one (no control character; each escape a backslash then one of
/// `"\/bfnrt`, or `u` and four hex digits), with the first look taken:
/// `None` when it is not a JSON string.
fn scan_string(b: &[u8], start: usize) -> Option<Token> {
    // The plain run: each byte's class is gathered for the first look, in
    // the same look-up that finds the run's end (no branch on the class).
    let mut seen = 0;
    let mut i = start + 1;
    // Eight bytes at a time while none of them ends the run: one branch
    // and one bounds check per eight bytes instead of per byte (safe code
    // the compiler unrolls; the byte loop below finds where it ends).
    while let Some(chunk) = b.get(i..i + 8).and_then(|s| <&[u8; 8]>::try_from(s).ok()) {
        let classes = chunk.iter().fold(0, |acc, &c| acc | SCAN[usize::from(c)]);
        if classes & STOP != 0 {
            break;
        }
        seen |= classes;
        i += 8;
    }
    let c = loop {
        let c = *b.get(i)?;
        let class = SCAN[usize::from(c)];
        if class & STOP != 0 {
            break c;
        }
        seen |= class;
        i += 1;
    };
    if c == b'"' {
        return Some(Token::new(
            i + 1,
            false,
            prefilter::decide(seen, &b[start + 1..i]),
            seen & prefilter::SPELL != 0,
        ));
    }
    // An escape or a control character: an escaped string is decoded and
    // masked whole, so only its end and its escapes are left to check.
    loop {
        let c = *b.get(i)?;
        if SCAN[usize::from(c)] & STOP == 0 {
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                return Some(Token::new(i + 1, true, true, true));
            }
            b'\\' => i = escape_end(b, i)?,
            _ => return None,
        }
    }
}

/// The index after the escape at `i` (a backslash), if it is one JSON has.
fn escape_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 2),
        b'u' => {
            let hex = b.get(i + 2..i + 6)?;
            hex.iter().all(u8::is_ascii_hexdigit).then_some(i + 6)
        }
        _ => None,
    }
}

/// The index after the number starting at `start`, by JSON's grammar
/// (`-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`): `None` when
/// none starts there. What follows is the caller's to check.
fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let digits = |from: usize| from + b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = start + usize::from(b[start] == b'-');
    i = match *b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i + 1),
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}
