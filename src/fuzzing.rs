//! Entry points for the fuzzers (`fuzz/`, run with `cargo fuzz`) and for the corpus replay
//! that CI runs on stable Rust (`tests/fuzz_smoke.rs`). Each takes arbitrary bytes and must
//! neither panic nor accept what it cannot use.

use std::path::Path;

use crate::wire::{self, SegmentReader};

/// Largest decompressed segment the fuzzed decoder accepts (small, so a zstd bomb is found
/// by the limit, not by the machine's memory).
const LIMIT: usize = 1 << 20;

/// Decodes `data` as a batch body, compressed and not, whole and fed in uneven chunks; every
/// segment it yields must pass validation, and one that decodes re-encodes to a body that
/// decodes to the same segments.
pub fn batch_decoder(data: &[u8]) {
    for compressed in [false, true] {
        let whole = wire::decode(data, compressed, LIMIT);
        // The same body in chunks of the sizes its first bytes give: the streaming reader
        // must agree with the whole-body decoder.
        let mut reader = match SegmentReader::new(compressed, LIMIT) {
            Ok(r) => r,
            Err(_) => continue,
        };
        let mut chunked = Vec::new();
        let mut failed = false;
        let mut at = 0;
        let mut step = 1 + data.first().copied().unwrap_or(7) as usize % 61;
        while at < data.len() && !failed {
            let end = (at + step).min(data.len());
            reader.feed(bytes::Bytes::copy_from_slice(&data[at..end]));
            at = end;
            step = 1 + (step * 7 + 3) % 97;
            loop {
                match reader.next_segment() {
                    Ok(Some(b)) => chunked.push(b),
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
        }
        if !failed && reader.finish().is_err() {
            failed = true;
        }
        match whole {
            Ok(segments) => {
                assert!(
                    !failed,
                    "the streaming reader refused a body the whole-body decoder took"
                );
                assert_eq!(
                    segments.len(),
                    chunked.len(),
                    "both decoders yield the same segments"
                );
                for s in &segments {
                    if s.validate().is_err() {
                        continue; // the server refuses it with 400: fine
                    }
                    let again = wire::encode(s, compressed).expect("a decoded segment encodes");
                    let round =
                        wire::decode(&again, compressed, usize::MAX).expect("its encoding decodes");
                    assert_eq!(round.len(), 1);
                    assert_eq!(
                        serde_json::to_string(&round[0]).ok(),
                        serde_json::to_string(s).ok(),
                        "a segment survives encode and decode unchanged"
                    );
                }
            }
            Err(_) => assert!(failed, "refused whole but accepted in chunks"),
        }
    }
}

/// Parses `data` as a YAML configuration (with and without environment overrides): an
/// error is fine, a panic is not, and an accepted configuration validates.
pub fn config_parser(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.yml");
    let _ = crate::config::Config::from_yaml(text, path, |_| None);
    let _ = crate::config::Config::from_yaml(text, path, |k| {
        k.ends_with("PASSWORD").then(|| "from-env".to_string())
    });
}
