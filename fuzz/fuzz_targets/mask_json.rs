//! The JSON walker and the detectors on arbitrary input: no panic, masked
//! JSON is valid JSON again, and masking masked text never undoes or
//! alters a mask (detectors are context-sensitive, so on arbitrary bytes a
//! second pass may still find a value the first judged in other context;
//! strict idempotence on realistic text is a property test in the crate).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_mask::{MaskSpec, Masker, Stats};
use std::sync::OnceLock;

fn masker() -> &'static Masker {
    static M: OnceLock<Masker> = OnceLock::new();
    M.get_or_init(|| Masker::new(&MaskSpec::default(), Some(b"fuzz")).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let m = masker();
    if let Ok(out) = m.mask_json_bytes(data, &mut Stats::new()) {
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let once = m.mask_str(text, &mut Stats::new()).into_owned();
        let twice = m.mask_str(&once, &mut Stats::new()).into_owned();
        let tokens = |s: &str| s.matches("[CARD]").count() + s.matches("[EMAIL]").count() + s.matches("[SSN]").count();
        assert!(tokens(&twice) >= tokens(&once), "{once:?} -> {twice:?}");
    }
});
