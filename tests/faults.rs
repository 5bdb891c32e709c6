//! Fault injection: instances as real OS processes killed with SIGKILL at random moments,
//! PostgreSQL servers crashed (`pg_ctl stop -m immediate`) on either side, and a TCP proxy
//! between transmitter and target that drops, stalls and cuts answers after the target
//! committed. After each: the target equals the source and every batch was applied once.
//!
//! `PGTELEPORT_CRASH_KILLS=N` runs the crash loop with N faults (the long form; CI runs 8).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pgteleport::cluster::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TABLES: &str = "create schema app;
    create table app.accounts (aid int primary key, bid int not null, abalance bigint not null, filler text);
    create table app.history (id bigserial primary key, aid int not null, delta int not null, at timestamptz not null default now());";

/// A pgbench-like writer that keeps going through server crashes (reconnecting) until
/// `stop`; returns the transactions it saw committed.
async fn bank_writer(port: u16, db: &'static str, stop: Arc<AtomicBool>) -> anyhow::Result<u64> {
    let conninfo = format!("host=127.0.0.1 port={port} dbname={db} user={db} password={PASSWORD}");
    let mut n = 0u64;
    let mut client = None;
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                Ok((cl, conn)) => {
                    tokio::spawn(conn);
                    client = Some(cl);
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let cl = client.as_mut().expect("connected");
        let aid = fastrand::i32(1..=200);
        let delta = fastrand::i32(-500..=500);
        let sql = if fastrand::u8(..20) == 0 {
            // Now and then an account is closed and opened again (a delete, then an insert).
            format!(
                "begin; delete from app.accounts where aid = {aid};
                 insert into app.accounts values ({aid}, {}, {delta}, 'reopened') on conflict (aid) do nothing;
                 insert into app.history (aid, delta) values ({aid}, {delta}); commit;",
                aid % 10
            )
        } else {
            format!(
                "begin; insert into app.accounts values ({aid}, {}, 0, 'new') on conflict (aid) do nothing;
                 update app.accounts set abalance = abalance + {delta} where aid = {aid};
                 insert into app.history (aid, delta) values ({aid}, {delta}); commit;",
                aid % 10
            )
        };
        match cl.batch_execute(&sql).await {
            Ok(()) => n += 1,
            Err(e) if e.is_closed() || e.as_db_error().is_none() => client = None,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) => {
                let _ = cl.batch_execute("rollback").await;
            }
            Err(_) => {
                // A server going down answers with an error first (admin shutdown).
                client = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..4))).await;
    }
    Ok(n)
}

/// Waits until the source process has put its capture trigger on `tables` tables (writes
/// from before would need an initial load).
async fn capture_installed(src: &tokio_postgres::Client, tables: i64) -> anyhow::Result<()> {
    wait_for("capture installed", Duration::from_secs(30), || async {
        Ok(scalar_i64(
            src,
            "select count(*) from pg_trigger where tgname = 'pgteleport_capture'",
        )
        .await?
            == tables)
    })
    .await
}

/// One pgteleport process, restarted on demand (as a supervisor would).
struct Proc {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Proc {
    fn new(config: PathBuf, log: PathBuf) -> Self {
        Self {
            config,
            log,
            child: None,
            starts: 0,
        }
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.start_with_log("info")
    }

    fn start_with_log(&mut self, level: &str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_pgteleport"))
            .arg("-config")
            .arg(&self.config)
            .env("PGTELEPORT_LOG", level)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Restarts the process when it exited (it stops by itself when its source database
    /// went away, so that a restarted instance takes over cleanly).
    fn supervise(&mut self) -> anyhow::Result<()> {
        let exited = match self.child.as_mut() {
            Some(c) => c.try_wait()?.is_some(),
            None => true,
        };
        if exited {
            self.start()?;
        }
        Ok(())
    }

    /// SIGTERM; returns how long the process took to exit and whether it exited cleanly.
    fn terminate(&mut self) -> anyhow::Result<(Duration, bool)> {
        let mut c = self
            .child
            .take()
            .ok_or_else(|| anyhow::anyhow!("not running"))?;
        let t0 = Instant::now();
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok((t0.elapsed(), status.success()));
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                anyhow::bail!("no exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_instances_and_crashed_servers_lose_and_double_nothing() -> anyhow::Result<()> {
    init_logging();
    let kills: u32 = std::env::var("PGTELEPORT_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(8);
    // Two clusters of its own: each side's server is crashed in turn.
    let mut a = Cluster::start_new("crash-src")?;
    let mut b = Cluster::start_new("crash-dst")?;
    for (c, name) in [(&a, "src"), (&b, "dst")] {
        c.create_role(name, PASSWORD).await?;
        c.create_database(name, name).await?;
        c.connect(name, name, PASSWORD)
            .await?
            .batch_execute(TABLES)
            .await?;
    }
    let dir = std::env::temp_dir().join(format!("pgteleport-crash-{}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir)?;
    let http = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let target_yml = write(
        &dir,
        "target.yml",
        &format!(
            "database: {{name: crash-dst, database: dst, hostname: 127.0.0.1, port: {}, username: dst, password: {PASSWORD}}}\n\
             server: {{hostname: 127.0.0.1, port: {http}, auth_token: {TOKEN}}}\n",
            b.port
        ),
    )?;
    let source_yml = write(
        &dir,
        "source.yml",
        &format!(
            "processing_intervals: {{batcher: 50, transmitter: 20, vacuum: 200, rotation: 500, ddlwatcher: 500}}\n\
             database: {{name: crash-src, database: src, hostname: 127.0.0.1, port: {}, username: src, password: {PASSWORD}}}\n\
             targets:\n  t1:\n    target_expression: \"app.*\"\n    endpoint: {{hostname: 127.0.0.1, port: {http}, timeout_seconds: 5}}\n    auth_token: {TOKEN}\n",
            a.port
        ),
    )?;
    let mut target = Proc::new(target_yml, dir.join("target.log"));
    let mut source = Proc::new(source_yml, dir.join("source.log"));
    target.start()?;
    source.start()?;

    // Writes start once capture is installed (rows from before would need an initial load).
    let src = a.connect("src", "src", PASSWORD).await?;
    capture_installed(&src, 2).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(bank_writer(a.port, "src", stop.clone())))
        .collect();

    let mut done = Vec::new();
    for i in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(400..1200))).await;
        source.supervise()?;
        target.supervise()?;
        // Every kind of fault comes up in the short form too.
        let fault = if i < 5 { i } else { fastrand::u32(0..5) };
        match fault {
            0 => source.kill(),
            1 => target.kill(),
            2 => {
                source.kill();
                target.kill();
            }
            3 => {
                a.stop_immediate()?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                a.start()?;
            }
            _ => {
                b.stop_immediate()?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                b.start()?;
            }
        }
        done.push(["source", "target", "both", "source server", "target server"][fault as usize]);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(100..500))).await;
        source.supervise()?;
        target.supervise()?;
    }
    stop.store(true, Ordering::SeqCst);
    let mut committed = 0;
    for w in writers {
        committed += w.await??;
    }
    assert!(
        committed > 100,
        "the writers committed only {committed} transactions"
    );

    // Catch up, then compare, with the instances supervised meanwhile.
    let src = a.connect("src", "src", PASSWORD).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        source.supervise()?;
        target.supervise()?;
        let dst = b.connect("dst", "dst", PASSWORD).await?;
        let pending = scalar_i64(
            &src,
            "select count(*) from teleport.batch where acked_at is null",
        )
        .await
        .unwrap_or(1);
        let same = checksum(&src, "app.accounts").await? == checksum(&dst, "app.accounts").await?
            && checksum(&src, "app.history").await? == checksum(&dst, "app.history").await?;
        // Nothing left in the queue for the batcher either: every event is in an acknowledged batch.
        if same && pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("source.log")).unwrap_or_default();
            let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
            anyhow::bail!("not equal within 90 s after faults {done:?}; pending batches {pending}; source log (last lines, newest first):\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dst = b.connect("dst", "dst", PASSWORD).await?;
    wait_equal(
        &src,
        &dst,
        &["app.accounts", "app.history"],
        Duration::from_secs(10),
    )
    .await?;
    // Exactly once: the target applied as many events as the source put into batches.
    assert_exactly_once(&src, &dst)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (faults {done:?})"))?;
    tracing::info!(
        ?done,
        committed,
        source_starts = source.starts,
        target_starts = target.starts,
        "crash loop passed"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What the proxy does to the connections it sees.
const PASS: u8 = 0;
/// Closes each new connection at once.
const DROP: u8 = 1;
/// Forwards nothing either way (the transmitter's timeout must end it).
const STALL: u8 = 2;
/// Forwards the request, lets the target answer (it has committed by then), and closes
/// the client side before one byte of the answer reaches the source.
const CUT_REPLY: u8 = 3;

async fn proxy(listener: TcpListener, upstream: u16, mode: Arc<AtomicU8>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        let mode = mode.clone();
        tokio::spawn(async move {
            match mode.load(Ordering::SeqCst) {
                DROP => return,
                STALL => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                _ => {}
            }
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let (mut cr, mut cw) = client.split();
            let (mut sr, mut sw) = server.split();
            let up = async {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = sw.shutdown().await;
            };
            let down = async {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if mode.load(Ordering::SeqCst) == CUT_REPLY {
                                return; // the answer is lost: the client half closes below
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = async { tokio::join!(up, down) } => {}
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
        });
    }
}

#[tokio::test]
async fn dropped_stalled_and_cut_connections_lose_and_double_nothing() -> anyhow::Result<()> {
    let p = Arc::new(
        Pair::new(
            "create schema app; create table app.hot (id int primary key, n bigint not null);",
        )
        .await?,
    );
    let target = p.start_target(0).await?;
    let upstream = target.local_addr.unwrap().port();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let mode = Arc::new(AtomicU8::new(PASS));
    tokio::spawn(proxy(listener, upstream, mode.clone()));
    // The transmitter talks to the proxy, with a short timeout for stalls.
    let yaml = p.source_yaml(port, "app.*", "").replace(
        &format!("port: {port}}}"),
        &format!("port: {port}, timeout_seconds: 2}}"),
    );
    let cfg = pgteleport::config::Config::from_yaml(&yaml, Path::new("s.yml"), |_| None)?;
    let source = pgteleport::instance::start(cfg).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        tokio::spawn(async move {
            let c = p.src().await?;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let id = fastrand::i32(1..=50);
                c.batch_execute(&format!(
                    "insert into app.hot values ({id}, 1) on conflict (id) do update set n = app.hot.n + 1"
                ))
                .await?;
                n += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            anyhow::Ok(n)
        })
    };
    let src = p.src().await?;
    let mut seen = [0u32; 4];
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let m = fastrand::u8(0..4);
        seen[m as usize] += 1;
        mode.store(m, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(200..900))).await;
    }
    // Every fault happened at least once in the short run.
    for m in [DROP, STALL, CUT_REPLY] {
        if seen[m as usize] == 0 {
            mode.store(m, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    mode.store(PASS, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let written = writer.await??;
    assert!(written > 100, "only {written} writes");
    let dst = p.dst().await?;
    wait_equal(&src, &dst, &["app.hot"], Duration::from_secs(60)).await?;
    assert_exactly_once(&src, &dst).await?;
    // The counter column makes a doubled update visible too: n counts the writes.
    let total = scalar_i64(&dst, "select coalesce(sum(n), 0)::int8 from app.hot").await?;
    assert_eq!(total as u64, written, "sum of counters vs writes");
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A batch the target acknowledged survives a crash of the target's server right after the
/// answer. The batch's transaction commits without waiting for its WAL (the next batch
/// applies meanwhile) and this server's WAL writer waits 10 s between flushes: the answer
/// must wait for the batch's WAL on disk, since the source forgets acknowledged batches.
/// (Without that wait: "the source saw batch 1 acknowledged, the target restarted at 0".)
#[tokio::test]
async fn an_acknowledged_batch_survives_a_crash_of_the_target_server() -> anyhow::Result<()> {
    let schema = "create schema app; create table app.t (id int primary key, v text not null);";
    let p = Pair::new(schema).await?;
    let mut b = Cluster::start_new("ack-dst")?;
    let admin = b.admin("postgres").await?;
    for sql in [
        "alter system set wal_writer_delay = '10s'",
        "alter system set wal_writer_flush_after = '1GB'",
        "select pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await?;
    }
    b.create_role("dst", PASSWORD).await?;
    b.create_database("dst", "dst").await?;
    b.connect("dst", "dst", PASSWORD)
        .await?
        .batch_execute(schema)
        .await?;
    let yaml = format!(
        "database: {{name: ack-dst, database: dst, hostname: 127.0.0.1, port: {}, username: dst, password: {PASSWORD}}}\n\
         server: {{hostname: 127.0.0.1, port: 0, auth_token: {TOKEN}}}\n",
        b.port
    );
    let cfg = pgteleport::config::Config::from_yaml(&yaml, Path::new("t.yml"), |_| None)?;
    let target = pgteleport::instance::start(cfg).await?;
    let source = p
        .start_source(target.local_addr.unwrap().port(), "app.*", "")
        .await?;
    let src = p.src().await?;
    for round in 1..=3i64 {
        src.batch_execute(&format!(
            "insert into app.t values ({round}, 'row {round}')"
        ))
        .await?;
        // Applied (the row is visible on the target) and acknowledged (no batch left
        // waiting for an answer).
        wait_for(
            "the row applied and acknowledged",
            Duration::from_secs(30),
            || async {
                let dst = b.connect("dst", "dst", PASSWORD).await?;
                Ok(
                    scalar_i64(&dst, "select count(*) from app.t").await? == round
                        && scalar_i64(
                            &src,
                            "select count(*) from teleport.batch where acked_at is null",
                        )
                        .await?
                            == 0,
                )
            },
        )
        .await?;
        let acked = scalar_i64(
            &src,
            "select coalesce(max(seq), 0) from teleport.batch where acked_at is not null",
        )
        .await?;
        b.stop_immediate()?;
        b.start()?;
        let dst = b.connect("dst", "dst", PASSWORD).await?;
        let position =
            scalar_i64(&dst, "select coalesce(max(seq), 0) from teleport.applied").await?;
        assert!(
            position >= acked,
            "round {round}: the source saw batch {acked} acknowledged, the target restarted at {position}"
        );
        assert_eq!(
            scalar_i64(&dst, "select count(*) from app.t").await?,
            round,
            "round {round}: rows on the target after its crash"
        );
    }
    // And the mirror goes on.
    src.batch_execute("insert into app.t values (4, 'after')")
        .await?;
    wait_for("the last row", Duration::from_secs(30), || async {
        let dst = b.connect("dst", "dst", PASSWORD).await?;
        Ok(scalar_i64(&dst, "select count(*) from app.t").await? == 4)
    })
    .await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_both_instances_within_seconds_with_nothing_half_applied(
) -> anyhow::Result<()> {
    let p = Pair::new(TABLES).await?;
    let dir = std::env::temp_dir().join(format!("pgteleport-term-{}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir)?;
    let http = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut target = Proc::new(
        write(&dir, "target.yml", &p.target_yaml(http))?,
        dir.join("target.log"),
    );
    let mut source = Proc::new(
        write(&dir, "source.yml", &p.source_yaml(http, "app.*", ""))?,
        dir.join("source.log"),
    );
    target.start_with_log("debug")?;
    source.start_with_log("debug")?;
    let src = p.src().await?;
    capture_installed(&src, 2).await?;
    // Transactions of 20 000 rows each, so that batches are in flight when the signal comes.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, stop) = (Arc::new(p.src().await?), stop.clone());
        tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(Ordering::SeqCst) {
                p.batch_execute(&format!(
                    "insert into app.history (aid, delta) select g % 200, g from generate_series({}, {}) g",
                    n * 20_000,
                    n * 20_000 + 19_999
                ))
                .await?;
                n += 1;
            }
            anyhow::Ok(n)
        })
    };
    let dst = p.dst().await?;
    wait_for("a first batch applied", Duration::from_secs(30), || async {
        Ok(scalar_i64(&dst, "select count(*) from app.history").await? > 0)
    })
    .await?;
    let (took, clean) = target.terminate()?;
    println!("target stopped {took:?} after SIGTERM");
    assert!(clean, "the target exited with an error on SIGTERM");
    assert!(
        took < Duration::from_secs(5),
        "the target took {took:?} to stop"
    );
    // Whole batches only: the target holds a multiple of the writer's 20 000-row transactions.
    let n = scalar_i64(&dst, "select count(*) from app.history").await?;
    assert_eq!(n % 20_000, 0, "{n} rows: a transaction was applied in part");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (took, clean) = source.terminate()?;
    println!("source stopped {took:?} after SIGTERM");
    assert!(clean, "the source exited with an error on SIGTERM");
    assert!(
        took < Duration::from_secs(5),
        "the source took {took:?} to stop"
    );
    stop.store(true, Ordering::SeqCst);
    writer.await??;
    target.start_with_log("debug")?;
    source.start_with_log("debug")?;
    wait_equal_checksum(&src, &dst, &["app.history"], Duration::from_secs(60)).await?;
    assert_exactly_once(&src, &dst).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Rows in the three queue tables and the bytes of the whole internal schema.
async fn queue_state(c: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    let rows = scalar_i64(
        c,
        "select (select count(*) from teleport.event_0) + (select count(*) from teleport.event_1) + (select count(*) from teleport.event_2)",
    )
    .await?;
    let bytes = scalar_i64(
        c,
        "select sum(pg_total_relation_size(c.oid))::int8 from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = 'teleport' and c.relkind = 'r'",
    )
    .await?;
    Ok((rows, bytes))
}

#[tokio::test]
async fn queue_stays_bounded_under_a_held_snapshot_and_resumes_after_a_held_transaction(
) -> anyhow::Result<()> {
    // PGTELEPORT_HOLD_SECONDS for the long form (minutes); CI holds 8 s each.
    let hold: u64 = std::env::var("PGTELEPORT_HOLD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let p = Arc::new(
        Pair::new("create schema app; create table app.t (id bigint primary key, v text);").await?,
    );
    let (source, target) = p.start_both("app.*").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        tokio::spawn(async move {
            let c = p.src().await?;
            let mut id = 0i64;
            while !stop.load(Ordering::SeqCst) {
                c.batch_execute(&format!(
                    "insert into app.t select g, repeat('x', 100) from generate_series({}, {}) g",
                    id,
                    id + 49
                ))
                .await?;
                id += 50;
                // About 2 500 rows a second: a pipeline sharing two cores with the
                // initial-load tests stays within a few seconds of the writer.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(id)
        })
    };
    let src = p.src().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. A reader holds an old snapshot (xmin) open: rotation goes on.
    let holder = p.src().await?;
    holder
        .batch_execute("begin isolation level repeatable read; select count(*) from app.t;")
        .await?;
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(hold) {
        samples.push(queue_state(&src).await?);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    holder.batch_execute("commit").await?;
    let half = samples.len() / 2;
    let max_rows = |s: &[(i64, i64)]| s.iter().map(|x| x.0).max().unwrap_or(0);
    let max_bytes = |s: &[(i64, i64)]| s.iter().map(|x| x.1).max().unwrap_or(0);
    let late = &samples[half..];
    // Bounded: the queue is emptied now and then all along — in the second half of the
    // hold too, its rows and the internal schema's size drop (a TRUNCATE of an event table
    // every batch of which was acknowledged). Held back by the snapshot, they would only
    // grow. (How high they get depends on how far the pipeline is behind the writer, which
    // on two shared cores is not the snapshot's doing.)
    let drops = |s: &[(i64, i64)], f: fn(&(i64, i64)) -> i64| {
        s.windows(2).filter(|w| f(&w[1]) < f(&w[0])).count()
    };
    assert!(
        drops(late, |x| x.0) > 0,
        "queue rows never dropped in the second half of a held snapshot: {:?}",
        late.iter().map(|x| x.0).collect::<Vec<_>>()
    );
    assert!(
        drops(late, |x| x.1) > 0,
        "the internal schema never shrank in the second half of a held snapshot: {:?}",
        late.iter().map(|x| x.1).collect::<Vec<_>>()
    );
    let rotations_before =
        scalar_i64(&src, "select last_value from teleport.queue_rotation").await?;

    // 2. A transaction with an xid stays open: the queue tables it could have written to
    //    are kept (rotation waits), and are emptied once it ends (rotation resumes).
    let holder = p.src().await?;
    holder
        .batch_execute("begin; select pg_current_xact_id();")
        .await?;
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let (held_rows, _) = queue_state(&src).await?;
    holder.batch_execute("commit").await?;
    stop.store(true, Ordering::SeqCst);
    let written = writer.await??;
    // The backlog of the hold reaches the target, then the kept tables are emptied.
    let dst = p.dst().await?;
    wait_equal_checksum(&src, &dst, &["app.t"], Duration::from_secs(60 + 2 * hold)).await?;
    wait_for(
        "the queue emptied after the transaction ended",
        Duration::from_secs(30),
        || async { Ok(queue_state(&src).await?.0 == 0) },
    )
    .await?;
    let rotations_after =
        scalar_i64(&src, "select last_value from teleport.queue_rotation").await?;
    assert!(rotations_after > rotations_before, "rotation resumed");
    tracing::info!(
        written,
        max_rows_under_snapshot = max_rows(&samples),
        max_bytes_under_snapshot = max_bytes(&samples),
        held_rows,
        "queue under held snapshots"
    );
    println!(
        "held snapshot {hold} s: queue max {} rows, internal schema max {} bytes; held xid {hold} s: {held_rows} rows kept, emptied after",
        max_rows(&samples),
        max_bytes(&samples)
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_secrets_at_debug_level() -> anyhow::Result<()> {
    let p =
        Pair::new("create schema app; create table app.t (id int primary key, v text);").await?;
    let dir = std::env::temp_dir().join(format!("pgteleport-secrets-{}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir)?;
    let http = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let source_secret = "token-for-other-source-5150";
    let target_yaml = p.target_yaml_with(
        http,
        &format!("source_tokens: {{other: {source_secret}}}, "),
    );
    let mut target = Proc::new(
        write(&dir, "target.yml", &target_yaml)?,
        dir.join("target.log"),
    );
    let mut source = Proc::new(
        write(&dir, "source.yml", &p.source_yaml(http, "app.*", ""))?,
        dir.join("source.log"),
    );
    let wrong_password = "wrong-password-8086";
    let mut bad_source = Proc::new(
        write(
            &dir,
            "bad.yml",
            &p.source_yaml(http, "app.*", "")
                .replace(PASSWORD, wrong_password),
        )?,
        dir.join("bad.log"),
    );
    for proc in [&mut target, &mut source, &mut bad_source] {
        proc.start_with_log("debug")?;
    }
    let src = p.src().await?;
    let dst = p.dst().await?;
    capture_installed(&src, 1).await?;
    src.execute("insert into app.t values (1, 'one')", &[])
        .await?;
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(20)).await?;
    // Refused requests: a wrong token, and a source token used for another source.
    let wrong_token = "wrong-token-secret-7777";
    for token in [wrong_token, source_secret] {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "GET"])
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("http://127.0.0.1:{http}/v1/position/src-x/t1"))
            .output();
        if let Ok(o) = out {
            let code = String::from_utf8_lossy(&o.stdout).to_string();
            assert!(code == "401" || code == "403", "{token}: {code}");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for proc in [&mut target, &mut source, &mut bad_source] {
        proc.kill();
    }
    let logs: String = ["target.log", "source.log", "bad.log"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("batch applied"),
        "the target logged its work:\n{logs}"
    );
    assert!(
        logs.contains("password"),
        "the bad source logged its failure"
    );
    for secret in [TOKEN, PASSWORD, wrong_password, wrong_token, source_secret] {
        assert!(!logs.contains(secret), "`{secret}` appears in a log");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
