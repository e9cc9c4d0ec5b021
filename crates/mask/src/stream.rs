//! JSON masked in one pass over its bytes: the document is copied as it
//! is, and only the tokens that may hold a finding (or that a key rule
//! names) are decoded, masked and written anew.
//!
//! Each string is looked at on its own, as the walk ([`crate::json::walk`])
//! looks at it: [`Masker::may_match`] (the detector set's and the word
//! lists' cheap first look) on its text, and only where that says yes, or
//! the string holds an escape, is it decoded and masked. No scan crosses a
//! token, so every pattern sees exactly the text the walk gives it, and the
//! cost stays linear in the body (a scan of the whole body with patterns
//! that can span tokens was quadratic: review of 2026-12-02). Numbers are
//! read and written back as the walk writes them. A masker with path rules
//! takes the walk, as does a document where a key would be renamed, a key
//! rule takes a whole object or array, or nesting is deeper than the walk
//! reads. Both paths give the same document (as JSON values) and the same
//! counts; a differential test holds them to it.
//!
//! Written by hand because the parse-walk-serialise path spent most of its
//! time building and writing back a `serde_json::Value`, and no crate
//! scans JSON tokens in place and hands back their spans.

use std::borrow::Cow;

use crate::{ActionKind, MaskError, Masker, Stats, Vault};

/// Containers nested deeper than this go to the walk, which refuses them
/// (serde_json reads at most 128 levels).
const MAX_DEPTH: usize = 127;

/// What the pass needs to know about the enclosing container.
enum Frame {
    Object {
        /// The next string is a key.
        expect_key: bool,
        /// The key rule naming the current member (its index in the
        /// masker's fields) and the label it writes (the key, upper-case):
        /// resolved once, when the key is read.
        rule: Option<(usize, String)>,
    },
    Array,
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
    // The same document is accepted or refused as by parsing it whole.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Some(Err(MaskError::InvalidJson(e.to_string())));
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut pass = Pass {
        m,
        text,
        out: Vec::new(),
        copied: 0,
        stack: Vec::new(),
    };
    // Counts and reversible tokens are kept aside until the pass is known
    // to stand: a fallback half way must not count anything twice.
    let mut counted = Stats::new();
    let mut remembered = Vault::default();
    let keeps_tokens = vault.is_some();
    let mut local = keeps_tokens.then_some(&mut remembered);
    match pass.run(&mut counted, &mut local) {
        Step::Done => {}
        Step::Fallback => return None,
        Step::Invalid(e) => return Some(Err(e)),
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

enum Step {
    Done,
    Fallback,
    Invalid(MaskError),
}

struct Pass<'a> {
    m: &'a Masker,
    text: &'a str,
    out: Vec<u8>,
    /// Bytes of `text` before this are in `out` (or replaced there).
    copied: usize,
    stack: Vec<Frame>,
}

impl Pass<'_> {
    fn run(&mut self, stats: &mut Stats, vault: &mut Option<&mut Vault>) -> Step {
        let b = self.text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'"' => {
                    let (end, escaped) = string_end(b, i);
                    let is_key = matches!(
                        self.stack.last(),
                        Some(Frame::Object {
                            expect_key: true,
                            ..
                        })
                    );
                    let step = if is_key {
                        self.key(i, end, escaped)
                    } else {
                        self.string(i, end, escaped, stats, vault)
                    };
                    if !matches!(step, Step::Done) {
                        return step;
                    }
                    i = end;
                }
                b'{' | b'[' => {
                    // A key rule takes a whole object or array, and nesting
                    // the walk would refuse is refused by it: the full path.
                    if self.field().is_some() || self.stack.len() >= MAX_DEPTH {
                        return Step::Fallback;
                    }
                    self.stack.push(if b[i] == b'{' {
                        Frame::Object {
                            expect_key: true,
                            rule: None,
                        }
                    } else {
                        Frame::Array
                    });
                    i += 1;
                }
                b'}' | b']' => {
                    self.stack.pop();
                    i += 1;
                }
                b',' => {
                    if let Some(Frame::Object { expect_key, .. }) = self.stack.last_mut() {
                        *expect_key = true;
                    }
                    i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let end = i + b[i..]
                        .iter()
                        .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                        .unwrap_or(b.len() - i);
                    let step = self.number(i, end, stats, vault);
                    if !matches!(step, Step::Done) {
                        return step;
                    }
                    i = end;
                }
                b't' | b'f' | b'n' => {
                    let len = if b[i] == b'f' { 5 } else { 4 };
                    self.literal(i, i + len, stats, vault);
                    i += len;
                }
                _ => i += 1,
            }
        }
        Step::Done
    }

    /// The key rule for the value about to be read, and its label.
    fn field(&self) -> Option<(&crate::Field, &str)> {
        match self.stack.last() {
            Some(Frame::Object {
                rule: Some((i, label)),
                expect_key: false,
            }) => Some((&self.m.fields[*i], label.as_str())),
            _ => None,
        }
    }

    /// Whether the string token `start..end` (quotes included) may hold
    /// a finding: an escape (decoded, it reads otherwise), or the first
    /// look says so.
    fn may_hold(&self, start: usize, end: usize, escaped: bool) -> bool {
        escaped || self.m.may_match(&self.text[start + 1..end - 1])
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

    fn decode(&self, start: usize, end: usize, escaped: bool) -> Result<Cow<'_, str>, MaskError> {
        if !escaped {
            return Ok(Cow::Borrowed(&self.text[start + 1..end - 1]));
        }
        serde_json::from_str::<String>(&self.text[start..end])
            .map(Cow::Owned)
            .map_err(|e| MaskError::InvalidJson(e.to_string()))
    }

    fn key(&mut self, start: usize, end: usize, escaped: bool) -> Step {
        let flagged = self.may_hold(start, end, escaped);
        let mut rule = None;
        if flagged || !self.m.fields.is_empty() {
            let key = match self.decode(start, end, escaped) {
                Ok(k) => k,
                Err(e) => return Step::Invalid(e),
            };
            // A key that would be masked is renamed, and two renamed alike
            // are told apart: the full path does that.
            if flagged
                && self.m.may_match(&key)
                && matches!(self.m.mask_str(&key, &mut Stats::new()), Cow::Owned(_))
            {
                return Step::Fallback;
            }
            // The first rule naming the key (rules keep keys lower-case).
            rule = self
                .m
                .fields
                .iter()
                .position(|f| f.keys.iter().any(|k| k.eq_ignore_ascii_case(&key)))
                .map(|i| (i, key.to_ascii_uppercase()));
        }
        if let Some(Frame::Object {
            expect_key,
            rule: r,
        }) = self.stack.last_mut()
        {
            *expect_key = false;
            *r = rule;
        }
        Step::Done
    }

    fn string(
        &mut self,
        start: usize,
        end: usize,
        escaped: bool,
        stats: &mut Stats,
        vault: &mut Option<&mut Vault>,
    ) -> Step {
        if let Some((f, label)) = self.field() {
            let value = match self.decode(start, end, escaped) {
                Ok(v) => v.into_owned(),
                Err(e) => return Step::Invalid(e),
            };
            let with = field_value(self.m, f, label, Some(&value), stats, vault);
            self.replace(start, end, with.as_bytes());
            return Step::Done;
        }
        if !self.may_hold(start, end, escaped) {
            return Step::Done;
        }
        let value = match self.decode(start, end, escaped) {
            Ok(v) => v.into_owned(),
            Err(e) => return Step::Invalid(e),
        };
        if let Cow::Owned(masked) = self.m.mask_str_in(&value, stats, vault) {
            self.replace(start, end, json_string(&masked).as_bytes());
        }
        Step::Done
    }

    fn number(
        &mut self,
        start: usize,
        end: usize,
        stats: &mut Stats,
        vault: &mut Option<&mut Vault>,
    ) -> Step {
        let raw = &self.text[start..end];
        let field = self.field();
        // The full path reads the number and masks its written form when
        // it has 8 characters or more; a plain number shorter than 8 (no
        // exponent) is never written longer, so it is left as it is.
        let short = raw.len() < 8 && !raw.contains(['e', 'E']);
        if field.is_none() && short {
            return Step::Done;
        }
        let n: serde_json::Number = match serde_json::from_str(raw) {
            Ok(n) => n,
            Err(e) => return Step::Invalid(MaskError::InvalidJson(e.to_string())),
        };
        let written = n.to_string();
        if let Some((f, label)) = field {
            let with = field_value(self.m, f, label, Some(&written), stats, vault);
            self.replace(start, end, with.as_bytes());
            return Step::Done;
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
        Step::Done
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

/// The index after the string starting at `start` (a quote), and whether
/// it holds an escape. The document was validated, so the string ends.
fn string_end(b: &[u8], start: usize) -> (usize, bool) {
    let mut i = start + 1;
    let mut escaped = false;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                escaped = true;
                i += 2;
            }
            b'"' => return (i + 1, escaped),
            _ => i += 1,
        }
    }
    (b.len(), escaped)
}
