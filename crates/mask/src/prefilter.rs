//! A cheaper first look for the built-in detectors: a condition every
//! text a built-in finds something in must meet, checked without a
//! regular expression. When it fails, no built-in can find anything and
//! the detector set (a lazy DFA over the union of every pattern, which
//! walks each byte of every string) is skipped. When it holds, the set
//! decides as before, so this can only save work, never change a finding.
//!
//! For every pattern but the phone's the condition stands for the pattern
//! itself (no match, no finding). For the phone it stands for the pattern
//! and its check together: dates, SKUs and other digit runs match the weak
//! phone pattern everywhere and its check turns them all down, which cost
//! as much as the rest of masking a JSON document (2026-12-03, `perf`).
//!
//! Written by hand because the condition is about these patterns: the
//! `regex` crate's own literal prefilter finds nothing to use in a union
//! where several patterns start with a digit class. Each rule below names
//! the patterns it stands for; `tests` holds it to the masker itself on
//! generated texts (a differential test: the condition may never be false
//! where masking without it finds something).
//!
//! Only ASCII text is judged: `\d`, `\s`, `\b` and `(?i)` are Unicode in
//! these patterns, so a text with any other byte goes to the set.

/// Whether a built-in detector may find something in `text`; false only
/// when none can.
pub(crate) fn builtins_may_match(text: &str) -> bool {
    bytes_may_match(text.as_bytes())
}

fn bytes_may_match(b: &[u8]) -> bool {
    let mut seen = 0;
    for &c in b {
        seen |= CLASS[usize::from(c)];
        // A long text (a whole body, a cell) often holds one early.
        if seen & TRIGGER != 0 {
            return true;
        }
    }
    decide(seen, b)
}

/// The first look on `b`, given `seen`: the [`CLASS`] bits of all its
/// bytes, or-ed together (the JSON pass gathers them while it finds a
/// string's end). A built-in may find something only when the text holds:
/// - a trigger (`@ = + (` or a byte outside ASCII): email; the `[=:]` of
///   secret assignments and AWS secrets; the international and bracketed
///   phone forms; and `\d`, `\s`, `\b` and `(?i)` are Unicode in these
///   patterns (a non-ASCII digit is a `\d`, `ſ` matches `(?i)s`), so such a
///   text goes to the set;
/// - a `:` that IPv6 or a secret's assignment could use
///   ([`colon_may_match`]): not the one of a time or a URL's port;
/// - the digits of a card, SSN, IPv4 or IBAN ([`digits_may_match`]), or of
///   a phone number its check would accept ([`run_may_match`]);
/// - or the literal of a pattern with neither ([`literal_at`]).
///
/// Each step runs only when `seen` says it can succeed. The old look
/// branched on every byte's class, and on ordinary text those branches
/// were mispredicted often enough to be the dearest part of masking a
/// JSON document (cachegrind's branch simulation and `perf`, 2026-12-03).
/// The steps now branch only on digits, colons and mark bytes, which are
/// rare.
///
/// Inlined as far as the answer `seen` alone gives: most strings in JSON
/// (words, keys) have no byte any step reads, and the call itself was a
/// few percent of masking such a document.
#[inline]
pub(crate) fn decide(seen: u8, b: &[u8]) -> bool {
    seen & TRIGGER != 0 || (seen & (COLON | DIGIT | MARK) != 0 && decide_steps(seen, b))
}

/// [`decide`]'s steps, for a text with a byte one of them reads.
#[inline(never)]
///
/// The digit and literal steps first ask whether the text is long enough:
/// the shortest match of a digit rule's pattern is 7 bytes (`1.2.3.4`, a
/// phone number's 7 digits after a `0`), of a literal's 15 (`xoxb-` and
/// ten more); keys and short values (`created_at`, `SKU-00000001`,
/// `1.4.2`) were read byte by byte for nothing.
fn decide_steps(seen: u8, b: &[u8]) -> bool {
    (seen & COLON != 0 && colon_may_match(b))
        || (seen & DIGIT != 0 && b.len() >= 7 && digits_may_match(b))
        || (seen & MARK != 0
            && b.len() >= 15
            && (0..b.len()).any(|i| CLASS[usize::from(b[i])] & MARK != 0 && literal_at(b, i)))
}

/// Whether `b` holds the start of an IBAN's shape ([`iban_at`]), or a
/// chain of digits with at most one separator (space, `-`, `.` or `/`)
/// between neighbours that is long enough for a card (13+ digits, `[ -]?`
/// between) or an SSN (9, two of ` -.`), or dotted like an IPv4 address
/// or a dotted card (4+ digits, `.`); or a phone number its check would
/// accept (see [`run_may_match`]).
///
/// One walk from digit run to digit run: the bytes between are only
/// searched, so text with few digits costs little. Each run of digits and
/// separators is read once for all three rules (the chain, phone and IBAN
/// rules were separate walks over the whole text, and those walks were
/// most of the first look's time on JSON: `perf`, 2026-12-03). The walks
/// as they were stay in the tests as the reference this one must equal.
fn digits_may_match(b: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(u8::is_ascii_digit) {
        let start = i + p;
        // Only a run's first digit can follow a letter, or a separator
        // after one.
        if iban_at(b, start) {
            return true;
        }
        // A lone group (no separator and digit after it) after a word
        // byte starts no match, and one of fewer than 7 digits holds no
        // chain or number: most runs in JSON (a UUID's, a date's, a
        // title's figures), skipped without reading them as runs.
        let group = b[start..]
            .iter()
            .position(|c| !c.is_ascii_digit())
            .map_or(b.len(), |p| start + p);
        let after = b[group..]
            .iter()
            .position(|c| !matches!(c, b' ' | b'-' | b'.' | b'/' | b',' | b'\''))
            .map_or(b.len(), |p| group + p);
        let lone = after == group || !b.get(after).is_some_and(u8::is_ascii_digit);
        let glued = start > 0 && word(b[start - 1]);
        if glued && (!lone || group - start >= 13) && glued_at(b, start) {
            return true;
        }
        if lone && (group - start < 7 || glued) {
            i = group;
            continue;
        }
        let (end, may) = run_may_match(b, start);
        if may {
            return true;
        }
        i = end;
    }
    false
}

/// The chain and phone rules on the run of digits and separators
/// (` -./`) that starts with the digit at `b[start]`, read once; returns
/// where the run ends and whether either rule holds.
///
/// Chains ([`Chain`]): digits with single separators between them,
/// counted from the first digit a match can start at: every card, SSN
/// and IPv4 form starts with `\b\d`, so not a digit after a letter, a
/// digit or `_` (a UUID's `a716-446655440000` holds a chain of 15 digits,
/// of which a match could start at the last 12 only).
///
/// Phone (`validate::phone` behind the pattern, in a text with no trigger,
/// so no `+` or `(`: those forms go to the set): every other form of the
/// pattern starts with `\b\d` and holds only digits and ` -./`; the check
/// takes what the pattern matched, or a shorter prefix of it, and accepts
/// 10 or 11 digits, 7 to 12 after a `0` that is not `00`, or 8 to 15
/// after `00` (so 10 or more in all: the first rule covers it). So a number
/// starts at a digit with no word byte before it (the run's first digit
/// unless a letter, digit or `_` precedes it, or a digit after a
/// separator) and has at most the digits from there to the run's end,
/// or to the first group of digits no form can hold: each form's groups
/// have at most 8 digits, except `0` and up to 13 more written together
/// (`0301234567`), so a group of more than 8 that does not start with `0`,
/// or of more than 14, ends what a number can reach (UUIDs, long ids).
/// The earliest start, and the earliest that is a lone `0`, have the most
/// digits after them, so only those two are kept.
fn run_may_match(b: &[u8], start: usize) -> (usize, bool) {
    let boundary = start == 0 || !word(b[start - 1]);
    let mut chain = Chain::after(!boundary);
    let mut digits = 0usize;
    let (mut first, mut first_zero) = (None::<usize>, None::<usize>);
    let mut j = start;
    // A group of digits at `j`, then the separators after it; group by
    // group (a byte at a time, this walk was the first look's dearest
    // part on JSON full of ids).
    loop {
        let c = b[j];
        let len = b[j..]
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(b.len() - j);
        // Every group after a separator starts a number; the first, where
        // no word byte precedes it.
        if j != start || boundary {
            first.get_or_insert(digits);
            if c == b'0' && b.get(j + 1) != Some(&b'0') {
                first_zero.get_or_insert(digits);
            }
        }
        if len > 14 || (len > 8 && c != b'0') {
            // No number reaches into or past this group: what started
            // before it is judged on the digits before it.
            if phone(digits, first, first_zero) {
                return (j + len, true);
            }
            (first, first_zero) = (None, None);
        }
        digits += len;
        chain.digits(len);
        j += len;
        while let Some(&sep) = b
            .get(j)
            .filter(|c| matches!(c, b' ' | b'-' | b'.' | b'/' | b',' | b'\''))
        {
            // A separator joins a chain only between two digits.
            if b[j - 1].is_ascii_digit() && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
                chain.join(sep);
            } else {
                if chain.holds() {
                    return (j, true);
                }
                chain = Chain::after(false);
            }
            j += 1;
        }
        if !b.get(j).is_some_and(u8::is_ascii_digit) {
            break;
        }
    }
    (j, chain.holds() || phone(digits, first, first_zero))
}

/// Whether a card or an SSN can start at the digit at `b[start]`, the
/// first of its run, after a letter or `_`: their patterns are told from
/// digits, not words (`detectors::Builtin::digits_apart`), so
/// `x4111111111111111` and `SSN123-45-6789` are values. Read as their
/// checks read them, not as chains: a UUID's `a716-446655440000` is a
/// chain of 15 digits after a letter, and sent every document with the
/// RFC's example UUID to the detector set. An SSN's shape (3, 2 and 4
/// digits, one of ` .-` between), or 13 to 19 digits of the chain from
/// here (one of ` .-,'` between digits) with a card's issuer prefix and
/// Luhn sum ([`crate::validate::card_digits`]).
///
/// Out of line: it runs for few runs, and inlined it slowed the walk
/// around it.
#[inline(never)]
fn glued_at(b: &[u8], start: usize) -> bool {
    let digits_at = |from: usize, n: usize| {
        b.get(from..from + n)
            .is_some_and(|g| g.iter().all(u8::is_ascii_digit))
    };
    let ssn_sep = |at: usize| b.get(at).is_some_and(|c| matches!(c, b' ' | b'.' | b'-'));
    let ssn = ssn_sep(start + 3)
        && digits_at(start, 3)
        && digits_at(start + 4, 2)
        && ssn_sep(start + 6)
        && digits_at(start + 7, 4);
    // Every issuer prefix a card's check knows starts with 2 to 6.
    if ssn || !matches!(b[start], b'2'..=b'6') {
        return ssn;
    }
    let mut d = [0u8; 19];
    let mut n = 0;
    let mut j = start;
    while n < d.len() {
        match b.get(j) {
            Some(&c) if c.is_ascii_digit() => {
                d[n] = c;
                n += 1;
            }
            Some(b' ' | b'.' | b'-' | b',' | b'\'')
                if b.get(j + 1).is_some_and(u8::is_ascii_digit) => {}
            _ => break,
        }
        j += 1;
    }
    (13..=n).any(|k| crate::validate::card_digits(&d[..k]))
}

/// Whether the digit at `b[start]`, the first of its run, is an IBAN's
/// first check digit: the pattern's two letters with at most one of
/// ` .-` after each and a word boundary before them, the second check
/// digit, then at least 11 letters, digits or `_`, each with at most one
/// of ` .-` before it. Lower-case letters before digits are everywhere in
/// JSON (`v2`, `item17`), so the length is read too; it stops at the
/// 11th.
fn iban_at(b: &[u8], start: usize) -> bool {
    // The two check digits and 11 more cannot fit: most digit runs in
    // JSON (a SKU's, a timestamp's) end a short string.
    if b.len() - start < 13 {
        return false;
    }
    let sep = |c: u8| matches!(c, b' ' | b'.' | b'-');
    // The letter before `end` (after at most one separator): where it is.
    let letter = |end: usize| {
        let at = end.checked_sub(1)?;
        let at = if sep(b[at]) { at.checked_sub(1)? } else { at };
        b[at].is_ascii_alphabetic().then_some(at)
    };
    let Some(first) = letter(start).and_then(letter) else {
        return false;
    };
    if first > 0 && word(b[first - 1]) {
        return false;
    }
    // The second check digit, then 11 letters or digits.
    let mut j = start + 1;
    for item in 0..12 {
        let at = j + usize::from(b.get(j).is_some_and(|&c| sep(c)));
        let fits = b.get(at).is_some_and(|c| {
            if item == 0 {
                c.is_ascii_digit()
            } else {
                word(*c)
            }
        });
        if !fits {
            return false;
        }
        j = at + 1;
    }
    true
}

/// A byte `\b` counts as part of a word in these ASCII texts.
fn word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Whether a number starting at `first` (or at the lone `0` at
/// `first_zero`), both counted in digits, can have enough digits for the
/// phone check when `digits` is as far as it can reach.
fn phone(digits: usize, first: Option<usize>, first_zero: Option<usize>) -> bool {
    first.is_some_and(|f| digits - f >= 10) || first_zero.is_some_and(|f| digits - f >= 7)
}

/// A chain of digits joined by single separators, as far as a card
/// (13 digits or more, `[ -]` between), an SSN (9, two of ` -.`) or an
/// IPv4 address or a dotted card (4, `.`) could lie in it.
#[derive(Default)]
struct Chain {
    digits: usize,
    /// Separators an SSN can have: all but `/`.
    dashes: usize,
    dotted: bool,
    /// Still in the digits before the chain's first separator, which no
    /// match can start at (a word byte precedes them): not counted.
    lead: bool,
}

impl Chain {
    fn after(lead: bool) -> Self {
        Self {
            lead,
            ..Self::default()
        }
    }

    fn digits(&mut self, n: usize) {
        if !self.lead {
            self.digits += n;
        }
    }

    fn join(&mut self, sep: u8) {
        if std::mem::take(&mut self.lead) {
            return;
        }
        self.dashes += usize::from(sep != b'/');
        self.dotted |= sep == b'.';
    }

    fn holds(&self) -> bool {
        self.digits >= 13
            || (self.digits >= 9 && self.dashes >= 2)
            || (self.dotted && self.digits >= 4)
    }
}

/// Whether a `:` in `b` can be part of a match: IPv6 (`::`, or the seven
/// colons of the full form), or the `[=:]` after a secret's name, every
/// one of which holds `pass`, `pwd`, `secret`, `key` or `token` (matched
/// without regard to case, as `(?i)` does in ASCII; `ſ` and the Kelvin
/// sign are outside it, and triggers). Times (`20:08:17`) and ports
/// (`:8443`) are neither.
fn colon_may_match(b: &[u8]) -> bool {
    let starts = |i: usize, word: &[u8]| {
        b.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    };
    let mut colons = 0;
    (0..b.len()).any(|i| {
        if b[i] == b':' {
            colons += 1;
            return colons >= 7 || b.get(i + 1) == Some(&b':');
        }
        // `| 0x20` folds an ASCII letter's case; only the letter itself
        // and its capital fold onto each of these.
        match b[i] | 0x20 {
            b'p' => starts(i, b"pass") || starts(i, b"pwd"),
            b's' => starts(i, b"secret"),
            b'k' => starts(i, b"key"),
            b't' => starts(i, b"token"),
            _ => false,
        }
    })
}

const DIGIT: u8 = 1;
/// `@ = + (` and any byte outside ASCII: enough on their own.
const TRIGGER: u8 = 2;
/// `:`, which [`colon_may_match`] looks at again.
const COLON: u8 = 8;
/// The byte [`literal_at`] is anchored on: `-` `_` `J` `A`.
const MARK: u8 = 4;
/// A byte another spelling of a character may start with
/// ([`crate::starts_spelling`]): not part of the first look; the JSON
/// pass reads it to skip the spelling's own scan.
pub(crate) const SPELL: u8 = 16;

/// Each byte's part in the first look, looked up once per byte. The JSON
/// pass builds its own table from this one, adding the bytes that end a
/// string's plain run in the top bit.
pub(crate) const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_digit() {
            DIGIT
        } else if matches!(b, b'@' | b'=' | b'+' | b'(') || !b.is_ascii() {
            TRIGGER
        } else if b == b':' {
            COLON
        } else if matches!(b, b'-' | b'_' | b'J' | b'A') {
            MARK
        } else {
            0
        };
        if crate::starts_spelling(b) {
            t[c] |= SPELL;
        }
        c += 1;
    }
    t
};

/// Whether the mark at `b[i]` belongs to the literal of a pattern with no
/// digit and no trigger (each holds one of these marks, and is matched
/// case-sensitively): `-----` private keys and `glpat-` GitLab and
/// `xox?-` Slack at `-`; `pcl_` Portcullis, `gh?_` and `github_` GitHub
/// and `_live_`/`_test_` Stripe at `_`; `eyJ` JWTs at `J`; the AWS access
/// key prefixes and `AIza` Google at `A`.
fn literal_at(b: &[u8], i: usize) -> bool {
    let (before, rest) = b.split_at(i);
    let ends = |lit: &[u8]| before.ends_with(lit);
    let ends_but_one =
        |lit: &[u8]| before.len() > lit.len() && before[..before.len() - 1].ends_with(lit);
    match b[i] {
        b'-' => rest.starts_with(b"-----") || ends(b"glpat") || ends_but_one(b"xox"),
        b'_' => {
            ends(b"pcl")
                || ends_but_one(b"gh")
                || ends(b"github")
                || rest.starts_with(b"_live_")
                || rest.starts_with(b"_test_")
        }
        b'J' => ends(b"ey"),
        b'A' => [b"AKIA", b"ASIA", b"ABIA", b"ACCA", b"AIza"]
            .iter()
            .any(|lit| rest.starts_with(*lit)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::BUILTINS;
    use proptest::prelude::*;
    use regex::RegexSet;

    fn set() -> &'static RegexSet {
        static SET: std::sync::LazyLock<RegexSet> = std::sync::LazyLock::new(|| {
            RegexSet::new(BUILTINS.iter().map(|b| b.pattern)).expect("valid builtins")
        });
        &SET
    }

    /// The digit rules as separate walks, written as the rules read: the
    /// reference [`digits_may_match`] must equal. From every digit a match
    /// can start at (no word byte before it): the chain from there, and
    /// the digits a phone number can reach from there.
    fn digits_reference(b: &[u8]) -> bool {
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let sep = |c: u8| matches!(c, b' ' | b'-' | b'.' | b'/' | b',' | b'\'');
        static IBAN: std::sync::LazyLock<regex::bytes::Regex> = std::sync::LazyLock::new(|| {
            regex::bytes::Regex::new(
                r"(?-u)\b[A-Za-z][ .-]?[A-Za-z][ .-]?[0-9][ .-]?[0-9](?:[ .-]?[A-Za-z0-9_]){11}",
            )
            .expect("valid")
        });
        if IBAN.is_match(b) {
            return true;
        }
        (0..b.len()).any(|p| {
            if !b[p].is_ascii_digit() || (p > 0 && b[p - 1].is_ascii_digit()) {
                return false;
            }
            // After a letter or `_`: a card or an SSN as their checks
            // read them, and nothing else starts there.
            if p > 0 && word(b[p - 1]) {
                static SSN: std::sync::LazyLock<regex::bytes::Regex> =
                    std::sync::LazyLock::new(|| {
                        regex::bytes::Regex::new(r"^[0-9]{3}[ .-][0-9]{2}[ .-][0-9]{4}")
                            .expect("valid")
                    });
                let chain = regex::bytes::Regex::new(r"^[0-9](?:[ .,'-]?[0-9])*").expect("valid");
                let digits: String = chain
                    .find(&b[p..])
                    .map(|m| {
                        m.as_bytes()
                            .iter()
                            .filter(|c| c.is_ascii_digit())
                            .map(|&c| char::from(c))
                            .collect()
                    })
                    .unwrap_or_default();
                return SSN.is_match(&b[p..])
                    || (13..=digits.len().min(19)).any(|k| crate::validate::card(&digits[..k]));
            }
            // The chain from p.
            let (mut digits, mut dashes, mut dotted, mut j) = (0, 0, false, p);
            loop {
                if b.get(j).is_some_and(u8::is_ascii_digit) {
                    digits += 1;
                    j += 1;
                } else if b.get(j).is_some_and(|&c| sep(c))
                    && b.get(j + 1).is_some_and(u8::is_ascii_digit)
                {
                    dashes += usize::from(b[j] != b'/');
                    dotted |= b[j] == b'.';
                    j += 1;
                } else {
                    break;
                }
            }
            if digits >= 13 || (digits >= 9 && dashes >= 2) || (dotted && digits >= 4) {
                return true;
            }
            // The number from p, up to a group no form holds.
            let mut reach = 0;
            let mut k = p;
            while let Some(&c) = b.get(k) {
                if c.is_ascii_digit() {
                    let len = b[k..].iter().take_while(|c| c.is_ascii_digit()).count();
                    if len > 14 || (len > 8 && c != b'0') {
                        break;
                    }
                    reach += len;
                    k += len;
                } else if sep(c) {
                    k += 1;
                } else {
                    break;
                }
            }
            reach >= 10 || (b[p] == b'0' && b.get(p + 1) != Some(&b'0') && reach >= 7)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20000))]

        /// The one walk decides as the three did, on texts made mostly of
        /// runs (digits, the four separators, and what ends a run).
        #[test]
        fn one_digit_walk_equals_the_three(text in "[0-9 ./_aAZ:,'-]{0,40}") {
            prop_assert_eq!(
                digits_may_match(text.as_bytes()),
                digits_reference(text.as_bytes()),
                "{:?}", text
            );
        }

        /// And on runs long enough to reach every threshold.
        #[test]
        fn one_digit_walk_equals_the_three_on_long_runs(
            text in "([ ./,'-]{1,2}|[0-9]{1,3}|0|[A-Z]{1,2}|[a_x]){0,30}"
        ) {
            prop_assert_eq!(
                digits_may_match(text.as_bytes()),
                digits_reference(text.as_bytes()),
                "{:?}", text
            );
        }
    }

    /// The digit rules on their own (texts with no trigger): chains long
    /// enough for a card or an SSN, dotted ones for IPv4, two capitals
    /// before a digit for an IBAN, and what a phone number's check takes.
    #[test]
    fn chains() {
        for (text, chained) in [
            ("4111 1111 1111 1111", true),
            ("078-05-1120", true),
            ("10.0.0.1", true),
            ("DE89370400440532013000", true),
            ("de89-3704-0044-0532-0130-00", true),
            ("x DE 89 3704 0044 0532 0130 00", true),
            ("DE89", false),
            ("v2 item17 abc123", false),
            ("xDE89370400440532013000", false),
            ("D E 8 9 3 7 0 4 0 0 4 4 0 5 3 2 0 1 3 0 0 0", true),
            ("x.D-E 89 WEST ABCD EFGH", true),
            ("xD-E 89 WEST ABCD EFGH", false),
            ("x.D-E 89 WEST ABCD EF", false),
            ("555-123-4567", true),
            ("555.123.4567", true),
            ("030 1234567", true),
            ("x 0301234567", true),
            ("0012345678", true),
            // Dates, times, SKUs, versions and UUIDs: the phone pattern
            // matches several of these, and its check takes none.
            ("2026-11-25", false),
            ("2026-11-25T20:08:17Z", false),
            ("SKU-00000001", false),
            ("1.4.2", false),
            ("1-2-3-4", false),
            ("00123456", false),
            ("x 03012345", true),
            ("a03012345", false),
            ("T20", false),
            ("750 ml, 24 hours", false),
            ("12  34", false),
            ("12-/34", false),
            ("-1-2-3-", false),
            // Found by the equivalence test while the walks became one: a
            // number may start after a separator inside a run whose first
            // digit follows a letter.
            ("A0 00000--00000", true),
            ("a1 12  34  56  78  90", true),
            // No match starts after a letter, and no phone number holds a
            // group of more than 8 digits unless it starts with `0`: a
            // UUID's digits are neither a card, an SSN nor a phone number
            // (they sent every UUID to the detectors).
            ("550e8400-e29b-41d4-a716-446655440000", false),
            ("a716-446655440000", false),
            // A card or an SSN glued to a letter or `_` is a value
            // (`'x' || card`): read as its check reads it, so a UUID's
            // digits after a letter still are not.
            ("x4111111111111111", true),
            ("card_4111-1111-1111-1111", true),
            ("x4111111111111112", false),
            ("SSN123-45-6789", true),
            ("x123-45-678", false),
            ("f4111.1111.1111.1111", true),
            ("u4,111,111,111,111,111", true),
            ("446655440000", false),
            ("123456789-123", false),
            ("716-446655440000", true),
            ("0446655440000", true),
            ("123-45-6789", true),
            ("123 45 6789", true),
            ("123.45.6789", true),
            ("123/45/6789", false),
            ("4,111,111,111,111,111", true),
            ("4'111'111'111'111'111", true),
            ("1,234,567", false),
            ("1234567890123", true),
            ("a1-234-56-7890", true),
            ("01 12345678", true),
            ("x 020/12345678", true),
        ] {
            assert_eq!(digits_may_match(text.as_bytes()), chained, "{text}");
        }
    }

    /// Every sample of every built-in pattern passes the first look, and
    /// ordinary words and short figures do not.
    #[test]
    fn samples() {
        let hits = [
            "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----",
            "eyJhbGciOi.eyJzdWIiOi.sig",
            "pcl_0123456789012345678901234567890123456789abc",
            "AKIAIOSFODNN7EXAMPLE",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            // A review found fine-grained tokens passed through: `gh` is
            // not a prefix of `github_pat_`. Kept as regression cases.
            "github_pat_bbbbbbbbbbbbbbbbbbbbbb",
            "github_pat_11ZZbcdfjkmnqrtvwyzBCDFJKMN",
            "github_pat_aaA_0Aa0_AaAa00aAAa0__",
            "token github_pat_bbbbbbbbbbbbbbbbbbbbbb here",
            "glpat-abcdefghijklmnopqrst",
            "xoxb-1234567890-abc",
            // The shortest a literal's match is, and a digit rule's.
            "xoxb-1234567890",
            "1.2.3.4",
            "sk_live_abcdefghijklmnop",
            "AIzaSyA-abcdefghijklmnopqrstuvwxyz12345",
            "password=hunter22",
            "SECRET_KEY=django",
            "postgres://admin:pw@db",
            "password: hunter22",
            "API-KEY : abcdef",
            "Client_Secret:xyz123",
            "access token:abc",
            "1:2:3:4:5:6:7:8",
            "a@b.co",
            "DE89370400440532013000",
            "4111 1111 1111 1111",
            "078-05-1120",
            "555-123-4567",
            "+4930123456",
            "(0911) 123456",
            "030 1234567",
            "10.0.0.1",
            "fe80::1",
            "ԱБВ 12",
        ];
        for h in hits {
            assert!(builtins_may_match(h), "{h}");
        }
        for miss in [
            "kitchen",
            "1.4.2",
            "750 ml, 24 hours",
            "support desk",
            "SKU-00000001",
            "2026-11-25T20:08:17Z",
            "https://example.com:8443/x",
        ] {
            assert!(!builtins_may_match(miss), "{miss}");
            assert!(!finds(miss), "{miss}");
        }
    }

    /// Texts built from the pieces these patterns are made of (digits,
    /// separators, letters, the literals), so the set matches often.
    fn texts() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[0-9]{1,6}",
            "[ .:/()+=@_-]",
            "[A-Za-z]{1,4}",
            "[A-Z]{2}[0-9]{2}[A-Z0-9]{4,20}",
            "[a-zA-Z][ .-]?[a-zA-Z][ .-]?[0-9][ .-]?[0-9]([ .-]?[a-zA-Z0-9]){8,16}",
            "[0-9 -]{8,24}",
            Just("eyJ".to_string()),
            Just("aws".to_string()),
            Just("AWS".to_string()),
            Just("-----".to_string()),
            Just("secret".to_string()),
            Just("gh".to_string()),
            Just("github_pat_".to_string()),
            Just("\u{17f}".to_string()),
            Just("\u{664}".to_string()),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    /// Texts drawn from every built-in pattern itself (with ASCII digit
    /// and space classes, and without `\b`, so the strings stay ASCII and
    /// the generator compiles), between arbitrary ASCII: a detector added
    /// later is covered without a hand-written generator.
    fn pattern_texts() -> impl Strategy<Value = String> {
        let matches: Vec<_> = BUILTINS
            .iter()
            .map(|b| {
                let p = b
                    .pattern
                    .replace(r"\b", "")
                    .replace(r"\d", "[0-9]")
                    .replace(r"\s", "[ \t\r\n]");
                proptest::string::string_regex(&p)
                    .unwrap_or_else(|e| panic!("{}: {e}", b.name))
                    .boxed()
            })
            .collect();
        (
            "[ -~]{0,8}",
            proptest::strategy::Union::new(matches),
            "[ -~]{0,8}",
        )
            .prop_map(|(a, m, b)| format!("{a}{m}{b}"))
    }

    /// `text` with each byte in turn replaced by `b` (then by a space)
    /// wherever the set still matches afterwards.
    fn worn_down(text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        for i in 0..bytes.len() {
            for plain in [b'b', b' '] {
                let before = std::mem::replace(&mut bytes[i], plain);
                if std::str::from_utf8(&bytes).is_ok_and(finds) {
                    break;
                }
                bytes[i] = before;
            }
        }
        String::from_utf8(bytes).expect("only ASCII bytes were written")
    }

    /// Whether the built-ins may find anything in `text`: the oracle. For
    /// every pattern but the phone's, the card's and the SSN's, a match;
    /// for those, a value their checks accept (the first look reads a card
    /// glued to a letter as its check does), asked of a masker with only
    /// those detectors and its first look skipped (alone they find all
    /// that they would beside the others, which only take from them).
    fn finds(text: &str) -> bool {
        static OTHERS: std::sync::LazyLock<RegexSet> = std::sync::LazyLock::new(|| {
            RegexSet::new(
                BUILTINS
                    .iter()
                    .filter(|b| !b.weak && !b.digits_apart)
                    .map(|b| b.pattern),
            )
            .expect("valid builtins")
        });
        static PHONE: std::sync::LazyLock<crate::Masker> = std::sync::LazyLock::new(|| {
            let spec = crate::MaskSpec {
                detectors: vec!["phone".into(), "card".into(), "ssn".into()],
                ..crate::MaskSpec::default()
            };
            crate::Masker::new(&spec, None).expect("phone masker")
        });
        OTHERS.is_match(text) || (set().is_match(text) && PHONE.finds_without_first_look(text))
    }

    /// Where the built-ins find something in `text`, the first look is
    /// true on it and on it worn down to the fewest bytes that could trip
    /// the first look while they still find it (random tokens are full of
    /// upper-case-then-digit pairs and digit runs that hide a missing
    /// literal: a review found `github_pat_bbbbbbbbbbbbbbbbbbbbbb` that
    /// way).
    fn never_hides(text: &str) -> Result<(), TestCaseError> {
        if finds(text) {
            prop_assert!(builtins_may_match(text), "{text:?}");
            let plain = worn_down(text);
            prop_assert!(builtins_may_match(&plain), "{plain:?} (from {text:?})");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Texts drawn from every pattern.
        #[test]
        fn never_hides_a_match_of_any_pattern(text in pattern_texts()) {
            never_hides(&text)?;
        }

        /// Texts made of the patterns' pieces.
        #[test]
        fn never_hides_a_match(text in texts()) {
            never_hides(&text)?;
        }

        /// Printable ASCII, where the first look decides.
        #[test]
        fn never_hides_a_match_in_ascii(text in "[ -~]{0,60}") {
            never_hides(&text)?;
        }

        /// Any text (non-ASCII goes to the set).
        #[test]
        fn never_hides_a_match_in_any_text(text in "\\PC{0,40}") {
            never_hides(&text)?;
        }

        /// Runs of digits with long groups, separators and letters before
        /// them: where a match can start, and which groups no phone
        /// number holds, decide here.
        #[test]
        fn never_hides_a_match_in_digit_runs(
            text in "(0[0-9]{1,5}|[1-9][0-9]{0,14}|0[0-9]{6,14}|[a-z_A-Z]{1,2}|[ ./-]{1,2}){0,8}"
        ) {
            never_hides(&text)?;
        }
    }
}
