// Temporary, not committed: throughput of mask_json_bytes on the bench document.
use portcullis_mask::{MaskSpec, Masker, Stats};
use std::time::Instant;
include!("/tmp/jsondoc.rs");
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let every: usize = a.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let n: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(15);
    let m = Masker::new(&MaskSpec::default(), Some(b"bench")).unwrap();
    let doc = json_doc(5000, every);
    let t = Instant::now();
    let mut total = 0usize;
    for _ in 0..n {
        total += m.mask_json_bytes(&doc, &mut Stats::new()).unwrap().len();
    }
    let s = t.elapsed().as_secs_f64();
    eprintln!(
        "MiB/s {:.1} {}",
        (doc.len() * n) as f64 / s / 1048576.0,
        total
    );
}
