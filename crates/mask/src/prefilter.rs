//! A cheaper first look for the built-in detectors: a condition every
//! text a built-in pattern matches must meet, checked in one pass over the
//! bytes. When it fails, no built-in can match and the detector set (a
//! lazy DFA over the union of every pattern, which walks each byte of
//! every string) is skipped. When it holds, the set decides as before, so
//! this can only save work, never change a finding.
//!
//! Written by hand because the condition is about these patterns: the
//! `regex` crate's own literal prefilter finds nothing to use in a union
//! where several patterns start with a digit class. Each rule below names
//! the patterns it stands for; `tests` holds it to the set on generated
//! texts (a differential test: the condition may never be false where the
//! set matches).
//!
//! Only ASCII text is judged: `\d`, `\s`, `\b` and `(?i)` are Unicode in
//! these patterns, so a text with any other byte goes to the set.

/// Whether a built-in detector may match `text`; false only when none can.
pub(crate) fn builtins_may_match(text: &str) -> bool {
    bytes_may_match(text.as_bytes())
}

fn bytes_may_match(b: &[u8]) -> bool {
    let seen = b.iter().fold(0, |seen, &c| seen | CLASS[usize::from(c)]);
    decide(seen, b)
}

/// The first look on `b`, given `seen`: the [`CLASS`] bits of all its
/// bytes, or-ed together (the JSON pass gathers them while it finds a
/// string's end). A built-in may match only when the text holds:
/// - a trigger (`@ : = + (` or a byte outside ASCII): email; IPv6; the
///   `[=:]` of secret assignments and AWS secrets; the international and
///   bracketed phone forms; and `\d`, `\s`, `\b` and `(?i)` are Unicode in
///   these patterns (a non-ASCII digit is a `\d`, `ſ` matches `(?i)s`), so
///   such a text goes to the set;
/// - the digits of a card, SSN, IPv4, IBAN or the remaining phone forms
///   ([`digits_may_match`]);
/// - or the literal of a pattern with neither ([`literal_at`]).
///
/// Each step runs only when `seen` says it can succeed, and none branches
/// on each byte's class: on ordinary text those branches were
/// mispredicted often enough to be the dearest part of masking a JSON
/// document (cachegrind's branch simulation, 2026-12-03).
pub(crate) fn decide(seen: u8, b: &[u8]) -> bool {
    if seen & TRIGGER != 0 {
        return true;
    }
    (seen & DIGIT != 0 && digits_may_match(b))
        || (seen & MARK != 0
            && (0..b.len()).any(|i| CLASS[usize::from(b[i])] & MARK != 0 && literal_at(b, i)))
}

/// Whether `b` holds an upper-case letter then a digit (every IBAN starts
/// `[A-Z]{2}\d{2}`), or a chain of at least 4 digits with at most one
/// separator (space, `-`, `.` or `/`) between neighbours: every match of
/// the card (13+ digits, `[ -]?` between), SSN (9, `-`), IPv4 (4+, `.`)
/// and the remaining phone forms (`\d{2,5}[ -]\d{2,5}`,
/// `\d{3}\.\d{3}\.\d{4}`, `0\d{1,5}[ /-]?\d{5,8}`) holds one.
///
/// Walked from digit to digit: the bytes between are only searched, so
/// text with few digits costs little (an automaton over every byte was a
/// chain of dependent look-ups, measured dearer with `perf`).
fn digits_may_match(b: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(u8::is_ascii_digit) {
        let start = i + p;
        // Only a chain's first digit can follow a letter.
        if start > 0 && b[start - 1].is_ascii_uppercase() {
            return true;
        }
        let (mut run, mut j) = (0, start);
        loop {
            if b.get(j).is_some_and(u8::is_ascii_digit) {
                run += 1;
                if run >= 4 {
                    return true;
                }
                j += 1;
            } else if b
                .get(j)
                .is_some_and(|c| matches!(c, b' ' | b'-' | b'.' | b'/'))
                && b.get(j + 1).is_some_and(u8::is_ascii_digit)
            {
                j += 1;
            } else {
                break;
            }
        }
        i = j;
    }
    false
}

const DIGIT: u8 = 1;
/// `@ : = + (` and any byte outside ASCII: enough on their own.
const TRIGGER: u8 = 2;
/// The byte [`literal_at`] is anchored on: `-` `_` `J` `A`.
const MARK: u8 = 4;

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
        } else if matches!(b, b'@' | b':' | b'=' | b'+' | b'(') || !b.is_ascii() {
            TRIGGER
        } else if matches!(b, b'-' | b'_' | b'J' | b'A') {
            MARK
        } else {
            0
        };
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

    /// The digit chain on its own (texts with no other trigger): four
    /// digits with single separators between them, never two in a row.
    #[test]
    fn chains() {
        for (text, chained) in [
            ("2026-11-25", true),
            ("1-2-3-4", true),
            ("4111 1111 1111 1111", true),
            ("750 ml, 24 hours", false),
            ("1.4.2", false),
            ("12  34", false),
            ("12-/34", false),
            ("-1-2-3-", false),
        ] {
            assert_eq!(bytes_may_match(text.as_bytes()), chained, "{text}");
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
            "aws_secret_access_key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            // A review found fine-grained tokens passed through: `gh` is
            // not a prefix of `github_pat_`. Kept as regression cases.
            "github_pat_bbbbbbbbbbbbbbbbbbbbbb",
            "github_pat_11ZZbcdfjkmnqrtvwyzBCDFJKMN",
            "github_pat_aaA_0Aa0_AaAa00aAAa0__",
            "token github_pat_bbbbbbbbbbbbbbbbbbbbbb here",
            "glpat-abcdefghijklmnopqrst",
            "xoxb-1234567890-abc",
            "sk_live_abcdefghijklmnop",
            "AIzaSyA-abcdefghijklmnopqrstuvwxyz12345",
            "password=hunter22",
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
        let set = set();
        for h in hits {
            assert!(builtins_may_match(h), "{h}");
        }
        for miss in ["kitchen", "1.4.2", "750 ml, 24 hours", "support desk"] {
            assert!(!builtins_may_match(miss), "{miss}");
            assert!(!set.is_match(miss), "{miss}");
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
                if std::str::from_utf8(&bytes).is_ok_and(|t| set().is_match(t)) {
                    break;
                }
                bytes[i] = before;
            }
        }
        String::from_utf8(bytes).expect("only ASCII bytes were written")
    }

    /// Where the detector set matches `text`, the first look is true on
    /// it and on it worn down to the fewest bytes that could trip the
    /// first look while the set still matches (random tokens are full of
    /// upper-case-then-digit pairs and digit runs that hide a missing
    /// literal: a review found `github_pat_bbbbbbbbbbbbbbbbbbbbbb` that
    /// way).
    fn never_hides(text: &str) -> Result<(), TestCaseError> {
        if set().is_match(text) {
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
    }
}
