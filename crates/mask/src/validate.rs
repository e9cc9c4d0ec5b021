//! Checks that turn a pattern match into a finding: checksums and ranges.
//! Each takes the matched text and says whether it is the real thing.

/// Luhn checksum over the digits of `s` (separators ignored).
pub fn luhn(s: &str) -> bool {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    luhn_digits(&digits)
}

/// Luhn checksum over ASCII digits.
fn luhn_digits(d: &[u8]) -> bool {
    if d.len() < 2 {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &c)| {
            let d = u32::from(c - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A payment card number: 13-19 digits, a known issuer prefix, Luhn-valid.
pub fn card(s: &str) -> bool {
    let mut d = [0u8; 19];
    let mut n = 0;
    for c in s.bytes().filter(u8::is_ascii_digit) {
        let Some(slot) = d.get_mut(n) else {
            return false;
        };
        *slot = c;
        n += 1;
    }
    card_digits(&d[..n])
}

/// [`card`] on the digits alone (ASCII), without allocating: the first
/// look asks it of a run glued to a letter (`prefilter::glued_at`).
pub(crate) fn card_digits(d: &[u8]) -> bool {
    let n = d.len();
    if !(13..=19).contains(&n) {
        return false;
    }
    let prefix = |k: usize| {
        d[..k]
            .iter()
            .fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'))
    };
    let (p2, p4) = (prefix(2), prefix(4));
    // Issuer prefixes with the lengths each issues.
    let known = (d[0] == b'4' && matches!(n, 13 | 16 | 19))
        || (((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && n == 16)
        || ((p2 == 34 || p2 == 37) && n == 15)
        || ((p4 == 6011 || p2 == 65 || (644..=649).contains(&(p4 / 10))) && (16..=19).contains(&n))
        || (p2 == 35 && (16..=19).contains(&n))
        || ((p2 == 36 || p2 == 38 || p2 == 30) && (14..=19).contains(&n))
        || (p2 == 62 && (16..=19).contains(&n));
    known && luhn_digits(d)
}

/// An IBAN: country, check digits, mod-97 == 1.
///
/// Valid by the IBAN registry (`iban_validate`: the country's length and
/// account format, and mod-97), in any case, as account numbers are
/// written ([`grouped`]) or in any grouping when at most half of what
/// follows the check digits is letters: national layouts (`IT60 X 05428
/// 11101 000000123456`, `FR76 30006 00001 12345678901 89`) passed while
/// only groups of four were read, and prose a permissive format holds
/// (`qa 44 login page shows blank sc…`, Qatar's length) is all letters
/// (review, 2026-12-05). Otherwise, only as account numbers are written,
/// since the pattern reads far more text than IBANs (prose, addresses:
/// `NO 83 HIGH STREET…` was masked):
/// - a country outside the registry (the partial IBANs of Morocco,
///   Senegal, Iran, Pakistan and others, which reviews passed) on
///   mod-97, with at most two letters after a bank code of four, as
///   theirs have (`payable in 67 days from the…` was masked: review);
/// - in upper case, any other on mod-97, as the print form always was.
pub fn iban(s: &str) -> bool {
    let c = compact(s);
    match c.parse::<iban::Iban>() {
        Ok(_) => written_as_account(s, &c),
        Err(iban::ParseIbanError::UnknownCountry(_)) => {
            // A bank code of letters first is common (Pakistan's `SCBL`,
            // Honduras's `CABF`, which the crate's registry lacks and a
            // review found unmasked): the letters after it are counted.
            let after_bank = c.bytes().skip(8).filter(u8::is_ascii_alphabetic).count();
            grouped(s) && after_bank <= 2 && mod97(&c)
        }
        Err(_) => grouped(s) && !s.bytes().any(|c| c.is_ascii_lowercase()) && mod97(&c),
    }
}

/// Where an IBAN that the registry knows ends inside `s`, when letters or
/// digits are glued to its end (`DE89370400440532013000x`, `…0130 00x`,
/// as `iban || 'x'` writes it): the pattern's letters and digits run on
/// into the glued ones, and the check on the whole fails. Only the
/// registry's word is taken for a cut inside a group (its country's one
/// length, its account format, mod-97): mod-97 alone holds for 1 in 97 of
/// a run's prefixes.
///
/// Each prefix's mod-97 is found in one pass first, and only those where
/// it holds are asked of the registry: asking it of every prefix made a
/// run of `DE89` 50 times slower to mask (review).
pub fn iban_glued_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let value = |c: u8| match c {
        b'0'..=b'9' => Some(u64::from(c - b'0')),
        b'A'..=b'Z' => Some(u64::from(c - b'A') + 10),
        b'a'..=b'z' => Some(u64::from(c - b'a') + 10),
        _ => None,
    };
    // The country and check digits, moved to the end: their value and
    // the power of ten they are shifted by.
    // In upper case, as IBANs are written: mixed-case ids that start with
    // a country's code took the registry's word 1 time in 97 (review).
    let lower = b.iter().position(u8::is_ascii_lowercase).unwrap_or(b.len());
    let mut head = (0u64, 1u64);
    let mut seen = 0;
    let mut rem = 0u64;
    let mut ends = Vec::new();
    for (i, &c) in b[..lower].iter().enumerate() {
        let Some(v) = value(c) else { continue };
        let shift = if v >= 10 { 100 } else { 10 };
        if seen < 4 {
            head = ((head.0 * shift + v) % 97, head.1 * shift % 97);
        } else {
            rem = (rem * shift + v) % 97;
            let glued = b
                .get(i + 1)
                .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
            if seen + 1 >= 15 && glued && (rem * head.1 + head.0) % 97 == 1 {
                ends.push(i + 1);
            }
        }
        seen += 1;
    }
    ends.into_iter().rev().find(|&k| registered(&s[..k]))
}

/// A secret's assigned value, unless it is a boolean or nothing: names
/// that end in a secret's word are flags as often (`is_secret: false`,
/// `has_password: true`: review, 2026-12-06). A value masked already is
/// told by the masker, which knows its own labels (`Masker::own_tokens`).
pub fn secret_value(v: &str) -> bool {
    const NOT: [&str; 9] = [
        "true",
        "false",
        "yes",
        "no",
        "null",
        "none",
        "nil",
        "undefined",
        "empty",
    ];
    !NOT.iter().any(|w| v.eq_ignore_ascii_case(w))
}

/// The password of a URL's user information ([`secret_value`]), unless
/// what the pattern took is a port and a path (`8443/a` of
/// `https://host:8443/a@b`, `1]:8080/` of `http://[::1]:8080/@user`): what
/// comes before its first `/` ends in digits after a `:` or is digits.
pub fn url_password(v: &str) -> bool {
    let port = v.split_once('/').is_some_and(|(head, _)| {
        let digits = head.rsplit(':').next().unwrap_or(head);
        !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit())
    });
    !port && secret_value(v)
}

/// Whether the registry takes `s` as an IBAN, written as [`iban`] asks.
fn registered(s: &str) -> bool {
    let c = compact(s);
    c.parse::<iban::Iban>().is_ok() && written_as_account(s, &c)
}

/// The letters and digits of `s`, in upper case: the IBAN's electronic form.
fn compact(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Whether `s` (`c` compact) is written as account numbers are
/// ([`grouped`]), or at most half of what follows its check digits is
/// letters.
fn written_as_account(s: &str, c: &str) -> bool {
    let letters = c.bytes().skip(4).filter(u8::is_ascii_alphabetic).count();
    grouped(s) || letters * 2 <= c.len() - 4
}

/// Whether what follows the first four letters or digits of `s` (the
/// country and check digits, however spaced) is one group, or groups
/// between one kind of separator that all have one length but the last
/// (which may be shorter), or that break only after fours.
fn grouped(s: &str) -> bool {
    let head = s
        .char_indices()
        .filter(|(_, c)| c.is_ascii_alphanumeric())
        .nth(3)
        .map_or(s.len(), |(i, _)| i + 1);
    let rest = &s[head..];
    let rest = rest.strip_prefix([' ', '.', '-']).unwrap_or(rest);
    let mut seps = rest.chars().filter(|c| !c.is_ascii_alphanumeric());
    let Some(sep) = seps.next() else {
        return true;
    };
    if seps.any(|c| c != sep) {
        return false;
    }
    let groups: Vec<usize> = rest.split(sep).map(str::len).collect();
    let Some((&last, body)) = groups.split_last() else {
        return false;
    };
    let even = body.iter().all(|&g| g == body[0]) && last <= body[0];
    let fours = body.iter().all(|g| g % 4 == 0);
    last > 0 && (even || fours)
}

/// ISO 13616's check: 15 to 34 letters and digits (upper case), the
/// first four moved to the end, read as a number mod 97 is 1.
fn mod97(c: &str) -> bool {
    if !(15..=34).contains(&c.len()) {
        return false;
    }
    let (head, tail) = c.split_at(4);
    let mut rem: u64 = 0;
    for ch in tail.chars().chain(head.chars()) {
        let v = match ch {
            '0'..='9' => ch as u64 - '0' as u64,
            'A'..='Z' => ch as u64 - 'A' as u64 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// A US SSN `AAA-GG-SSSS` (or with spaces or dots) outside the
/// never-issued ranges.
pub fn ssn(s: &str) -> bool {
    let parts: Vec<&str> = s.split([' ', '.', '-']).collect();
    if parts.len() != 3 {
        return false;
    }
    let (a, g, n) = (parts[0], parts[1], parts[2]);
    let area: u32 = a.parse().unwrap_or(0);
    area != 0 && area != 666 && area < 900 && g != "00" && n != "0000"
}

pub fn ipv4(s: &str) -> bool {
    s.parse::<std::net::Ipv4Addr>().is_ok()
        && s.split('.').all(|o| o.len() == 1 || !o.starts_with('0'))
}

pub fn ipv6(s: &str) -> bool {
    s.contains(':') && s.matches(':').count() >= 2 && s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// A phone number: not a date or a time that happens to look like digit
/// groups, and either
/// - international (`+`, or `00` as Europe dials it: `0049 151 …`): 8-15
///   digits whose country code libphonenumber's metadata (the
///   `phonenumber` crate) knows;
/// - 10-11 digits (NANP and most national forms);
/// - or a trunk-prefixed national number (`030 1234567`, `0911 12345`)
///   that the metadata says is valid in a region dialling `0` first.
pub fn phone(s: &str) -> bool {
    let digits = s.chars().filter(|c| c.is_ascii_digit()).count();
    // 2024-01-15 10 ... : an ISO date is not a phone number, nor a zero
    // or partial one (`0000-00-00 00:00:00`, `2024-00-00`: a review's
    // flood). A month past 12 is no date's (`0044-20-7946-0958` was taken
    // for one).
    let b = s.as_bytes();
    let date_like = b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && matches!(&b[5..7], [b'0', b'0'..=b'9'] | [b'1', b'0'..=b'2'])
        && b[7] == b'-';
    if date_like {
        return false;
    }
    // `+49 (0)30 …`: the national `0` some write beside the country code
    // is not dialled.
    let (s, digits) = match s.split_once("(0)") {
        Some((cc, rest)) if cc.starts_with(['+', '0']) => (format!("{cc}{rest}"), digits - 1),
        _ => (s.to_owned(), digits),
    };
    let s = s.as_str();
    // Dots and slashes also join the groups of ids, versions and paths
    // (`/media/001/234/567890`, `0044/2026/123456`: a review found those
    // masked once the international forms took them); a number written
    // so must be one the metadata calls valid, not merely one it parses.
    // So must a country code with the rest in one group (`+91
    // 9876543210`): a signed count before a number (`+2 20261125`) has
    // that shape too.
    let groups = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .count();
    let strict = s.contains(['.', '/']) || (s.starts_with('+') && groups == 2);
    // Read as its digits alone: the parser refuses some mixes of
    // punctuation (`+49/30/12345-67`).
    let known = |n: &str| {
        if !strict {
            return phonenumber::parse(None, n).is_ok();
        }
        let plain: String = std::iter::once('+')
            .chain(n.chars().filter(char::is_ascii_digit))
            .collect();
        phonenumber::parse(None, &plain).is_ok_and(|p| phonenumber::is_valid(&p))
    };
    if s.starts_with('+') {
        return (8..=15).contains(&digits) && known(s);
    }
    // A review passed `00491511234567` unmasked: `00` is how most of the
    // world dials `+`. Judged as one before the count below, which would
    // take any ten or eleven digits after `00` (`001/22/33445`).
    if let Some(international) = s.strip_prefix("00") {
        return (8..=15).contains(&(digits - 2)) && known(&format!("+{international}"));
    }
    if (10..=11).contains(&digits) {
        return true;
    }
    let national = s.trim_start_matches('(').starts_with('0') && !s.starts_with("00");
    national
        && (7..=12).contains(&digits)
        && TRUNK_ZERO
            .iter()
            .any(|r| phonenumber::parse(Some(*r), s).is_ok_and(|n| phonenumber::is_valid(&n)))
}

/// Load libphonenumber's metadata now (it is read on first use, which
/// would otherwise be the first phone-like value a caller sends).
pub fn warm_phone_metadata() {
    let _ = phonenumber::parse(None, "+1 201 555 0123");
}

/// Regions whose national numbers are written with a leading `0`.
const TRUNK_ZERO: &[phonenumber::country::Id] = {
    use phonenumber::country::Id::*;
    &[
        DE, GB, FR, NL, BE, AT, CH, SE, NO, FI, DK, IE, AU, NZ, IN, JP, ZA, TR, IL, BR,
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_cards() {
        for good in [
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "6011111111111117",
            "4242424242424242",
        ] {
            assert!(card(good), "{good}");
        }
        for bad in [
            "4111 1111 1111 1112",
            "1234567812345670",
            "411111111111",
            "00000000000000000",
        ] {
            assert!(!card(bad), "{bad}");
        }
    }

    #[test]
    fn ibans() {
        assert!(iban("DE89370400440532013000"));
        assert!(iban("GB82 WEST 1234 5698 7654 32"));
        assert!(iban("FR1420041010050500013M02606"));
        assert!(!iban("DE89370400440532013001"));
        assert!(!iban("XX00"));
    }

    #[test]
    fn ssns() {
        assert!(ssn("123-45-6789"));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(!ssn(bad), "{bad}");
        }
    }

    #[test]
    fn ips_and_phones() {
        assert!(ipv4("192.168.1.20") && !ipv4("999.1.1.1") && !ipv4("01.2.3.4"));
        assert!(ipv6("2001:db8::8a2e:370:7334") && !ipv6("12:30") && !ipv6("a:b"));
        assert!(phone("+1 415 555 0132") && phone("(415) 555-0132") && phone("+442079460958"));
        assert!(!phone("2024-01-15 10") && !phone("123-4567") && !phone("+12 34"));
        // National formats libphonenumber knows: Berlin, Nuremberg, a UK mobile.
        assert!(phone("030 1234567") && phone("(0911) 123456") && phone("+49 30 1234567"));
        assert!(phone("07700 900123"));
        // Not a country code, not a trunk-prefixed number.
        assert!(!phone("+999 1234 5678") && !phone("00012345") && !phone("1234 5678"));
        assert!(!phone("3704 0044 0532") && !phone("1111 1111 1111"));
        // `00` dials `+` (review: these passed unmasked).
        assert!(phone("00491511234567") && phone("0049 30 1234567") && phone("0044 20 7946 0958"));
        assert!(!phone("00999 1234 5678") && !phone("0012345"));
        // Dates stay dates, zero ones too; a month past 12 is none.
        assert!(!phone("2024-01-15 10") && !phone("1999-12-31 23"));
        assert!(!phone("0000-00-00 00") && !phone("2024-00-00 10"));
        assert!(phone("0044-20-7946-0958") && phone("0049-30-1234567"));
        // The national `(0)` beside a country code.
        assert!(phone("+49 (0)30 1234567") && phone("0049 (0)30 1234567"));
        // Dots and slashes: valid numbers only, however punctuated; a
        // `00` form is judged as international before the count of ten or
        // eleven digits (review, 2026-12-05).
        assert!(phone("0049/30/1234567") && phone("+49/30/12345-67") && phone("+49.30.1234567"));
        assert!(!phone("001/22/33445") && !phone("0044/2026/123456") && !phone("+1.00/12345"));
        // A country code and one group: valid numbers only.
        assert!(phone("+91 9876543210") && phone("+44 7911123456") && phone("+81-9012345678"));
        assert!(!phone("+1 12345678") && !phone("+2 20261125"));
        assert!(phone("0044 (0)20 7946 0958"));
    }
}
