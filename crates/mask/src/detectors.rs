//! The built-in detectors: a name, a pattern, and the check that turns a
//! match into a finding.

use crate::validate;

pub struct Builtin {
    pub name: &'static str,
    /// What `redact` writes: `[LABEL]`.
    pub label: &'static str,
    pub pattern: &'static str,
    /// Capture group holding the sensitive part (0: the whole match).
    pub group: usize,
    pub check: Option<fn(&str) -> bool>,
    /// A weak pattern (phone numbers) only gets what stronger, validated
    /// detectors did not claim: its matches are cut short before theirs.
    pub weak: bool,
    /// The value's ends are told from digits, not from words: a letter or
    /// `_` glued to either end (`x4111111111111111`, `SSN123-45-6789`,
    /// `card_4111…`, as `'x' || card` writes them) does not hide it, and
    /// a digit before or after makes it part of a longer number. The
    /// pattern has no `\b`; the matcher holds the bound
    /// (`Masker::next_from_in`, `checked_end`).
    pub digits_apart: bool,
    /// Where the value ends when the check refuses the whole match because
    /// characters are glued to its end (`checked_end`).
    pub glued_end: Option<fn(&str) -> Option<usize>>,
}

/// Every built-in detector, in priority order (earlier wins when two
/// matches start at the same place and have the same length).
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "private_key",
        label: "PRIVATE_KEY",
        pattern: r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
        group: 0,
        check: None,
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    // The tokens below have no word boundary before their literal, nor
    // after a fixed length: one glued to a letter or `_` (`tokenghp_…`,
    // `AKIA…X`) passed unmasked (2026-12-06). The literals are distinctive
    // enough to stand without it, but for the AWS key's (upper-case words
    // and hex hold them) and Stripe's (test names hold `_test_`): see each.
    Builtin {
        name: "jwt",
        label: "JWT",
        pattern: r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
        group: 0,
        check: None,
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "portcullis_token",
        label: "TOKEN",
        pattern: r"pcl_[A-Za-z0-9_-]{43}",
        group: 0,
        check: None,
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "aws_access_key",
        label: "AWS_KEY",
        // Glued only after a lower-case letter or `_` (`xAKIA…`, `key_AKIA…`,
        // the finding taking that character too): upper-case words and hex
        // hold the literals (`CENTRALASIAEXPORT…`, review).
        pattern: r"(?:(?-u:\b)|[a-z_])(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}",
        group: 0,
        check: None,
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "aws_secret",
        label: "AWS_SECRET",
        pattern: r#"(?i)aws[a-z_ -]{0,20}secret[a-z_ -]{0,20}["']?\s*[:=]\s*["']?([A-Za-z0-9/+=]{40})(?-u:\b)"#,
        group: 1,
        check: None,
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "github_token",
        label: "GITHUB_TOKEN",
        pattern: r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})",
        group: 0,
        check: None,
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "gitlab_token",
        label: "GITLAB_TOKEN",
        pattern: r"glpat-[A-Za-z0-9_-]{20,}",
        group: 0,
        check: None,
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "slack_token",
        label: "SLACK_TOKEN",
        pattern: r"xox[baprs]-[A-Za-z0-9-]{10,}",
        group: 0,
        check: None,
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "stripe_key",
        label: "STRIPE_KEY",
        // A word boundary before: `network_test_connectionTimeout` and
        // other test names hold the literal (review, 2026-12-06).
        pattern: r"(?-u:\b)(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}",
        group: 0,
        check: None,
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "google_api_key",
        label: "GOOGLE_API_KEY",
        pattern: r"AIza[0-9A-Za-z_-]{35}",
        group: 0,
        check: None,
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "secret_assignment",
        label: "SECRET",
        // No word boundary before the name: `DB_PASSWORD=…`,
        // `POSTGRES_PASSWORD: …` and `user_api_key=…`, as environment
        // files and settings tables write them, passed unmasked (the `_`
        // before the name is a word character), 2026-12-06. And, from the
        // review of that: names ending in a secret's, access's,
        // encryption's, signing or master key (`SECRET_KEY=`,
        // `ENCRYPTION_KEY=`; not any `_KEY`: `SORT_KEY`, `GPG_KEY`,
        // `CACHE_KEY` name no secret), upper-case names ending in
        // `_TOKEN`, `_PASS` or `_SECRET` (`GITHUB_TOKEN=`, `DB_PASS=`; in
        // lower case they name pagination cursors too: `page_token`), a
        // quote after the name (`"password": "…"` in a log line), and `=>`
        // and `:=`. A boolean, `null` or a mask's own token is no secret
        // (`is_secret: false`): the check.
        pattern: r#"(?:(?i:password|passwd|passphrase|pwd|secret|api[_-]?key|private[_-]?key|(?:access|auth|api|refresh|session)[_-]?token|client[_-]?secret|(?:secret|access|encryption|signing|master)_key)|_(?:TOKEN|PASS|SECRET))["']?\s*(?:=>|:=|[=:])\s*("[^"\s]{3,}"|'[^'\s]{3,}'|[^\s"',;&}]{3,})"#,
        group: 1,
        check: Some(validate::secret_value),
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "url_password",
        label: "SECRET",
        // The password in a URL's user information, as connection strings
        // in settings, logs and error messages carry it
        // (`postgres://admin:…@db:5432/app`): it passed unmasked (review,
        // 2026-12-06).
        // Unbounded and ASCII-classed: counted repetitions of Unicode
        // classes made the detector set's automaton too large for its
        // cache, and the set fell back to a slower engine (22 times the
        // work on a document with many values).
        // The user may be empty (`redis://:…@cache`) and either part may
        // hold `@` (a percent-escape is read as its character before the
        // patterns run: `hunter%40pw` showed `pw`), so the password runs
        // to the last `@` before the host; the scheme may be glued to
        // what is before it (`my_db://`, `1postgres://`: review). A `/`
        // in the password too, as tools print one unescaped
        // (`postgres://app:Ab3/xY9+@db` passed): the check tells it from a
        // port and a path with an `@` in it (`https://host:8443/a@b`).
        pattern: r"[A-Za-z][A-Za-z0-9+._-]*://[^\s:/?#]*:([^\s?#]+)@",
        group: 1,
        check: Some(validate::url_password),
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "email",
        label: "EMAIL",
        pattern: r"(?-u:\b)[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?-u:\b)",
        group: 0,
        check: None,
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "iban",
        label: "IBAN",
        // Any case, and one space, dot or dash (or none) between any two
        // characters: `de89-3704-0044-0532-0130-00`, `DE89.3704…` and
        // `DE 89 3704…` passed unmasked while only the print form (upper
        // case, groups of four, spaces) was read, and so would one
        // character at a time (`D E 8 9 …`) (review, 2026-12-05).
        // The check asks more of the forms that are not the print form.
        // Letters or digits glued to its end (`DE89…000x`, as `iban ||
        // 'x'` writes it) hid the value (2026-12-06): the pattern reads on
        // to the word's end, up to 54 characters in all, and the value is
        // cut where the registry says an IBAN in upper case ends
        // (`validate::iban_glued_end`); `_` is read as a glued character
        // (the check reads only letters and digits). The boundary at the end stays: a
        // pattern that may end anywhere made the detector set's automaton
        // rebuild its states on every hash in a JSON document (1.6 times
        // the instructions). One glued after
        // a word (`IBANDE89…`) is not found: without the boundary at its
        // start, any two letters and two digits inside a word started
        // one, the detector set's automaton thrashed on hashes and ids (a
        // JSON document of SHA-256 strings masked at 1 MB/s), and the
        // loose checks took their runs (review, 2026-12-06).
        pattern: r"(?-u:\b)[A-Za-z][ .-]?[A-Za-z][ .-]?\d[ .-]?\d(?:[ .-]?[A-Za-z0-9_]){11,50}(?-u:\b)",
        group: 0,
        check: Some(validate::iban),
        weak: false,
        digits_apart: false,
        glued_end: Some(validate::iban_glued_end),
    },
    Builtin {
        name: "card",
        label: "CARD",
        // Dots only between groups as cards are printed (4-4-4-4,
        // 4-4-4-4-3, Amex's 4-6-5, 4-3-3-3), and any mix of spaces, dots
        // and dashes between such groups: `4111.1111.1111.1111` passed
        // unmasked, and a review passed `6222.0202.0000.0000.006` and
        // `4111.1111 1111.1111` (2026-12-05); a dot between any digits
        // would take decimal fractions.
        // And in thousands, as `to_char(card::numeric, 'FM9,999,…')` or a
        // locale writes a number: `4,111,111,111,111,111`, `4'111'…`.
        pattern: r"\d(?:[ -]?\d){12,18}|\d{4}(?:[ .-]\d{3,6}){2,4}|\d{1,3}(?:[,']\d{3}){4,6}",
        group: 0,
        check: Some(validate::card),
        weak: false,
        digits_apart: true,
        glued_end: None,
    },
    Builtin {
        name: "ssn",
        label: "SSN",
        // Spaces and dots as well as dashes: `123 45 6789` passed.
        pattern: r"\d{3}[ .-]\d{2}[ .-]\d{4}",
        group: 0,
        check: Some(validate::ssn),
        weak: false,
        digits_apart: true,
        glued_end: None,
    },
    Builtin {
        name: "phone",
        label: "PHONE",
        // NANP and grouped forms; `+` and digits; dotted US and
        // `415/555-0132` (area and exchange codes start 2-9: a ratio
        // before a year, `120/500 2026`, is no number); then international
        // forms with a long last group (`+49 30 1234567`, also with dots
        // or slashes between the groups or the area code in brackets:
        // `+49/30/1234567`, `+49 (30) 1234567`, which passed unmasked
        // until 2026-12-05, and an extension after it: `+49/30/12345-67`)
        // or many short ones (`+33 1 53 59 90 11`), and trunk-prefixed
        // national forms (`030 1234567`, `(0911) 123456`, and as DIN 5008
        // writes them, `030/12 34 56 78`, `030 / 1234567`, `0711/1234-567`,
        // which passed too; an area code of two digits or more before a
        // slash, so that `01/02 2026` stays a date), and France's dotted
        // `01.53.59.90.11`; last, a country code
        // then the national number in one group (`+91 9876543210`, as
        // India writes mobiles; a review found it passed), and a slash
        // with spaces round it before the subscriber's groups (`+49 89 /
        // 123 456`, passed too).
        pattern: r"(?:\+\d{1,3}[ -]?)?(?:\(\d{1,4}\)[ -]?)?(?-u:\b)\d{2,5}(?:[ -]\d{2,5}){1,4}(?-u:\b)|\+[1-9]\d{7,14}(?-u:\b)|(?-u:\b)\d{3}\.\d{3}\.\d{4}(?-u:\b)|(?-u:\b)[2-9]\d{2}/[2-9]\d{2}-\d{4}(?-u:\b)|\+\d{1,3}(?:[ ./-]\d{1,5}[ ./-]| ?\(\d{1,5}\) ?)\d{5,8}(?:[.-]\d{1,5}){0,2}(?-u:\b)|\+\d{1,3}(?:[ .-]\d{1,4}){3,6}(?-u:\b)|(?:\(0\d{1,5}\)|(?-u:\b)0\d{1,5})(?:[ /-]?\d{5,8}|[ -]\d{2,8}(?:[ -]\d{1,5}){0,4})(?-u:\b)|(?-u:\b)0\d{2,5} ?/ ?\d{2,8}(?:[ -]\d{1,5}){0,4}(?-u:\b)|(?-u:\b)0\d(?:\.\d{2}){4}(?-u:\b)|\+\d{1,3}[ .-]\d{6,12}(?-u:\b)|\+\d{1,3}(?: ?/ ?|[ .-])(?:\(0\) ?)?\d{1,5} ?/ ?\d{2,8}(?:[ -]\d{1,5}){0,4}(?-u:\b)",
        group: 0,
        check: Some(validate::phone),
        weak: true,
        digits_apart: false,
        glued_end: None,
    },
    // A second source of phone numbers: international forms dialled `00`
    // with a long last group (`0049 30 1234567`) or many short ones
    // (`0033 1 53 59 90 11`), and both `+` and `00` forms with the
    // national `(0)` kept (`+49 (0)30 1234567`), which passed unmasked
    // (reviews, 2026-12-05); as the `+` forms above, with dots, slashes
    // or a bracketed area code (`0049/30/1234567`), and the `(0)` forms
    // with short groups (`+33 (0)1 53 59 90 11`), which passed too
    // (2026-12-05, later). A source of its own, not alternatives of the
    // one above: at one start a pattern's first matching alternative wins,
    // and these shadowed the grouped form where their check refused what
    // they took (`0033-265-7482-2-0-423-698`, review); two sources each
    // offer their accepted match, and the longer wins.
    Builtin {
        name: "phone",
        label: "PHONE",
        pattern: r"(?-u:\b)00\d{1,3}(?:[ ./-]\d{1,5}[ ./-]| ?\(\d{1,5}\) ?)\d{5,8}(?:[.-]\d{1,5}){0,2}(?-u:\b)|(?-u:\b)00\d{1,3}(?:[ .-]\d{1,4}){3,6}(?-u:\b)|(?:\+|(?-u:\b)00)\d{1,3} ?\(0\) ?\d{1,5}[ ./-]?\d{2,8}(?:[ .-]\d{1,5}){0,4}(?-u:\b)|(?-u:\b)00\d{1,3}(?: ?/ ?|[ .-])(?:\(0\) ?)?\d{1,5} ?/ ?\d{2,8}(?:[ -]\d{1,5}){0,4}(?-u:\b)",
        group: 0,
        check: Some(validate::phone),
        weak: true,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "ipv4",
        label: "IP",
        pattern: r"(?-u:\b)(?:\d{1,3}\.){3}\d{1,3}(?-u:\b)",
        group: 0,
        check: Some(validate::ipv4),
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
    Builtin {
        name: "ipv6",
        label: "IP",
        // The compressed form (with `::`) first: leftmost-first matching
        // would otherwise stop at the full form's shorter prefix.
        pattern: r"(?i)(?-u:\b)(?:[0-9a-f]{1,4}:){1,7}:(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6}(?-u:\b))?|(?-u:\b)(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}(?-u:\b)",
        group: 0,
        check: Some(validate::ipv6),
        weak: false,
        digits_apart: false,
        glued_end: None,
    },
];
