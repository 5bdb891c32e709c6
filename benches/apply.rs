//! The applier's work outside the database: the set-based statements of a run (built per
//! run of one table and kind) and the JSON array of row images that is their parameter.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgteleport::applier::bench_api;

mod common;

fn statements(c: &mut Criterion) {
    let meta = common::meta();
    let table = ddlwatcher::qualified(&meta.schema, &meta.name);
    let mut g = c.benchmark_group("apply");
    g.bench_function("statements/10 columns", |b| {
        b.iter(|| bench_api::statements(&meta, &meta.columns, &table))
    });
    for n in [100usize, 10_000] {
        let owned = common::events(n);
        let events: Vec<&_> = owned.iter().collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("images/{n} events"), |b| {
            b.iter(|| bench_api::images(&events))
        });
    }
    g.finish();
}

criterion_group!(benches, statements);
criterion_main!(benches);
