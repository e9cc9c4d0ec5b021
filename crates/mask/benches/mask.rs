//! Masking throughput on realistic JSON and table-like text, with few and
//! many hits. Reported by criterion as bytes/s (one core).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis_mask::{MaskSpec, Masker, Stats};

fn json_doc(records: usize, sensitive_every: usize) -> Vec<u8> {
    let mut items = Vec::with_capacity(records);
    for i in 0..records {
        let sensitive = sensitive_every > 0 && i % sensitive_every == 0;
        items.push(serde_json::json!({
            "id": i,
            "sku": format!("SKU-{:08}", i),
            "title": "Stainless steel water bottle, 750 ml, keeps drinks cold for 24 hours",
            "price": 19.99 + (i % 7) as f64,
            "created_at": "2026-11-25T20:08:17Z",
            "tags": ["kitchen", "outdoor", "bestseller"],
            "contact": if sensitive { format!("user{i}@example.com") } else { "support desk".to_string() },
            "payment": if sensitive { "4111 1111 1111 1111".to_string() } else { "invoice".to_string() },
            "version": "1.4.2",
            "uuid": "550e8400-e29b-41d4-a716-446655440000",
        }));
    }
    serde_json::to_vec(&serde_json::json!({ "items": items })).unwrap()
}

fn bench(c: &mut Criterion) {
    let m = Masker::new(&MaskSpec::default(), Some(b"bench")).unwrap();
    for (name, every) in [("json_few_hits", 1000), ("json_many_hits", 2)] {
        let doc = json_doc(5000, every);
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(doc.len() as u64));
        g.bench_function("mask_json_bytes", |b| {
            b.iter(|| m.mask_json_bytes(&doc, &mut Stats::new()).unwrap())
        });
        g.finish();
    }
    let text = String::from_utf8(json_doc(5000, 1000)).unwrap();
    let mut g = c.benchmark_group("text_few_hits");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("mask_str", |b| {
        b.iter(|| m.mask_str(&text, &mut Stats::new()).len())
    });
    g.finish();
    // Text in another script: the detector set read it with a slower
    // engine while its patterns' word boundaries were Unicode (1 MB/s on
    // Cyrillic until 2026-12-06).
    let text = "Заказ 1042 отправлен клиенту, оплата получена. ".repeat(20_000);
    let mut g = c.benchmark_group("text_cyrillic");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("mask_str", |b| {
        b.iter(|| m.mask_str(&text, &mut Stats::new()).len())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
