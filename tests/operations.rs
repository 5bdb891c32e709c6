//! Operations: mirror states, the REST API's exact status codes and idempotent creates,
//! metrics and readiness, against running instances and real PostgreSQL.

mod common;

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

const SCHEMA: &str = "create schema app; create table app.t (id int primary key, v text);";
const API_PASSWORD: &str = "s3cret-api";

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Basic(&'a str),
    Bearer(&'a str),
}

/// One request: (status, JSON body or the text as a JSON string).
async fn call(
    port: u16,
    method: &str,
    path: &str,
    auth: Auth<'_>,
    body: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    match auth {
        Auth::None => {}
        Auth::Basic(p) => {
            let enc = base64::engine::general_purpose::STANDARD.encode(format!("admin:{p}"));
            req = req.header("authorization", format!("Basic {enc}"));
        }
        Auth::Bearer(p) => req = req.header("authorization", format!("Bearer {p}")),
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or("").to_string())))?;
    let resp = http.request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, v))
}

async fn api(port: u16, method: &str, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let b = body.to_string();
    call(
        port,
        method,
        path,
        Auth::Basic(API_PASSWORD),
        (method == "POST").then_some(b.as_str()),
    )
    .await
}

/// A target, and a source replicating `app.*` to it whose `server` section is `server`:
/// (source, target, the source's HTTP port, the target's).
async fn start_with_api(
    p: &Pair,
    server: &str,
) -> anyhow::Result<(
    pgteleport::instance::Running,
    pgteleport::instance::Running,
    u16,
    u16,
)> {
    let target = p.start_target(0).await?;
    let tport = target.local_addr.expect("the target listens").port();
    let source = p.start_source(tport, "app.*", server).await?;
    let port = source.local_addr.expect("the source serves the API").port();
    Ok((source, target, port, tport))
}

fn server_yaml(password: Option<&str>) -> String {
    match password {
        Some(p) => format!("server: {{hostname: 127.0.0.1, port: 0, api_password: {p}}}\n"),
        None => "server: {hostname: 127.0.0.1, port: 0}\n".to_string(),
    }
}

async fn mirror_state(port: u16, name: &str) -> anyhow::Result<String> {
    let (code, v) = api(
        port,
        "POST",
        "/api/v1/mirrors/status",
        json!({"flowJobName": name}),
    )
    .await?;
    anyhow::ensure!(code == 200, "status: {code} {v}");
    Ok(v["state"].as_str().unwrap_or_default().to_string())
}

/// The value of one metric line (`name{labels}`), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
}

/// Pause holds batches (the queue grows, metrics and status show it) across a restart of
/// the source instance; resume ships them; terminate ends the mirror for good.
#[tokio::test]
async fn pause_survives_a_restart_and_resume_catches_up() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let target = p.start_target(0).await?;
    let tport = target.local_addr.unwrap().port();
    let source = p
        .start_source(tport, "app.*", &server_yaml(Some(API_PASSWORD)))
        .await?;
    let port = source.local_addr.expect("the source serves the API").port();
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.execute("insert into app.t values (1, 'a')", &[])
        .await?;
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(20)).await?;
    wait_for("mirror RUNNING", Duration::from_secs(10), || async {
        Ok(mirror_state(port, "t1").await? == "RUNNING")
    })
    .await?;
    let (code, v) = api(port, "GET", "/api/v1/mirrors/list", Value::Null).await?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["mirrors"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["mirrors"][0]["name"], "t1");
    assert_eq!(v["mirrors"][0]["state"], "RUNNING");

    // Pause: acknowledged at once, PAUSED once no batch is in flight.
    let pause = json!({"flowJobName": "t1", "requestedFlowState": "STATUS_PAUSED"});
    let (code, v) = api(port, "POST", "/api/v1/mirrors/state_change", pause.clone()).await?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["changed"], true);
    wait_for("mirror PAUSED", Duration::from_secs(10), || async {
        Ok(mirror_state(port, "t1").await? == "PAUSED")
    })
    .await?;
    let (code, v) = api(port, "POST", "/api/v1/mirrors/state_change", pause).await?;
    assert_eq!((code, v["changed"].clone()), (200, json!(false)), "{v}");

    // While paused the queue grows and nothing reaches the target.
    src.execute(
        "insert into app.t select g, 'p' from generate_series(2, 101) g",
        &[],
    )
    .await?;
    let events_of = |text: &str| metric(text, "pgteleport_queue_events{mirror=\"t1\"}");
    let first = std::cell::Cell::new(0.0);
    wait_for(
        "queued events in /metrics",
        Duration::from_secs(10),
        || async {
            let (_, m) = call(port, "GET", "/metrics", Auth::None, None).await?;
            first.set(events_of(m.as_str().unwrap_or_default()).unwrap_or(0.0));
            Ok(first.get() >= 100.0)
        },
    )
    .await?;
    src.execute("update app.t set v = 'q' where id <= 50", &[])
        .await?;
    wait_for("the queue grows", Duration::from_secs(10), || async {
        let (_, m) = call(port, "GET", "/metrics", Auth::None, None).await?;
        let text = m.as_str().unwrap_or_default().to_string();
        Ok(events_of(&text).unwrap_or(0.0) >= first.get() + 50.0
            && metric(
                &text,
                "pgteleport_mirror_state{mirror=\"t1\",state=\"PAUSED\"}",
            ) == Some(1.0))
    })
    .await?;
    let (code, v) = api(
        port,
        "POST",
        "/api/v1/mirrors/status",
        json!({"flowJobName": "t1", "includeFlowInfo": true}),
    )
    .await?;
    assert_eq!(code, 200, "{v}");
    assert!(v["cdcStatus"]["queueDepth"].as_i64().unwrap() >= 150, "{v}");
    assert!(
        v["cdcStatus"]["batchesPending"].as_i64().unwrap() >= 1,
        "{v}"
    );
    assert!(v["cdcStatus"]["queueBytes"].as_i64().unwrap() > 0, "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(scalar_i64(&dst, "select count(*) from app.t").await?, 1);

    // A restart keeps the state.
    source.shutdown().await?;
    let source = p
        .start_source(tport, "app.*", &server_yaml(Some(API_PASSWORD)))
        .await?;
    let port = source.local_addr.unwrap().port();
    assert_eq!(mirror_state(port, "t1").await?, "PAUSED");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(scalar_i64(&dst, "select count(*) from app.t").await?, 1);

    // Resume ships everything.
    let (code, v) = api(
        port,
        "POST",
        "/api/v1/mirrors/state_change",
        json!({"flowJobName": "t1", "requestedFlowState": "resume"}),
    )
    .await?;
    assert_eq!((code, v["state"].clone()), (200, json!("RUNNING")), "{v}");
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(30)).await?;
    assert_exactly_once(&src, &dst).await?;
    // Rows per table: every row event the target acknowledged, once.
    let (code, v) = api(
        port,
        "POST",
        "/api/v1/mirrors/status",
        json!({"flowJobName": "t1", "includeFlowInfo": true}),
    )
    .await?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["cdcStatus"]["rowsPerTable"],
        json!([{"tableName": "app.t", "counts": {"insertCount": 101, "updateCount": 50,
                "deleteCount": 0, "truncateCount": 0, "totalCount": 151}}]),
        "{v}"
    );

    // Errors by kind: with the target down, transmits fail as unreachable.
    target.shutdown().await?;
    src.execute("insert into app.t values (500, 'target down')", &[])
        .await?;
    let unreachable =
        "pgteleport_errors_total{stage=\"transmitter t1\",kind=\"target_unreachable\"}";
    wait_for(
        "an unreachable-target error in /metrics",
        Duration::from_secs(15),
        || async {
            let (_, m) = call(port, "GET", "/metrics", Auth::None, None).await?;
            Ok(metric(m.as_str().unwrap_or_default(), unreachable).unwrap_or(0.0) >= 1.0)
        },
    )
    .await?;

    // Terminate: final; the queue is no longer kept for the mirror.
    let (code, v) = api(
        port,
        "POST",
        "/api/v1/mirrors/state_change",
        json!({"flowJobName": "t1", "requestedFlowState": "STATUS_TERMINATED"}),
    )
    .await?;
    assert_eq!(code, 200, "{v}");
    wait_for("mirror TERMINATED", Duration::from_secs(10), || async {
        Ok(mirror_state(port, "t1").await? == "TERMINATED")
    })
    .await?;
    src.execute("insert into app.t values (1000, 'after')", &[])
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        scalar_i64(
            &src,
            "select count(*) from teleport.batch where target = 't1' and acked_at is null"
        )
        .await?,
        0,
        "no batches are cut for a terminated mirror"
    );
    let (code, v) = api(
        port,
        "POST",
        "/api/v1/mirrors/state_change",
        json!({"flowJobName": "t1", "requestedFlowState": "STATUS_RUNNING"}),
    )
    .await?;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("TERMINATED"), "{v}");
    source.shutdown().await?;
    Ok(())
}

/// Every endpoint's error paths answer with their exact status and a JSON error.
#[tokio::test]
async fn api_errors_have_exact_status_codes() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target, port, _) = start_with_api(&p, &server_yaml(Some(API_PASSWORD))).await?;
    let list = "/api/v1/mirrors/list";
    assert_eq!(call(port, "GET", list, Auth::None, None).await?.0, 401);
    assert_eq!(
        call(port, "GET", list, Auth::Basic("wrong"), None).await?.0,
        401
    );
    assert_eq!(
        call(port, "GET", list, Auth::Bearer("wrong"), None)
            .await?
            .0,
        401
    );
    assert_eq!(
        call(port, "GET", list, Auth::Bearer(API_PASSWORD), None)
            .await?
            .0,
        200
    );
    assert_eq!(
        call(port, "GET", list, Auth::Basic(API_PASSWORD), None)
            .await?
            .0,
        200
    );
    let status = "/api/v1/mirrors/status";
    for (body, code) in [
        ("not json", 400),
        ("[1]", 400),
        ("", 400),
        (r#"{"includeFlowInfo": true}"#, 400),
        (r#"{"flowJobName": 7}"#, 400),
        (r#"{"flowJobName": "t1", "includeFlowInfo": "yes"}"#, 400),
        (r#"{"flowJobName": "nope"}"#, 404),
        (r#"{"flowJobName": "t1"}"#, 200),
    ] {
        let (c, v) = call(port, "POST", status, Auth::Basic(API_PASSWORD), Some(body)).await?;
        assert_eq!(c, code, "{body}: {v}");
        if c != 200 {
            assert!(v["error"].is_string(), "{body}: {v}");
        }
    }
    let change = "/api/v1/mirrors/state_change";
    for (body, code) in [
        (r#"{"flowJobName": "t1"}"#, 400),
        (
            r#"{"flowJobName": "t1", "requestedFlowState": "STATUS_EXPLODED"}"#,
            400,
        ),
        (
            r#"{"flowJobName": "nope", "requestedFlowState": "pause"}"#,
            404,
        ),
    ] {
        let (c, v) = call(port, "POST", change, Auth::Basic(API_PASSWORD), Some(body)).await?;
        assert_eq!(c, code, "{body}: {v}");
    }
    assert_eq!(
        call(port, "GET", status, Auth::Basic(API_PASSWORD), None)
            .await?
            .0,
        405
    );
    assert_eq!(
        call(
            port,
            "GET",
            "/api/v1/nothing",
            Auth::Basic(API_PASSWORD),
            None
        )
        .await?
        .0,
        404
    );
    assert_eq!(
        call(
            port,
            "POST",
            "/api/v1/flows/cdc/create",
            Auth::Basic(API_PASSWORD),
            Some("{}")
        )
        .await?
        .0,
        400
    );
    let (c, v) = call(port, "TRACE", "/metrics", Auth::None, None).await?;
    assert_eq!(c, 405, "{v}");
    assert_eq!(call(port, "GET", "/readyz", Auth::None, None).await?.0, 200);
    let (c, doc) = call(port, "GET", "/api/v1/openapi.json", Auth::None, None).await?;
    assert_eq!(c, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Peers: validated by connecting (422 with the driver's message), created once, a
/// repeated create changes nothing, another definition is a conflict unless allow_update,
/// which really updates; passwords never come back.
#[tokio::test]
async fn peers_are_validated_idempotent_and_updatable() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target, port, tport) =
        start_with_api(&p, &server_yaml(Some(API_PASSWORD))).await?;
    let peer = |database: &str, password: &str, allow_update: bool| {
        json!({"peer": {"name": "warehouse", "type": "POSTGRES", "postgres_config": {
            "host": "127.0.0.1", "port": p.cluster.port, "user": p.dst_role, "password": password,
            "database": database, "options": {"application_name": "peer-test"}}}, "allow_update": allow_update})
    };
    let create = "/api/v1/peers/create";
    let (c, v) = api(
        port,
        "POST",
        create,
        peer(&p.dst_db, "wrong-password", false),
    )
    .await?;
    assert_eq!(c, 422, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("password authentication failed"),
        "{v}"
    );
    let (c, v) = api(port, "POST", create, peer(&p.dst_db, PASSWORD, false)).await?;
    assert_eq!((c, v["status"].clone()), (201, json!("created")), "{v}");
    let (c, v) = api(port, "POST", create, peer(&p.dst_db, PASSWORD, false)).await?;
    assert_eq!((c, v["status"].clone()), (200, json!("unchanged")), "{v}");
    let (c, v) = api(port, "POST", create, peer(&p.src_db, PASSWORD, false)).await?;
    assert_eq!(c, 409, "{v}");
    // allow_update with a database the role cannot reach: validated first, nothing changes.
    let (c, v) = api(port, "POST", create, peer("no_such_db", PASSWORD, true)).await?;
    assert_eq!(c, 422, "{v}");
    let (c, v) = api(port, "POST", create, peer(&p.src_db, PASSWORD, true)).await?;
    assert!(c == 422 || c == 200, "{v}"); // the target role may not connect to the source db
    let (_, list) = api(port, "GET", "/api/v1/peers/list", Value::Null).await?;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    let expected_db = if c == 200 { &p.src_db } else { &p.dst_db };
    assert_eq!(
        items[0]["postgres_config"]["database"],
        json!(expected_db),
        "{list}"
    );
    assert!(
        items[0]["postgres_config"].get("password").is_none(),
        "{list}"
    );
    assert_eq!(items[0]["postgres_config"]["password_set"], true);
    assert!(
        !list.to_string().contains(PASSWORD),
        "a password left through the API: {list}"
    );
    // A change that validates, with allow_update: really updated.
    let mut changed = peer(&p.dst_db, PASSWORD, true);
    changed["peer"]["postgres_config"]["options"]["application_name"] = json!("peer-test-2");
    let (c, v) = api(port, "POST", create, changed).await?;
    assert_eq!((c, v["status"].clone()), (200, json!("updated")), "{v}");
    let (_, list) = api(port, "GET", "/api/v1/peers/list", Value::Null).await?;
    assert_eq!(
        list["items"][0]["postgres_config"]["options"]["application_name"],
        "peer-test-2"
    );
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    for (body, code) in [
        (
            json!({"peer": {"name": "bad name!", "type": "POSTGRES", "postgres_config": {"host": "h", "user": "u", "database": "d"}}}),
            400,
        ),
        (
            json!({"peer": {"name": "x", "type": "MYSQL", "postgres_config": {"host": "h", "user": "u", "database": "d"}}}),
            400,
        ),
        (json!({"peer": {"name": "x", "type": 3}}), 400),
        (
            json!({"peer": {"name": "x", "type": 3, "postgres_config": {"host": "h", "user": "u", "database": "d", "options": {"bogus": "1"}}}}),
            422,
        ),
        (json!({"name": "x"}), 400),
    ] {
        let (c, v) = api(port, "POST", create, body.clone()).await?;
        assert_eq!(c, code, "{body}: {v}");
    }
    // A pgteleport target as a peer: checked with its /healthz.
    let (c, v) = api(port, "POST", create, json!({"peer": {"name": "tgt", "type": "PGTELEPORT",
        "pgteleport_config": {"endpoint": {"hostname": "127.0.0.1", "port": tport}, "auth_token": "t"}}})).await?;
    assert_eq!(c, 201, "{v}");
    let (c, v) = api(
        port,
        "POST",
        create,
        json!({"peer": {"name": "gone", "type": "PGTELEPORT",
        "pgteleport_config": {"endpoint": {"hostname": "127.0.0.1", "port": 1}}}}),
    )
    .await?;
    assert_eq!(c, 422, "{v}");
    let (_, list) = api(port, "GET", "/api/v1/peers/list", Value::Null).await?;
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Alert configurations: created once per content, listed, bad ones refused.
#[tokio::test]
async fn alert_configs_are_idempotent_by_content() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target, port, _) = start_with_api(&p, &server_yaml(None)).await?;
    let path = "/api/v1/alerts/config";
    let cfg = json!({"config": {"serviceType": "slack", "serviceConfig": {"url": "http://127.0.0.1:9/hook", "lag_seconds": 30}}});
    let (c, v) = call(port, "POST", path, Auth::None, Some(&cfg.to_string())).await?;
    assert_eq!(c, 201, "{v}");
    let id = v["id"].as_i64().unwrap();
    let (c, v) = call(port, "POST", path, Auth::None, Some(&cfg.to_string())).await?;
    assert_eq!((c, v["id"].as_i64()), (200, Some(id)), "{v}");
    let (c, v) = call(port, "GET", path, Auth::None, None).await?;
    assert_eq!(c, 200);
    assert_eq!(v["configs"].as_array().unwrap().len(), 1, "{v}");
    for (body, code) in [
        (
            json!({"config": {"serviceType": "pager", "serviceConfig": {"url": "http://x"}}}),
            400,
        ),
        (
            json!({"config": {"serviceType": "webhook", "serviceConfig": {"url": "ftp://x"}}}),
            422,
        ),
        (json!({"config": {"serviceType": "webhook"}}), 400),
        (json!({}), 400),
    ] {
        let (c, v) = call(port, "POST", path, Auth::None, Some(&body.to_string())).await?;
        assert_eq!(c, code, "{body}: {v}");
    }
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// The API is not served beyond loopback without a password (403 saying why); health and
/// metrics still are.
#[tokio::test]
async fn a_public_api_without_password_is_off() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let target = p.start_target(0).await?;
    let tport = target.local_addr.unwrap().port();
    let source = p
        .start_source(tport, "app.*", "server: {hostname: 0.0.0.0, port: 0}\n")
        .await?;
    let port = source.local_addr.unwrap().port();
    let (c, v) = call(port, "GET", "/api/v1/mirrors/list", Auth::None, None).await?;
    assert_eq!(c, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("api_password"), "{v}");
    assert_eq!(call(port, "GET", "/readyz", Auth::None, None).await?.0, 200);
    source.shutdown().await?;
    // With a password it is served, and required.
    let with_password =
        format!("server: {{hostname: 0.0.0.0, port: 0, api_password: {API_PASSWORD}}}\n");
    let source = p.start_source(tport, "app.*", &with_password).await?;
    let port = source.local_addr.unwrap().port();
    let list = "/api/v1/mirrors/list";
    assert_eq!(call(port, "GET", list, Auth::None, None).await?.0, 401);
    assert_eq!(
        call(port, "GET", list, Auth::Basic(API_PASSWORD), None)
            .await?
            .0,
        200
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// The OpenAPI document holds against the running server: schemathesis (PyPI; installed by
/// scripts/setup.sh) generates valid and invalid requests for every operation and checks
/// status codes, content types and response schemas.
#[tokio::test]
async fn the_api_keeps_its_openapi_contract() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target, port, _) = start_with_api(&p, &server_yaml(Some(API_PASSWORD))).await?;
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let out = tokio::process::Command::new("schemathesis")
        .args(["--config-file", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml")])
        .args(["run", doc, "--url", &format!("http://127.0.0.1:{port}")])
        .args(["--auth", &format!("admin:{API_PASSWORD}")])
        .args(["--checks", "all", "--max-examples", "25", "--workers", "1"])
        .args(["--request-timeout", "30", "--no-color"])
        // A fixed seed keeps CI repeatable; PGTELEPORT_CONTRACT_SEED explores others.
        .args(["--seed", &std::env::var("PGTELEPORT_CONTRACT_SEED").unwrap_or_else(|_| "20261203".into())])
        // Its caches go to a scratch directory, not the source tree.
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("schemathesis not runnable ({e}): run `bash scripts/setup.sh`, which installs it with pip"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "schemathesis found contract violations:\n{text}"
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

async fn run_cli(
    url: String,
    args: Vec<String>,
    password: Option<&'static str>,
) -> (Option<i32>, String, String) {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgteleport"));
    c.args(&args).env("PGTELEPORT_API_URL", &url);
    c.env_remove("PGTELEPORT_API_PASSWORD");
    if let Some(pw) = password {
        c.env("PGTELEPORT_API_PASSWORD", pw);
    }
    c.env("PGTELEPORT_PEER_PASSWORD", PASSWORD);
    let out = c.output().await.expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `pgteleport mirror …` and `pgteleport peer …` over the API: tables, --json, errors.
#[tokio::test]
async fn the_cli_drives_the_api() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target, port, _) = start_with_api(&p, &server_yaml(Some(API_PASSWORD))).await?;
    let url = format!("http://127.0.0.1:{port}");
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cli = |a: Vec<String>, pw: Option<&'static str>| run_cli(url.clone(), a, pw);
    let (code, _, err) = cli(args(&["mirror", "list"]), None).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("401") && err.contains("PGTELEPORT_API_PASSWORD"),
        "{err}"
    );
    let (code, out, err) = cli(args(&["mirror", "list"]), Some(API_PASSWORD)).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("MIRROR") && out.contains("t1"), "{out}");
    let (code, out, err) = cli(args(&["mirror", "pause", "t1"]), Some(API_PASSWORD)).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "mirror t1: PAUSING", "{out}");
    wait_for("PAUSED", Duration::from_secs(10), || async {
        Ok(mirror_state(port, "t1").await? == "PAUSED")
    })
    .await?;
    let (code, out, _) = cli(
        args(&["mirror", "status", "t1", "--json"]),
        Some(API_PASSWORD),
    )
    .await;
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v["state"], "PAUSED");
    assert!(v["cdcStatus"]["queueDepth"].is_i64(), "{v}");
    let (code, out, _) = cli(args(&["mirror", "resume", "t1"]), Some(API_PASSWORD)).await;
    assert_eq!((code, out.trim()), (Some(0), "mirror t1: RUNNING"));
    let (code, _, err) = cli(args(&["mirror", "status", "nope"]), Some(API_PASSWORD)).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("404") && err.contains("nope"), "{err}");
    let create = |db: &str| {
        args(&[
            "peer",
            "create",
            "wh",
            "--host",
            "127.0.0.1",
            "--port",
            &p.cluster.port.to_string(),
            "--user",
            &p.dst_role,
            "--database",
            db,
        ])
    };
    let (code, out, err) = cli(create(&p.dst_db), Some(API_PASSWORD)).await;
    assert_eq!((code, out.trim()), (Some(0), "peer wh: created"), "{err}");
    let (code, out, _) = cli(create(&p.dst_db), Some(API_PASSWORD)).await;
    assert_eq!((code, out.trim()), (Some(0), "peer wh: unchanged"));
    let (code, _, err) = cli(create(&p.src_db), Some(API_PASSWORD)).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("409"), "{err}");
    let (code, out, _) = cli(args(&["peer", "list"]), Some(API_PASSWORD)).await;
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("PEER") && out.contains("wh") && out.contains(&p.dst_db),
        "{out}"
    );
    assert!(!out.contains(PASSWORD));
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A local HTTP endpoint that records every JSON body posted to it (stands in for Slack, a
/// webhook or Sentry).
async fn receiver() -> anyhow::Result<(u16, std::sync::Arc<std::sync::Mutex<Vec<Value>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let got: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        async move {
                            let bytes = req.into_body().collect().await?.to_bytes();
                            let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                                Value::String(String::from_utf8_lossy(&bytes).into_owned())
                            });
                            g.lock().unwrap().push(v);
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((port, got))
}

/// A lag alert fires once while a paused mirror's batch waits, and resolves once after
/// the mirror resumes; a Slack-format config gets the same as text.
#[tokio::test]
async fn an_alert_fires_once_and_resolves_once() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (hook_port, got) = receiver().await?;
    let (source, target, port, _) = start_with_api(&p, &server_yaml(None)).await?;
    let cfg = json!({"config": {"serviceType": "webhook", "serviceConfig": {
        "url": format!("http://127.0.0.1:{hook_port}/alerts?x=1"), "lag_seconds": 1}}});
    let (c, v) = call(
        port,
        "POST",
        "/api/v1/alerts/config",
        Auth::None,
        Some(&cfg.to_string()),
    )
    .await?;
    assert_eq!(c, 201, "{v}");
    let pause = json!({"flowJobName": "t1", "requestedFlowState": "pause"}).to_string();
    assert_eq!(
        call(
            port,
            "POST",
            "/api/v1/mirrors/state_change",
            Auth::None,
            Some(&pause)
        )
        .await?
        .0,
        200
    );
    wait_for("PAUSED", Duration::from_secs(10), || async {
        Ok(mirror_state(port, "t1").await? == "PAUSED")
    })
    .await?;
    let src = p.src().await?;
    src.execute("insert into app.t values (1, 'held')", &[])
        .await?;
    let fired = |g: &Vec<Value>, status: &str| g.iter().filter(|v| v["status"] == status).count();
    wait_for("the alert fires", Duration::from_secs(15), || async {
        Ok(fired(&got.lock().unwrap(), "firing") >= 1)
    })
    .await?;
    // Still firing for several evaluations: no second message.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    {
        let g = got.lock().unwrap();
        assert_eq!(fired(&g, "firing"), 1, "{g:?}");
        assert_eq!(g[0]["alert"], "lag_seconds");
        assert_eq!(g[0]["mirror"], "t1");
        assert!(g[0]["value"].as_f64().unwrap() > 1.0, "{g:?}");
    }
    let resume = json!({"flowJobName": "t1", "requestedFlowState": "resume"}).to_string();
    assert_eq!(
        call(
            port,
            "POST",
            "/api/v1/mirrors/state_change",
            Auth::None,
            Some(&resume)
        )
        .await?
        .0,
        200
    );
    wait_for("the alert resolves", Duration::from_secs(15), || async {
        Ok(fired(&got.lock().unwrap(), "resolved") >= 1)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    {
        let g = got.lock().unwrap();
        assert_eq!(
            (fired(&g, "firing"), fired(&g, "resolved")),
            (1, 1),
            "{g:?}"
        );
    }
    let dst = p.dst().await?;
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(10)).await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// An error reaches a stand-in Sentry endpoint as an event, without the database password or
/// the target's token (which the failing connection and the config hold).
#[tokio::test]
async fn errors_reach_sentry_without_secrets() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (port, got) = receiver().await?;
    let dir = std::env::temp_dir().join(format!("pgteleport-sentry-{}", p.id));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("source.yml");
    let password = "Wr0ng-Db-Secret";
    let token = "T0ken-Secret-xyz";
    std::fs::write(
        &cfg,
        format!(
            "database: {{name: s-{id}, database: {db}, hostname: 127.0.0.1, port: {pgport}, username: {role}, password: {password}}}\n\
             targets:\n  t1:\n    target_expression: \"app.*\"\n    endpoint: {{hostname: 127.0.0.1, port: 9}}\n    auth_token: {token}\n\
             sentry_endpoint: \"http://0123456789abcdef@127.0.0.1:{port}/42\"\n",
            id = p.id,
            db = p.src_db,
            role = p.src_role,
            pgport = p.cluster.port,
        ),
    )?;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgteleport"))
        .args(["-config", cfg.to_str().unwrap()])
        .env("PGTELEPORT_LOG", "warn")
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    let all = sentry_payloads(&got, "an event").await?;
    assert!(all.contains("password authentication failed"), "{all}");
    assert!(
        all.contains("\"type\":\"event\"") && all.contains("pgteleport failed"),
        "{all}"
    );
    assert!(
        !all.contains(password),
        "the password reached Sentry: {all}"
    );
    assert!(!all.contains(token), "the token reached Sentry: {all}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Everything the stand-in Sentry received, once it received something, as one text.
async fn sentry_payloads(
    got: &std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    what: &str,
) -> anyhow::Result<String> {
    wait_for(
        &format!("{what} at the stand-in Sentry"),
        Duration::from_secs(10),
        || async { Ok(!got.lock().unwrap().is_empty()) },
    )
    .await?;
    Ok(got
        .lock()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// A panic (here in a thread of the test process, with the real Sentry client the instance
/// starts) reaches the stand-in Sentry as an event with the panic mechanism; the config's
/// secrets it quotes are blanked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_reaches_sentry_without_secrets() -> anyhow::Result<()> {
    let (port, got) = receiver().await?;
    let password = "Panic-Db-Secret";
    let yaml = format!(
        "database: {{name: s, database: d, hostname: 127.0.0.1, port: 5432, username: u, password: {password}}}\n\
         targets:\n  t1:\n    target_expression: \"app.*\"\n    endpoint: {{hostname: 127.0.0.1, port: 9}}\n\
         sentry_endpoint: \"http://0123456789abcdef@127.0.0.1:{port}/42\"\n"
    );
    let cfg =
        pgteleport::config::Config::from_yaml(&yaml, std::path::Path::new("<test>"), |_| None)?;
    assert!(pgteleport::telemetry::init(&cfg));
    let panicked =
        std::thread::spawn(move || panic!("stage transmitter t1 broke while holding {password}"))
            .join();
    assert!(panicked.is_err());
    tokio::task::spawn_blocking(pgteleport::telemetry::flush).await?;
    let all = sentry_payloads(&got, "the panic").await?;
    assert!(
        all.contains("\"type\":\"panic\""),
        "no panic mechanism: {all}"
    );
    assert!(
        all.contains("stage transmitter t1 broke while holding [secret]"),
        "{all}"
    );
    assert!(
        !all.contains(password),
        "the password reached Sentry: {all}"
    );
    Ok(())
}

/// A mirror with `do_initial_snapshot` runs the initial load itself (SNAPSHOT). Paused
/// during it, the load stops; a restart keeps it PAUSED; resume continues the load (SNAPSHOT
/// again), then RUNNING, and the target ends equal to the source, writes made during the
/// snapshot included. A target trigger slows the copy so that the pause lands in it.
#[tokio::test]
async fn pause_during_the_snapshot_restart_resume_and_the_load_completes() -> anyhow::Result<()> {
    let schema = "create schema app; create table app.big (id int primary key, v text not null);";
    let slow = "create function app.slow() returns trigger language plpgsql as
                 $$ begin perform pg_sleep(0.0005); return new; end $$;
                create trigger slow before insert on app.big for each row execute function app.slow();
                alter table app.big enable always trigger slow;";
    let p = Pair::new2(schema, &format!("{schema}{slow}")).await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "insert into app.big select g, repeat('x', 100) from generate_series(1, 10000) g",
    )
    .await?;
    let extra = format!(
        "    do_initial_snapshot: true\n    snapshot_workers: 1\n    snapshot_range_kb: 128\n{}",
        server_yaml(Some(API_PASSWORD))
    );
    let target = p.start_target(0).await?;
    let tport = target.local_addr.unwrap().port();
    let source = p.start_source(tport, "app.*", &extra).await?;
    let port = source.local_addr.unwrap().port();
    wait_for("mirror SNAPSHOT", Duration::from_secs(10), || async {
        Ok(mirror_state(port, "t1").await? == "SNAPSHOT")
    })
    .await?;
    // Writes while the snapshot runs: captured, applied after it by the snapshot rule.
    src.batch_execute(
        "update app.big set v = 'changed' where id % 10 = 0;
         delete from app.big where id % 7 = 0;
         insert into app.big select g, 'new' from generate_series(10001, 10100) g;",
    )
    .await?;
    let count = "select count(*) from app.big";
    wait_for("a first range copied", Duration::from_secs(30), || async {
        Ok(scalar_i64(&dst, count).await? > 0)
    })
    .await?;
    let pause = json!({"flowJobName": "t1", "requestedFlowState": "pause"});
    let (code, v) = api(port, "POST", "/api/v1/mirrors/state_change", pause).await?;
    assert_eq!(code, 200, "{v}");
    wait_for("mirror PAUSED", Duration::from_secs(10), || async {
        Ok(mirror_state(port, "t1").await? == "PAUSED")
    })
    .await?;
    let copied = scalar_i64(&dst, count).await?;
    assert!(
        copied < 10000,
        "the pause came after the whole copy ({copied} rows)"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        scalar_i64(&dst, count).await?,
        copied,
        "the load went on while paused"
    );

    // A restart keeps the mirror paused, the load stopped.
    source.shutdown().await?;
    let source = p.start_source(tport, "app.*", &extra).await?;
    let port = source.local_addr.unwrap().port();
    assert_eq!(mirror_state(port, "t1").await?, "PAUSED");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(scalar_i64(&dst, count).await?, copied);

    // Resume: back to SNAPSHOT, then RUNNING, equal.
    let resume = json!({"flowJobName": "t1", "requestedFlowState": "resume"});
    let (code, v) = api(port, "POST", "/api/v1/mirrors/state_change", resume).await?;
    assert_eq!((code, v["state"].clone()), (200, json!("SNAPSHOT")), "{v}");
    wait_for("mirror RUNNING", Duration::from_secs(90), || async {
        Ok(mirror_state(port, "t1").await? == "RUNNING")
    })
    .await?;
    wait_equal(&src, &dst, &["app.big"], Duration::from_secs(30)).await?;
    src.execute("update app.big set v = 'after' where id = 1", &[])
        .await?;
    wait_equal(&src, &dst, &["app.big"], Duration::from_secs(20)).await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A mirror created through the API (PeerDB's flows/cdc/create) runs at once, with its
/// initial snapshot, beside the config's target; repeated creates do not duplicate it,
/// other definitions and bad references are refused with exact codes, and a restart runs
/// it again.
#[tokio::test]
async fn a_mirror_created_through_the_api_snapshots_streams_and_survives_a_restart(
) -> anyhow::Result<()> {
    let schema = "create schema app; create table app.t (id int primary key, v text);
                  create schema other; create table other.m (id int primary key, v text);
                  create table other.nokey (v text);";
    let p = Pair::new(schema).await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute("insert into other.m select g, 'before' from generate_series(1, 500) g")
        .await?;
    let target = p.start_target(0).await?;
    let tport = target.local_addr.unwrap().port();
    let source = p
        .start_source(tport, "app.*", &server_yaml(Some(API_PASSWORD)))
        .await?;
    let port = source.local_addr.unwrap().port();
    let (c, v) = api(port, "POST", "/api/v1/peers/create", json!({"peer": {"name": "tgt", "type": "PGTELEPORT",
        "pgteleport_config": {"endpoint": {"hostname": "127.0.0.1", "port": tport}, "auth_token": TOKEN}}})).await?;
    assert_eq!(c, 201, "{v}");
    let flow = |name: &str, table: &str, peer: &str, extra: Value| {
        let mut f = json!({"flowJobName": name, "destinationName": peer,
            "tableMappings": [{"sourceTableIdentifier": table, "destinationTableIdentifier": table, "exclude": []}],
            "doInitialSnapshot": true, "maxBatchSize": 0});
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        json!({"connectionConfigs": f})
    };
    let create = "/api/v1/flows/cdc/create";
    // m1 writes other.m as copy.m2 on the target.
    let renamed = |dest: &str| json!({"tableMappings": [{"sourceTableIdentifier": "other.m", "destinationTableIdentifier": dest}]});
    let (c, v) = api(
        port,
        "POST",
        create,
        flow("m1", "other.m", "tgt", renamed("copy.m2")),
    )
    .await?;
    assert_eq!((c, v["workflowId"].clone()), (201, json!("m1")), "{v}");
    let (c, v) = api(
        port,
        "POST",
        create,
        flow("m1", "other.m", "tgt", renamed("copy.m2")),
    )
    .await?;
    assert_eq!((c, v["status"].clone()), (200, json!("unchanged")), "{v}");
    let refused = [
        (
            flow("m1", "other.m", "tgt", renamed("copy.m3")),
            409,
            "another definition",
        ),
        (flow("t1", "other.m", "tgt", json!({})), 409, "config file"),
        (
            flow("m2", "other.m", "nobody", json!({})),
            422,
            "no such peer",
        ),
        (
            flow("m2", "other.missing", "tgt", json!({})),
            422,
            "does not exist",
        ),
        (
            flow("m2", "other.nokey", "tgt", json!({})),
            422,
            "no primary key",
        ),
        (
            flow(
                "m2",
                "other.m",
                "tgt",
                json!({"softDeleteColName": "x", "syncedAtColName": "x"}),
            ),
            422,
            "same column",
        ),
        (
            flow(
                "m2",
                "other.m",
                "tgt",
                json!({"softDeleteColName": "é".repeat(40)}),
            ),
            422,
            "at most 63 bytes",
        ),
        (flow("m2", "other*", "tgt", json!({})), 400, "schema.table"),
        (
            flow("m2", "other.m", "tgt", renamed("m2")),
            422,
            "schema.table",
        ),
        (
            flow(
                "m2",
                "other.m",
                "tgt",
                json!({"tableMappings": [
                    {"sourceTableIdentifier": "other.m", "destinationTableIdentifier": "app.t"},
                    {"sourceTableIdentifier": "app.t"}]}),
            ),
            422,
            "keeps on the target",
        ),
    ];
    let excluding = |cols: Value| json!({"tableMappings": [{"sourceTableIdentifier": "other.m", "exclude": cols}]});
    let refused = refused.into_iter().chain([
        (
            flow("m2", "other.m", "tgt", excluding(json!(["id"]))),
            422,
            "in its key",
        ),
        (
            flow("m2", "other.m", "tgt", excluding(json!(["nope"]))),
            422,
            "no column",
        ),
    ]);
    for (body, code, says) in refused {
        let (c, v) = api(port, "POST", create, body.clone()).await?;
        assert_eq!(c, code, "{body} -> {v}");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(says),
            "{body} -> {v}"
        );
    }
    wait_for("mirror m1 RUNNING", Duration::from_secs(30), || async {
        Ok(mirror_state(port, "m1").await? == "RUNNING")
    })
    .await?;
    src.batch_execute(
        "insert into other.m select g, 'after' from generate_series(501, 600) g;
         update other.m set v = 'changed' where id % 50 = 0;
         insert into app.t values (1, 'config target');",
    )
    .await?;
    let pairs = [("other.m", "copy.m2"), ("app.t", "app.t")];
    wait_equal_as(&src, &dst, &pairs, Duration::from_secs(30)).await?;
    assert_eq!(
        scalar_i64(&dst, "select count(*) from other.m").await?,
        0,
        "nothing under the source name"
    );
    let (_, v) = api(port, "GET", "/api/v1/mirrors/list", Value::Null).await?;
    let m1 = v["mirrors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "m1")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (m1["destinationName"].clone(), m1["fromConfig"].clone()),
        (json!("tgt"), json!(false)),
        "{v}"
    );
    assert_eq!(
        scalar_i64(&src, "select count(*) from teleport.mirror").await?,
        1,
        "repeated creates made one mirror"
    );

    // A restart runs the stored mirror again.
    source.shutdown().await?;
    let source = p
        .start_source(tport, "app.*", &server_yaml(Some(API_PASSWORD)))
        .await?;
    let port = source.local_addr.unwrap().port();
    src.execute("delete from other.m where id <= 10", &[])
        .await?;
    wait_equal_as(&src, &dst, &pairs, Duration::from_secs(30)).await?;
    assert_eq!(mirror_state(port, "m1").await?, "RUNNING");
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// `api_mirrors: true` makes a source without any `targets`: its mirrors come from the API
/// only, and replicate as the config's would.
#[tokio::test]
async fn a_source_without_config_targets_runs_mirrors_created_through_the_api() -> anyhow::Result<()>
{
    let p = Pair::new(SCHEMA).await?;
    let target = p.start_target(0).await?;
    let tport = target.local_addr.unwrap().port();
    let yaml = format!(
        "api_mirrors: true\n\
         processing_intervals: {{batcher: 50, transmitter: 20, vacuum: 100}}\n\
         database: {{name: src-{id}, database: {db}, hostname: 127.0.0.1, port: {pgport}, username: {role}, password: {PASSWORD}}}\n{server}",
        id = p.id,
        db = p.src_db,
        role = p.src_role,
        pgport = p.cluster.port,
        server = server_yaml(Some(API_PASSWORD)),
    );
    let cfg =
        pgteleport::config::Config::from_yaml(&yaml, std::path::Path::new("<api source>"), |_| {
            None
        })?;
    assert!(cfg.roles().source && !cfg.roles().target);
    let source = pgteleport::instance::start(cfg).await?;
    let port = source.local_addr.unwrap().port();
    let (c, v) = api(port, "GET", "/api/v1/mirrors/list", Value::Null).await?;
    assert_eq!((c, v["mirrors"].clone()), (200, json!([])), "{v}");
    let (c, v) = api(port, "POST", "/api/v1/peers/create", json!({"peer": {"name": "tgt", "type": "PGTELEPORT",
        "pgteleport_config": {"endpoint": {"hostname": "127.0.0.1", "port": tport}, "auth_token": TOKEN}}})).await?;
    assert_eq!(c, 201, "{v}");
    let flow = json!({"connectionConfigs": {"flowJobName": "only", "destinationName": "tgt",
        "tableMappings": [{"sourceTableIdentifier": "app.t"}], "maxBatchSize": 1}});
    let (c, v) = api(port, "POST", "/api/v1/flows/cdc/create", flow).await?;
    assert_eq!(c, 201, "{v}");
    let src = p.src().await?;
    let dst = p.dst().await?;
    wait_for("mirror RUNNING", Duration::from_secs(20), || async {
        Ok(mirror_state(port, "only").await? == "RUNNING")
    })
    .await?;
    src.batch_execute("insert into app.t select g, 'x' from generate_series(1, 100) g; update app.t set v = 'y' where id < 10;")
        .await?;
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(20)).await?;
    // maxBatchSize 1: five one-row transactions committed back to back make five batches.
    let applied = "select coalesce(max(seq), 0) from teleport.applied where target = 'only'";
    let before = scalar_i64(&dst, applied).await?;
    for id in 1001..=1005 {
        src.execute("insert into app.t values ($1, 'one')", &[&id])
            .await?;
    }
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(20)).await?;
    let after = scalar_i64(&dst, applied).await?;
    assert!(
        after - before >= 5,
        "five transactions in {} batch(es)",
        after - before
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A target session holding a lock on a replicated row holds the batch that changes it: the
/// target instance says so once the batch has been applied past `stall_report` — in its log,
/// in `/metrics`, naming the session —, so does the source's transmitter with the target's
/// account (its stall report, and the error of a batch without an answer), and the batch
/// goes through once that session ends.
#[tokio::test]
async fn a_batch_held_by_a_target_lock_names_the_session_holding_it() -> anyhow::Result<()> {
    let p = Pair::new(
        "create schema app;
         create table app.t (id int primary key, v text);
         insert into app.t values (1, 'a'), (2, 'b');",
    )
    .await?;
    let target = p.start_target_reporting_stalls().await?;
    let tport = target.local_addr.expect("the target listens").port();
    // The source gives up on an answer after 2 s (and sends the batch again later), and
    // reports a step running for 300 ms.
    let yaml = p
        .source_yaml(tport, "app.*", "")
        .replace(
            &format!("port: {tport}}}"),
            &format!("port: {tport}, timeout_seconds: 2}}"),
        )
        .replace("ddlwatcher: 200}", "ddlwatcher: 200, stall_report: 300}");
    assert!(yaml.contains("timeout_seconds: 2"), "{yaml}");
    assert!(yaml.contains("stall_report: 300"), "{yaml}");
    let source = pgteleport::instance::start(pgteleport::config::Config::from_yaml(
        &yaml,
        std::path::Path::new("<test source>"),
        |_| None,
    )?)
    .await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(20)).await?;

    let holder = p.dst().await?;
    let holder_pid: i32 = holder
        .query_one("select pg_backend_pid()", &[])
        .await?
        .get(0);
    holder
        .batch_execute("begin; update app.t set v = 'held' where id = 1")
        .await?;
    src.batch_execute(
        "update app.t set v = 'changed' where id = 1; insert into app.t values (3, 'c')",
    )
    .await?;
    wait_blocked_by("applier", holder_pid).await?;
    let (_, m) = call(tport, "GET", "/metrics", Auth::None, None).await?;
    let m = m.as_str().unwrap_or_default().to_string();
    let held = metric(
        &m,
        "pgteleport_stage_stalled_seconds{stage=\"applier\",blocked=\"true\"}",
    );
    assert!(held.is_some_and(|s| s >= 0.3), "{m}");
    // The source says so too, with the target's account: in its stall report, and in the
    // error of the batch left without an answer.
    let named = format!("held by pid {holder_pid} ");
    let stall = wait_blocked_by("transmitter t1", holder_pid).await?;
    assert!(
        stall
            .detail
            .contains("the target `t1` has not answered yet; there, for "),
        "{stall:?}"
    );
    wait_for(
        "the source's transmit error",
        Duration::from_secs(20),
        || async {
            let e = last_error(&src).await?;
            Ok(e.contains("no answer within") && e.contains(&named))
        },
    )
    .await?;
    // The batch waits; nothing of it is visible yet.
    assert_eq!(
        texts(&dst, "select v from app.t order by id").await?,
        ["a", "b"]
    );
    holder.batch_execute("rollback").await?;
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(20)).await?;
    wait_for(
        "the stall report cleared",
        Duration::from_secs(10),
        || async {
            Ok(!pgteleport::stage::stalls()
                .iter()
                .any(|s| s.stage == "applier" || s.stage == "transmitter t1"))
        },
    )
    .await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A diffing look prints the views of the catalog, and printing a view locks the tables it
/// reads: a schema change of such a table left uncommitted holds the look (and every later
/// one) until it ends. Past `stall_report` the source instance says so — in `/metrics`, and
/// through an alert config with `blocked_seconds`, naming the session to end — and once that
/// session ends, the alert resolves and every change arrives.
#[tokio::test]
async fn a_look_held_by_a_transaction_left_open_is_reported_and_alerted() -> anyhow::Result<()> {
    let p = Pair::new(
        "create schema app;
         create table app.t (id int primary key, v text);
         create view app.tv as select id, v from app.t;
         insert into app.t values (1, 'a');",
    )
    .await?;
    let (hook_port, got) = receiver().await?;
    let target = p.start_target(0).await?;
    let tport = target.local_addr.expect("the target listens").port();
    let yaml = p
        .source_yaml(tport, "app.*", &server_yaml(None))
        .replace("ddlwatcher: 200}", "ddlwatcher: 200, stall_report: 300}");
    assert!(yaml.contains("stall_report: 300"), "{yaml}");
    let config = pgteleport::config::Config::from_yaml(
        &yaml,
        std::path::Path::new("<test source>"),
        |_| None,
    )?;
    let source = pgteleport::instance::start(config.clone()).await?;
    let port = source.local_addr.expect("the source serves the API").port();
    let cfg = json!({"config": {"serviceType": "webhook", "serviceConfig": {
        "url": format!("http://127.0.0.1:{hook_port}/alerts"), "blocked_seconds": 1}}});
    let (c, v) = call(
        port,
        "POST",
        "/api/v1/alerts/config",
        Auth::None,
        Some(&cfg.to_string()),
    )
    .await?;
    assert_eq!(c, 201, "{v}");
    let (src, dst) = (p.src().await?, p.dst().await?);
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(20)).await?;

    let holder = p.src().await?;
    let holder_pid: i32 = holder
        .query_one("select pg_backend_pid()", &[])
        .await?
        .get(0);
    holder
        .batch_execute("begin; alter table app.t add column w int default 5")
        .await?;
    // A change the next look sees (a new table): the look prints the view and waits.
    src.batch_execute("create table app.u (id int primary key); insert into app.u values (1)")
        .await?;
    let fired = |status: &str| {
        got.lock()
            .unwrap()
            .iter()
            .filter(|v| v["status"] == status && v["alert"] == "blocked_seconds")
            .cloned()
            .collect::<Vec<Value>>()
    };
    wait_for("the alert fires", Duration::from_secs(20), || async {
        Ok(!fired("firing").is_empty())
    })
    .await?;
    let alert = fired("firing").remove(0);
    assert_eq!(alert["stage"], "ddlwatcher", "{alert}");
    let text = alert["message"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("held by pid {holder_pid} "))
            && text.contains("idle in transaction"),
        "the alert names the session holding the lock and what it does: {text}"
    );
    let (_, m) = call(port, "GET", "/metrics", Auth::None, None).await?;
    let m = m.as_str().unwrap_or_default().to_string();
    let held = metric(
        &m,
        "pgteleport_stage_stalled_seconds{stage=\"ddlwatcher\",blocked=\"true\"}",
    );
    assert!(held.is_some_and(|s| s >= 1.0), "{m}");
    // `pgteleport status`, another process, says it too.
    let status = pgteleport::status::status(&config).await?;
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("waiting     pgteleport ddlwatcher")
                && l.contains(&format!("held by pid {holder_pid} "))),
        "{status}"
    );

    holder.batch_execute("commit").await?;
    src.batch_execute("insert into app.t (id, v) values (2, 'b')")
        .await?;
    wait_for("the alert resolves", Duration::from_secs(20), || async {
        Ok(!fired("resolved").is_empty())
    })
    .await?;
    wait_equal(&src, &dst, &["app.t", "app.u"], Duration::from_secs(20)).await?;
    wait_same_shape(&src, &dst, &["app"], Duration::from_secs(20)).await?;
    let (_, m) = call(port, "GET", "/metrics", Auth::None, None).await?;
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(!m.contains("stage=\"ddlwatcher\",blocked"), "{m}");
    assert_eq!((fired("firing").len(), fired("resolved").len()), (1, 1));
    let status = pgteleport::status::status(&config).await?;
    assert!(
        status.contains("waiting     no connection of this instance waits for a lock"),
        "{status}"
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}
