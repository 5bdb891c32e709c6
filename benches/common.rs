#![allow(dead_code)] // each bench uses a part of it
//! A batch like the change-stream benchmark's: a table of ten columns of common types,
//! inserts, updates and deletes in the proportions of `bench/stream.sh`.

use pgteleport::wire::{Batch, Event, Op, TableMeta};
use serde_json::value::RawValue;

pub fn meta() -> TableMeta {
    let columns: Vec<String> = [
        "id", "account", "name", "qty", "price", "created", "note", "flags", "score", "ref",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    TableMeta {
        oid: None,
        soft_delete_column: None,
        synced_at_column: None,
        schema: "public".into(),
        name: "items".into(),
        key: vec!["id".into()],
        columns,
        generated: vec![],
        json_columns: vec![],
        key_deferrable: false,
        identity_always: Vec::new(),
    }
}

fn raw(s: String) -> Box<RawValue> {
    RawValue::from_string(s).expect("valid JSON")
}

pub fn image(i: i64) -> String {
    format!(
        r#"{{"id":{i},"account":{},"name":"item {i} {:x}","qty":{},"price":{}.{:02},"created":"2026-12-02T17:{:02}:{:02}.{:06}+00:00","note":"a note of some length for row {i}","flags":{},"score":{}.5,"ref":"{:032x}"}}"#,
        i % 1000,
        i * 7919,
        i % 50,
        i % 1000,
        i % 100,
        i % 60,
        (i * 13) % 60,
        i % 1_000_000,
        i % 2 == 0,
        i % 977,
        (i as u128) * 0x9e37_79b9_7f4a_7c15
    )
}

/// `n` events: 60 % inserts, 30 % updates (whole images), 10 % deletes (keys).
pub fn events(n: usize) -> Vec<Event> {
    (0..n as i64)
        .map(|i| {
            let (op, key, data) = match i % 10 {
                0..=5 => (Op::Insert, None, Some(raw(image(i)))),
                6..=8 => (Op::Update, None, Some(raw(image(i - 3)))),
                _ => (
                    Op::Delete,
                    Some(raw(format!(r#"{{"id":{}}}"#, i - 4))),
                    None,
                ),
            };
            Event {
                id: i + 1,
                op,
                table: 0,
                txid: Some(1000 + i as u64 / 10),
                key,
                data,
            }
        })
        .collect()
}

pub fn batch(n: usize) -> Batch {
    Batch {
        version: 2,
        part: 0,
        last: true,
        source: "bench-source".into(),
        target: "bench-target".into(),
        seq: 1,
        apply_schema: None,
        captured_at_us: Some(1_764_694_800_000_000),
        tables: vec![meta()],
        events: events(n),
        ddl: vec![],
    }
}
