use super::*;
use proptest::prelude::*;
use serde_json::json;

fn masker() -> Masker {
    Masker::new(&MaskSpec::default(), Some(b"test-key")).unwrap()
}

fn mask(text: &str) -> String {
    masker().mask_str(text, &mut Stats::new()).into_owned()
}

#[test]
fn detectors_positive_and_negative() {
    let cases: &[(&str, Option<&str>)] = &[
        ("mail alice.smith+x@example.co.uk now", Some("email")),
        ("card 4111 1111 1111 1111.", Some("card")),
        ("card 4111-1111-1111-1112", None),
        ("iban DE89 3704 0044 0532 0130 00", Some("iban")),
        ("iban DE89 3704 0044 0532 0130 01", None),
        ("ssn 123-45-6789", Some("ssn")),
        ("ssn 666-45-6789", None),
        ("call +1 415 555 0132", Some("phone")),
        ("call (415) 555-0132", Some("phone")),
        // Found by review: NANP's country code without `+`, and `00`
        // for `+`, had passed unmasked.
        ("call 1 415 555 0132", Some("phone")),
        ("call 1-415-555-0132 now", Some("phone")),
        ("tel 00491511234567", Some("phone")),
        // Found by review, open until 2026-12-05: `00` numbers in groups
        // with a long last one (or many short ones), and NANP's `1` after
        // a letter.
        ("tel 0049 30 1234567", Some("phone")),
        ("tel 0049 151 1234567 now", Some("phone")),
        ("tel 0033 1 53 59 90 11", Some("phone")),
        ("tel 0044-20-7946-0958", Some("phone")),
        ("tel x1 415 555 0132", Some("phone")),
        ("tel ext1-415-555-0132", Some("phone")),
        // Review: after a letter, only NANP's 3-3-4; a literal `]`
        // before the `1` as before; zero and partial dates are no phones;
        // a refused `00` form does not shadow the grouped one.
        ("page1 8983 320 0430", None),
        ("item1 6200 6389 825", None),
        ("[home]1 415 555 0132", Some("phone")),
        ("at 0000-00-00 00:00:00", None),
        ("at 2024-00-00 10:00", None),
        ("tel 0033-265-7482-2-0-423-698", Some("phone")),
        ("tel +49 (0)30 1234567", Some("phone")),
        ("tel 0049 (0)30 1234567", Some("phone")),
        // Dates and versions in the separators the forms below allow.
        ("on 2026/11/25 at 10:30", None),
        ("on 11/25/2026 at 10:30", None),
        ("on 01/02/2026 at 10:30", None),
        ("version 1.20.12345", None),
        // Review of the forms below: ratios before a year, zero-padded
        // ids and paths, amounts, and dates the national slash form could
        // take were masked by their first version.
        ("items 120/500 2026", None),
        ("batch 123/456 2026-11-25T10:00:00Z", None),
        ("/media/001/234/567890.jpg", None),
        ("/img/001/23/4567890/thumb.png", None),
        ("/tiles/0012/34/56789.png", None),
        ("invoice 0044/2026/123456", None),
        ("record 001/22/33445", None),
        ("ref 0044.12.345678", None),
        ("amount +1.00/12345", None),
        ("change +12.5/100000", None),
        ("on 01/02 2026 at 10:30", None),
        ("on 05/12 2026 at 10:30", None),
        ("order 0012-3456", None),
        ("account 00999 30 1234567", None),
        ("account 21 415 555 0132", None),
        // Grouped otherwise than the run before it: not its rest (review).
        ("qty 2 0049/30/1234567", Some("phone")),
        ("at 10:30 415/555-0132", Some("phone")),
        ("room 12 +49 (30) 1234567", Some("phone")),
        ("account 21 415 555 0132 2", None),
        // After a time or a date, digits start a value of their own
        // (review: the first passed as the middle of an account number).
        ("at 2026-11-25 10:30:00 030 1234567", Some("phone")),
        ("at 10:30:00.123 415 555 0132", Some("phone")),
        ("on 2026-11-25 030 1234567", Some("phone")),
        ("at 10:30:00 12 34", None),
        ("at 10:30 21 415", None),
        ("at 2024-01-15 10:30:00", None),
        ("host 10.20.30.40", Some("ipv4")),
        // An address inside a run that is no phone number stays an address.
        ("oid 1.3.6.1.4.1.2021", Some("ipv4")),
        ("host 10.20.30.40.", Some("ipv4")),
        ("version 1.2.3", None),
        ("ip6 2001:db8::8a2e:370:7334 here", Some("ipv6")),
        ("uuid 550e8400-e29b-41d4-a716-446655440000", None),
        ("key AKIAIOSFODNN7EXAMPLE", Some("aws_access_key")),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            Some("aws_secret"),
        ),
        (
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            Some("github_token"),
        ),
        ("glpat-abcdefghij0123456789", Some("gitlab_token")),
        ("xoxb-123456789012-abcdefghij", Some("slack_token")),
        ("sk_live_abcdefghijklmnop1234", Some("stripe_key")),
        (
            "AIzaSyA-abcdefghijklmnopqrstuvwxyz12345",
            Some("google_api_key"),
        ),
        ("password=hunter22", Some("secret_assignment")),
        (
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl",
            Some("jwt"),
        ),
        ("nothing to see here, order 12345", None),
    ];
    let m = masker();
    for (text, want) in cases {
        let got = m.find(text);
        match want {
            Some(d) => assert!(got.iter().any(|f| f.detector == *d), "{text}: {got:?}"),
            None => assert!(got.is_empty(), "{text}: {got:?}"),
        }
    }
}

/// `detector` finds `value` in `text`, at the text's own offsets, and
/// masking again finds nothing new: the text masked.
fn found_as(m: &Masker, text: &str, detector: &str, value: &str) -> String {
    let found = m.find(text);
    let f = found
        .iter()
        .find(|f| f.detector == detector)
        .unwrap_or_else(|| panic!("{text:?}: {found:?}"));
    assert_eq!(&text[f.start..f.end], value, "{text:?}");
    let masked = m.mask_str(text, &mut Stats::new()).into_owned();
    assert_eq!(m.mask_str(&masked, &mut Stats::new()), masked);
    masked
}

/// A phone number after a time or a date is found whole, not taken for
/// the rest of a run of digit groups (review, 2026-12-05).
#[test]
fn phone_numbers_after_a_time_or_a_date_are_found_whole() {
    let m = masker();
    for (text, value) in [
        ("2026-11-25 10:30:00 030 1234567", "030 1234567"),
        ("at 10:30 415 555 0132 called", "415 555 0132"),
        ("10:30:00,250 0049 30 1234567", "0049 30 1234567"),
        ("on 2026-11-25 030 1234567", "030 1234567"),
        // Re-review: a timestamp with its `T`, fraction or offset, and a
        // time before a dash.
        ("2026-11-25T10:30:00 030 1234567", "030 1234567"),
        ("2026-11-25T10:30:00.123 415 555 0132", "415 555 0132"),
        ("2026-11-25T10:30:00-03:00 030 1234567", "030 1234567"),
        ("10:30:00-030 1234567", "030 1234567"),
    ] {
        let masked = found_as(&m, text, "phone", value);
        assert!(
            masked.ends_with("[PHONE]") || masked.contains("[PHONE] "),
            "{masked}"
        );
    }
}

/// Values written with separators or in a case their detectors did not
/// read passed unmasked (review, 2026-12-05): an IBAN in lower case, with
/// dashes or dots, spaced otherwise than in fours or one character at a
/// time (as `regexp_replace(iban, '(.)', '\1 ', 'g')` writes it); an SSN
/// with spaces or dots; a card with dots between its printed groups. Each
/// is found whole.
#[test]
fn values_written_with_other_separators_or_case_are_found_whole() {
    let m = masker();
    for (text, detector, value) in [
        (
            "iban DE89-3704-0044-0532-0130-00 paid",
            "iban",
            "DE89-3704-0044-0532-0130-00",
        ),
        (
            "iban de89 3704 0044 0532 0130 00",
            "iban",
            "de89 3704 0044 0532 0130 00",
        ),
        (
            "iban de89370400440532013000.",
            "iban",
            "de89370400440532013000",
        ),
        (
            "iban DE89.3704.0044.0532.0130.00",
            "iban",
            "DE89.3704.0044.0532.0130.00",
        ),
        (
            "iban DE 89 3704 0044 0532 0130 00",
            "iban",
            "DE 89 3704 0044 0532 0130 00",
        ),
        (
            "iban DE89 370 400 440 532 013 000",
            "iban",
            "DE89 370 400 440 532 013 000",
        ),
        (
            "iban D E 8 9 3 7 0 4 0 0 4 4 0 5 3 2 0 1 3 0 0 0 end",
            "iban",
            "D E 8 9 3 7 0 4 0 0 4 4 0 5 3 2 0 1 3 0 0 0",
        ),
        (
            "iban gb82-west-1234-5698-7654-32",
            "iban",
            "gb82-west-1234-5698-7654-32",
        ),
        (
            "{\"iban\":\"De89-3704-0044-0532-0130-00\"}",
            "iban",
            "De89-3704-0044-0532-0130-00",
        ),
        ("ssn 123 45 6789", "ssn", "123 45 6789"),
        ("ssn 123.45.6789", "ssn", "123.45.6789"),
        ("card 4111.1111.1111.1111 ok", "card", "4111.1111.1111.1111"),
        ("amex 3782.822463.10005", "card", "3782.822463.10005"),
        // Review of the above: 19 digits and 4-3-3-3 with dots, mixed
        // separators, and a value with `-<digit>` after it.
        (
            "up 6222.0202.0000.0000.006",
            "card",
            "6222.0202.0000.0000.006",
        ),
        ("visa 4222.222.222.222", "card", "4222.222.222.222"),
        ("card 4111.1111 1111.1111", "card", "4111.1111 1111.1111"),
        ("card 4111-1111.1111-1111", "card", "4111-1111.1111-1111"),
        ("card 4111111111111111-1", "card", "4111111111111111"),
        // Em dashes and middle dots between the groups.
        (
            "card 4111\u{2014}1111\u{2014}1111\u{2014}1111 ok",
            "card",
            "4111\u{2014}1111\u{2014}1111\u{2014}1111",
        ),
        ("ssn 123\u{b7}45\u{b7}6789", "ssn", "123\u{b7}45\u{b7}6789"),
        (
            "ssn 123\u{30fb}45\u{30fb}6789",
            "ssn",
            "123\u{30fb}45\u{30fb}6789",
        ),
        (
            "card 4111\u{fe58}1111\u{fe58}1111\u{fe58}1111",
            "card",
            "4111\u{fe58}1111\u{fe58}1111\u{fe58}1111",
        ),
        // In thousands (`to_char(card::numeric, 'FM9,999,…')`).
        (
            "card 4,111,111,111,111,111 ok",
            "card",
            "4,111,111,111,111,111",
        ),
        (
            "card 4'111'111'111'111'111",
            "card",
            "4'111'111'111'111'111",
        ),
        (
            "card 4,111,111,111,111,111,222",
            "card",
            "4,111,111,111,111,111",
        ),
        ("card 4111 1111 1111 1111-01", "card", "4111 1111 1111 1111"),
        (
            "iban DE89370400440532013000-1",
            "iban",
            "DE89370400440532013000",
        ),
        (
            "iban DE89 3704 0044 0532 0130 00-01",
            "iban",
            "DE89 3704 0044 0532 0130 00",
        ),
        (
            "iban de89-3704-0044-0532-0130-00-7",
            "iban",
            "de89-3704-0044-0532-0130-00",
        ),
        (
            "x DE89370400440532013000-2024-12-05",
            "iban",
            "DE89370400440532013000",
        ),
        // A country the IBAN registry does not hold, in lower case.
        (
            "iban ma64011519000001205000534921",
            "iban",
            "ma64011519000001205000534921",
        ),
        (
            "iban MA64-0115-1900-0001-2050-0053-4921",
            "iban",
            "MA64-0115-1900-0001-2050-0053-4921",
        ),
        (
            "iban DE89 3704 0044 0532 013000",
            "iban",
            "DE89 3704 0044 0532 013000",
        ),
    ] {
        let masked = found_as(&m, text, detector, value);
        assert!(!masked.contains(value), "{masked}");
    }
    for text in [
        // In lower case a country the registry holds must have its
        // length: a German IBAN two characters long is not one, though
        // mod 97 holds. (In upper case, as before, any length.)
        "id de44-3704-0044-0532-0130-0099",
        "iban DE89-3704-0044-0532-0130-01",
        // Prose and ordinary figures the wider pattern reads.
        "is 12 a big one of the words in it",
        "pi 3.1415926535897932 and 2.7182818284590452",
        "ssn 666 45 6789 and 123 00 6789",
        "v2 item17 abc123 sha256 utf8",
        "total 1,234,567,890,123,456 units and 1,234,567",
        // Review: prose and addresses the wider pattern read, whose
        // words are not grouped as an account number is.
        "NO 83 HIGH STREET LONDON UNITED KINGDOM",
        "AT 86 AM THE SERVER WAS RESTARTED BY OPS",
        "MIAMI FL 17552 USA ATTN ACCOUNTS PAYABLE",
        "SHIP TO: 12 MAIN ST AUSTIN TX 85364 UNITED STATES OF AMERICA",
        "Ticket qa 44 login page shows blank screen after timeout",
        "lv 14 cart from the 100 for",
    ] {
        assert!(m.find(text).is_empty(), "{text}: {:?}", m.find(text));
    }
    // A value the IBAN shape would cut short (its check digits chosen so
    // that mod-97 holds with the next value's first group) is masked
    // whole with it (review, 2026-12-05).
    for (text, digits) in [
        ("QQ31 ZZZZ ZZZZ ZZZZ 4111 1111 1111 1111", "1111"),
        (
            "QQ04 ZZZZ ZZZZ ZZZZ 4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
            "1 1 1",
        ),
        ("QQ23 ZZZZ ZZZZ ZZZZ DE89 3704 0044 0532 0130 00", "0044"),
        ("QQ74 ZZZ ZZZ ZZZ 123 45 6789", "6789"),
        // As the review wrote them (three letters in the last group), no
        // longer an IBAN's grouping at all.
        ("QQ32 ZZZZ ZZZZ ZZZ 4111 1111 1111 1111", "1111"),
        ("QQ33 ZZZZ ZZZZ ZZZ 123 45 6789", "6789"),
        ("4111 1111 1111 4 123 45 6789", "6789"),
        ("4111 1111 1111 4 123.45.6789", "6789"),
    ] {
        let masked = m.mask_str(text, &mut Stats::new()).into_owned();
        assert!(!masked.contains(digits), "{text}: {masked}");
        // Also with a long text after it (the search for the value inside
        // looks in a window past the finding).
        let long = format!("{text} {}", "word ".repeat(200));
        let masked = m.mask_str(&long, &mut Stats::new()).into_owned();
        assert!(!masked.contains(digits), "{masked}");
    }
    assert_eq!(
        m.find("id XX97 1234 5678 9012 3456 78")
            .iter()
            .map(|f| f.detector.as_str())
            .collect::<Vec<_>>(),
        ["iban"]
    );
}

/// Open until 2026-12-05 (later): phone numbers with dots or slashes
/// between the groups after the country code, the area code in brackets,
/// `(0)` before short groups, NANP's `415/555-0132`, and national numbers
/// as DIN 5008 writes them passed unmasked (the first three or four
/// digits were taken at most); a review of the first mend found an
/// extension after them left visible (`[PHONE]-67`). Each is found whole.
#[test]
fn phone_numbers_with_dots_slashes_and_bracketed_area_codes_are_found_whole() {
    let m = masker();
    for number in [
        "0049/30/1234567",
        "+49/30/1234567",
        "+49 30/1234567",
        "0049 30/1234567",
        "+49 (30) 1234567",
        "+49 (151) 12345678",
        "0049 (151) 12345678",
        "+49.30.1234567",
        "0049.30.1234567",
        "+33 (0)1 53 59 90 11",
        "0033 (0)1 53 59 90 11",
        "+44 (0)20 7946 0958",
        "415/555-0132",
        "+55.11.91234.5678",
        "+49/30/12345-67",
        "0049/30/12345-67",
        "+43/1/5123456-100",
        "030/12 34 56 78",
        "030 / 12 34 56 78",
        "0711/1234-567",
        "030 / 1234567",
        "+91 9876543210",
        "+44 7911123456",
        "+33 612345678",
        "+1 4155550132",
        "+61 412345678",
        "+55 11912345678",
        "+81-9012345678",
        "+33.1.53.59.90.11",
        "+33 6.12.34.56.78",
        "01.53.59.90.11",
        "06.12.34.56.78",
        "+49 89 / 123 456",
        "+49 / 30 / 1234567",
        "0049 / 30 / 1234567",
        "+49/30/123 4567",
        "0049/30/123 456 78",
        "+49 (0)30 / 1234567",
    ] {
        let masked = found_as(&m, &format!("tel {number} now"), "phone", number);
        assert_eq!(masked, "tel [PHONE] now");
    }
}

/// Review: card and phone numbers grouped with no-break or narrow
/// no-break spaces (as locale formatting writes them) passed unmasked.
#[test]
fn digit_groups_spaced_as_locales_space_them_are_found() {
    let m = masker();
    for (text, detector, value) in [
        (
            "card 4111\u{a0}1111\u{a0}1111\u{a0}1111.",
            "card",
            "4111\u{a0}1111\u{a0}1111\u{a0}1111",
        ),
        (
            "card 4111\u{202f}1111\u{202f}1111\u{202f}1111",
            "card",
            "4111\u{202f}1111\u{202f}1111\u{202f}1111",
        ),
        (
            "call +1\u{2009}415\u{2009}555\u{2009}0132 now",
            "phone",
            "+1\u{2009}415\u{2009}555\u{2009}0132",
        ),
        (
            "iban DE89\u{a0}3704\u{a0}0044\u{a0}0532\u{a0}0130\u{a0}00",
            "iban",
            "DE89\u{a0}3704\u{a0}0044\u{a0}0532\u{a0}0130\u{a0}00",
        ),
    ] {
        let masked = found_as(&m, text, detector, value);
        assert!(
            !masked.contains("1111") && !masked.contains("0132") && !masked.contains("0044"),
            "{masked}"
        );
    }
    // In JSON strings too.
    let body = "{\"card\":\"4111\u{a0}1111\u{a0}1111\u{a0}1111\"}";
    let out = m
        .mask_json_bytes(body.as_bytes(), &mut Stats::new())
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out).contains("1111"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // Percent-escapes and character references spell the same values
    // (review: a body's `…/users/ada.lovelace%40example.com` passed).
    for (text, detector, value) in [
        (
            "/users/ada.lovelace%40example.com/x",
            "email",
            "ada.lovelace%40example.com",
        ),
        (
            "mailto:ada.lovelace&#64;example.com",
            "email",
            "ada.lovelace&#64;example.com",
        ),
        ("to ada&#x40;example.com!", "email", "ada&#x40;example.com"),
        ("ada&commat;example.com", "email", "ada&commat;example.com"),
        (
            "card=4111%201111%201111%201111&x=1",
            "card",
            "4111%201111%201111%201111",
        ),
    ] {
        found_as(&m, text, detector, value);
    }
    // What is not an escape stays text: `%zz`, `&#;`, a lone `&`, `%` at
    // the end, a reference past ASCII.
    for text in [
        "100%zz",
        "a &#; b",
        "fish & chips",
        "50%",
        "&#x1F600; ok",
        "%E2%82%AC 5",
    ] {
        assert_eq!(mask(text), text);
    }
    // A no-break space elsewhere changes nothing.
    assert_eq!(mask("Prix\u{a0}: 12\u{a0}€"), "Prix\u{a0}: 12\u{a0}€");
}

/// Decimal digits of other scripts are the digits they are: a card, an
/// SSN or a phone number written in Arabic-Indic, Persian, Devanagari,
/// Bengali, Thai or mathematical digits (a target's locale, or a query's
/// `translate()`), or mixing them with ASCII's, is found and replaced as
/// written. Open until 2026-12-05 ("other-script digits").
#[test]
fn digits_of_other_scripts_spell_the_same_values() {
    let m = masker();
    for (text, detector, value) in [
        (
            "card ٤١١١ ١١١١ ١١١١ ١١١١ paid",
            "card",
            "٤١١١ ١١١١ ١١١١ ١١١١",
        ),
        ("card ۴۱۱۱-۱۱۱۱-۱۱۱۱-۱۱۱۱", "card", "۴۱۱۱-۱۱۱۱-۱۱۱۱-۱۱۱۱"),
        ("ssn १२३-४५-६७८९", "ssn", "१२३-४५-६७८९"),
        ("ssn ১২৩-৪৫-৬৭৮৯", "ssn", "১২৩-৪৫-৬৭৮৯"),
        ("tel +1 ๔๑๕ ๕๕๕ ๐๑๓๒", "phone", "+1 ๔๑๕ ๕๕๕ ๐๑๓๒"),
        ("card 4111 ١١١١ 1111 ١١١١", "card", "4111 ١١١١ 1111 ١١١١"),
        ("card 𝟒𝟏𝟏𝟏 𝟏𝟏𝟏𝟏 𝟏𝟏𝟏𝟏 𝟏𝟏𝟏𝟏", "card", "𝟒𝟏𝟏𝟏 𝟏𝟏𝟏𝟏 𝟏𝟏𝟏𝟏 𝟏𝟏𝟏𝟏"),
        ("ip ١٩٢.١٦٨.١.١٠ up", "ipv4", "١٩٢.١٦٨.١.١٠"),
    ] {
        let masked = found_as(&m, text, detector, value);
        assert!(!masked.contains(value), "{masked}");
    }
    // In JSON strings, raw and escaped, and in a PostgreSQL-like cell.
    for body in [
        "{\"c\":\"٤١١١١١١١١١١١١١١١\"}",
        "{\"c\":\"\\u0664\\u0661\\u0661\\u0661111111111111\"}",
    ] {
        let out = m
            .mask_json_bytes(body.as_bytes(), &mut Stats::new())
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(!out.contains("١١١") && !out.contains("1111"), "{out}");
    }
    // Numbers in those scripts that are no value stay as they are.
    for text in [
        "السعر ١٢ دينار",
        "पृष्ठ १२३",
        "๒๕๖๙",
        "emoji 🙂🙂 and 𝟏𝟐",
        "١٢٣٤",
    ] {
        assert_eq!(m.mask_str(text, &mut Stats::new()), text);
    }
}

/// Escapes of what other scripts write spell it too: an HTML reference
/// or the percent-encoded UTF-8 of a full-width or other-script digit
/// (open until 2026-12-05, "double spellings"). Escapes of other
/// characters, broken ones and lone bytes stay as they are.
#[test]
fn escapes_of_other_spellings_spell_the_same_values() {
    let m = masker();
    let card = |d: &str| format!("card {d}111 1111 1111 1111 paid");
    for (text, value) in [
        (card("&#xFF14;"), "&#xFF14;111 1111 1111 1111"),
        (card("&#65300;"), "&#65300;111 1111 1111 1111"),
        (card("%EF%BC%94"), "%EF%BC%94111 1111 1111 1111"),
        (card("%D9%A4"), "%D9%A4111 1111 1111 1111"),
        (card("&#x664;"), "&#x664;111 1111 1111 1111"),
        (card("%F0%9D%9F%92"), "%F0%9D%9F%92111 1111 1111 1111"),
    ] {
        found_as(&m, &text, "card", value);
    }
    let mail = "ada%EF%BC%A0example.com";
    found_as(&m, &format!("to {mail} now"), "email", mail);
    // Backslash escapes, as code and reprs write them (review).
    for mail in [
        "ada.lovelace\\u0040example.com",
        "ada.lovelace\\x40example.com",
    ] {
        found_as(&m, &format!("to {mail} now"), "email", mail);
    }
    let card = "\\u0034111 1111 1111 1111";
    found_as(&m, &format!("card {card} paid"), "card", card);
    for text in [
        "a %EF%BC 4111",
        "%C3%A9t%C3%A9 1234",
        "&#x1F600; 12",
        "%E2%82%AC 10",
        "&#xD800; 1",
        "%F4%90%80%80 1",
        "C:\\x86\\bin 12",
        "\\u00e9t\\u00e9 2026",
        "a\\u12 \\x4",
    ] {
        assert_eq!(m.mask_str(text, &mut Stats::new()), text, "{text}");
    }
}

/// Characters that show nothing between a value's characters are read as
/// absent (review, 2026-12-05: a combining accent, a zero-width joiner, a
/// variation selector or a soft hyphen after each digit passed a card
/// through a masked connection); the finding covers them.
#[test]
fn invisible_characters_between_a_values_characters_are_read_as_absent() {
    let m = masker();
    for sep in [
        '\u{0301}', '\u{200D}', '\u{FE0F}', '\u{00AD}', '\u{200B}', '\u{2060}',
    ] {
        let card: String = "4111111111111111".chars().flat_map(|d| [d, sep]).collect();
        let card = card.trim_end_matches(sep).to_string();
        let text = format!("card {card} paid");
        let masked = found_as(&m, &text, "card", &card);
        assert!(!masked.contains("111"), "{sep:?}: {masked}");
        let mail = format!("ada{sep}@example.com");
        found_as(&m, &format!("to {mail} now"), "email", &mail);
    }
    // Prose with accents and marks alone stays as it is.
    for text in [
        "cafe\u{0301} 12",
        "naïve résumé",
        "👍🏽 ok 2026",
        "a\u{200D}b 4",
    ] {
        assert_eq!(m.mask_str(text, &mut Stats::new()), text, "{text}");
    }
}

/// Every character the masker reads as ASCII starts with a byte the
/// scans that decide whether to read a text look for: a character left
/// out would be read in one pass and not in the other.
#[test]
fn every_spelled_character_starts_with_a_byte_looked_for() {
    for c in
        ('\u{80}'..='\u{10FFFF}').filter(|&c| crate::ascii_of(c).is_some() || crate::invisible(c))
    {
        let mut b = [0; 4];
        let lead = c.encode_utf8(&mut b).as_bytes()[0];
        assert!(
            crate::starts_spelling(lead),
            "{c:?} (U+{:04X})",
            u32::from(c)
        );
    }
}

/// Full-width forms (U+FF01-U+FF5E) spell ASCII as East Asian text and
/// input methods write it, and read the same to a person or a model:
/// open until 2026-12-05 ("digits other than ASCII's").
#[test]
fn full_width_forms_spell_the_same_values() {
    let m = masker();
    for (text, detector, value) in [
        (
            "card ４１１１ １１１１ １１１１ １１１１.",
            "card",
            "４１１１ １１１１ １１１１ １１１１",
        ),
        (
            "mail ａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ now",
            "email",
            "ａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        ),
        (
            "ssn １２３－４５－６７８９",
            "ssn",
            "１２３－４５－６７８９",
        ),
        (
            "tel ＋１ ４１５ ５５５ ０１３２",
            "phone",
            "＋１ ４１５ ５５５ ０１３２",
        ),
        ("mixed ada＠example.com", "email", "ada＠example.com"),
        // Review: other hyphens, minus signs and stops.
        (
            "card ４１１１−１１１１−１１１１−１１１１",
            "card",
            "４１１１−１１１１−１１１１−１１１１",
        ),
        ("ssn １２３‐４５‐６７８９", "ssn", "１２３‐４５‐６７８９"),
        ("ssn 123–45–6789", "ssn", "123–45–6789"),
        (
            "card ４１１１﹣１１１１﹣１１１１﹣１１１１",
            "card",
            "４１１１﹣１１１１﹣１１１１﹣１１１１",
        ),
        (
            "mail ａｄａ＠ｅｘａｍｐｌｅ。ｃｏｍ",
            "email",
            "ａｄａ＠ｅｘａｍｐｌｅ。ｃｏｍ",
        ),
        (
            "tel ０９０ー１２３４ー５６７８",
            "phone",
            "０９０ー１２３４ー５６７８",
        ),
    ] {
        let masked = found_as(&m, text, detector, value);
        assert!(!masked.contains('１') && !masked.contains('＠'), "{masked}");
    }
    // In JSON strings, escaped or not.
    for body in [
        "{\"c\":\"４１１１１１１１１１１１１１１１\"}",
        "{\"c\":\"\\uff14\\uff11\\uff11\\uff11111111111111\"}",
    ] {
        let out = m
            .mask_json_bytes(body.as_bytes(), &mut Stats::new())
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(!out.contains("１１") && !out.contains("1111"), "{out}");
    }
    // Full-width text that spells no value stays as it is.
    for text in [
        "ＡＢＣ １２３",
        "（注）ｖｅｒ．１．２",
        "﻿BOM then text",
        "コーヒー。２０２６年１２月５日",
        "pages 10–20 − 3",
    ] {
        assert_eq!(mask(text), text);
    }
}

#[test]
fn private_key_blocks() {
    let pem =
        "x\n-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\nabc\n-----END RSA PRIVATE KEY-----\ny";
    assert_eq!(mask(pem), "x\n[PRIVATE_KEY]\ny");
}

#[test]
fn actions() {
    let spec = MaskSpec {
        actions: [
            (
                "card".to_string(),
                ActionSpec {
                    action: ActionKind::Partial,
                    keep_last: Some(4),
                    keep_domain: false,
                    reversible: false,
                },
            ),
            (
                "email".to_string(),
                ActionSpec {
                    action: ActionKind::Partial,
                    keep_last: None,
                    keep_domain: true,
                    reversible: false,
                },
            ),
            (
                "ssn".to_string(),
                ActionSpec {
                    action: ActionKind::Hash,
                    ..Default::default()
                },
            ),
            (
                "ipv4".to_string(),
                ActionSpec {
                    action: ActionKind::Drop,
                    ..Default::default()
                },
            ),
        ]
        .into_iter()
        .collect(),
        ..MaskSpec::default()
    };
    let m = Masker::new(&spec, Some(b"k")).unwrap();
    let s = &mut Stats::new();
    assert_eq!(m.mask_str("4111 1111 1111 1111", s), "**** **** **** 1111");
    assert_eq!(m.mask_str("bob@example.com", s), "***@example.com");
    assert_eq!(
        m.mask_str("ｂｏｂ＠ｅｘａｍｐｌｅ．ｃｏｍ", s),
        "***＠ｅｘａｍｐｌｅ．ｃｏｍ"
    );
    let a = m.mask_str("123-45-6789", s).into_owned();
    let b = m.mask_str("id 123-45-6789", s).into_owned();
    assert!(
        a.starts_with("[SSN:") && b.ends_with(&a),
        "stable tokens: {a} {b}"
    );
    assert_ne!(m.mask_str("123-45-6780", s), a);
    assert_eq!(m.mask_str("from 10.1.2.3!", s), "from !");
    assert_eq!(s["card"], 1);
    assert_eq!(s["ssn"], 3);
    // Another key, other tokens.
    let other = Masker::new(&spec, Some(b"other")).unwrap();
    assert_ne!(other.mask_str("123-45-6789", s), a);
}

#[test]
fn json_keys_paths_and_detectors() {
    let spec = MaskSpec {
        fields: vec![
            FieldRule {
                keys: vec!["Password".into(), "api_key".into()],
                ..Default::default()
            },
            FieldRule {
                paths: vec!["$.users[*].ssn".into()],
                action: ActionKind::Drop,
                ..Default::default()
            },
        ],
        ..MaskSpec::default()
    };
    let m = Masker::new(&spec, Some(b"k")).unwrap();
    let mut v = json!({
        "users": [
            {"name": "Ann", "email": "ann@example.com", "ssn": "123-45-6789", "card": 4111111111111111u64},
            {"name": "Bo", "password": "x", "nested": {"API_KEY": {"deep": 1}}}
        ],
        "note": "call +1 415 555 0132",
        "count": 3
    });
    let mut s = Stats::new();
    m.mask_json(&mut v, &mut s);
    assert_eq!(v["users"][0]["email"], "[EMAIL]");
    assert_eq!(v["users"][0]["ssn"], serde_json::Value::Null);
    assert_eq!(v["users"][0]["card"], "[CARD]");
    assert_eq!(v["users"][1]["password"], "[PASSWORD]");
    assert_eq!(v["users"][1]["nested"]["API_KEY"], "[API_KEY]");
    assert_eq!(v["note"], "call [PHONE]");
    assert_eq!(v["count"], 3);
    assert_eq!(v["users"][0]["name"], "Ann");
}

#[test]
fn json_bytes_and_errors() {
    let m = masker();
    let out = m
        .mask_json_bytes(br#"{"a":"x@y.io"}"#, &mut Stats::new())
        .unwrap();
    assert_eq!(out, br#"{"a":"[EMAIL]"}"#);
    assert!(matches!(
        m.mask_json_bytes(b"{nope", &mut Stats::new()),
        Err(MaskError::InvalidJson(_))
    ));
}

#[test]
fn columns() {
    let spec = MaskSpec {
        fields: vec![
            FieldRule {
                columns: vec!["users.ssn".into()],
                action: ActionKind::Drop,
                ..Default::default()
            },
            FieldRule {
                columns: vec!["secret_note".into()],
                ..Default::default()
            },
        ],
        ..MaskSpec::default()
    };
    let m = Masker::new(&spec, Some(b"k")).unwrap();
    let s = &mut Stats::new();
    assert_eq!(
        m.mask_cell("ssn", Some("users"), "123-45-6789", s),
        Cell::Null
    );
    assert_eq!(
        m.mask_cell("SECRET_NOTE", None, "x", s),
        Cell::Replace("[SECRET_NOTE]".into())
    );
    assert_eq!(
        m.mask_cell("email", None, "a@b.io", s),
        Cell::Replace("[EMAIL]".into())
    );
    assert_eq!(m.mask_cell("name", None, "Ann", s), Cell::Keep);
}

#[test]
fn custom_detectors_and_words() {
    let spec = MaskSpec {
        detectors: vec!["email".into()],
        custom: vec![CustomDetector {
            name: "employee_id".into(),
            regex: r"\bEMP-\d{6}\b".into(),
            action: ActionKind::Redact,
            keep_last: None,
        }],
        words: vec![WordList {
            name: "codename".into(),
            words: vec!["Bluebird".into()],
            action: ActionKind::Redact,
        }],
        ..MaskSpec::default()
    };
    let m = Masker::new(&spec, None).unwrap();
    assert_eq!(
        m.mask_str(
            "EMP-123456 on bluebird, not bluebirds; 4111111111111111",
            &mut Stats::new()
        ),
        "[EMPLOYEE_ID] on [CODENAME], not bluebirds; 4111111111111111"
    );
}

#[test]
fn spec_errors_name_the_key() {
    let bad = |spec: MaskSpec| Masker::new(&spec, None).unwrap_err().to_string();
    assert!(
        bad(MaskSpec {
            detectors: vec!["emial".into()],
            ..MaskSpec::default()
        })
        .contains("`detectors`")
    );
    let e = bad(MaskSpec {
        custom: vec![CustomDetector {
            name: "x".into(),
            regex: "(".into(),
            action: ActionKind::Redact,
            keep_last: None,
        }],
        ..MaskSpec::default()
    });
    assert!(e.contains("custom[0].regex"), "{e}");
    let e = bad(MaskSpec {
        custom: vec![CustomDetector {
            name: "x".into(),
            regex: "a*".into(),
            action: ActionKind::Redact,
            keep_last: None,
        }],
        ..MaskSpec::default()
    });
    assert!(e.contains("empty string"), "{e}");
    let e = bad(MaskSpec {
        fields: vec![FieldRule {
            paths: vec!["users".into()],
            ..Default::default()
        }],
        ..MaskSpec::default()
    });
    assert!(e.contains("fields[0].paths"), "{e}");
}

#[test]
fn json_paths() {
    let p = JsonPath::parse("$.users[*]['ssn']").unwrap();
    use json::Step;
    assert!(p.matches(&[
        Step::Key("users".into()),
        Step::Index(3),
        Step::Key("ssn".into())
    ]));
    assert!(!p.matches(&[Step::Key("users".into()), Step::Key("ssn".into())]));
    assert!(JsonPath::parse("$.a[").is_err());
    assert!(JsonPath::parse("a.b").is_err());
}

proptest! {
    #[test]
    fn masking_never_panics_and_is_idempotent(s in "\\PC{0,200}") {
        let m = masker();
        let once = m.mask_str(&s, &mut Stats::new()).into_owned();
        let twice = m.mask_str(&once, &mut Stats::new()).into_owned();
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn idempotent_on_sensitive_looking_text(
        parts in proptest::collection::vec(prop_oneof![
            Just("4111 1111 1111 1111".to_string()),
            Just("bob@example.com".to_string()),
            Just("+1 415 555 0132".to_string()),
            Just("123-45-6789".to_string()),
            Just("10.0.0.1".to_string()),
            Just("DE89370400440532013000".to_string()),
            "[a-z ]{0,10}",
            "[0-9 -]{0,20}",
        ], 0..8)
    ) {
        let text = parts.join(" ");
        let m = masker();
        let once = m.mask_str(&text, &mut Stats::new()).into_owned();
        prop_assert_eq!(&m.mask_str(&once, &mut Stats::new()).into_owned(), &once);
    }

    #[test]
    fn json_stays_valid(v in arb_json()) {
        let m = masker();
        let bytes = serde_json::to_vec(&v).unwrap();
        let out = m.mask_json_bytes(&bytes, &mut Stats::new()).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(shape(&back), shape(&v));
    }
}

/// Values planted in keys as well as values, at any depth.
fn arb_json_planted() -> impl Strategy<Value = serde_json::Value> {
    let planted = || {
        prop_oneof![
            Just("x@example.org".to_string()),
            Just("4111 1111 1111 1111".to_string()),
            Just("call +49 30 1234567".to_string()),
            "[a-z]{1,6}",
        ]
    };
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(|n| json!(n)),
        Just(json!(4111111111111111u64)),
        planted().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 32, 4, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(planted(), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn no_planted_value_survives_in_json_keys_or_values(v in arb_json_planted()) {
        let m = masker();
        let bytes = serde_json::to_vec(&v).unwrap();
        let out = String::from_utf8(m.mask_json_bytes(&bytes, &mut Stats::new()).unwrap()).unwrap();
        for p in ["x@example.org", "4111 1111 1111 1111", "4111111111111111", "1234567"] {
            prop_assert!(!out.contains(p), "{p} in {out}");
        }
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "\\PC{0,40}".prop_map(serde_json::Value::String),
        Just(json!("4111111111111111")),
        Just(json!("x@example.org")),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The structure of a document: objects keep their keys, arrays their
/// lengths; leaves are erased (masking may change a leaf's type).
fn shape(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(shape).collect()),
        serde_json::Value::Object(o) => {
            serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        _ => serde_json::Value::Null,
    }
}

#[test]
fn rules_are_chosen_per_connection_and_group() {
    let specs = vec![
        MaskSpec {
            name: Some("ops".into()),
            connections: vec!["db".into()],
            groups: vec!["ops".into()],
            detectors: vec!["email".into()],
            ..MaskSpec::default()
        },
        MaskSpec {
            name: Some("everyone".into()),
            ..MaskSpec::default()
        },
    ];
    let rs = RuleSet::new(&specs, None).unwrap();
    assert_eq!(rs.select("db", &["ops".into()]).unwrap().name, "ops");
    assert_eq!(rs.select("db", &["dev".into()]).unwrap().name, "everyone");
    assert_eq!(rs.select("api", &["ops".into()]).unwrap().name, "everyone");
    let e = RuleSet::new(
        &[MaskSpec {
            detectors: vec!["nope".into()],
            ..MaskSpec::default()
        }],
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("rules[0].detectors"), "{e}");
    assert!(RuleSet::new(&[], None).unwrap().select("x", &[]).is_none());
}

#[test]
fn fuzz_regression_ipv6_neighbours() {
    let m = masker();
    for s in [
        ".111--91\u{1}\0\u{13}}\0\0\0\0\0\x30::c-3::cc2:[ſ",
        "10.1.1.1 313-33 31313 3 313-33 31313 3q?3",
    ] {
        let once = m.mask_str(s, &mut Stats::new()).into_owned();
        let twice = m.mask_str(&once, &mut Stats::new()).into_owned();
        assert_eq!(once, twice);
    }
}

#[test]
fn fuzz_regression_overlapping_losers_search_again() {
    let m = masker();
    for s in [
        "3-1)\0\0\0$xoxb-1234567890ab:1::E",
        "xoxb-1234567890ab:1::E",
    ] {
        let once = m.mask_str(s, &mut Stats::new()).into_owned();
        let twice = m.mask_str(&once, &mut Stats::new()).into_owned();
        assert_eq!(once, twice, "{s:?}");
    }
}

#[test]
fn reversible_tokens_round_trip_through_the_vault() {
    let spec = MaskSpec {
        actions: [(
            "email".to_string(),
            ActionSpec {
                action: ActionKind::Hash,
                reversible: true,
                ..Default::default()
            },
        )]
        .into_iter()
        .collect(),
        ..MaskSpec::default()
    };
    let m = Masker::new(&spec, Some(b"k")).unwrap();
    assert!(m.has_reversible());
    let mut vault = Vault::default();
    let masked = m
        .mask_str_in(
            "owner: oneil@example.com",
            &mut Stats::new(),
            &mut Some(&mut vault),
        )
        .into_owned();
    let token = masked.strip_prefix("owner: ").unwrap().to_string();
    assert!(token.starts_with("[EMAIL:"), "{token}");
    let json = format!(r#"{{"email":"{token}"}}"#);
    let back = vault.reverse(&json, |o| format!("<{o}>")).unwrap();
    assert_eq!(
        back, r#"{"email":"<oneil@example.com>"}"#,
        "escaped by the caller's rule"
    );
    // Unknown or forged tokens stay as they are.
    assert_eq!(
        vault.reverse("[EMAIL:0000000000000000]", str::to_string),
        None
    );
    // Without a vault nothing is remembered, and non-reversible hashes are not.
    let plain = Masker::new(
        &MaskSpec {
            actions: [(
                "email".to_string(),
                ActionSpec {
                    action: ActionKind::Hash,
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            ..MaskSpec::default()
        },
        Some(b"k"),
    )
    .unwrap();
    let mut v2 = Vault::default();
    plain.mask_str_in("a@example.com", &mut Stats::new(), &mut Some(&mut v2));
    assert!(v2.is_empty());
}

// The one-pass JSON path (`stream`) against the parse-walk-serialise
// path: the same document (as JSON values) and the same counts, for
// maskers with key rules, word lists and drop actions, over documents
// with planted values in keys, values, numbers and escapes.
fn both_paths(m: &Masker, body: &[u8]) -> (serde_json::Value, Stats, serde_json::Value, Stats) {
    let (mut fast_stats, mut slow_stats) = (Stats::new(), Stats::new());
    let fast = m.mask_json_bytes(body, &mut fast_stats).unwrap();
    let slow = m
        .mask_json_bytes_walked(body, &mut slow_stats, &mut None)
        .unwrap();
    (
        serde_json::from_slice(&fast).unwrap(),
        fast_stats,
        serde_json::from_slice(&slow).unwrap(),
        slow_stats,
    )
}

/// Equal JSON, numbers compared as what they denote: the walk re-writes a
/// float through serde_json's (not exactly round-tripping) parser, where
/// the one-pass path keeps the number as the target wrote it.
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => match (x.as_f64(), y.as_f64()) {
            _ if x == y => true,
            (Some(p), Some(q)) => (p - q).abs() <= 1e-12 * p.abs().max(q.abs()),
            _ => false,
        },
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| same(p, q)))
        }
        _ => a == b,
    }
}

fn maskers() -> Vec<Masker> {
    let keyed = MaskSpec {
        fields: vec![
            FieldRule {
                keys: vec!["Password".into(), "x@example.org".into()],
                ..Default::default()
            },
            FieldRule {
                keys: vec!["token".into()],
                action: ActionKind::Drop,
                ..Default::default()
            },
        ],
        custom: vec![CustomDetector {
            name: "employee_id".into(),
            regex: r"\bEMP-\d{6}\b".into(),
            action: ActionKind::Redact,
            keep_last: None,
        }],
        words: vec![WordList {
            name: "codename".into(),
            words: vec!["Bluebird".into()],
            action: ActionKind::Redact,
        }],
        ..MaskSpec::default()
    };
    vec![masker(), Masker::new(&keyed, Some(b"k")).unwrap()]
}

#[test]
fn the_one_pass_path_agrees_on_hand_made_documents() {
    let docs: &[&str] = &[
        r#"{"a":"mail x@example.org now","b":"plain","n":4111111111111111,"f":1.5e3}"#,
        r#"["x\u0040example.org", "4111\u00201111 1111 1111", "caf\u00e9", "a\"b"]"#,
        r#"{"password":"hunter2","Password":{"deep":1},"token":"t","list":[true,null,1]}"#,
        r#"{"password":12345678901,"token":{"a":1},"ok":false,"PASSWORD":null}"#,
        r#"{"x@example.org":{"y":"z"},"k":"v"}"#,
        r#"  "top-level x@example.org"  "#,
        r#"{"a": [ 1, -2.5e-3, 1e300, 0.30000000000000004, 12345678, "4111 1111 1111 1111" ] }"#,
        r#"{"pwd":"password=secret123","note":"call +49 30 1234567"}"#,
        r#"{"d":{"d":{"d":{"password":"x","e":"x@example.org"}}}}"#,
    ];
    for m in maskers() {
        for d in docs {
            let (fast, fs, slow, ss) = both_paths(&m, d.as_bytes());
            assert!(same(&fast, &slow), "{fast} != {slow} for {d}");
            assert_eq!(fs, ss, "{d}");
        }
    }
}

#[test]
fn the_one_pass_path_is_not_taken_where_it_could_differ() {
    // A path rule keeps the walk.
    let paths = MaskSpec {
        fields: vec![FieldRule {
            paths: vec!["$.a".into()],
            ..Default::default()
        }],
        ..MaskSpec::default()
    };
    assert!(!Masker::new(&paths, None).unwrap().streamable);
    assert!(masker().streamable);
    // Refusals are the same: invalid JSON, and a number out of range.
    let m = masker();
    for bad in [&b"{\"a\":"[..], b"[1,]", b"[1e400]", b"\"\\ud800x\""] {
        let fast = m.mask_json_bytes(bad, &mut Stats::new()).is_err();
        let slow = m
            .mask_json_bytes_walked(bad, &mut Stats::new(), &mut None)
            .is_err();
        assert_eq!(fast, slow, "{}", String::from_utf8_lossy(bad));
    }
}

fn arb_json_mixed() -> impl Strategy<Value = serde_json::Value> {
    let text = || {
        prop_oneof![
            Just("x@example.org".to_string()),
            Just("4111 1111 1111 1111".to_string()),
            Just("call +49 30 1234567".to_string()),
            Just("password".to_string()),
            Just("token".to_string()),
            Just("key=abcdef".to_string()),
            Just("the Bluebird file, EMP-123456".to_string()),
            // Other spellings, which the one-pass path looks for only
            // where its scan saw a byte one starts with.
            Just("ada%40example.com".to_string()),
            Just("mailto:ada&#64;example.com".to_string()),
            Just("ada&commat;example.com".to_string()),
            Just("4111\u{a0}1111\u{a0}1111\u{a0}1111".to_string()),
            Just("100% & more".to_string()),
            "\\PC{0,12}",
        ]
    };
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        Just(json!(4111111111111111u64)),
        text().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 48, 5, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(text(), inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn the_one_pass_path_agrees_with_the_walk(v in arb_json_mixed(), pretty in any::<bool>()) {
        let body = if pretty {
            serde_json::to_vec_pretty(&v).unwrap()
        } else {
            serde_json::to_vec(&v).unwrap()
        };
        for m in maskers() {
            let (fast, fs, slow, ss) = both_paths(&m, &body);
            prop_assert!(same(&fast, &slow), "{fast} != {slow} for {}", String::from_utf8_lossy(&body));
            prop_assert_eq!(fs, ss);
        }
    }
}

// Found by review (2026-12-02): each stays a regression test.
#[test]
fn a_number_the_walk_rewrites_is_never_passed_as_the_target_wrote_it() {
    // f64 rounds these: the walk writes the number it read, so the card's
    // digits are gone; the one-pass path must not copy them through.
    let m = masker();
    let doc = br#"{"card_number": 4111111111111111.9999, "ratio": 1.4111111111111111, "amex": 378282246310005.9999}"#;
    let out = String::from_utf8(m.mask_json_bytes(doc, &mut Stats::new()).unwrap()).unwrap();
    for raw in [
        "4111111111111111.9999",
        "1.4111111111111111",
        "378282246310005.9999",
    ] {
        assert!(!out.contains(raw), "{raw} in {out}");
    }
    let (fast, _, slow, _) = both_paths(&m, doc);
    assert!(same(&fast, &slow));
}

#[test]
fn masking_time_grows_linearly_with_patterns_that_span_tokens() {
    // An unterminated private-key header in every string: a scan of the
    // whole body with a pattern that can cross quotes was quadratic.
    let m = masker();
    let doc = |n: usize| {
        serde_json::to_vec(&vec!["-----BEGIN PRIVATE KEY----- ada@example.com"; n]).unwrap()
    };
    let time = |n: usize| {
        let d = doc(n);
        let t = std::time::Instant::now();
        let out = m.mask_json_bytes(&d, &mut Stats::new()).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("ada@example.com"));
        t.elapsed()
    };
    time(500);
    grows_linearly(time, "private-key headers");
}

/// `time(n)` for 2,000 and 8,000 units, the least of three runs each (one
/// run can be slowed by anything else the machine does: it failed once
/// under a parallel suite), is linear: 4x the input in well under 16x the
/// time (quadratic). A ratio, never a time.
fn grows_linearly(time: impl Fn(usize) -> std::time::Duration, what: &str) {
    let least = |n: usize| (0..3).map(|_| time(n)).min().unwrap_or_default();
    let (small, large) = (least(2_000), least(8_000));
    assert!(
        large < small * 10,
        "{what}: {small:?} for 2,000, {large:?} for 8,000"
    );
}

/// Chains of values that each start inside the one before (joined into
/// one finding), and digit groups with no space for a phone number's
/// context to read back through, cost time linear in the text: the first
/// join restarted its search at every step (a review timed 20 KB of
/// `4242 ` at 1.9 s), and the context was read back to the text's start.
#[test]
fn joined_chains_and_long_runs_cost_linear_time() {
    let m = masker();
    // Third review: patterns without a bound stepped group by group
    // through their own finding, and were read to the text's end on every
    // pass of a chain after them.
    let unbounded = "password=x@y.co/eyJabcde.eyJabcde.x/glpat-aaaaaaaaaaaaaaaaaaaa-/xoxb-aaaaaaaaaa-/sk_live_aaaaaaaaaaaaaaaa/ ";
    for (head, unit) in [
        ("", "4242 "),
        ("", "1234-"),
        ("", "4111-1111-1111-1111-"),
        ("", "eyJaaaaa.eyJbbbbb.x-"),
        ("", "pwd=a-"),
        ("", "glpat-aaaaaaaaaaaaaaaaaaaa-"),
        ("", "xoxb-aaaaaaaaaa-"),
        // Without word boundaries (2026-12-06): an IBAN's shape at every
        // fourth character, each refused, and one glued to another.
        ("", "DE89"),
        ("", "ab12DE89370400440532013000"),
        ("", "DE89370400440532013000x"),
        ("", "xpassword="),
        ("", "xAKIA"),
        ("password=", "4111 111 111 119 22 "),
        (unbounded, "4111 111 111 119 22 "),
    ] {
        let time = |n: usize| {
            let text = format!("{head}{}", unit.repeat(n));
            let t = std::time::Instant::now();
            let masked = m.mask_str(&text, &mut Stats::new()).into_owned();
            assert!(masked.len() <= text.len() * 2);
            t.elapsed()
        };
        time(200);
        grows_linearly(time, &format!("{head:?} {unit:?}"));
    }
}

/// The second review of the joins (2026-12-05): decoys inside a finding
/// that hid a value starting inside it too, values longer than the first
/// join's window, an address inside a phone number that hid a card after
/// it, IBANs in national layouts, and phone numbers after a chosen IBAN.
#[test]
fn values_starting_inside_a_finding_are_masked_with_it() {
    let m = masker();
    let key_body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC".repeat(14);
    let key = format!("-----BEGIN PRIVATE KEY-----\n{key_body}\n-----END PRIVATE KEY-----");
    let jwt_payload = "eyJzdWIiOiJhZGEiLCJuYW1lIjoiQWRhIExvdmVsYWNlIn0".repeat(8);
    for (text, secret) in [
        ("password=4111-1111-1111-1111-5555 5555 5555 4444", "5555"),
        (
            "eyJaaaaa.eyJbbbbb.4111-1111-1111-1111-5555 5555 5555 4444",
            "5555",
        ),
        ("password=111-11-1111-123 45 6789", "6789"),
        ("QQ37 4111 1111 1111 1111 5555 5555 5555 4444", "5555"),
        ("01.53.59.90.41 11 1111 1111 1111", "1111"),
        ("+33.1.53.59.90.41 11 1111 1111 1111", "1111"),
        ("QQ26 ZZZZ ZZZZ 0049 30 1234567", "1234567"),
        ("QQ51 ZZZZ ZZZZ ZZZZ 030 1234567", "1234567"),
        ("iban IT60 X 05428 11101 000000123456", "05428"),
        ("iban FR76 30006 00001 12345678901 89", "12345678901"),
        ("iban ES91 2100 0418 45 0200051332", "0200051332"),
        ("iban GB82 WEST 123456 98765432", "98765432"),
        ("iban DE89 3704 0044 0532 013 000", "0532"),
    ] {
        let masked = m.mask_str(text, &mut Stats::new()).into_owned();
        assert!(!masked.contains(secret), "{text}: {masked}");
    }
    for (text, secret) in [
        (
            format!("-----BEGIN PRIVATE KEY-----x-----END PRIVATE KEY{key}"),
            key_body[..40].to_string(),
        ),
        (
            format!("eyJaaaaa.eyJbbbbb.x-eyJhbGciOiJIUzI1NiJ9.{jwt_payload}.c2lnbmF0dXJl"),
            jwt_payload[..40].to_string(),
        ),
    ] {
        let masked = m.mask_str(&text, &mut Stats::new()).into_owned();
        assert!(!masked.contains(&secret), "{masked}");
    }
    // Third review: registry countries the crate lacks, with a bank code
    // of letters; a decoy SSN at a phone number's start and a real one
    // inside it; two phone patterns' numbers overlapping.
    for (text, secret) in [
        ("acct PK36 SCBL 0000 0011 2345 6702 ok", "6702"),
        ("acct HN88 CABF 0000 0000 0002 5000 5469 ok", "5469"),
        ("ssn: 030 12 3456 412 34 5678.", "5678"),
        ("030 12 3456 412.34.5678", "5678"),
        ("0044 0049 30 56789567", "56789567"),
        ("+44 0049 30 56789567", "56789567"),
        ("0044 0049 151 23456789", "23456789"),
    ] {
        let masked = m.mask_str(text, &mut Stats::new()).into_owned();
        assert!(!masked.contains(secret), "{text}: {masked}");
    }
    // A joined finding is redacted whole under a partial action, which
    // would show the other value's end.
    let partial = |keep_last, keep_domain| ActionSpec {
        action: ActionKind::Partial,
        keep_last,
        keep_domain,
        reversible: false,
    };
    let spec = MaskSpec {
        actions: [
            ("email".to_string(), partial(None, true)),
            ("ssn".to_string(), partial(Some(4), false)),
        ]
        .into_iter()
        .collect(),
        ..MaskSpec::default()
    };
    let pm = Masker::new(&spec, None).unwrap();
    for (text, secret) in [
        ("x@y.de 89 3704 0044 0532 0130 00", "0130"),
        ("123-45-4111 1111 1111 1111", "1111"),
    ] {
        let masked = pm.mask_str(text, &mut Stats::new()).into_owned();
        assert!(!masked.contains(secret), "{text}: {masked}");
        assert_eq!(pm.mask_str(&masked, &mut Stats::new()), masked);
    }
    // Prose the registry's permissive formats hold is all letters.
    for text in [
        "payable in 67 days from the date of invoice",
        "delivered on 17 june from our main site",
    ] {
        assert!(m.find(text).is_empty(), "{text}: {:?}", m.find(text));
    }
}

#[test]
fn nesting_the_walk_refuses_is_refused_by_either_path() {
    let m = masker();
    let deep = |n: usize| format!("{}\"x@example.org\"{}", "[".repeat(n), "]".repeat(n));
    assert!(
        m.mask_json_bytes(deep(100).as_bytes(), &mut Stats::new())
            .is_ok()
    );
    for n in [128, 200] {
        let d = deep(n);
        let fast = m.mask_json_bytes(d.as_bytes(), &mut Stats::new()).is_err();
        let slow = m
            .mask_json_bytes_walked(d.as_bytes(), &mut Stats::new(), &mut None)
            .is_err();
        assert_eq!(fast, slow, "depth {n}");
        assert!(fast, "depth {n}");
    }
}

#[test]
fn a_custom_pattern_that_matches_nothing_in_context_does_not_hang() {
    let spec = MaskSpec {
        custom: vec![CustomDetector {
            name: "odd".into(),
            regex: r"x?\b".into(),
            action: ActionKind::Redact,
            keep_last: None,
        }],
        ..MaskSpec::default()
    };
    let m = Masker::new(&spec, None).unwrap();
    assert_eq!(m.mask_str("abc def", &mut Stats::new()), "abc def");
    assert!(m.mask_str("x marks", &mut Stats::new()).contains("[ODD]"));
    let out = m
        .mask_json_bytes(
            br#"{"a":"abc def","b":"ada@example.com"}"#,
            &mut Stats::new(),
        )
        .unwrap();
    assert!(!String::from_utf8(out).unwrap().contains("ada@example.com"));
}

/// Tokens a review found the first look ([`crate::prefilter`]) let through
/// unmasked: masked in text, in JSON by the walk and in one pass.
#[test]
fn fine_grained_github_tokens_are_masked_everywhere() {
    let m = masker();
    for tok in [
        "github_pat_bbbbbbbbbbbbbbbbbbbbbb",
        "github_pat_11ZZbcdfjkmnqrtvwyzBCDFJKMN",
        "github_pat_aaA_0Aa0_AaAa00aAAa0__",
    ] {
        let text = format!("token {tok} here");
        assert!(!mask(&text).contains(tok), "{text}");
        let doc = serde_json::json!({ "t": tok, "note": text });
        let bytes = serde_json::to_vec(&doc).unwrap();
        let out = m.mask_json_bytes(&bytes, &mut Stats::new()).unwrap();
        assert!(!String::from_utf8_lossy(&out).contains(tok), "{tok}");
        let mut v = doc.clone();
        m.mask_json(&mut v, &mut Stats::new());
        assert!(!v.to_string().contains(tok), "{tok}");
    }
}

// The one-pass path checks JSON's grammar itself (2026-12-03). Whatever it
// does, the caller sees what the walk (serde_json) would decide: a body
// the pass masks is one the walk accepts, masked alike; a body it refuses
// is one the walk refuses.
fn agrees_with_the_walk(m: &Masker, body: &[u8]) -> Result<(), String> {
    let shown = || String::from_utf8_lossy(body).into_owned();
    let walked = m.mask_json_bytes_walked(body, &mut Stats::new(), &mut None);
    let mut stats = Stats::new();
    match crate::stream::mask(m, body, &mut stats, &mut None) {
        None => Ok(()),
        Some(Err(e)) if walked.is_ok() => {
            Err(format!("{:?}: refused ({e}), the walk accepts", shown()))
        }
        Some(Err(_)) => Ok(()),
        Some(Ok(out)) => {
            let Ok(slow) = walked else {
                return Err(format!("{:?}: masked, the walk refuses", shown()));
            };
            let fast: serde_json::Value = serde_json::from_slice(&out)
                .map_err(|e| format!("{:?}: wrote invalid JSON: {e}", shown()))?;
            let slow: serde_json::Value =
                serde_json::from_slice(&slow).map_err(|e| e.to_string())?;
            if !same(&fast, &slow) {
                return Err(format!("{:?}: {fast} != {slow}", shown()));
            }
            Ok(())
        }
    }
}

#[test]
fn the_one_pass_grammar_accepts_and_refuses_as_serde_json_does() {
    let cases: &[&[u8]] = &[
        b"",
        b" ",
        b"{}",
        b"[]",
        b"[1,]",
        b"{\"a\":1,}",
        b"{,}",
        b"[,1]",
        b"01",
        b"-",
        b"-0",
        b"-01",
        b"1.",
        b".5",
        b"1e",
        b"1e+",
        b"1E-5",
        b"1.5e3x",
        b"tru",
        b"nul",
        b"truex",
        b"true false",
        b"\"\\x\"",
        b"\"\\u12\"",
        b"\"\\u12g4\"",
        b"\"\\uD800\"",
        b"\"a\x01\"",
        b"\"a\x7f\"",
        b"\"a\x1f\"",
        b"{\"a\" 1}",
        b"{\"a\":}",
        b"{1:2}",
        b"[1 2]",
        b"\"abc",
        b"[\"a\"]]",
        b"{}{}",
        b"\xef\xbb\xbf{}",
        b"[1]\n",
        b"\t[1]\r\n",
        b"[1]\x0b",
        b"{\"a\":[}",
        b"[{]}",
        b"[}",
        b"{]",
        b"{\"a\"}",
        b"{\"a\":1:2}",
        b"[\"x@example.org\",]",
        b"{\"x@example.org\"}",
        b"[-]",
        b"[1.5.3]",
        b"[0x10]",
        b"[+1]",
        b"[Infinity]",
        b"[NaN]",
        b"'a'",
        b"[\"\\/\"]",
        b"[\"\xff\"]",
        b"[\"\xc3\xa9\"]",
        b"{\"a\":1}\x00",
        b"[\"a\" ,\t1 ]",
    ];
    for m in maskers() {
        for body in cases {
            agrees_with_the_walk(&m, body).unwrap();
        }
    }
    // Not vacuous: the pass itself refuses what is not JSON, in
    // serde_json's words, and masks what is.
    let m = masker();
    // The comma and colon read straight after a member (the pass's fast
    // path) take nothing the grammar refuses: a trailing comma in either
    // container, a comma after the top value, a colon after a value.
    for bad in [
        &b"[1,]"[..],
        b"{\"a\" 1}",
        b"\"a\x01\"",
        b"-01",
        b"[1]x",
        b"{\"a\":1,}",
        b"{\"a\":\"b\",}",
        b"[{},]",
        b"[\"a\",]",
        b"1,2",
        b"\"a\",",
        b"{\"a\":1:2}",
        b"{\"a\"::1}",
        b"[1,,2]",
    ] {
        let err = crate::stream::mask(&m, bad, &mut Stats::new(), &mut None);
        assert!(
            matches!(err, Some(Err(MaskError::InvalidJson(_)))),
            "{bad:?}"
        );
    }
}

/// A document with `edits` applied: each deletes, inserts or replaces a
/// byte at a position (taken modulo the length), the inserted bytes drawn
/// from JSON's own structure, escapes, control and non-ASCII bytes.
fn mutate(mut doc: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    const BYTES: &[u8] = b"\"\\{}[]:,-+.eE0123456789 \t\n\x01\x1f\x7fu/tfnrbx@\xc3\xa9\xff";
    for &(at, kind, pick) in edits {
        let at = at % (doc.len() + 1);
        let byte = BYTES[usize::from(pick) % BYTES.len()];
        match kind % 3 {
            0 if at < doc.len() => {
                doc.remove(at);
            }
            1 => doc.insert(at, byte),
            _ if at < doc.len() => doc[at] = byte,
            _ => doc.push(byte),
        }
    }
    doc
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    #[test]
    fn the_one_pass_path_agrees_with_the_walk_on_mutated_documents(
        v in arb_json_mixed(),
        pretty in any::<bool>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let body = if pretty {
            serde_json::to_vec_pretty(&v).unwrap()
        } else {
            serde_json::to_vec(&v).unwrap()
        };
        let body = mutate(body, &edits);
        for m in maskers() {
            agrees_with_the_walk(&m, &body).map_err(TestCaseError::fail)?;
        }
    }
}

// Found by review (2026-12-03): serde_json keeps the last of repeated
// keys, so the walk masks and counts only that one; the one-pass path
// counted (and, with reversible tokens, remembered) every copy. It now
// leaves an object that repeats a key to the walk.
#[test]
fn repeated_keys_are_masked_and_counted_as_the_walk_does() {
    let many: String = (0..40)
        .map(|i| format!("\"k{i}\":\"x{i}@example.org\","))
        .collect();
    let docs = [
        r#"{"a":"x@example.org","a":"1"}"#.to_string(),
        r#"{"password":"a","password":"b"}"#.to_string(),
        r#"{"k":1,"\u006b":"x@example.org"}"#.to_string(),
        r#"[{"a":1},{"a":"x@example.org"},{"b":{"a":2},"a":3}]"#.to_string(),
        format!("{{{many}\"k3\":\"4111 1111 1111 1111\"}}"),
        format!("{{{many}\"last\":\"x@example.org\"}}"),
    ];
    for m in maskers() {
        for d in &docs {
            let (fast, fs, slow, ss) = both_paths(&m, d.as_bytes());
            assert!(same(&fast, &slow), "{fast} != {slow} for {d}");
            assert_eq!(fs, ss, "{d}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Objects written member by member from a few keys, so keys repeat.
    #[test]
    fn the_one_pass_path_agrees_with_the_walk_on_repeated_keys(
        members in proptest::collection::vec(
            (prop_oneof![Just("a"), Just("password"), Just("x@example.org"), Just("\\u0061")],
             arb_json_mixed()),
            0..24,
        ),
    ) {
        let body = format!(
            "{{{}}}",
            members
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        for m in maskers() {
            let (fast, fs, slow, ss) = both_paths(&m, body.as_bytes());
            prop_assert!(same(&fast, &slow), "{fast} != {slow} for {body}");
            prop_assert_eq!(fs, ss);
        }
    }
}

/// A masker with the key rule `api_key`, and with `paths` the path rule
/// `$.owner.ssn` (which takes every document to the walk).
fn keyed(paths: bool) -> Masker {
    let mut fields = vec![FieldRule {
        keys: vec!["api_key".into()],
        ..FieldRule::default()
    }];
    if paths {
        fields.push(FieldRule {
            paths: vec!["$.owner.ssn".into()],
            ..FieldRule::default()
        });
    }
    let spec = MaskSpec {
        fields,
        ..MaskSpec::default()
    };
    Masker::new(&spec, Some(b"test-key")).unwrap()
}

// An MCP tool answers with `content[].text` holding its result serialised
// beside `structuredContent`: a key rule that saw only the structured
// half passed the secret in the text (review of the HTTP front).
#[test]
fn a_json_document_inside_a_string_is_masked_by_key_rules() {
    let m = keyed(false);
    let bodies = [
        r#"{"content":[{"type":"text","text":"{\"api_key\":\"zz-secret\"}"}]}"#,
        r#"{"text":" [ {\"API_KEY\": \"zz-secret\", \"n\": 1} ] "}"#,
        // Two levels: a document in a string in a document in a string.
        r#"{"text":"{\"inner\":\"{\\\"api_key\\\":\\\"zz-secret\\\"}\"}"}"#,
        // Escaped so that the one-pass path cannot see the brace raw.
        r#"{"text":"\u007b\"api_key\":\"zz-secret\"}"}"#,
        // The top-level value a string.
        r#""{\"api_key\":\"zz-secret\"}""#,
        // Not JSON, yet it names a key: withheld whole.
        r#"{"text":"{'api_key': 'zz-secret'}"}"#,
        // (Code review.) JSON after a prefix, in a Markdown fence, encoded
        // twice, and `name: value` text: each names a key beside its value.
        r#"{"text":"Result:\n{\"api_key\":\"zz-secret\"}"}"#,
        r#"{"text":"```json\n{\"api_key\":\"zz-secret\"}\n```"}"#,
        r#"{"text":"\"{\\\"api_key\\\":\\\"zz-secret\\\"}\""}"#,
        r#"{"text":"api_key: zz-secret"}"#,
        // (MCP re-review.) A CSV table, XML, prose.
        r#"{"text":"name,api_key\nAda,zz-secret"}"#,
        r#"{"text":"<row><api_key>zz-secret</api_key></row>"}"#,
        r#"{"text":"The api_key is zz-secret."}"#,
        // A key given twice parses as its last value; the text held the
        // first.
        r#"{"text":"{\"api_key\":\"zz-secret\",\"api_key\":null}"}"#,
    ];
    for body in bodies {
        let out = m
            .mask_json_bytes(body.as_bytes(), &mut Stats::new())
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("zz-secret"), "{body} -> {out}");
        let walked = m
            .mask_json_bytes_walked(body.as_bytes(), &mut Stats::new(), &mut None)
            .unwrap();
        assert_eq!(out.as_bytes(), &walked[..], "{body}: both paths agree");
        let mut v: serde_json::Value = serde_json::from_str(body).unwrap();
        m.mask_json(&mut v, &mut Stats::new());
        assert!(!v.to_string().contains("zz-secret"), "{body} -> {v}");
    }
    // Path rules are rooted at the embedded document's own `$`.
    let out = keyed(true)
        .mask_json_bytes(
            br#"{"text":"{\"owner\":{\"ssn\":\"zz-secret\"}}"}"#,
            &mut Stats::new(),
        )
        .unwrap();
    assert!(!String::from_utf8(out).unwrap().contains("zz-secret"));
    // The embedded document stays a string holding JSON.
    let out = m
        .mask_json_bytes(
            br#"{"text":"{\"api_key\":\"zz-secret\",\"n\":1}"}"#,
            &mut Stats::new(),
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let inner: serde_json::Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
    assert_eq!(inner, json!({"api_key": "[API_KEY]", "n": 1}));
    // Nothing to mask inside: the string is left as the target wrote it.
    let plain = br#"{"text":"[1, 2,  3]","x":"{not json}"}"#;
    assert_eq!(m.mask_json_bytes(plain, &mut Stats::new()).unwrap(), plain);
}

#[test]
fn strings_that_open_no_document_keep_the_one_pass_path() {
    let m = keyed(false);
    let body = br#"{"a":"plain","b":"x{\"other\":1}","api_key":"zz-secret"}"#;
    let done = stream::mask(&m, body, &mut Stats::new(), &mut None);
    let out = done.expect("the one-pass path").unwrap();
    assert!(!String::from_utf8(out).unwrap().contains("zz-secret"));
    // Text naming a rule's key beside a value goes to the walk, which
    // withholds it.
    let keyed_text = br#"{"b":"x{\"api_key\":1}"}"#;
    assert!(stream::mask(&m, keyed_text, &mut Stats::new(), &mut None).is_none());
    let embedded = br#"{"a":"{\"api_key\":1}"}"#;
    assert!(stream::mask(&m, embedded, &mut Stats::new(), &mut None).is_none());
    // Without key rules a brace-led string is only text: no fallback.
    assert!(stream::mask(&masker(), embedded, &mut Stats::new(), &mut None).is_some());
}

#[test]
fn embedded_documents_nested_past_the_bound_are_withheld() {
    let m = keyed(false);
    // Each level: a document whose one string holds the next level, every
    // level as deep as serde_json reads (the worst the stack can see).
    let mut doc = r#"{"api_key":"zz-secret"}"#.to_string();
    for _ in 0..=json::MAX_EMBEDDED + 2 {
        let s = serde_json::to_string(&doc).unwrap();
        doc = format!("{}{s}{}", "[".repeat(120), "]".repeat(120));
    }
    let out = m
        .mask_json_bytes(doc.as_bytes(), &mut Stats::new())
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("zz-secret"), "withheld, not passed");
    assert!(out.contains("[EMBEDDED_JSON]"), "{out}");
}

#[test]
fn a_key_is_named_as_a_whole_word() {
    let m = keyed(false);
    for text in [
        "<API_KEY>x</API_KEY>",
        "api_key: x",
        "{'Api_Key': 1}",
        "api_key",
    ] {
        assert!(m.names_a_key(text), "{text}");
    }
    for text in ["x_api_key: 1", "api_keys", "no key here"] {
        assert!(!m.names_a_key(text), "{text}");
    }
    assert!(!masker().names_a_key("api_key"), "no key rules, no names");
}

#[test]
fn a_tables_keyed_column_is_masked_in_every_row() {
    // Review: `[["name","api_key"],["Ada","zz-secret"]]` withheld the
    // header's mention of the key and passed the value in the next row.
    let m = keyed(false);
    for body in [
        br#"[["name","api_key"],["Ada","zz-secret"],["Bo",null]]"#.as_slice(),
        br#"{"columns":["name","API_KEY"],"rows":[["Ada","zz-secret"]],"n":1}"#,
        br#"{"t":{"fields":["name","api_key"],"data":[["Ada","zz-secret"]]}}"#,
        br#"{"text":"[[\"name\",\"api_key\"],[\"Ada\",\"zz-secret\"]]"}"#,
    ] {
        let out = m.mask_json_bytes(body, &mut Stats::new()).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("zz-secret"), "{out}");
        assert!(out.contains("Ada"), "other columns stay: {out}");
    }
    // A first row that is not a header leaves the rows as they are.
    let plain = br#"[["name","city"],["Ada","api_key"]]"#;
    let out = m.mask_json_bytes(plain, &mut Stats::new()).unwrap();
    assert!(String::from_utf8(out).unwrap().contains("city"));
}

/// A letter or `_` glued to a value does not hide it (2026-12-06):
/// the patterns' word boundaries did, for `'x' || card`, `'SSN' || ssn`,
/// `'IBAN' || iban`, a token after its name, and the secret assigned to an
/// environment variable (`DB_PASSWORD=…`: the `_` is a word character).
/// A digit glued to a card or an SSN makes a longer number, which is not
/// one, and a UUID's digits after a letter stay what they are.
#[test]
fn values_glued_to_letters_are_found() {
    for (text, masked) in [
        ("x4111111111111111", "x[CARD]"),
        ("4111111111111111x", "[CARD]x"),
        ("card_4111-1111-1111-1111_end", "card_[CARD]_end"),
        ("ref4111.1111.1111.1111", "ref[CARD]"),
        ("n4,111,111,111,111,111", "n[CARD]"),
        ("SSN123-45-6789", "SSN[SSN]"),
        ("ssn:123 45 6789x", "ssn:[SSN]x"),
        ("DE89370400440532013000x", "[IBAN]x"),
        ("DE89 3704 0044 0532 0130 00x", "[IBAN]x"),
        ("iban DE89-3704-0044-0532-0130-00_", "iban [IBAN]"),
        // Not found: an IBAN glued after a word, or in lower case with
        // characters glued to its end (docs/security.md says why).
        ("IBANDE89370400440532013000", "IBANDE89370400440532013000"),
        (
            "de89 3704 0044 0532 0130 00x",
            "de89 3704 0044 0532 0130 00x",
        ),
        (
            "KW88zKnhZ1CK6mv9oo6YZZ4l64Z5Dhq",
            "KW88zKnhZ1CK6mv9oo6YZZ4l64Z5Dhq",
        ),
        ("xAKIAIOSFODNN7EXAMPLE", "[AWS_KEY]"),
        ("key_AKIAIOSFODNN7EXAMPLE", "key[AWS_KEY]"),
        ("SECRET_KEY=django-insecure-abc123", "SECRET_KEY=[SECRET]"),
        ("encryption_key=abc123", "encryption_key=[SECRET]"),
        ("SORT_KEY=created_at", "SORT_KEY=created_at"),
        (
            "GPG_KEY=7169605F62C751356D054A26A821E680E5FA6305",
            "GPG_KEY=7169605F62C751356D054A26A821E680E5FA6305",
        ),
        ("page_token=abc123", "page_token=abc123"),
        ("GITHUB_TOKEN=abcdef0123", "GITHUB_TOKEN=[SECRET]"),
        ("DB_PASS=hunter22", "DB_PASS=[SECRET]"),
        (
            r#"log {"DB_PASSWORD":"hunter22"}"#,
            r#"log {"DB_PASSWORD":"[SECRET]"}"#,
        ),
        ("'password' => 'hunter22'", "'password' => '[SECRET]'"),
        ("password := hunter22", "password := [SECRET]"),
        (
            "postgres://admin:hunter22@localhost:5432/db",
            "postgres://admin:[SECRET]@localhost:5432/db",
        ),
        // Second review: no user, an escaped `@` in the password, a
        // scheme glued to a word; URLs with a port and an `@` after it
        // hold no password.
        (
            "redis://:hunter22@cache:6379/0",
            "redis://:[SECRET]@cache:6379/0",
        ),
        (
            "postgres://admin:hunter%40pw@db/app",
            "postgres://admin:[SECRET]@db/app",
        ),
        ("my_db://u:pw1234@h", "my_db://u:[SECRET]@h"),
        (
            "https://example.com:8443/a@b",
            "https://example.com:8443/a@b",
        ),
        ("ssh://git@host:22/x", "ssh://git@host:22/x"),
        // Final review: a `/` in the password, unescaped.
        ("postgres://app:Ab3/xY9+@db", "postgres://app:[SECRET]@db"),
        ("http://[::1]:8080/@user", "http://[::1]:8080/@user"),
        (
            "https://medium.com:443/@author/post",
            "https://medium.com:443/@author/post",
        ),
        // Flags named after secrets, and what the review found taken for
        // values inside words: hashes, ids, test names, upper-case words.
        // A value shaped like a token is a token only when it is one of
        // this masker's (review of the mend: `'[' || upper(pw) || ']'`).
        ("password=[HUNTER]", "password=[SECRET]"),
        ("password=[X:hunter22]", "password=[SECRET]"),
        ("x [DB_PASS:hunter22]", "x [DB_PASS:[SECRET]"),
        ("password=[CARD]", "password=[CARD]"),
        ("is_secret: false", "is_secret: false"),
        ("has_password: true", "has_password: true"),
        (
            "c0248e21d9f1a67179462d772c1068f0d11e19d155b9e57df740cb727b3d1230",
            "c0248e21d9f1a67179462d772c1068f0d11e19d155b9e57df740cb727b3d1230",
        ),
        (
            "942390EE1AD1AFBE45335091E56021DA9A8A903788CD27A120698D121AB38841",
            "942390EE1AD1AFBE45335091E56021DA9A8A903788CD27A120698D121AB38841",
        ),
        (
            "a3eb5c87b20c4f41e0634982fd09e29b1bd29977",
            "a3eb5c87b20c4f41e0634982fd09e29b1bd29977",
        ),
        (
            "13ed4d371a93af821c03f3f130083358",
            "13ed4d371a93af821c03f3f130083358",
        ),
        ("YG9KHEX4KME27C1NBC4T6069MM", "YG9KHEX4KME27C1NBC4T6069MM"),
        ("serialno9386011117947", "serialno9386011117947"),
        ("hostnamebe68539007547034", "hostnamebe68539007547034"),
        (
            "network_test_connectionTimeout",
            "network_test_connectionTimeout",
        ),
        (
            "CENTRALASIAEXPORTPARTNERSHIP",
            "CENTRALASIAEXPORTPARTNERSHIP",
        ),
        (
            "E3B0C44298FC1C149AFBF4C8996FB924ACCA41E4649B934CA495991B7852B855",
            "E3B0C44298FC1C149AFBF4C8996FB924ACCA41E4649B934CA495991B7852B855",
        ),
        ("AKIAIOSFODNN7EXAMPLEX", "[AWS_KEY]X"),
        (
            "tokenghp_abcdefghijklmnopqrstuvwxyz0123456789_",
            "token[GITHUB_TOKEN]_",
        ),
        ("xeyJhbGciOiJ.eyJzdWIiOiJ.sig", "x[JWT]"),
        ("DB_PASSWORD=hunter22", "DB_PASSWORD=[SECRET]"),
        (
            "POSTGRES_PASSWORD: s3cretvalue",
            "POSTGRES_PASSWORD: [SECRET]",
        ),
        ("user_api_key=abcdef123", "user_api_key=[SECRET]"),
        ("GITLAB_API_TOKEN=abcdef123", "GITLAB_API_TOKEN=[SECRET]"),
        // Digits glued: a longer number, not a card or an SSN.
        ("94111111111111111", "94111111111111111"),
        ("41111111111111111111111", "41111111111111111111111"),
        ("x1123-45-6789", "x1123-45-6789"),
        ("x123-45-67890y", "x123-45-67890y"),
        // Ordinary ids and stamps glued to letters.
        (
            "550e8400-e29b-41d4-a716-446655440000",
            "550e8400-e29b-41d4-a716-446655440000",
        ),
        ("ts1733450000000", "ts1733450000000"),
        ("build20261206123456", "build20261206123456"),
        ("password_hash=abc", "password_hash=abc"),
    ] {
        assert_eq!(mask(text), masked, "{text}");
        assert_eq!(mask(masked), masked, "masking {masked} again");
    }
}

/// Masking twice with the `hash` action changes nothing more (second
/// review, 2026-12-06): a token's label read as a secret's name
/// (`[GITHUB_TOKEN:…]` holds `_TOKEN:`) was masked again and lost its
/// `]`, and a URL's password token was hashed again on every pass.
#[test]
fn hashed_tokens_are_not_masked_again() {
    let spec = MaskSpec {
        action: ActionKind::Hash,
        ..MaskSpec::default()
    };
    let m = Masker::new(&spec, Some(b"test-key")).unwrap();
    for text in [
        "AKIAIOSFODNN7EXAMPLE",
        "tok ghp_abcdefghijklmnopqrstuvwxyz0123456789 end",
        "url postgres://admin:hunter22@db/app",
        "GITHUB_TOKEN=abcdef0123 DB_PASS=hunter22",
        "xpassword:+49 30 1234567",
    ] {
        let once = m.mask_str(text, &mut Stats::new()).into_owned();
        assert_ne!(once, text, "{text}");
        let twice = m.mask_str(&once, &mut Stats::new()).into_owned();
        assert_eq!(twice, once, "{text}");
    }
}
