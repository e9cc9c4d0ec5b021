//! The few messages the proxy builds or reads itself. Everything else
//! crosses as an opaque [`Message`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{Message, take_cstr};

/// SQLSTATE codes the gateway answers with.
pub mod sqlstate {
    /// invalid_authorization_specification
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// invalid_password
    pub const INVALID_PASSWORD: &str = "28P01";
    /// insufficient_privilege
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// invalid_catalog_name (unknown database = unknown connection)
    pub const INVALID_CATALOG: &str = "3D000";
    /// connection_failure
    pub const CONNECTION_FAILURE: &str = "08006";
    /// protocol_violation
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// program_limit_exceeded
    pub const PROGRAM_LIMIT: &str = "54000";
    /// feature_not_supported
    pub const NOT_SUPPORTED: &str = "0A000";
    /// admin_shutdown
    pub const ADMIN_SHUTDOWN: &str = "57P01";
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; such text never comes from
    // us, but strip it rather than produce a malformed message.
    b.put_slice(s.replace('\0', "").as_bytes());
    b.put_u8(0);
}

/// An ErrorResponse (`E`) with severity FATAL or ERROR.
pub fn error(fatal: bool, code: &str, message: &str, hint: Option<&str>) -> Message {
    fields_message(
        b'E',
        if fatal { "FATAL" } else { "ERROR" },
        code,
        message,
        hint,
    )
}

/// A NoticeResponse (`N`).
pub fn notice(code: &str, message: &str) -> Message {
    fields_message(b'N', "NOTICE", code, message, None)
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

/// The statement name and SQL of a Parse (`P`).
pub fn parse_text(m: &Message) -> Option<(String, String)> {
    let mut b = &m.body[..];
    let name = take_cstr(&mut b)?;
    let sql = take_cstr(&mut b)?;
    Some((name, sql))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_round_trip() {
        let e = error(
            false,
            "42501",
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
}
