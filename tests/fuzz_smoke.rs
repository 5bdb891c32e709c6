//! The fuzz targets' short run for CI (stable Rust, seconds): every input kept in
//! `fuzz/corpus/<target>/` (minimised with `cargo fuzz cmin` after 10-minute runs), and
//! valid batch bodies and the example configurations with a few hundred deterministic
//! mutations each, go through the same entry points `cargo fuzz`
//! drives (`pgteleport::fuzzing`). The long runs: `cargo +nightly fuzz run batch_decoder`
//! and `… config_parser` from `fuzz/` (see README).

use pgteleport::fuzzing;
use pgteleport::wire::{self, Batch, DdlVersion, Event, Op, SegmentWriter, TableMeta};
use serde_json::value::RawValue;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                out.push(b);
            }
        }
    }
    out
}

fn segment(part: u32, last: bool) -> Batch {
    Batch {
        version: wire::FORMAT_VERSION,
        part,
        last,
        source: "src".into(),
        target: "t1".into(),
        seq: 4,
        apply_schema: Some("mirror".into()),
        captured_at_us: Some(1_700_000_000_000_000),
        tables: vec![TableMeta {
            oid: None,
            soft_delete_column: None,
            synced_at_column: None,
            schema: "app".into(),
            name: "t".into(),
            key: vec!["id".into()],
            columns: vec!["id".into(), "v".into(), "j".into()],
            generated: vec![],
            json_columns: vec![("j".into(), "jsonb".into())],
            key_deferrable: false,
            identity_always: Vec::new(),
        }],
        events: vec![
            Event {
                id: 10 + part as i64,
                op: Op::Insert,
                table: 0,
                txid: Some(700),
                key: None,
                data: Some(
                    RawValue::from_string(r#"{"id": 1, "v": -0.0, "j": "null"}"#.into()).unwrap(),
                ),
            },
            Event {
                id: 20 + part as i64,
                op: Op::Delete,
                table: 0,
                txid: Some(701),
                key: Some(RawValue::from_string(r#"{"id": 1}"#.into()).unwrap()),
                data: None,
            },
        ],
        ddl: if part == 0 {
            vec![DdlVersion {
                version: 3,
                statements: vec![],
                txid: Some(42),
            }]
        } else {
            vec![]
        },
    }
}

/// Valid bodies: one segment, and three segments in one stream, plain and compressed.
fn valid_bodies() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for compress in [false, true] {
        out.push(wire::encode(&segment(0, true), compress).unwrap());
        let mut w = SegmentWriter::new(compress).unwrap();
        let mut body = Vec::new();
        for part in 0..3 {
            body.extend_from_slice(&w.push(&segment(part, part == 2)).unwrap());
        }
        body.extend_from_slice(&w.finish().unwrap());
        out.push(body);
    }
    out
}

/// Deterministic mutations: byte flips, truncations, duplicated and inserted runs.
fn mutants(seed: &[u8], rng: &mut fastrand::Rng, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let mut m = seed.to_vec();
            for _ in 0..rng.usize(1..4) {
                if m.is_empty() {
                    m.push(rng.u8(..));
                    continue;
                }
                let at = rng.usize(..m.len());
                match rng.u8(..4) {
                    0 => m[at] ^= 1 << rng.u8(..8),
                    1 => m.truncate(at),
                    2 => {
                        let end = (at + rng.usize(1..16)).min(m.len());
                        let run = m[at..end].to_vec();
                        m.splice(at..at, run);
                    }
                    _ => {
                        let run: Vec<u8> = (0..rng.usize(1..8)).map(|_| rng.u8(..)).collect();
                        m.splice(at..at, run);
                    }
                }
            }
            m
        })
        .collect()
}

#[test]
fn batch_decoder_survives_its_corpus_and_mutations() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let seeds = valid_bodies();
    // `PGTELEPORT_WRITE_SEEDS=1` stores the valid bodies as the fuzzer's starting corpus.
    if std::env::var_os("PGTELEPORT_WRITE_SEEDS").is_some() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/batch_decoder");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, b) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("valid-{i}")), b).unwrap();
        }
    }
    let mut runs = 0;
    for s in &seeds {
        fuzzing::batch_decoder(s);
        for m in mutants(s, &mut rng, 400) {
            fuzzing::batch_decoder(&m);
            runs += 1;
        }
    }
    // The kept corpus (what the fuzzer found interesting), once each.
    for s in corpus("batch_decoder") {
        fuzzing::batch_decoder(&s);
        runs += 1;
    }
    assert!(runs >= 1600, "{runs} inputs");
    // The valid bodies decode (the harness would accept refusing everything otherwise).
    for b in valid_bodies().iter().take(2) {
        assert!(wire::decode(b, false, 1 << 20).is_ok() || wire::decode(b, true, 1 << 20).is_ok());
    }
}

#[test]
fn config_parser_survives_its_corpus_and_mutations() {
    let mut rng = fastrand::Rng::with_seed(0xc0ffee);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds: Vec<Vec<u8>> = ["config/source.yml", "config/target.yml"]
        .iter()
        .map(|p| std::fs::read(root.join(p)).unwrap())
        .collect();
    for s in &seeds {
        fuzzing::config_parser(s);
        for m in mutants(s, &mut rng, 500) {
            fuzzing::config_parser(&m);
        }
    }
    for s in corpus("config_parser") {
        fuzzing::config_parser(&s);
    }
}
