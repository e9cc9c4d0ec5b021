//! The few messages the proxy builds or reads itself. Everything else
//! crosses as an opaque [`Message`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{Message, take_cstr};

/// SQLSTATE codes the gateway answers with.
/// A SQLSTATE (PostgreSQL, "Appendix A. Error Codes"): what a client
/// program branches on, so each refusal names the class it belongs to.
/// Only the codes in [`sqlstate`] exist: the type is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(&'static str);

impl SqlState {
    /// The five-character code.
    pub const fn code(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

pub mod sqlstate {
    use super::SqlState;

    /// warning (the class of notices the gateway sends)
    pub const WARNING: SqlState = SqlState("01000");
    /// undefined_function
    pub const UNDEFINED_FUNCTION: SqlState = SqlState("42883");
    /// invalid_authorization_specification
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    /// invalid_password
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    /// insufficient_privilege
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    /// invalid_catalog_name (unknown database = unknown connection)
    pub const INVALID_CATALOG: SqlState = SqlState("3D000");
    /// connection_failure
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    /// protocol_violation
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// program_limit_exceeded
    pub const PROGRAM_LIMIT: SqlState = SqlState("54000");
    /// feature_not_supported
    pub const NOT_SUPPORTED: SqlState = SqlState("0A000");
    /// invalid_parameter_value
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    /// admin_shutdown
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// query_canceled: a statement waited too long for its review.
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    /// The data changed under the statement: run it again.
    pub const SERIALIZATION_FAILURE: SqlState = SqlState("40001");
    /// configuration_limit_exceeded: a grant's budget is used up.
    pub const CONFIGURATION_LIMIT_EXCEEDED: SqlState = SqlState("53400");
    /// too_many_connections
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; such text never comes from
    // us, but strip it rather than produce a malformed message.
    b.put_slice(s.replace('\0', "").as_bytes());
    b.put_u8(0);
}

/// An ErrorResponse (`E`) with severity FATAL or ERROR.
pub fn error(fatal: bool, code: SqlState, message: &str, hint: Option<&str>) -> Message {
    fields_message(
        b'E',
        if fatal { "FATAL" } else { "ERROR" },
        code.code(),
        message,
        hint,
    )
}

/// A NoticeResponse (`N`).
pub fn notice(code: SqlState, message: &str) -> Message {
    fields_message(b'N', "NOTICE", code.code(), message, None)
}

fn fields_message(
    tag: u8,
    severity: &str,
    code: &str,
    message: &str,
    hint: Option<&str>,
) -> Message {
    let mut b = BytesMut::new();
    b.put_u8(b'S');
    put_cstr(&mut b, severity);
    b.put_u8(b'V');
    put_cstr(&mut b, severity);
    b.put_u8(b'C');
    put_cstr(&mut b, code);
    b.put_u8(b'M');
    put_cstr(&mut b, message);
    if let Some(h) = hint {
        b.put_u8(b'H');
        put_cstr(&mut b, h);
    }
    b.put_u8(0);
    Message::new(tag, b.freeze())
}

/// An ErrorResponse or NoticeResponse `m` with its text replaced by
/// `message`, every field but the severity dropped (detail, hint,
/// context: where the values are). The SQLSTATE is kept only where a
/// client acts on it (class 40, retry the transaction; 08 and 57, the
/// connection): any other is 53400, since a statement can choose its
/// own (`RAISE … USING ERRCODE = …`) and spell data in it.
pub fn withheld(m: &Message, message: &str) -> Message {
    let fields = parse_fields(&m.body);
    let severity = field(&fields, b'V')
        .or_else(|| field(&fields, b'S'))
        .unwrap_or("ERROR");
    let code = match field(&fields, b'C') {
        Some(c @ ("40001" | "40P01" | "40002" | "40003" | "40000")) => c,
        Some(c @ ("08000" | "08003" | "08006" | "57014" | "57P01" | "57P02" | "57P03")) => c,
        _ => sqlstate::CONFIGURATION_LIMIT_EXCEEDED.code(),
    };
    fields_message(m.tag, severity, code, message, None)
}

/// The fields of an ErrorResponse or NoticeResponse, by field code.
pub fn parse_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut b = body;
    while let Some((&code, rest)) = b.split_first() {
        if code == 0 {
            break;
        }
        b = rest;
        match take_cstr(&mut b) {
            Some(v) => out.push((code, v)),
            None => break,
        }
    }
    out
}

pub fn field(fields: &[(u8, String)], code: u8) -> Option<&str> {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.as_str())
}

pub fn auth_cleartext() -> Message {
    Message::new(b'R', Bytes::from_static(&[0, 0, 0, 3]))
}

pub fn auth_ok() -> Message {
    Message::new(b'R', Bytes::from_static(&[0, 0, 0, 0]))
}

pub fn backend_key_data(pid: i32, secret: i32) -> Message {
    let mut b = BytesMut::with_capacity(8);
    b.put_i32(pid);
    b.put_i32(secret);
    Message::new(b'K', b.freeze())
}

pub fn ready_for_query(status: u8) -> Message {
    Message::new(b'Z', Bytes::copy_from_slice(&[status]))
}

/// A simple Query (`Q`).
pub fn query(sql: &str) -> Message {
    let mut b = BytesMut::new();
    put_cstr(&mut b, sql);
    Message::new(b'Q', b.freeze())
}

/// A Parse (`P`) of `sql` as the unnamed statement, no parameter types.
pub fn parse(sql: &str) -> Message {
    parse_named("", sql)
}

/// A Parse (`P`) of `sql` as statement `name`, no parameter types.
pub fn parse_named(name: &str, sql: &str) -> Message {
    let mut b = BytesMut::new();
    put_cstr(&mut b, name);
    put_cstr(&mut b, sql);
    b.put_i16(0);
    Message::new(b'P', b.freeze())
}

/// The parameter types a Parse (`P`) names (0: left to the server).
pub fn parse_types(m: &Message) -> Option<Vec<u32>> {
    let mut b = &m.body[..];
    take_cstr(&mut b)?;
    take_cstr(&mut b)?;
    let n = usize::try_from(take_i16(&mut b)?).ok()?;
    let types = (0..n)
        .map(|_| take_i32(&mut b).map(|t| t as u32))
        .collect::<Option<Vec<_>>>()?;
    b.is_empty().then_some(types)
}

/// The unnamed statement: a Parse (`P`) of `sql` with parameter `types`.
pub fn parse_typed(sql: &str, types: &[u32]) -> Message {
    let mut b = BytesMut::new();
    put_cstr(&mut b, "");
    put_cstr(&mut b, sql);
    b.put_i16(types.len() as i16);
    for t in types {
        b.put_u32(*t);
    }
    Message::new(b'P', b.freeze())
}

/// Describe (`D`) and Execute (`E`, no row limit) of the unnamed
/// portal, then Sync (`S`).
pub fn describe_execute_sync() -> [Message; 3] {
    [
        Message::new(b'D', Bytes::from_static(b"P\0")),
        Message::new(b'E', Bytes::from_static(b"\0\0\0\0\0")),
        Message::new(b'S', Bytes::new()),
    ]
}

/// The same Parse (`P`), preparing the statement as `name` instead.
pub fn rename_parse(m: &Message, name: &str) -> Option<Message> {
    let mut rest = &m.body[..];
    take_cstr(&mut rest)?;
    let mut b = BytesMut::with_capacity(name.len() + 1 + rest.len());
    put_cstr(&mut b, name);
    b.put_slice(rest);
    Some(Message::new(b'P', b.freeze()))
}

/// The text of a PasswordMessage (`p`).
pub fn password_text(m: &Message) -> Option<String> {
    let mut b = &m.body[..];
    let s = take_cstr(&mut b)?;
    b.is_empty().then_some(s)
}

/// The SQL of a simple Query (`Q`).
pub fn query_text(m: &Message) -> Option<String> {
    let mut b = &m.body[..];
    take_cstr(&mut b)
}

/// The bytes of `b` before its first NUL (all of it without one), as the
/// protocol's strings end: read without copying.
pub fn cstr(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n])
}

/// The statement name and SQL of a Parse (`P`).
pub fn parse_text(m: &Message) -> Option<(String, String)> {
    let mut b = &m.body[..];
    let name = take_cstr(&mut b)?;
    let sql = take_cstr(&mut b)?;
    Some((name, sql))
}

/// The function OID a fast-path FunctionCall (`F`) names.
pub fn function_call_oid(m: &Message) -> Option<u32> {
    let b: [u8; 4] = m.body.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// A startup packet (untagged) with these parameters.
pub fn startup(params: &[(&str, &str)]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u32(crate::frame::PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(&mut body, k);
        put_cstr(&mut body, v);
    }
    body.put_u8(0);
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
    out.freeze()
}

pub fn ssl_request() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 8, 4, 210, 22, 47])
}

pub fn cancel_request(pid: i32, secret: i32) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.put_u32(16);
    b.put_u32(80_877_102);
    b.put_i32(pid);
    b.put_i32(secret);
    b.freeze()
}

/// A Bind (`B`) as read: the portal, the prepared statement it binds, the
/// parameters (`None` is SQL NULL) with their formats, and the rest of
/// the body (result-column formats) as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: String,
    pub statement: String,
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
}

fn take_i16(b: &mut &[u8]) -> Option<i16> {
    let (head, rest) = b.split_first_chunk::<2>()?;
    *b = rest;
    Some(i16::from_be_bytes(*head))
}

fn take_i32(b: &mut &[u8]) -> Option<i32> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    *b = rest;
    Some(i32::from_be_bytes(*head))
}

/// Read a Bind's body; `None` when it is malformed (negative counts,
/// lengths past the end, trailing bytes).
pub fn bind(body: &[u8]) -> Option<Bind<'_>> {
    let mut b = body;
    let portal = take_cstr(&mut b)?;
    let statement = take_cstr(&mut b)?;
    let nf = usize::try_from(take_i16(&mut b)?).ok()?;
    let param_formats = (0..nf).map(|_| take_i16(&mut b)).collect::<Option<_>>()?;
    let np = usize::try_from(take_i16(&mut b)?).ok()?;
    let mut params = Vec::with_capacity(np);
    for _ in 0..np {
        let len = take_i32(&mut b)?;
        if len == -1 {
            params.push(None);
        } else {
            let len = usize::try_from(len).ok()?;
            let (v, rest) = b.split_at_checked(len)?;
            params.push(Some(v));
            b = rest;
        }
    }
    let nr = usize::try_from(take_i16(&mut b)?).ok()?;
    let result_formats = (0..nr).map(|_| take_i16(&mut b)).collect::<Option<_>>()?;
    b.is_empty().then_some(Bind {
        portal,
        statement,
        param_formats,
        params,
        result_formats,
    })
}

impl Bind<'_> {
    /// The format (0 text, 1 binary) of parameter `i`: one code for all,
    /// one per parameter, or none (all text).
    pub fn param_format(&self, i: usize) -> i16 {
        match self.param_formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        }
    }

    /// The message again, binding `statement` instead.
    pub fn encode_for(&self, statement: &str) -> Message {
        let mut b = BytesMut::new();
        put_cstr(&mut b, &self.portal);
        put_cstr(&mut b, statement);
        b.put_i16(self.param_formats.len() as i16);
        for f in &self.param_formats {
            b.put_i16(*f);
        }
        b.put_i16(self.params.len() as i16);
        for p in &self.params {
            match p {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        b.put_i16(self.result_formats.len() as i16);
        for f in &self.result_formats {
            b.put_i16(*f);
        }
        Message::new(b'B', b.freeze())
    }
}

/// A Bind of `portal` to `statement` with no parameters.
pub fn bind_message(portal: &str, statement: &str) -> Message {
    Bind {
        portal: portal.to_string(),
        statement: statement.to_string(),
        param_formats: Vec::new(),
        params: Vec::new(),
        result_formats: Vec::new(),
    }
    .encode_for(statement)
}

/// The name a Describe (`D`) or Close (`C`) of a prepared statement
/// (`S`) targets; `None` for portals or malformed bodies.
pub fn statement_target(m: &Message) -> Option<String> {
    let (&kind, mut rest) = m.body.split_first()?;
    (kind == b'S').then(|| take_cstr(&mut rest)).flatten()
}

/// A Describe or Close of prepared statement `name`.
pub fn statement_message(tag: u8, name: &str) -> Message {
    let mut b = BytesMut::new();
    b.put_u8(b'S');
    put_cstr(&mut b, name);
    Message::new(tag, b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_call_oid_reads_the_first_field_only() {
        let m = Message::new(b'F', &[0u8, 0, 0x0b, 0xb8, 0, 1, 0, 0][..]);
        assert_eq!(function_call_oid(&m), Some(3000));
        assert_eq!(function_call_oid(&Message::new(b'F', &[0u8, 1][..])), None);
    }

    #[test]
    fn error_fields_round_trip() {
        let e = error(
            false,
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "connection \"db\" is read-only",
            Some("use a read-write connection"),
        );
        let f = parse_fields(&e.body);
        assert_eq!(field(&f, b'S'), Some("ERROR"));
        assert_eq!(field(&f, b'C'), Some("42501"));
        assert_eq!(field(&f, b'M'), Some("connection \"db\" is read-only"));
        assert_eq!(field(&f, b'H'), Some("use a read-write connection"));
    }

    #[test]
    fn texts() {
        assert_eq!(query_text(&query("select 1")).as_deref(), Some("select 1"));
        assert_eq!(
            parse_text(&parse("delete from t")),
            Some((String::new(), "delete from t".into()))
        );
        let p = Message::new(b'p', &b"pcl_x\0"[..]);
        assert_eq!(password_text(&p).as_deref(), Some("pcl_x"));
        assert_eq!(password_text(&Message::new(b'p', &b"no-nul"[..])), None);
    }

    #[test]
    fn a_bind_reads_back_what_was_written() {
        let b = Bind {
            portal: "p".into(),
            statement: "s1".into(),
            param_formats: vec![0, 1],
            params: vec![Some(b"42"), None],
            result_formats: vec![1],
        };
        let m = b.encode_for("s1");
        assert_eq!(bind(&m.body), Some(b.clone()));
        let renamed = b.encode_for("other");
        assert_eq!(bind(&renamed.body).unwrap().statement, "other");
        assert_eq!(b.param_format(0), 0);
        assert_eq!(b.param_format(1), 1);
        let empty = bind_message("", "x");
        assert_eq!(
            bind(&empty.body).unwrap().params,
            Vec::<Option<&[u8]>>::new()
        );
    }

    #[test]
    fn malformed_binds_are_refused() {
        let good = Bind {
            portal: String::new(),
            statement: "s".into(),
            param_formats: vec![],
            params: vec![Some(b"abc")],
            result_formats: vec![],
        }
        .encode_for("s");
        let body = &good.body[..];
        // Cut anywhere: never read.
        for cut in 0..body.len() {
            assert_eq!(bind(&body[..cut]), None, "cut at {cut}");
        }
        // Trailing bytes.
        let mut long = body.to_vec();
        long.push(0);
        assert_eq!(bind(&long), None);
        // A negative count, and a length below -1.
        let mut neg = b"\0s\0".to_vec();
        neg.extend_from_slice(&(-2i16).to_be_bytes());
        assert_eq!(bind(&neg), None);
        let mut len = b"\0s\0\0\0\0\x01".to_vec();
        len.extend_from_slice(&(-5i32).to_be_bytes());
        len.extend_from_slice(&[0, 0]);
        assert_eq!(bind(&len), None);
    }
}
