//! The batch format shipped from a source instance to a target instance.
//!
//! A batch travels as a stream of *segments*: after the 4 bytes [`MAGIC`], each segment is
//! a big-endian `u32` length followed by that many bytes of JSON (a [`Batch`] holding the
//! next events), and the whole stream is optionally one zstd stream (`Content-Encoding:
//! zstd`). The source writes the
//! segments while it reads the queue and the target applies each as it arrives, inside the
//! batch's one transaction, so neither side holds a whole batch in memory: a transaction of
//! millions of rows costs a segment's worth of memory, not the transaction's. The last
//! segment says so (`last`); a stream that ends before it is refused and rolled back.
//!
//! Row images travel as the source's own `json` text, untouched (`RawValue`), so numeric
//! precision and every other value survive exactly; the target rebuilds rows with
//! `json_populate_record(set)`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Version of this format; a target refuses others with 400.
pub const FORMAT_VERSION: u32 = 2;

/// First bytes of a (decompressed) batch stream.
pub const MAGIC: &[u8; 4] = b"PGT2";

/// One segment of a batch: the next events of whole source transactions, in capture order.
/// A small batch is one segment (`part` 0, `last`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub version: u32,
    /// 0, 1, 2, … within the batch.
    #[serde(default)]
    pub part: u32,
    /// This segment ends the batch.
    #[serde(default = "yes")]
    pub last: bool,
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
    /// Every table the batch's events refer to (by index); each segment carries all.
    pub tables: Vec<TableMeta>,
    pub events: Vec<Event>,
    /// Schema versions the target may not have applied yet, in order (first segment only).
    /// Each is applied at its schema event, or earlier when an event needs it (a column
    /// added and written in one transaction reaches the target before the watcher's event).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ddl: Vec<DdlVersion>,
}

fn yes() -> bool {
    true
}

/// One schema version: the DDL that turns the target's previous version into this one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DdlVersion {
    pub version: i64,
    pub statements: Vec<ddlwatcher::Statement>,
    /// The source transaction that made the version, when known: a statement that
    /// deletes rows of a table an initial load copied under a snapshot that saw it is left
    /// out ([`ddlwatcher::Statement::deletes_rows_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txid: Option<u64>,
}

/// A member name of a JSON object: borrowed from the text unless written with escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Calls `member` with each member of the JSON object `raw`, in order: its name and its
/// raw value (unparsed). The one walk the row-image helpers below share.
fn for_each_member<'de>(
    raw: &'de str,
    member: impl FnMut(Cow<'de, str>, &'de RawValue) -> Result<(), String>,
) -> Result<(), serde_json::Error> {
    struct Walk<F>(F);
    impl<'de, F> serde::de::Visitor<'de> for Walk<F>
    where
        F: FnMut(Cow<'de, str>, &'de RawValue) -> Result<(), String>,
    {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            while let Some(Name(k)) = map.next_key::<Name<'de>>()? {
                let v = map.next_value::<&'de RawValue>()?;
                (self.0)(k, v).map_err(serde::de::Error::custom)?;
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    serde::Deserializer::deserialize_map(&mut de, Walk(member))
}

/// The column names of a row image (a JSON object's keys), without parsing its values.
pub fn object_keys(raw: &RawValue) -> Result<Vec<String>, serde_json::Error> {
    let mut keys = Vec::new();
    for_each_member(raw.get(), |k, _| {
        keys.push(k.into_owned());
        Ok(())
    })?;
    Ok(keys)
}

/// Whether the keys of the object `raw`, less those in `skip`, are `names` in this order
/// (without copying them).
pub fn object_keys_are(
    raw: &RawValue,
    names: &[String],
    skip: &[String],
) -> Result<bool, serde_json::Error> {
    let (mut at, mut same) = (0, true);
    for_each_member(raw.get(), |k, _| {
        if same && !skip.iter().any(|s| *s == k) {
            same = names.get(at).is_some_and(|n| *n == k);
            at += 1;
        }
        Ok(())
    })?;
    Ok(same && at == names.len())
}

/// The values of `names` in the object `raw` as PostgreSQL's input functions take them (a
/// string's content, a number's or boolean's literal; `None` for null), in the order of
/// `names`. `None` when a name is missing, a value is an array or an object (those need
/// `json_populate_record`'s conversions), or `raw` is not an object.
pub fn object_texts(raw: &RawValue, names: &[String]) -> Option<Vec<Option<String>>> {
    let mut found: Vec<Option<Option<String>>> = vec![None; names.len()];
    let mut scalar = true;
    for_each_member(raw.get(), |k, v| {
        let Some(i) = names.iter().position(|n| *n == k) else {
            return Ok(());
        };
        let v = v.get();
        found[i] = Some(match v.as_bytes().first() {
            Some(b'"') => Some(serde_json::from_str::<String>(v).map_err(|e| e.to_string())?),
            Some(b'n') => None,
            Some(b'[' | b'{') | None => {
                scalar = false;
                None
            }
            Some(_) => Some(v.to_string()),
        });
        Ok(())
    })
    .ok()?;
    if !scalar {
        return None;
    }
    found.into_iter().collect()
}

/// The string values of the members of object `raw` named in `columns`, each with the
/// number `columns` gives its name (other values — null, numbers, arrays — left out).
pub fn object_texts_of(
    raw: &RawValue,
    columns: &[(&String, u32)],
) -> Result<Vec<(u32, String)>, serde_json::Error> {
    let mut out = Vec::new();
    for_each_member(raw.get(), |k, v| {
        if let Some((_, n)) = columns.iter().find(|(c, _)| **c == k) {
            if v.get().starts_with('"') {
                out.push((
                    *n,
                    serde_json::from_str(v.get()).map_err(|e| e.to_string())?,
                ));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// What [`object_edited`] does with a member.
pub enum Edit {
    Keep,
    Drop,
    /// Its value replaced by this raw JSON.
    Replace(String),
    /// Kept under this name.
    Rename(String),
}

/// The object `raw` with each member kept, left out or given another value as `edit` says,
/// in their order (raw values kept exactly as written).
pub fn object_edited(
    raw: &str,
    mut edit: impl FnMut(&str, &RawValue) -> Edit,
) -> Result<String, serde_json::Error> {
    let mut out = String::from("{");
    for_each_member(raw, |k, v| {
        let (name, value) = match edit(&k, v) {
            Edit::Drop => return Ok(()),
            Edit::Keep => (Cow::Borrowed(k.as_ref()), Cow::Borrowed(v.get())),
            Edit::Replace(r) => (Cow::Borrowed(k.as_ref()), Cow::Owned(r)),
            Edit::Rename(n) => (Cow::Owned(n), Cow::Borrowed(v.get())),
        };
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(&name).map_err(|e| e.to_string())?);
        out.push(':');
        out.push_str(&value);
        Ok(())
    })?;
    out.push('}');
    Ok(out)
}

/// The raw JSON values of `names` in the object `raw`, in the order of `names`, joined
/// with a separator no JSON text contains unescaped; `None` when one is missing or `raw`
/// is not an object. Two images of one row under one encoder give the same text.
pub fn object_values(raw: &RawValue, names: &[String]) -> Option<String> {
    let mut found: Vec<Option<&str>> = vec![None; names.len()];
    for_each_member(raw.get(), |k, v| {
        if let Some(i) = names.iter().position(|n| *n == k) {
            found[i] = Some(v.get());
        }
        Ok(())
    })
    .ok()?;
    let mut out = String::new();
    for v in found {
        out.push_str(v?);
        out.push('\u{1}');
    }
    Some(out)
}

/// A table the batch's events refer to (by index).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TableMeta {
    pub schema: String,
    pub name: String,
    /// The source table's OID: names a table across renames (an initial load's snapshot
    /// rule finds the table it copied by it when the events name it as it was called
    /// before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<u32>,
    /// Primary key columns.
    pub key: Vec<String>,
    /// Columns the applier writes (generated columns excluded).
    pub columns: Vec<String>,
    /// Generated columns: present in row images, never written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<String>,
    /// json/jsonb columns, also domains over them (name, base type `json` or `jsonb`): their values travel as text, so that the JSON
    /// literal `null` and SQL NULL stay apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json_columns: Vec<(String, String)>,
    /// The mirror's `soft_delete_col_name`: a delete sets this boolean column instead of
    /// removing the row, and an insert of that key again clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_delete_column: Option<String>,
    /// The mirror's `synced_at_col_name`: set to the apply transaction's time on every row
    /// an insert, update or soft delete writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_at_column: Option<String>,
    /// The source's key is `DEFERRABLE`: the key changes of one statement (numbered in
    /// the old key's member `""`) are applied together.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_deferrable: bool,
    /// Not sent: columns the target defines `GENERATED ALWAYS AS IDENTITY` (the applier
    /// reads them from its catalog). No UPDATE may set them; the applier's updates leave
    /// them out and require them unchanged instead.
    #[serde(skip)]
    pub identity_always: Vec<String>,
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
    /// Sequence positions: `data` is `{"sequences": [[schema, name, last_value], …],
    /// "outside": […]}` — those of the replicated schemas (renamed to `apply_schema` on the
    /// target), and those of other schemas that tables' defaults draw from (names kept).
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

/// The number of the statement a key change came from (the old key's member `""`), when
/// its table numbers them (a `DEFERRABLE` key).
pub fn statement_of(e: &Event) -> Option<String> {
    #[derive(Deserialize)]
    struct Numbered {
        #[serde(rename = "")]
        statement: Option<serde_json::Value>,
    }
    let key = e.key.as_deref()?;
    let n: Numbered = serde_json::from_str(key.get()).ok()?;
    n.statement.map(|v| v.to_string())
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
    /// Old primary key: DELETE, and an UPDATE that changed the key; a keyless table's
    /// whole old row. An UPDATE filling the values a volatile default gave a keyless
    /// table's rows has the rows' other columns here and member `""`, the number of rows
    /// alike in them; its `data` then holds one array per new column, a value per row.
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
    #[error("a batch segment is larger than {limit} bytes after decompression")]
    TooLarge { limit: usize },
    #[error("the body ends inside a batch segment (truncated)")]
    Truncated,
    #[error("the body is not a pgteleport batch stream (it must start with `PGT2`); is the source a different version?")]
    Magic,
    #[error("body is not a valid batch: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid batch: {0}")]
    Invalid(String),
}

/// Writes the segments of a batch into a byte stream, compressing as it goes.
pub struct SegmentWriter {
    zstd: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
    plain: Vec<u8>,
    started: bool,
}

impl SegmentWriter {
    pub fn new(compress: bool) -> std::io::Result<Self> {
        Ok(Self {
            zstd: if compress {
                Some(zstd::stream::write::Encoder::new(Vec::new(), 1)?)
            } else {
                None
            },
            plain: Vec::new(),
            started: false,
        })
    }

    /// Adds a segment; returns the bytes ready to send (possibly none yet).
    pub fn push(&mut self, segment: &Batch) -> std::io::Result<bytes::Bytes> {
        use std::io::Write;
        let json = serde_json::to_vec(segment).map_err(std::io::Error::other)?;
        let len = u32::try_from(json.len())
            .map_err(|_| std::io::Error::other("a batch segment exceeds 4 GiB"))?;
        let magic: &[u8] = if std::mem::replace(&mut self.started, true) {
            &[]
        } else {
            MAGIC
        };
        match &mut self.zstd {
            Some(z) => {
                z.write_all(magic)?;
                z.write_all(&len.to_be_bytes())?;
                z.write_all(&json)?;
                Ok(std::mem::take(z.get_mut()).into())
            }
            None => {
                self.plain.extend_from_slice(magic);
                self.plain.extend_from_slice(&len.to_be_bytes());
                self.plain.extend_from_slice(&json);
                Ok(std::mem::take(&mut self.plain).into())
            }
        }
    }

    /// Ends the stream; returns its last bytes.
    pub fn finish(self) -> std::io::Result<bytes::Bytes> {
        match self.zstd {
            Some(z) => Ok(z.finish()?.into()),
            None => Ok(self.plain.into()),
        }
    }
}

/// Reads segments back from the chunks of a body as they arrive. Memory stays within one
/// segment (at most `limit` bytes decompressed) plus one chunk, whatever the body's size.
pub struct SegmentReader {
    zstd: Option<zstd::stream::raw::Decoder<'static>>,
    /// Inside a zstd frame (its end not decoded yet).
    in_frame: bool,
    input: std::collections::VecDeque<bytes::Bytes>,
    buf: Vec<u8>,
    limit: usize,
    /// The magic was read.
    started: bool,
}

impl SegmentReader {
    pub fn new(zstd_encoded: bool, limit: usize) -> Result<Self, DecodeError> {
        Ok(Self {
            zstd: if zstd_encoded {
                Some(
                    zstd::stream::raw::Decoder::new()
                        .map_err(|e| DecodeError::Compression(e.to_string()))?,
                )
            } else {
                None
            },
            in_frame: false,
            input: Default::default(),
            buf: Vec::new(),
            limit,
            started: false,
        })
    }

    /// Hands over the next chunk of the body.
    pub fn feed(&mut self, chunk: bytes::Bytes) {
        if !chunk.is_empty() {
            self.input.push_back(chunk);
        }
    }

    /// The next whole segment, parsed and validated; `None` when more input is needed.
    pub fn next_segment(&mut self) -> Result<Option<Batch>, DecodeError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        loop {
            if !self.started && self.buf.len() >= 4 {
                if &self.buf[..4] != MAGIC {
                    return Err(DecodeError::Magic);
                }
                self.buf.drain(..4);
                self.started = true;
            }
            if self.started && self.buf.len() >= 4 {
                let n = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if n > self.limit {
                    return Err(DecodeError::TooLarge { limit: self.limit });
                }
                if self.buf.len() >= 4 + n {
                    let batch: Batch = serde_json::from_slice(&self.buf[4..4 + n])?;
                    self.buf.drain(..4 + n);
                    batch.validate()?;
                    return Ok(Some(batch));
                }
            }
            let Some(chunk) = self.input.front_mut() else {
                return Ok(None);
            };
            match &mut self.zstd {
                None => {
                    self.buf.extend_from_slice(chunk);
                    self.input.pop_front();
                }
                Some(decoder) => {
                    // At most 128 KiB of output per step, so a small body cannot expand
                    // past the segment limit before the limit is checked.
                    let mut out = vec![0u8; 128 << 10];
                    let mut src = InBuffer::around(&chunk[..]);
                    let mut dst = OutBuffer::around(&mut out[..]);
                    let hint = decoder
                        .run(&mut src, &mut dst)
                        .map_err(|e| DecodeError::Compression(e.to_string()))?;
                    let (read, written) = (src.pos(), dst.pos());
                    self.in_frame = hint != 0;
                    self.buf.extend_from_slice(&out[..written]);
                    let _ = chunk.split_to(read);
                    if chunk.is_empty() {
                        self.input.pop_front();
                    }
                }
            }
        }
    }

    /// The body ended: everything must have been read as whole segments.
    /// Call once `next_segment` returned `None` after the last chunk was fed (a segment
    /// after the batch's last part is the applier's to refuse).
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.in_frame {
            return Err(DecodeError::Compression(
                "the zstd stream is truncated".into(),
            ));
        }
        if !self.buf.is_empty() || !self.input.is_empty() {
            return Err(DecodeError::Truncated);
        }
        Ok(())
    }
}

/// Encodes a batch as a stream of one segment.
pub fn encode(batch: &Batch, compress: bool) -> Result<Vec<u8>, std::io::Error> {
    let mut w = SegmentWriter::new(compress)?;
    let mut out = w.push(batch)?.to_vec();
    out.extend_from_slice(&w.finish()?);
    Ok(out)
}

/// Decodes a whole body into its segments (with a limit per segment).
pub fn decode(body: &[u8], zstd_encoded: bool, limit: usize) -> Result<Vec<Batch>, DecodeError> {
    let mut r = SegmentReader::new(zstd_encoded, limit)?;
    r.feed(bytes::Bytes::copy_from_slice(body));
    let mut out = Vec::new();
    while let Some(b) = r.next_segment()? {
        out.push(b);
    }
    r.finish()?;
    Ok(out)
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

    #[test]
    fn keys_compare_in_order_without_the_skipped_ones() {
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let img = raw(r#"{"id":1,"g":2,"n\u00e9":"x"}"#);
        assert!(object_keys_are(&img, &names(&["id", "né"]), &names(&["g"])).unwrap());
        assert!(!object_keys_are(&img, &names(&["id", "g", "né"]), &names(&["g"])).unwrap());
        assert!(!object_keys_are(&img, &names(&["né", "id"]), &names(&["g"])).unwrap());
        assert!(!object_keys_are(&img, &names(&["id"]), &names(&["g"])).unwrap());
        assert!(object_keys_are(&img, &names(&["id", "g", "né"]), &[]).unwrap());
        assert!(object_keys_are(&raw("[1]"), &names(&["id"]), &[]).is_err());
    }

    #[test]
    fn a_copy_header_travels_as_visible_ascii_and_reads_back_whole() {
        let header = CopyHeader {
            source: "src".into(),
            target: "t1".into(),
            apply_schema: Some("Schéma".into()),
            schema: "Ap,p \"x\"".into(),
            table: "Mé \"T\", 1 \u{7f} 😀 \t".into(),
            range: 0,
            snapshot: "10:10:".into(),
            format: "binary".into(),
            columns: vec!["K y".into(), "ü".into()],
            whole: true,
        };
        let value = header.to_header_value();
        assert!(value.chars().all(|c| (' '..='~').contains(&c)), "{value}");
        assert!(hyper::header::HeaderValue::from_str(&value).is_ok());
        let back: CopyHeader = serde_json::from_str(&value).unwrap();
        assert_eq!(
            (back.schema, back.table, back.apply_schema, back.columns),
            (
                header.schema,
                header.table,
                header.apply_schema,
                header.columns
            )
        );
    }

    #[test]
    fn object_texts_give_input_function_text_or_refuse_nested_values() {
        let raw = RawValue::from_string(
            r#"{"id":12,"t":"a\"b\u00e9\n","n":null,"f":-1.5e-300,"b":true,"x":"skip"}"#.into(),
        )
        .unwrap();
        let names: Vec<String> = ["b", "f", "id", "n", "t"].map(String::from).to_vec();
        assert_eq!(
            object_texts(&raw, &names),
            Some(vec![
                Some("true".into()),
                Some("-1.5e-300".into()),
                Some("12".into()),
                None,
                Some("a\"b\u{e9}\n".into()),
            ])
        );
        let missing: Vec<String> = vec!["id".into(), "absent".into()];
        assert_eq!(object_texts(&raw, &missing), None);
        let nested = RawValue::from_string(r#"{"id":1,"a":[1,2]}"#.into()).unwrap();
        assert_eq!(object_texts(&nested, &["id".into(), "a".into()]), None);
        let object = RawValue::from_string(r#"{"id":1,"c":{"x":1}}"#.into()).unwrap();
        assert_eq!(
            object_texts(&object, &["id".into()]),
            Some(vec![Some("1".into())])
        );
        assert_eq!(object_texts(&object, &["id".into(), "c".into()]), None);
    }

    #[test]
    fn objects_are_edited_member_by_member_keeping_raw_values() {
        let raw = r#"{"id":12.50,"m":"a\u00e9","gone":1,"n":null}"#;
        let edited = object_edited(raw, |k, v| match k {
            "gone" => Edit::Drop,
            "m" => Edit::Replace(format!("[{}]", v.get())),
            _ => Edit::Keep,
        })
        .unwrap();
        assert_eq!(edited, r#"{"id":12.50,"m":["a\u00e9"],"n":null}"#);
        let without = |excluded: &[&str]| {
            object_edited(raw, |k, _| match excluded.contains(&k) {
                true => Edit::Drop,
                false => Edit::Keep,
            })
            .unwrap()
        };
        assert_eq!(without(&["m", "id"]), r#"{"gone":1,"n":null}"#);
        let renamed = object_edited(raw, |k, _| match k {
            "m" => Edit::Rename("m2".into()),
            _ => Edit::Keep,
        })
        .unwrap();
        assert_eq!(renamed, r#"{"id":12.50,"m2":"a\u00e9","gone":1,"n":null}"#);
        let image = RawValue::from_string(raw.into()).unwrap();
        let (m, n, id) = ("m".to_string(), "n".to_string(), "id".to_string());
        assert_eq!(
            object_texts_of(&image, &[(&m, 7), (&n, 8), (&id, 9)]).unwrap(),
            [(7, "a\u{e9}".to_string())]
        );
    }

    fn sample() -> Batch {
        Batch {
            version: FORMAT_VERSION,
            part: 0,
            last: true,
            source: "src".into(),
            target: "t".into(),
            seq: 3,
            apply_schema: None,
            captured_at_us: Some(1),
            tables: vec![TableMeta {
                oid: None,
                soft_delete_column: None,
                synced_at_column: None,
                schema: "public".into(),
                name: "a".into(),
                key: vec!["id".into()],
                columns: vec!["id".into(), "v".into()],
                generated: vec![],
                json_columns: vec![],
                key_deferrable: false,
                identity_always: Vec::new(),
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
            assert_eq!(b.len(), 1);
            assert_eq!(
                b[0].events[0].data.as_ref().unwrap().get(),
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
        let mut framed = MAGIC.to_vec();
        framed.extend_from_slice(&13u32.to_be_bytes());
        framed.extend_from_slice(b"{\"version\":2}");
        assert!(matches!(
            decode(&framed, false, 100),
            Err(DecodeError::Json(_))
        ));
        // A plain body cut inside a segment.
        let plain = encode(&sample(), false).unwrap();
        assert!(matches!(
            decode(&plain[..plain.len() - 3], false, 1 << 20),
            Err(DecodeError::Truncated)
        ));
    }

    #[test]
    fn segments_stream_in_any_chunking() {
        for compress in [false, true] {
            let mut w = SegmentWriter::new(compress).unwrap();
            let mut body = Vec::new();
            for part in 0..50u32 {
                let mut s = sample();
                s.part = part;
                s.last = part == 49;
                body.extend_from_slice(&w.push(&s).unwrap());
            }
            body.extend_from_slice(&w.finish().unwrap());
            // Fed in odd-sized chunks, segments come out whole and in order.
            let mut r = SegmentReader::new(compress, 1 << 20).unwrap();
            let mut parts = Vec::new();
            for chunk in body.chunks(7) {
                r.feed(bytes::Bytes::copy_from_slice(chunk));
                while let Some(s) = r.next_segment().unwrap() {
                    parts.push(s.part);
                }
            }
            r.finish().unwrap();
            assert_eq!(parts, (0..50).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_compressed_bomb_stops_at_the_segment_limit() {
        // 1 GiB of zeros claims a segment far above the limit: refused after reading
        // little more than the length prefix.
        let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        use std::io::Write;
        z.write_all(MAGIC).unwrap();
        z.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
        for _ in 0..1024 {
            z.write_all(&[b' '; 1 << 20]).unwrap();
        }
        let body = z.finish().unwrap();
        let mut r = SegmentReader::new(true, 1 << 20).unwrap();
        r.feed(body.into());
        assert!(matches!(
            r.next_segment(),
            Err(DecodeError::TooLarge { .. })
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
    /// Functions and procedures of the replicated schemas: created before the tables,
    /// whose defaults, checks and generated columns may call them.
    #[serde(default)]
    pub functions: Vec<ddlwatcher::Function>,
    /// Sequences of the replicated schemas that no identity column owns: created before the
    /// tables, whose defaults may draw from them.
    #[serde(default)]
    pub sequences: Vec<ddlwatcher::Sequence>,
    /// Views of the replicated schemas, in creation order: created after the tables.
    #[serde(default)]
    pub views: Vec<ddlwatcher::View>,
    /// Collations of user schemas that the tables' columns use: created before them.
    #[serde(default)]
    pub collations: Vec<ddlwatcher::Collation>,
    /// Empty target tables that already hold rows (otherwise they are refused).
    #[serde(default)]
    pub truncate: bool,
    /// Tables (schema and name as `tables` give them) to copy again though complete on the
    /// target (`--copy-again`): their records go, and their rows are replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub again: Vec<(String, String)>,
    /// The last schema version the catalog above includes: the target leaves the statements
    /// of versions up to it out for the tables it creates from this catalog (and tolerates
    /// those of other objects that it finds done).
    #[serde(default)]
    pub schema_version: Option<i64>,
    /// The versions up to `schema_version` the target may not have applied: a table it
    /// has already and loads takes their changes of it before the copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ddl: Vec<DdlVersion>,
}

impl LoadPrepare {
    /// Whether the rows target table `t` (one of `tables`) holds are replaced: `truncate`,
    /// or it is to be copied again.
    pub fn replaces(&self, t: &ddlwatcher::Table) -> bool {
        self.truncate
            || self
                .again
                .iter()
                .any(|(schema, name)| *schema == t.schema && *name == t.name)
    }
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

/// Initial load, before it locks its tables: which of `tables` (schema and name as the
/// target calls them, before `apply_schema`) are complete on the target — an earlier run
/// of it finished them, or the stream made them. Those are neither locked nor copied
/// again (but those the load copies again, `--copy-again`). Answer: `{"done": [[schema,
/// name], …]}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadDone {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub apply_schema: Option<String>,
    pub tables: Vec<(String, String)>,
    /// The source OIDs of `tables`, in their order: a table the stream renamed since the
    /// run that finished it (or since the stream created it) is found by its OID.
    #[serde(default)]
    pub oids: Vec<u32>,
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
    /// The range is the whole table: a table the load created is emptied and filled in
    /// one transaction (`TRUNCATE` + `COPY … FREEZE`, which writes no WAL under
    /// `wal_level = minimal`).
    #[serde(default)]
    pub whole: bool,
}

impl CopyHeader {
    /// The header as JSON in visible ASCII, as an HTTP header value must be: characters
    /// outside it (non-ASCII names, DEL) are written as `\u` escapes, which any JSON
    /// parser reads back as they were.
    pub fn to_header_value(&self) -> String {
        let json = serde_json::to_string(self).expect("serialisable");
        let mut out = String::with_capacity(json.len());
        for c in json.chars() {
            if (' '..='~').contains(&c) {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
        out
    }
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

/// Initial load, last step: every table is loaded; add the foreign keys of the tables the
/// load created (those among the loaded tables, and those to tables the target has).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadForeignKeys {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub apply_schema: Option<String>,
    /// Every table of the load, as the target names them (`rename_tables` applied, also to
    /// the tables their foreign keys refer to).
    pub tables: Vec<ddlwatcher::Table>,
}

/// What the last step did, one `table.constraint` (and the database's reason) per key.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForeignKeysAdded {
    /// Added and validated.
    pub added: Vec<String>,
    /// Added `NOT VALID`, as the source has them.
    pub not_valid_as_on_source: Vec<String>,
    /// Added but left `NOT VALID`: rows they refer to are missing on the target.
    pub not_validated: Vec<String>,
    /// Not added: the target cannot (a table they refer to is missing).
    pub failed: Vec<String>,
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
