//! The target's HTTP API: authentication, malformed input, sequence rules. Every refused
//! request changes nothing.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use pgteleport::wire::{self, Batch, Event, Op, TableMeta, FORMAT_VERSION};
use serde_json::value::RawValue;

const SCHEMA: &str = "create schema app; create table app.t (id int primary key, v text);";

async fn post(
    port: u16,
    token: Option<&str>,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::post(format!("http://127.0.0.1:{port}/v1/batches"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    let resp = http
        .request(req.body(Full::new(Bytes::from(body)))?)
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::json!({"raw": String::from_utf8_lossy(&body)}));
    Ok((status, json))
}

fn batch(seq: i64, id: i32) -> Batch {
    Batch {
        version: FORMAT_VERSION,
        part: 0,
        last: true,
        source: "api-test".into(),
        target: "t1".into(),
        seq,
        apply_schema: None,
        captured_at_us: None,
        tables: vec![TableMeta {
            oid: None,
            soft_delete_column: None,
            synced_at_column: None,
            schema: "app".into(),
            name: "t".into(),
            key: vec!["id".into()],
            columns: vec!["id".into(), "v".into()],
            generated: vec![],
            json_columns: vec![],
            key_deferrable: false,
            identity_always: Vec::new(),
        }],
        ddl: vec![],
        events: vec![Event {
            id: seq,
            op: Op::Insert,
            table: 0,
            txid: None,
            key: None,
            data: Some(
                RawValue::from_string(format!(r#"{{"id": {id}, "v": "row {id}"}}"#)).unwrap(),
            ),
        }],
    }
}

async fn state(p: &Pair) -> anyhow::Result<(Vec<String>, i64)> {
    let dst = p.dst().await?;
    let rows = rows(&dst, "app.t").await?;
    let seq = dst
        .query_opt(
            "select seq from teleport.applied where source = 'api-test'",
            &[],
        )
        .await?
        .map_or(0, |r| r.get(0));
    Ok((rows, seq))
}

#[tokio::test]
async fn refused_requests_get_honest_codes_and_change_nothing() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let good = wire::encode(&batch(1, 1), true)?;

    let (s, j) = post(port, None, Some("zstd"), good.clone()).await?;
    assert_eq!(s, 401, "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("Authorization"),
        "{j}"
    );
    let (s, j) = post(port, Some("wrong-token"), Some("zstd"), good.clone()).await?;
    assert_eq!(s, 401, "{j}");
    assert!(
        !j.to_string().contains(TOKEN),
        "the token never appears in answers"
    );
    assert_eq!(
        state(&p).await?,
        (vec![], 0),
        "unauthorized requests change nothing"
    );

    for (body, enc, what) in [
        (b"not json".to_vec(), None, "garbage"),
        (b"{\"version\": 1}".to_vec(), None, "missing fields"),
        (
            good[..good.len() / 2].to_vec(),
            Some("zstd"),
            "truncated zstd",
        ),
        (
            b"\x28\xb5\x2f\xfd garbage".to_vec(),
            Some("zstd"),
            "corrupt zstd",
        ),
    ] {
        let (s, j) = post(port, Some(TOKEN), enc, body).await?;
        assert_eq!(s, 400, "{what}: {j}");
        assert!(j["error"].is_string(), "{what}: error message in JSON: {j}");
    }
    let mut bad_ref = batch(1, 1);
    bad_ref.events[0].table = 3;
    let (s, j) = post(port, Some(TOKEN), None, wire::encode(&bad_ref, false)?).await?;
    assert_eq!(s, 400, "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("refers to table 3"),
        "{j}"
    );
    let (s, j) = post(port, Some(TOKEN), Some("br"), good.clone()).await?;
    assert_eq!(s, 415, "{j}");
    assert_eq!(
        state(&p).await?,
        (vec![], 0),
        "malformed requests change nothing"
    );

    // A gap is refused with the expected sequence.
    let (s, j) = post(
        port,
        Some(TOKEN),
        Some("zstd"),
        wire::encode(&batch(3, 3), true)?,
    )
    .await?;
    assert_eq!(s, 409, "{j}");
    assert_eq!(j["expected_seq"], 1);
    // In order: applied; again: acknowledged as a duplicate, not applied twice.
    let (s, j) = post(port, Some(TOKEN), Some("zstd"), good.clone()).await?;
    assert_eq!((s, j["status"].as_str()), (200, Some("applied")), "{j}");
    let (s, j) = post(port, Some(TOKEN), Some("zstd"), good.clone()).await?;
    assert_eq!((s, j["status"].as_str()), (200, Some("duplicate")), "{j}");
    assert_eq!(state(&p).await?, (vec!["(1,\"row 1\")".to_string()], 1));

    // A batch that cannot apply (the key exists) is a 500 with the reason, and rolls back.
    let (s, j) = post(
        port,
        Some(TOKEN),
        Some("zstd"),
        wire::encode(&batch(2, 1), true)?,
    )
    .await?;
    assert_eq!(s, 500, "{j}");
    assert!(j["error"].as_str().unwrap().contains("23505"), "{j}");
    assert_eq!(state(&p).await?.1, 1, "the position did not move");
    // A table the target lacks: 422, the batch is held.
    let mut missing = batch(2, 2);
    missing.tables[0].name = "absent".into();
    let (s, j) = post(
        port,
        Some(TOKEN),
        Some("zstd"),
        wire::encode(&missing, true)?,
    )
    .await?;
    assert_eq!(s, 422, "{j}");
    assert_eq!(state(&p).await?.1, 1);
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn segment_size_limit_gives_413() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let target = p.start_target_with(0, "max_batch_bytes: 1000, ").await?;
    let port = target.local_addr.unwrap().port();
    let mut big = batch(1, 1);
    big.events[0].data = Some(RawValue::from_string(format!(
        r#"{{"id": 1, "v": "{}"}}"#,
        "x".repeat(5000)
    ))?);
    for compress in [false, true] {
        let (s, j) = post(
            port,
            Some(TOKEN),
            compress.then_some("zstd"),
            wire::encode(&big, compress)?,
        )
        .await?;
        assert_eq!(s, 413, "{j}");
        assert!(
            j["error"].as_str().unwrap().contains("max_batch_bytes"),
            "{j}"
        );
    }
    assert_eq!(state(&p).await?, (vec![], 0), "nothing applied");
    let (s, _) = post(port, Some(TOKEN), None, wire::encode(&batch(1, 1), false)?).await?;
    assert_eq!(s, 200);
    target.shutdown().await?;
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

#[tokio::test]
async fn check_reports_connections_and_privileges() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let cfg = pgteleport::config::Config::from_yaml(
        &p.source_yaml(port, "app.*", ""),
        std::path::Path::new("s.yml"),
        |_| None,
    )?;
    let report = pgteleport::check::check(&cfg).await;
    assert!(report.ok, "{}", report.text);
    assert!(
        report.text.contains("1 table(s) can be captured"),
        "{}",
        report.text
    );
    let bad = p.source_yaml(port, "app.*", "").replace(PASSWORD, "wrong");
    let cfg = pgteleport::config::Config::from_yaml(&bad, std::path::Path::new("s.yml"), |_| None)?;
    let report = pgteleport::check::check(&cfg).await;
    assert!(!report.ok);
    assert!(
        report.text.contains("password") && !report.text.contains("wrong"),
        "{}",
        report.text
    );
    let bad = p.source_yaml(port, "app.*", "").replace(TOKEN, "bad-token");
    let cfg = pgteleport::config::Config::from_yaml(&bad, std::path::Path::new("s.yml"), |_| None)?;
    let report = pgteleport::check::check(&cfg).await;
    assert!(!report.ok && report.text.contains("401"), "{}", report.text);
    target.shutdown().await?;
    Ok(())
}

#[test]
fn example_configs_load() {
    for f in ["config/source.yml", "config/target.yml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let env = |k: &str| (k == "PGTELEPORT_AUTH_TOKEN").then(|| "x".to_string());
        let text = std::fs::read_to_string(&path).unwrap();
        pgteleport::config::Config::from_yaml(&text, &path, env)
            .unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

/// A batch in several segments is applied whole or not at all.
#[tokio::test]
async fn segmented_batches_apply_whole_or_not_at_all() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let parts = |seq: i64, ids: &[i32], last: bool| -> anyhow::Result<Vec<u8>> {
        let mut w = wire::SegmentWriter::new(true)?;
        let mut body = Vec::new();
        for (part, id) in ids.iter().enumerate() {
            let mut s = batch(seq, *id);
            s.part = part as u32;
            s.last = last && part + 1 == ids.len();
            body.extend_from_slice(&w.push(&s)?);
        }
        body.extend_from_slice(&w.finish()?);
        Ok(body)
    };
    // The first two parts arrive, the last never does: nothing is applied.
    let (s, j) = post(port, Some(TOKEN), Some("zstd"), parts(1, &[1, 2], false)?).await?;
    assert_eq!(s, 400, "{j}");
    assert!(j["error"].as_str().unwrap().contains("truncated"), "{j}");
    assert_eq!(state(&p).await?, (vec![], 0));
    // Parts out of order: refused.
    let mut w = wire::SegmentWriter::new(false)?;
    let mut body = w.push(&batch(1, 1))?.to_vec();
    let mut wrong = batch(1, 2);
    wrong.part = 2;
    let mut first = batch(1, 1);
    first.last = false;
    let mut w2 = wire::SegmentWriter::new(false)?;
    let mut body2 = w2.push(&first)?.to_vec();
    body2.extend_from_slice(&w2.push(&wrong)?);
    let (s, j) = post(port, Some(TOKEN), None, body2).await?;
    assert_eq!(s, 400, "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("does not continue"),
        "{j}"
    );
    // A segment after the last one: refused.
    body.extend_from_slice(&w.push(&batch(1, 3))?);
    let (s, j) = post(port, Some(TOKEN), None, body).await?;
    assert_eq!(s, 400, "{j}");
    assert_eq!(state(&p).await?, (vec![], 0));
    // Whole: every part applied in one transaction.
    let (s, j) = post(port, Some(TOKEN), Some("zstd"), parts(1, &[1, 2, 3], true)?).await?;
    assert_eq!((s, j["status"].as_str()), (200, Some("applied")), "{j}");
    let (rows, seq) = state(&p).await?;
    assert_eq!((rows.len(), seq), (3, 1), "{rows:?}");
    target.shutdown().await?;
    Ok(())
}

/// A source that stops sending in the middle of a batch does not hold the target's
/// transaction open: after `server.read_timeout_seconds` the batch is rolled back (408) and
/// the next batch applies at once.
#[tokio::test]
async fn a_stalled_batch_body_is_rolled_back_after_the_read_timeout() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Pair::new(SCHEMA).await?;
    let target = p.start_target_with(0, "read_timeout_seconds: 1, ").await?;
    let port = target.local_addr.unwrap().port();
    // The first part of a batch, then silence with the connection open.
    let mut first = batch(1, 1);
    first.last = false;
    let mut w = wire::SegmentWriter::new(false)?;
    let part = w.push(&first)?;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(
        format!(
            "POST /v1/batches HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
            part.len()
        )
        .as_bytes(),
    )
    .await?;
    tcp.write_all(&part).await?;
    tcp.write_all(b"\r\n").await?;
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("read_timeout_seconds"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        state(&p).await?,
        (vec![], 0),
        "nothing of the stalled batch applied"
    );
    // Its transaction is gone: the batch applies now, whole.
    let (s, j) = post(port, Some(TOKEN), None, wire::encode(&batch(1, 1), false)?).await?;
    assert_eq!((s, j["status"].as_str()), (200, Some("applied")), "{j}");
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_source_token_admits_its_own_source_only() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let target = p
        .start_target_with(
            0,
            "source_tokens: {api-test: token-for-api-test, other: token-for-other}, ",
        )
        .await?;
    let port = target.local_addr.unwrap().port();
    let dst = p.dst().await?;
    let body = wire::encode(&batch(1, 1), true)?; // names source `api-test`
                                                  // Another source's token: 403, nothing applied.
    let (s, j) = post(port, Some("token-for-other"), Some("zstd"), body.clone()).await?;
    assert_eq!(s, 403, "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap_or("")
            .contains("admits source `other` only"),
        "{j}"
    );
    assert!(
        !j.to_string().contains("token-for"),
        "no token in the answer: {j}"
    );
    assert_eq!(scalar_i64(&dst, "select count(*) from app.t").await?, 0);
    // Its own token: applied.
    let (s, j) = post(port, Some("token-for-api-test"), Some("zstd"), body).await?;
    assert_eq!((s, j["status"].as_str()), (200, Some("applied")), "{j}");
    // The position of another source with this token: 403; of its own: 200.
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for (source, want) in [("other", 403), ("api-test", 200)] {
        let req = hyper::Request::get(format!("http://127.0.0.1:{port}/v1/position/{source}/t1"))
            .header("authorization", "Bearer token-for-api-test")
            .body(Full::new(Bytes::new()))?;
        assert_eq!(
            http.request(req).await?.status().as_u16(),
            want,
            "position of {source}"
        );
    }
    // The target's stall reports: any token it admits, none else.
    for (token, want) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some("token-for-api-test"), 200),
    ] {
        let mut req = hyper::Request::get(format!("http://127.0.0.1:{port}/v1/stalls"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = http.request(req.body(Full::new(Bytes::new()))?).await?;
        let status = resp.status().as_u16();
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
        assert_eq!(status, want, "stalls with {token:?}: {body}");
        let listed = body["stalls"].is_array();
        assert_eq!(listed, want == 200, "stalls with {token:?}: {body}");
    }
    // The shared token still admits any source.
    let (s, j) = post(
        port,
        Some(TOKEN),
        Some("zstd"),
        wire::encode(&batch(2, 2), true)?,
    )
    .await?;
    assert_eq!(s, 200, "{j}");
    target.shutdown().await?;
    Ok(())
}

/// A row that no schema version cures (here it names a row the target lacks) while a
/// version is pending: the applier applies the pending versions ahead of their events, one
/// by one, and tries again; each may make the row fail otherwise (here the schema renamed:
/// a table renamed is followed to its new name). The answer names the first failure — the
/// cause — not only the last one.
#[tokio::test]
async fn a_failure_no_version_cures_is_answered_with_its_first_cause() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let mut b = batch(1, 1);
    b.ddl = vec![wire::DdlVersion {
        version: 1,
        txid: None,
        statements: vec![ddlwatcher::Statement {
            sql: "alter schema app rename to app2".into(),
            transactional: true,
            after_rows: false,
            tables: vec![],
            table_dropped_since: false,
            deletes_rows_of: None,
        }],
    }];
    b.events[0].op = Op::Update;
    let (s, j) = post(port, Some(TOKEN), None, wire::encode(&b, false)?).await?;
    let error = j["error"].as_str().unwrap_or_default();
    assert_eq!(s, 422, "{j}");
    assert!(
        error.contains("schema \"app\" does not exist")
            && error.contains("schema version(s) 1 applied ahead")
            && error.contains("1 row(s) named by the source but 0 found"),
        "{error}"
    );
    assert_eq!(state(&p).await?, (vec![], 0), "nothing applied");
    let dst = p.dst().await?;
    assert_eq!(
        scalar_i64(
            &dst,
            "select count(*) from pg_namespace where nspname = 'app2'"
        )
        .await?,
        0,
        "the version applied ahead was rolled back with the batch"
    );
    target.shutdown().await?;
    Ok(())
}

/// `ALTER TYPE … RENAME VALUE` locks no table using the enum: a writer racing it may write
/// the old label and reach the stream after the rename's schema event (event-trigger mode:
/// its row got an event id after the event's, its transaction committed after it) — in
/// the same batch or the next. The value is the same enum value (the label is its name),
/// and was held for good ("invalid input value for enum"). Such a label, one the target's
/// enum lacks now, is written by its new name. Built by hand: the order is a race in the
/// real pipeline (found by the schema soak, seed 102 in event-trigger mode).
#[tokio::test]
async fn an_enum_label_written_by_a_writer_racing_its_rename_arrives_renamed() -> anyhow::Result<()>
{
    let p = Pair::new(
        "create schema app;
         create type app.mood as enum ('a', 'b');
         create table app.t (id int primary key, m app.mood);
         create table app.k (id int, m app.mood);",
    )
    .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let meta = |name: &str, key: &[&str]| TableMeta {
        name: name.into(),
        key: key.iter().map(|k| k.to_string()).collect(),
        columns: vec!["id".into(), "m".into()],
        ..batch(1, 1).tables.remove(0)
    };
    let raw = |s: &str| Some(RawValue::from_string(s.to_string()).unwrap());
    let event = |id: i64, op: Op, table: u32, key: Option<&str>, data: Option<&str>| Event {
        id,
        op,
        table,
        txid: None,
        key: key.and_then(raw),
        data: data.and_then(raw),
    };
    let first = Batch {
        tables: vec![meta("t", &["id"]), meta("k", &[])],
        ddl: vec![wire::DdlVersion {
            version: 1,
            txid: None,
            statements: vec![ddlwatcher::Statement {
                sql: r#"alter type "app"."mood" rename value 'a' to 'z'"#.into(),
                transactional: true,
                after_rows: false,
                tables: vec![],
                table_dropped_since: false,
                deletes_rows_of: None,
            }],
        }],
        events: vec![
            event(1, Op::Insert, 0, None, Some(r#"{"id": 1, "m": "a"}"#)),
            event(2, Op::Insert, 1, None, Some(r#"{"id": 1, "m": "a"}"#)),
            event(3, Op::Schema, 0, None, Some(r#"{"version": 1}"#)),
            // Writers that raced the rename: the old label after its event.
            event(4, Op::Insert, 0, None, Some(r#"{"id": 2, "m": "a"}"#)),
            event(
                5,
                Op::Update,
                1,
                Some(r#"{"id": 1, "m": "a"}"#),
                Some(r#"{"id": 1, "m": "b"}"#),
            ),
        ],
        ..batch(1, 1)
    };
    let (s, j) = post(port, Some(TOKEN), None, wire::encode(&first, false)?).await?;
    assert_eq!((s, j["status"].as_str()), (200, Some("applied")), "{j}");
    let dst = p.dst().await?;
    assert_eq!(rows(&dst, "app.t").await?, ["(1,z)", "(2,z)"]);
    assert_eq!(rows(&dst, "app.k").await?, ["(1,b)"]);
    // In the next batch too, through a second rename (z, then y; the label a again).
    let next = Batch {
        seq: 2,
        ddl: vec![wire::DdlVersion {
            version: 2,
            txid: None,
            statements: vec![ddlwatcher::Statement {
                sql: r#"alter type "app"."mood" rename value 'z' to 'y'"#.into(),
                ..first.ddl[0].statements[0].clone()
            }],
        }],
        events: vec![
            event(6, Op::Insert, 0, None, Some(r#"{"id": 3, "m": "a"}"#)),
            event(7, Op::Schema, 0, None, Some(r#"{"version": 2}"#)),
            event(8, Op::Insert, 0, None, Some(r#"{"id": 4, "m": "z"}"#)),
            event(9, Op::Insert, 0, None, Some(r#"{"id": 5, "m": "a"}"#)),
        ],
        ..first
    };
    let (s, j) = post(port, Some(TOKEN), None, wire::encode(&next, false)?).await?;
    assert_eq!((s, j["status"].as_str()), (200, Some("applied")), "{j}");
    assert_eq!(
        rows(&dst, "app.t").await?,
        ["(1,y)", "(2,y)", "(3,y)", "(4,y)", "(5,y)"]
    );
    assert_eq!(
        texts(&dst, "select string_agg(enumlabel, ',' order by enumsortorder) from pg_enum where enumtypid = 'app.mood'::regtype").await?,
        ["y,b"]
    );
    target.shutdown().await?;
    Ok(())
}

/// The values a volatile default gave a keyless table's rows come as one update per set of
/// rows equal in every other column (old row: those columns and member `""`, the number of
/// rows; data: one array of values per new column). Each row of the set gets one value; a
/// set whose arrays do not hold one value per row is refused as malformed (400), one that
/// names more rows than the target has fails as diverged (500), and neither applies
/// anything.
#[tokio::test]
async fn a_keyless_tables_filled_values_go_one_to_each_row_alike() -> anyhow::Result<()> {
    let p = Pair::new("create schema app; create table app.k (id int, v text, u int);").await?;
    let dst = p.dst().await?;
    dst.batch_execute("insert into app.k values (1, 'a', null), (1, 'a', null), (2, 'b', null)")
        .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let fill = |seq: i64, key: &str, data: &str| Batch {
        seq,
        tables: vec![TableMeta {
            name: "k".into(),
            key: vec![],
            columns: vec!["id".into(), "v".into(), "u".into()],
            ..batch(seq, 1).tables.remove(0)
        }],
        events: vec![Event {
            id: 10 + seq,
            op: Op::Update,
            table: 0,
            txid: None,
            key: Some(RawValue::from_string(key.to_string()).unwrap()),
            data: Some(RawValue::from_string(data.to_string()).unwrap()),
        }],
        ..batch(seq, 1)
    };
    let before = rows(&dst, "app.k").await?;
    let short = fill(1, r#"{"": 2, "id": 1, "v": "a"}"#, r#"{"u": [7]}"#);
    let (s, j) = post(port, Some(TOKEN), None, wire::encode(&short, false)?).await?;
    assert_eq!(s, 400, "{j}");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("column u has 1 value(s) for the 2 row(s)")),
        "{j}"
    );
    let more = fill(1, r#"{"": 3, "id": 1, "v": "a"}"#, r#"{"u": [7, 8, 9]}"#);
    let (s, j) = post(port, Some(TOKEN), None, wire::encode(&more, false)?).await?;
    assert_eq!(s, 500, "{j}");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("3 row(s) named by the source but 2 found")),
        "{j}"
    );
    assert_eq!(rows(&dst, "app.k").await?, before, "nothing applied");
    let good = fill(1, r#"{"": 2, "id": 1, "v": "a"}"#, r#"{"u": [7, 8]}"#);
    let (s, j) = post(port, Some(TOKEN), None, wire::encode(&good, false)?).await?;
    assert_eq!((s, j["status"].as_str()), (200, Some("applied")), "{j}");
    assert_eq!(rows(&dst, "app.k").await?, ["(1,a,7)", "(1,a,8)", "(2,b,)"]);
    target.shutdown().await?;
    Ok(())
}
