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
//! these patterns (a non-ASCII digit is a `\d`, `ſ` matches `(?i)s`), so
//! any other text goes to the set.

/// Whether a built-in detector may match `text`; false only when none can.
pub(crate) fn builtins_may_match(text: &str) -> bool {
    !text.is_ascii() || bytes_may_match(text.as_bytes())
}

/// One pass over the bytes:
/// - `@` email; `:` IPv6 (both forms), and with `=` the `[=:]` of secret
///   assignments and AWS secrets; `+` and `(` the international and
///   bracketed phone forms;
/// - an upper-case letter then a digit: every IBAN starts `[A-Z]{2}\d{2}`;
/// - a chain of at least 4 digits with at most one separator (space, `-`,
///   `.` or `/`) between neighbours: every match of the card (13+ digits,
///   `[ -]?` between), SSN (9, `-`), IPv4 (4+, `.`) and the remaining
///   phone forms (`\d{2,5}[ -]\d{2,5}`, `\d{3}\.\d{3}\.\d{4}`,
///   `0\d{1,5}[ /-]?\d{5,8}`) holds one;
/// - a literal that the other patterns all contain ([`literal_at`]).
///
/// By hand rather than with an Aho-Corasick automaton: on the short
/// strings of a JSON document the automaton's per-call cost was as large
/// as the detector set's it was meant to save (measured with
/// `cargo bench -p portcullis-mask`).
fn bytes_may_match(b: &[u8]) -> bool {
    let mut run = 0;
    // The previous byte: a digit; a separator that followed a digit; an
    // upper-case letter.
    let (mut digit, mut sep, mut upper) = (false, false, false);
    for (i, &c) in b.iter().enumerate() {
        let class = CLASS[usize::from(c)];
        if class == 0 {
            // Most bytes of most strings: nothing to track.
            (digit, sep, upper) = (false, false, false);
            continue;
        }
        if class & DIGIT != 0 {
            if upper {
                return true;
            }
            run = if digit || sep { run + 1 } else { 1 };
            if run >= 4 {
                return true;
            }
            (digit, sep, upper) = (true, false, false);
            continue;
        }
        if class & TRIGGER != 0 || (class & LITERAL != 0 && literal_at(&b[i..])) {
            return true;
        }
        sep = digit && class & SEPARATOR != 0;
        digit = false;
        upper = class & UPPER != 0;
    }
    false
}

const DIGIT: u8 = 1;
/// `@ : = + (`: enough on their own.
const TRIGGER: u8 = 2;
/// The first byte of a literal ([`literal_at`]).
const LITERAL: u8 = 4;
const SEPARATOR: u8 = 8;
const UPPER: u8 = 16;

/// Each byte's part in [`bytes_may_match`], looked up once per byte.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_digit() {
            DIGIT
        } else if matches!(b, b'@' | b':' | b'=' | b'+' | b'(') {
            TRIGGER
        } else {
            let mut k = 0;
            if matches!(b, b'-' | b'e' | b'p' | b'g' | b'x' | b'_' | b'a' | b'A') {
                k |= LITERAL;
            }
            if matches!(b, b' ' | b'-' | b'.' | b'/') {
                k |= SEPARATOR;
            }
            if b.is_ascii_uppercase() {
                k |= UPPER;
            }
            k
        };
        c += 1;
    }
    t
};

/// Whether `rest` starts with a literal one of which every match of the
/// other patterns contains: `-----` private keys; `eyJ` JWTs; `pcl_`
/// Portcullis tokens; the AWS access key prefixes; `aws` in any case
/// (the AWS secret pattern starts with it under `(?i)`); `gh` and
/// `github_pat_` GitHub tokens (`gh[pousr]_`, fine-grained); `glpat-`
/// GitLab; `xox` Slack;
/// `_live_`/`_test_` Stripe; `AIza` Google.
fn literal_at(rest: &[u8]) -> bool {
    let has = |lit: &[u8]| rest.starts_with(lit);
    match rest[0] {
        b'-' => has(b"-----"),
        b'e' => has(b"eyJ"),
        b'p' => has(b"pcl_"),
        b'g' => has(b"gh") || has(b"github_pat_") || has(b"glpat-"),
        b'x' => has(b"xox"),
        b'_' => has(b"_live_") || has(b"_test_"),
        b'a' | b'A' => {
            rest.get(..3)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"aws"))
                || [b"AKIA", b"ASIA", b"ABIA", b"ACCA", b"AIza"]
                    .iter()
                    .any(|lit| has(*lit))
        }
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
