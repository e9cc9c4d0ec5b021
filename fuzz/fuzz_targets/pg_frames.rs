//! Untrusted bytes from a PostgreSQL caller: the startup parser, the
//! message framer (with a small limit), and the decoders the proxy runs on
//! what it frames. None may panic, and a frame never claims more than the
//! input held.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis_postgres::{classify, frame, messages};

fuzz_target!(|data: &[u8]| {
    let mut b = BytesMut::from(data);
    let _ = frame::parse_startup(&mut b);

    let mut b = BytesMut::from(data);
    let mut consumed = 0usize;
    while let Ok(Some(m)) = frame::parse_message(&mut b, 4096) {
        consumed += 5 + m.body.len();
        assert!(consumed <= data.len());
        let _ = messages::parse_fields(&m.body);
        let _ = messages::password_text(&m);
        if let Some(sql) = messages::query_text(&m) {
            if sql.len() < 512 {
                let _ = classify::classify(&sql);
            }
        }
        let _ = messages::parse_text(&m);
    }
});
