//! PostgreSQL wire framing, free of I/O.
//!
//! Written by hand rather than with pgwire's codec: the proxy forwards
//! almost every message untouched, so it needs frames (tag, length, raw
//! body) and not decoded structs, and it needs hard limits checked before
//! any allocation. This is the code the fuzz target exercises.

use bytes::{Buf, Bytes, BytesMut};

/// Protocol 3.0 in a StartupMessage.
pub const PROTOCOL_3_0: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Startup packets are small; libpq caps them at 10000 bytes.
pub const MAX_STARTUP_LEN: usize = 10_000;

/// Message type bytes, by name (protocol 3.0, "Message Formats"). The
/// same byte means different messages in the two directions ('D' is
/// Describe from the caller, DataRow from the server), so each name says
/// which it is.
pub mod tag {
    // From the caller.
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PASSWORD: u8 = b'p';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    // From the server.
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message length {len} is below the minimum of 4")]
    TooShort { len: u32 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("malformed startup packet: {0}")]
    BadStartup(&'static str),
    #[error("malformed {tag:?} message: {reason}")]
    Malformed { tag: char, reason: &'static str },
}

/// The first packet of a connection (untagged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup { params: Vec<(String, String)> },
}

impl Startup {
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            Startup::Startup { params } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// Parse a startup packet from the front of `buf`; `Ok(None)` means more
/// bytes are needed. Consumes the packet on success.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<Startup>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(FrameError::TooShort { len });
    }
    let len = len as usize;
    if len > MAX_STARTUP_LEN {
        return Err(FrameError::TooLong {
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    let code = packet.get_u32();
    let startup = match code {
        SSL_REQUEST if len == 8 => Startup::SslRequest,
        GSSENC_REQUEST if len == 8 => Startup::GssEncRequest,
        CANCEL_REQUEST if len == 16 => Startup::Cancel {
            pid: packet.get_i32(),
            secret: packet.get_i32(),
        },
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => {
            return Err(FrameError::BadStartup("wrong length for a request code"));
        }
        PROTOCOL_3_0 => Startup::Startup {
            params: parse_params(&packet)?,
        },
        v => {
            return Err(FrameError::UnsupportedVersion {
                major: (v >> 16) as u16,
                minor: (v & 0xffff) as u16,
            });
        }
    };
    Ok(Some(startup))
}

fn parse_params(mut b: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let mut params = Vec::new();
    loop {
        let key = take_cstr(&mut b).ok_or(FrameError::BadStartup("unterminated parameter name"))?;
        if key.is_empty() {
            break;
        }
        let value =
            take_cstr(&mut b).ok_or(FrameError::BadStartup("unterminated parameter value"))?;
        if params.len() >= 64 {
            return Err(FrameError::BadStartup("too many parameters"));
        }
        params.push((key, value));
    }
    if !b.is_empty() {
        return Err(FrameError::BadStartup("bytes after the final terminator"));
    }
    Ok(params)
}

/// Take a NUL-terminated UTF-8 string off the front of `b`.
pub fn take_cstr(b: &mut &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = std::str::from_utf8(&b[..end]).ok()?.to_owned();
    *b = &b[end + 1..];
    Some(s)
}

/// One tagged message: its type byte and its body (after the length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Bytes,
}

impl Message {
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Self {
        Self {
            tag,
            body: body.into(),
        }
    }

    /// Append the wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        out.extend_from_slice(&[self.tag]);
        out.extend_from_slice(&((self.body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }
}

/// Parse one tagged message off the front of `buf`. `Ok(None)`: more bytes
/// needed. A declared length over `max` is an error before anything is
/// buffered for it.
pub fn parse_message(buf: &mut BytesMut, max: usize) -> Result<Option<Message>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::TooShort { len });
    }
    let total = len as usize + 1;
    if len as usize > max {
        return Err(FrameError::TooLong {
            len: len as usize,
            max,
        });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    let tag = frame[0];
    frame.advance(5);
    Ok(Some(Message { tag, body: frame }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn startup_bytes(params: &[(&str, &str)]) -> BytesMut {
        let mut body = Vec::new();
        body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut b = BytesMut::new();
        b.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        b.extend_from_slice(&body);
        b
    }

    #[test]
    fn startup_and_requests() {
        let mut b = startup_bytes(&[("user", "u"), ("database", "demo-pg")]);
        let s = parse_startup(&mut b).unwrap().unwrap();
        assert_eq!(s.param("database"), Some("demo-pg"));
        assert!(b.is_empty());

        let mut ssl = BytesMut::from(&[0, 0, 0, 8, 4, 210, 22, 47][..]);
        assert_eq!(parse_startup(&mut ssl).unwrap(), Some(Startup::SslRequest));
        let mut gss = BytesMut::from(&[0, 0, 0, 8, 4, 210, 22, 48][..]);
        assert_eq!(
            parse_startup(&mut gss).unwrap(),
            Some(Startup::GssEncRequest)
        );
        let mut cancel = BytesMut::from(&[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 7, 0, 0, 0, 9][..]);
        assert_eq!(
            parse_startup(&mut cancel).unwrap(),
            Some(Startup::Cancel { pid: 7, secret: 9 })
        );
    }

    #[test]
    fn startup_needs_more_and_limits() {
        let full = startup_bytes(&[("user", "u")]);
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(parse_startup(&mut part).unwrap(), None);
        let mut huge = BytesMut::from(&[0x7f, 0, 0, 0, 0, 3, 0, 0][..]);
        assert!(matches!(
            parse_startup(&mut huge),
            Err(FrameError::TooLong { .. })
        ));
        let mut tiny = BytesMut::from(&[0, 0, 0, 2][..]);
        assert!(matches!(
            parse_startup(&mut tiny),
            Err(FrameError::TooShort { .. })
        ));
        let mut v2 = BytesMut::from(&[0, 0, 0, 8, 0, 2, 0, 0][..]);
        assert_eq!(
            parse_startup(&mut v2),
            Err(FrameError::UnsupportedVersion { major: 2, minor: 0 })
        );
        // An HTTP request on the PostgreSQL port is not a startup packet.
        let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(parse_startup(&mut http).is_err());
    }

    #[test]
    fn messages_round_trip_and_limits() {
        let m = Message::new(b'Q', &b"select 1\0"[..]);
        let mut b = BytesMut::new();
        m.encode(&mut b);
        m.encode(&mut b);
        assert_eq!(parse_message(&mut b, 1024).unwrap(), Some(m.clone()));
        assert_eq!(parse_message(&mut b, 1024).unwrap(), Some(m));
        assert_eq!(parse_message(&mut b, 1024).unwrap(), None);

        let mut over = BytesMut::from(&[b'Q', 0, 0, 4, 1][..]);
        assert_eq!(
            parse_message(&mut over, 1024),
            Err(FrameError::TooLong {
                len: 1025,
                max: 1024
            })
        );
        let mut under = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert_eq!(
            parse_message(&mut under, 1024),
            Err(FrameError::TooShort { len: 3 })
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut b = BytesMut::from(&data[..]);
            let _ = parse_startup(&mut b);
            let mut b = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = parse_message(&mut b, 256) {}
        }

        #[test]
        fn any_message_round_trips(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let m = Message::new(tag, body);
            let mut b = BytesMut::new();
            m.encode(&mut b);
            prop_assert_eq!(parse_message(&mut b, 1000).unwrap(), Some(m));
            prop_assert!(b.is_empty());
        }
    }
}
