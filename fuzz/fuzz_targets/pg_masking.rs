//! Untrusted bytes from a PostgreSQL target, through the masker: the
//! binary value decoders (any type, any bytes) and the inspector over a
//! stream of framed messages. None may panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis_mask::{MaskSpec, RuleSet};
use portcullis_postgres::inspect::Inspector;
use portcullis_postgres::masking::{MaskInspector, binary};
use portcullis_postgres::{frame, messages};

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let types = binary::Types {
        composites: [70000].into(),
        arrays: [70001].into(),
        domains: [(70002, 25), (70003, 70002)].into(),
        ..binary::Types::default()
    };
    let t = u32::from_be_bytes(*head) % 71000;
    let _ = binary::mask(t, rest, &types, &mut |s: &str| {
        s.contains('@').then(|| "[EMAIL]".to_string())
    });
    let _ = binary::bytea_text(&String::from_utf8_lossy(rest), &mut |s: &str| {
        s.contains('@').then(|| "[EMAIL]".to_string())
    });

    let Ok(rs) = RuleSet::new(&[MaskSpec::default()], Some(b"k")) else {
        return;
    };
    let Some(rule) = rs.select("x", &[]) else {
        return;
    };
    let mut i = MaskInspector::new(rule.clone(), "x");
    i.frontend(&messages::query("select 1"));
    let mut b = BytesMut::from(rest);
    while let Ok(Some(m)) = frame::parse_message(&mut b, 4096) {
        let _ = i.backend(&m);
    }
});
