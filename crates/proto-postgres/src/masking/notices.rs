//! Errors, notices, notifications and reported settings carry row data
//! too: `invalid input syntax for type integer: "ada@example.com"`, a
//! constraint's `Key (email)=(…)` or `Failing row contains (…)`, a
//! trigger's RAISE, a NOTIFY payload, a setting a statement set from a
//! row. Every field but those the server fills from fixed forms
//! (severity, code, position, source file) goes through the masker, and
//! under column rules the fields naming a schema, table, column, type or
//! constraint are withheld: a `RAISE … USING` sets them to any text.

use bytes::{BufMut, BytesMut};
use portcullis_mask::{Masker, Stats};

use crate::frame::{Message, take_cstr};
use crate::messages::parse_fields;

/// Fields of ErrorResponse/NoticeResponse that cannot hold data: severity
/// (both forms), code, position, internal position, source file, line and
/// routine. Every other field is masked, whatever its code: PL/pgSQL sets
/// schema, table, column, datatype and constraint to any text (`RAISE …
/// USING COLUMN = v`), a review found, and a later server may add fields.
const NAME_FIELDS: &[u8] = b"SVCPpFLR";

/// Fields a column rule's value may be put in by a `RAISE … USING`:
/// withheld under column rules (a detector cannot know such a value).
const NAMING_FIELDS: &[u8] = b"stcdn";

/// What the masker needs for one message.
pub struct Scope<'a> {
    pub masker: &'a Masker,
    pub stats: &'a mut Stats,
    /// Whether the values a constraint message quotes may be protected by
    /// a column rule (they are then withheld whole: a column rule's value
    /// need not look like anything a detector knows).
    pub withhold_row_values: bool,
    /// Whether the statement answered may touch a protected column: its
    /// messages' text is then withheld (a column rule's value need not
    /// look like anything a detector knows; a RAISE says it unquoted; a
    /// name lookup such as `ssn::regtype` quotes it in a syntax error's
    /// message and context), except the message of errors whose class
    /// says nothing of values.
    pub touches: bool,
}

impl Scope<'_> {
    fn text(&mut self, s: &str) -> Option<String> {
        match self.masker.mask_str(s, self.stats) {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(o) => Some(o),
        }
    }
}

/// An ErrorResponse or NoticeResponse with its data fields masked;
/// `None` if nothing changed.
pub fn fields(msg: &Message, scope: &mut Scope<'_>) -> Option<Message> {
    let fields = parse_fields(&msg.body);
    let class = crate::messages::field(&fields, b'C').unwrap_or("").get(..2);
    let keeps_message = msg.tag == crate::frame::tag::ERROR_RESPONSE
        && class.is_some_and(|c| VALUELESS_CLASSES.contains(&c));
    let mut changed = false;
    let mut out = BytesMut::with_capacity(msg.body.len() + 16);
    for (code, value) in &fields {
        let mut v = value.clone();
        if !NAME_FIELDS.contains(code) {
            if *code == b'D'
                && scope.withhold_row_values
                && let Some(w) = withhold(&v)
            {
                v = w;
            }
            if NAMING_FIELDS.contains(code) && scope.withhold_row_values {
                v = WITHHELD.to_string();
            }
            if scope.touches && !(*code == b'M' && keeps_message) {
                v = WITHHELD.to_string();
            }
            if let Some(m) = scope.text(&v) {
                v = m;
            }
        }
        changed |= v != *value;
        out.put_u8(*code);
        out.put_slice(v.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    changed.then(|| Message::new(msg.tag, out.freeze()))
}

/// A NotificationResponse (`A`: pid, channel, payload) with channel and
/// payload masked. Under column rules the payload is withheld whole: any
/// session (`SELECT pg_notify('c', ssn) FROM users`) may have sent it, so
/// no statement of this one says where it came from.
pub fn notification(msg: &Message, scope: &mut Scope<'_>) -> Option<Message> {
    let (pid, mut b) = msg.body.split_first_chunk::<4>()?;
    let channel = take_cstr(&mut b)?;
    let payload = take_cstr(&mut b)?;
    let c = scope.text(&channel);
    let p = if scope.withhold_row_values && !payload.is_empty() {
        Some(WITHHELD_VALUE.to_string())
    } else {
        scope.text(&payload)
    };
    if c.is_none() && p.is_none() {
        return None;
    }
    let mut out = BytesMut::new();
    out.put_slice(pid);
    out.put_slice(c.as_deref().unwrap_or(&channel).as_bytes());
    out.put_u8(0);
    out.put_slice(p.as_deref().unwrap_or(&payload).as_bytes());
    out.put_u8(0);
    Some(Message::new(msg.tag, out.freeze()))
}

/// Reported settings whose values the server checks against a fixed
/// form (an encoding, a date style, a zone, on/off, a version, a role):
/// they cannot carry row data, and drivers read them.
/// (Not `TimeZone`: a POSIX zone such as `<ERIN-SMITH>5` is free text, a
/// review found.)
const CHECKED_SETTINGS: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "scram_iterations",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
];

/// A ParameterStatus whose value may hold data, masked: a review found
/// `select set_config('application_name', email, false) from people` had
/// the target report a row's value in a setting, which passed unmasked.
/// Free-text settings (`application_name`, and any the server adds to
/// those it reports) go through the masker, and are withheld where a
/// column rule applies (its values need not look like anything a detector
/// knows).
pub fn parameter(msg: &Message, scope: &mut Scope<'_>) -> Option<Message> {
    let mut b = &msg.body[..];
    let name = take_cstr(&mut b)?;
    let value = take_cstr(&mut b)?;
    if CHECKED_SETTINGS.contains(&name.as_str()) {
        return None;
    }
    let v = if scope.withhold_row_values && !value.is_empty() {
        Some(WITHHELD_VALUE.to_string())
    } else {
        scope.text(&value)
    }?;
    let mut out = BytesMut::new();
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(v.as_bytes());
    out.put_u8(0);
    Some(Message::new(msg.tag, out.freeze()))
}

/// What a withheld value (a payload, a setting) says.
const WITHHELD_VALUE: &str = "(withheld by masking)";

/// What a withheld message says.
const WITHHELD: &str = "(withheld by masking: the statement may read a protected column)";

/// SQLSTATE classes whose messages say nothing of values: transaction
/// state (25, 40), resources (53), operator intervention (57), connection
/// (08). Not the classes that name objects (42, 3D, 3F, …): an object's
/// name can come from data (`ssn::regclass`, dynamic SQL in a function).
const VALUELESS_CLASSES: &[&str] = &["25", "40", "53", "57", "08"];

/// The row values a constraint's DETAIL quotes, withheld: `Key (a, b)=(…)`
/// and `Failing row contains (…)` (PostgreSQL's own wording, which is
/// not translated when `lc_messages` is C; other languages say it
/// differently, and only the detectors apply to them).
fn withhold(detail: &str) -> Option<String> {
    const FAILING: &str = "Failing row contains (";
    if let Some(at) = detail.find(FAILING) {
        return Some(format!(
            "{}(withheld by masking)",
            &detail[..at + FAILING.len() - 1]
        ));
    }
    let key = detail.find("Key (")?;
    let eq = key + detail[key..].find(")=(")?;
    let end = detail.rfind(')').filter(|e| *e > eq + 2)?;
    Some(format!(
        "{}=(withheld by masking){}",
        &detail[..eq + 1],
        &detail[end + 1..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_mask::MaskSpec;

    fn error(fields: &[(u8, &str)]) -> Message {
        let mut b = BytesMut::new();
        for (c, v) in fields {
            b.put_u8(*c);
            b.put_slice(v.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
        Message::new(b'E', b.freeze())
    }

    #[test]
    fn data_fields_are_masked_and_names_kept() {
        let m = Masker::new(&MaskSpec::default(), Some(b"k")).unwrap();
        let mut stats = Stats::new();
        let mut scope = Scope {
            masker: &m,
            stats: &mut stats,
            withhold_row_values: true,
            touches: false,
        };
        let e = error(&[
            (b'S', "ERROR"),
            (b'C', "22P02"),
            (
                b'M',
                "invalid input syntax for type integer: \"ada.lovelace@example.com\"",
            ),
            (b'D', "Key (ssn)=(secret-value-9) already exists."),
            (b't', "users"),
        ]);
        let out = fields(&e, &mut scope).unwrap();
        let f = parse_fields(&out.body);
        let get = |c| f.iter().find(|(k, _)| *k == c).map(|(_, v)| v.as_str());
        assert_eq!(
            get(b'M'),
            Some("invalid input syntax for type integer: \"[EMAIL]\"")
        );
        assert_eq!(
            get(b'D'),
            Some("Key (ssn)=(withheld by masking) already exists.")
        );
        // Under column rules the naming fields are withheld: `RAISE …
        // USING TABLE = v` puts any value there (review).
        assert_eq!(get(b't'), Some(WITHHELD));
        assert_eq!(get(b'C'), Some("22P02"));
        // Without them, every field but the fixed ones goes through the
        // detectors, whatever its code.
        let mut plain = Scope {
            withhold_row_values: false,
            masker: &m,
            stats: &mut Stats::new(),
            touches: false,
        };
        let e = error(&[
            (b'S', "NOTICE"),
            (b'C', "00000"),
            (b'c', "ada.lovelace@example.com"),
            (b'n', "users_email_key"),
            (b'Z', "ada.lovelace@example.com"),
        ]);
        let f = parse_fields(&fields(&e, &mut plain).unwrap().body);
        assert_eq!(
            f.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(),
            ["NOTICE", "00000", "[EMAIL]", "users_email_key", "[EMAIL]"]
        );
        assert_eq!(
            withhold("Failing row contains (1, x, 123).").as_deref(),
            Some("Failing row contains (withheld by masking)")
        );
        assert_eq!(fields(&error(&[(b'M', "plain")]), &mut scope), None);
        // A statement that may read a protected column: a data error's
        // text is withheld, and so is a name error's (`ssn::regtype`
        // quotes the value as a type name, in the message and the
        // context); a serialization failure's message says no value.
        scope.touches = true;
        let e = error(&[(b'C', "22P02"), (b'M', "invalid input: \"SECRET-1\"")]);
        let f = parse_fields(&fields(&e, &mut scope).unwrap().body);
        assert_eq!(f[1].1, WITHHELD);
        let e = error(&[
            (b'C', "42601"),
            (b'M', "syntax error at or near \"-\""),
            (b'W', "invalid type name \"SECRET-1\""),
        ]);
        let f = parse_fields(&fields(&e, &mut scope).unwrap().body);
        assert!(f.iter().all(|(_, v)| !v.contains("SECRET")), "{f:?}");
        let e = error(&[(b'C', "40001"), (b'M', "could not serialize access")]);
        assert_eq!(fields(&e, &mut scope), None);
    }

    #[test]
    fn notification_payloads_are_masked() {
        let m = Masker::new(&MaskSpec::default(), Some(b"k")).unwrap();
        let mut stats = Stats::new();
        let mut scope = Scope {
            masker: &m,
            stats: &mut stats,
            withhold_row_values: false,
            touches: false,
        };
        let mut b = BytesMut::new();
        b.put_i32(7);
        b.put_slice(b"ch\0ann@example.com\0");
        let sent = Message::new(b'A', b.freeze());
        let out = notification(&sent, &mut scope).unwrap();
        assert_eq!(&out.body[4..], b"ch\0[EMAIL]\0");
        // Under column rules, the payload is withheld whole.
        scope.withhold_row_values = true;
        let out = notification(&sent, &mut scope).unwrap();
        assert_eq!(&out.body[4..], b"ch\0(withheld by masking)\0");
    }
}
