//! The batch format shipped from a source instance to a target instance.
//!
//! JSON (optionally zstd-compressed, `Content-Encoding: zstd`). Row images travel as the
//! source's own `json` text, untouched (`RawValue`), so numeric precision and every other
//! value survive exactly; the target rebuilds rows with `json_populate_record(set)`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Version of this format; a target refuses others with 400.
pub const FORMAT_VERSION: u32 = 1;

/// One batch: the events of whole source transactions, in capture order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub version: u32,
    /// Source instance name (`database.name` of the source).
    pub source: String,
    /// Target name in the source's config.
    pub target: String,
    /// 1, 2, 3, … per (source, target), without gaps.
    pub seq: i64,
    /// Write every table into this schema instead of its source schema.
    #[serde(default)]
    pub apply_schema: Option<String>,
    /// When the oldest event of the batch was captured, microseconds since the Unix epoch.
    #[serde(default)]
    pub captured_at_us: Option<i64>,
    pub tables: Vec<TableMeta>,
    pub events: Vec<Event>,
    /// Schema versions the target may not have applied yet, in order. Each is applied at
    /// its schema event, or earlier when an event needs it (a column added and written in
    /// one transaction reaches the target before the watcher's event).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ddl: Vec<DdlVersion>,
}

/// One schema version: the DDL that turns the target's previous version into this one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DdlVersion {
    pub version: i64,
    pub statements: Vec<ddlwatcher::Statement>,
}

/// The column names of a row image (a JSON object's keys), without parsing its values.
pub fn object_keys(raw: &RawValue) -> Result<Vec<String>, serde_json::Error> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                keys.push(k);
            }
            Ok(keys)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde::Deserializer::deserialize_map(&mut de, Keys)
}

/// A table the batch's events refer to (by index).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TableMeta {
    pub schema: String,
    pub name: String,
    /// Primary key columns.
    pub key: Vec<String>,
    /// Columns the applier writes (generated columns excluded).
    pub columns: Vec<String>,
    /// Generated columns: present in row images, never written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<String>,
    /// json/jsonb columns (name, type): their values travel as text, so that the JSON
    /// literal `null` and SQL NULL stay apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json_columns: Vec<(String, String)>,
}

/// Kind of change.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum Op {
    #[serde(rename = "I")]
    Insert,
    #[serde(rename = "U")]
    Update,
    #[serde(rename = "D")]
    Delete,
    /// TRUNCATE of the table (no key, no data).
    #[serde(rename = "T")]
    Truncate,
    /// Sequence positions: `data` is `{"sequences": [[schema, name, last_value], …]}`.
    #[serde(rename = "Q")]
    Sequences,
    /// A schema change: `data` is `{"version": n}`, one of [`Batch::ddl`].
    #[serde(rename = "S")]
    Schema,
}

impl Op {
    /// Schema and sequence events belong to the whole stream, not to one table.
    pub fn is_stream_wide(self) -> bool {
        matches!(self, Op::Schema | Op::Sequences)
    }

    pub fn from_code(c: i8) -> Option<Self> {
        match c as u8 {
            b'I' => Some(Op::Insert),
            b'U' => Some(Op::Update),
            b'D' => Some(Op::Delete),
            b'S' => Some(Op::Schema),
            b'T' => Some(Op::Truncate),
            b'Q' => Some(Op::Sequences),
            _ => None,
        }
    }
}

/// One captured row change.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Source event id (capture order).
    pub id: i64,
    pub op: Op,
    /// Index into [`Batch::tables`].
    pub table: u32,
    /// Source transaction id (for the initial load's snapshot rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txid: Option<u64>,
    /// Old primary key: DELETE, and an UPDATE that changed the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Box<RawValue>>,
    /// New row image: INSERT and UPDATE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
}

/// Why a body is not a valid batch. Always answered with 400.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not valid zstd: {0}")]
    Compression(String),
    #[error("batch is larger than {limit} bytes after decompression")]
    TooLarge { limit: usize },
    #[error("body is not a valid batch: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid batch: {0}")]
    Invalid(String),
}

/// Serialises and compresses a batch.
pub fn encode(batch: &Batch, compress: bool) -> Result<Vec<u8>, std::io::Error> {
    let json = serde_json::to_vec(batch).map_err(std::io::Error::other)?;
    if compress {
        zstd::bulk::compress(&json, 1)
    } else {
        Ok(json)
    }
}

/// Decompresses (when `zstd`) with a size limit, parses and validates a batch.
pub fn decode(body: &[u8], zstd_encoded: bool, limit: usize) -> Result<Batch, DecodeError> {
    let batch: Batch = if zstd_encoded {
        use std::io::Read;
        let decoder = zstd::stream::read::Decoder::new(body)
            .map_err(|e| DecodeError::Compression(e.to_string()))?;
        let mut json = Vec::new();
        decoder
            .take(limit as u64 + 1)
            .read_to_end(&mut json)
            .map_err(|e| DecodeError::Compression(e.to_string()))?;
        if json.len() > limit {
            return Err(DecodeError::TooLarge { limit });
        }
        serde_json::from_slice(&json)?
    } else {
        if body.len() > limit {
            return Err(DecodeError::TooLarge { limit });
        }
        serde_json::from_slice(body)?
    };
    batch.validate()?;
    Ok(batch)
}

impl Batch {
    /// Checks what serde cannot: references, required parts, names.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let bad = |m: String| Err(DecodeError::Invalid(m));
        if self.version != FORMAT_VERSION {
            return bad(format!(
                "format version {} is not supported (this target speaks {FORMAT_VERSION}); upgrade the older instance",
                self.version
            ));
        }
        if self.seq < 1 {
            return bad(format!("seq must be at least 1, got {}", self.seq));
        }
        for (what, name) in [("source", &self.source), ("target", &self.target)] {
            if name.is_empty() || name.len() > 63 || name.contains('\0') {
                return bad(format!("{what} name must have 1 to 63 bytes and no NUL"));
            }
        }
        if let Some(s) = &self.apply_schema {
            check_ident("apply_schema", s)?;
        }
        for (i, t) in self.tables.iter().enumerate() {
            check_ident(&format!("tables[{i}].schema"), &t.schema)?;
            check_ident(&format!("tables[{i}].name"), &t.name)?;
            for c in t.key.iter().chain(&t.columns) {
                check_ident(&format!("tables[{i}] column"), c)?;
            }
        }
        for (i, e) in self.events.iter().enumerate() {
            if !e.op.is_stream_wide() && e.table as usize >= self.tables.len() {
                return bad(format!(
                    "events[{i}] refers to table {} of {}",
                    e.table,
                    self.tables.len()
                ));
            }
            let object =
                |v: &Option<Box<RawValue>>| v.as_ref().is_some_and(|r| r.get().starts_with('{'));
            match e.op {
                Op::Insert | Op::Update | Op::Schema | Op::Sequences if !object(&e.data) => {
                    return bad(format!(
                        "events[{i}] ({:?}) needs `data`, a JSON object",
                        e.op
                    ))
                }
                Op::Delete if !object(&e.key) => {
                    return bad(format!("events[{i}] (Delete) needs `key`, a JSON object"))
                }
                _ => {}
            }
            if e.key.as_ref().is_some_and(|k| !k.get().starts_with('{')) {
                return bad(format!("events[{i}]: `key` must be a JSON object"));
            }
        }
        Ok(())
    }
}

fn check_ident(what: &str, s: &str) -> Result<(), DecodeError> {
    if s.is_empty() || s.len() > 63 || s.contains('\0') {
        Err(DecodeError::Invalid(format!(
            "{what} must be an identifier of 1 to 63 bytes without NUL"
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Batch {
        Batch {
            version: FORMAT_VERSION,
            source: "src".into(),
            target: "t".into(),
            seq: 3,
            apply_schema: None,
            captured_at_us: Some(1),
            tables: vec![TableMeta {
                schema: "public".into(),
                name: "a".into(),
                key: vec!["id".into()],
                columns: vec!["id".into(), "v".into()],
                generated: vec![],
                json_columns: vec![],
            }],
            ddl: vec![],
            events: vec![Event {
                id: 9,
                op: Op::Insert,
                table: 0,
                txid: Some(7),
                key: None,
                data: Some(
                    RawValue::from_string(r#"{"id": 1, "v": 1.00000000000000000001}"#.into())
                        .unwrap(),
                ),
            }],
        }
    }

    #[test]
    fn round_trip_keeps_values_exact() {
        for compress in [false, true] {
            let body = encode(&sample(), compress).unwrap();
            let b = decode(&body, compress, 1 << 20).unwrap();
            assert_eq!(
                b.events[0].data.as_ref().unwrap().get(),
                r#"{"id": 1, "v": 1.00000000000000000001}"#
            );
        }
    }

    #[test]
    fn rejects_bad_references_and_sizes() {
        let mut b = sample();
        b.events[0].table = 5;
        assert!(matches!(
            decode(&encode(&b, false).unwrap(), false, 1 << 20),
            Err(DecodeError::Invalid(_))
        ));
        let b = sample();
        let body = encode(&b, true).unwrap();
        assert!(matches!(
            decode(&body, true, 10),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decode(&body[..body.len() / 2], true, 1 << 20),
            Err(DecodeError::Compression(_) | DecodeError::Json(_))
        ));
        assert!(matches!(
            decode(b"{\"version\":1}", false, 100),
            Err(DecodeError::Json(_))
        ));
    }
}

/// Initial load, step 1: create what is missing on the target and report each table's state.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadPrepare {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub apply_schema: Option<String>,
    pub tables: Vec<ddlwatcher::Table>,
    pub types: Vec<ddlwatcher::TypeDef>,
    /// Empty target tables that already hold rows (otherwise they are refused).
    #[serde(default)]
    pub truncate: bool,
}

/// A table's load state on the target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadTableState {
    /// Source schema and name.
    pub schema: String,
    pub name: String,
    /// `pending`, `copying` or `done`.
    pub state: String,
}

/// Initial load, step 2: these tables are copied under `snapshot` (a `pg_snapshot`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadStart {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub apply_schema: Option<String>,
    pub snapshot: String,
    /// Source schema and name of each table.
    pub tables: Vec<(String, String)>,
}

/// Initial load, step 3: one range of one table, as a COPY stream in the request body.
/// Travels as JSON in the `x-pgteleport-copy` header.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyHeader {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub apply_schema: Option<String>,
    pub schema: String,
    pub table: String,
    pub range: i32,
    pub snapshot: String,
    /// COPY format of the body: `binary` or `text`.
    pub format: String,
    pub columns: Vec<String>,
}

/// Initial load, step 4: every range of the table is sent; build keys and indexes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadFinish {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub apply_schema: Option<String>,
    pub table: ddlwatcher::Table,
    pub ranges: i32,
    pub snapshot: String,
}

/// A `pg_snapshot` in text form (`xmin:xmax:xip,…`), for the visibility rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl Snapshot {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        (xmin <= xmax).then_some(Self { xmin, xmax, xip })
    }

    /// Whether transaction `txid` had committed when the snapshot was taken (as
    /// `pg_visible_in_snapshot`, for a committed transaction).
    pub fn visible(&self, txid: u64) -> bool {
        txid < self.xmin || (txid < self.xmax && !self.xip.contains(&txid))
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::Snapshot;

    #[test]
    fn visibility_follows_pg_visible_in_snapshot() {
        let s = Snapshot::parse("100:105:100,103").unwrap();
        assert!(s.visible(99));
        assert!(!s.visible(100));
        assert!(s.visible(101));
        assert!(!s.visible(103));
        assert!(s.visible(104));
        assert!(!s.visible(105));
        assert!(Snapshot::parse("5:5:").unwrap().visible(4));
        assert!(Snapshot::parse("nonsense").is_none());
        assert!(Snapshot::parse("9:5:").is_none());
    }
}
