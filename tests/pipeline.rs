//! Pipeline guarantees: atomic transactions, long transactions, concurrency, restarts,
//! an unreachable target, and a bounded queue.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const SCHEMA: &str = "
create schema app;
create table app.a (id bigint primary key, txn int not null, v text);
create table app.b (id bigint primary key, txn int not null, v text);
create table app.hot (id int primary key, n bigint not null, writer int not null);
";

/// A transaction larger than max_events_per_batch, across two tables, is never visible in
/// part on the target: every consistent read of the target sees count(a) = count(b).
#[tokio::test]
async fn transactions_are_applied_atomically() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let source = p
        // Segments of 250 events: each 6000-event transaction streams as 24 segments.
        .start_source(
            port,
            "app.*",
            "max_events_per_batch: 500\nbatch_size: 250\n",
        )
        .await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let dst = p.dst().await?;
        tokio::spawn(async move {
            let mut polls = 0u64;
            let mut partial = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let r = dst
                    .query_one(
                        "select (select count(*) from app.a), (select count(*) from app.b)",
                        &[],
                    )
                    .await
                    .unwrap();
                let (a, b): (i64, i64) = (r.get(0), r.get(1));
                if a != b || a % 3000 != 0 {
                    partial.push((a, b));
                }
                polls += 1;
            }
            (polls, partial)
        })
    };
    for txn in 0..6 {
        // Many statements, two tables, 6000 events: more than ten batches' worth.
        let mut sql = String::from("begin;");
        for k in 0..30 {
            let base = txn * 3000 + k * 100;
            sql.push_str(&format!(
                "insert into app.a select g, {txn}, 'x' from generate_series({}, {}) g;
                 insert into app.b select g, {txn}, 'y' from generate_series({}, {}) g;",
                base + 1,
                base + 100,
                base + 1,
                base + 100
            ));
        }
        sql.push_str("commit;");
        src.batch_execute(&sql).await?;
    }
    wait_equal(&src, &dst, &["app.a", "app.b"], Duration::from_secs(60)).await?;
    done.store(true, Ordering::SeqCst);
    let (polls, partial) = watcher.await?;
    assert!(polls > 10, "the watcher polled only {polls} times");
    assert!(
        partial.is_empty(),
        "target showed part of a transaction: {partial:?}"
    );
    // Batches respected the bound except where one transaction exceeded it alone.
    let max_batch = scalar_i64(&src, "select max(events) from teleport.batch").await?;
    assert_eq!(
        max_batch, 6000,
        "one 6000-event transaction makes one batch of its own"
    );
    // The target counted every event of the streamed batches.
    let applied = scalar_i64(&dst, "select events from teleport.applied").await?;
    assert_eq!(applied, 36_000);
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A transaction that begins first, writes early, and commits after several ticks: all its
/// rows arrive, and none before it commits.
#[tokio::test]
async fn long_transaction_spanning_ticks_is_not_lost() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    let mut long = p.src().await?;
    let long_tx = long.transaction().await?;
    long_tx
        .batch_execute(
            "insert into app.a select g, 99, 'early' from generate_series(1000001, 1000100) g",
        )
        .await?;
    // Other transactions commit across several ticks and arrive meanwhile.
    for i in 0..5 {
        src.batch_execute(&format!("insert into app.b values ({i}, {i}, 'other')"))
            .await?;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_equal(&src, &dst, &["app.b"], Duration::from_secs(20)).await?;
    let early = scalar_i64(&dst, "select count(*) from app.a").await?;
    assert_eq!(early, 0, "rows of an open transaction reached the target");
    long_tx
        .batch_execute(
            "insert into app.a select g, 99, 'late' from generate_series(1000101, 1000200) g",
        )
        .await?;
    long_tx.commit().await?;
    wait_equal(&src, &dst, &["app.a", "app.b"], Duration::from_secs(20)).await?;
    assert_eq!(scalar_i64(&dst, "select count(*) from app.a").await?, 200);
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

async fn writer(p: &Pair, w: i32, until: Instant) -> anyhow::Result<u64> {
    let mut c = p.src().await?;
    let mut n = 0u64;
    while Instant::now() < until {
        let tx = c.transaction().await?;
        let id = fastrand::i32(1..=20);
        let r = async {
            tx.execute(
                "insert into app.hot values ($1, 0, $2) on conflict (id) do update set n = app.hot.n + 1, writer = $2",
                &[&id, &w],
            )
            .await?;
            let other = fastrand::i32(1..=20);
            tx.execute("update app.hot set n = n + 10, writer = $2 where id = $1", &[&other, &w])
                .await?;
            if fastrand::u8(..10) == 0 {
                tx.execute("delete from app.hot where id = $1", &[&fastrand::i32(1..=20)]).await?;
            }
            let k = fastrand::i64(1..=500);
            tx.execute(
                "insert into app.a values ($1, $2, 'w') on conflict (id) do update set v = excluded.v || app.a.txn",
                &[&k, &w],
            )
            .await?;
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        match r {
            Ok(()) => {
                tx.commit().await?;
                n += 1;
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) => {
                tx.rollback().await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// Four writers for 10 s with conflicting updates on the same rows; then equal.
#[tokio::test]
async fn concurrent_conflicting_writers_end_equal() -> anyhow::Result<()> {
    let p = Arc::new(Pair::new(SCHEMA).await?);
    let (source, target) = p.start_both("app.*").await?;
    let until = Instant::now() + Duration::from_secs(10);
    let mut handles = Vec::new();
    for w in 0..4 {
        let p = p.clone();
        handles.push(tokio::spawn(async move { writer(&p, w, until).await }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    assert!(total > 100, "writers committed only {total} transactions");
    let src = p.src().await?;
    let dst = p.dst().await?;
    wait_equal(&src, &dst, &["app.hot", "app.a"], Duration::from_secs(60)).await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Kills the source instance and then the target instance mid-stream; after restarts the
/// end state is equal and every batch was applied exactly once.
#[tokio::test]
async fn killed_instances_resume_without_loss_or_duplicates() -> anyhow::Result<()> {
    let p = Arc::new(Pair::new(SCHEMA).await?);
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let source = p.start_source(port, "app.*", "").await?;
    let until = Instant::now() + Duration::from_secs(8);
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let p = p.clone();
            tokio::spawn(async move { writer(&p, w, until).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    source.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let source = p.start_source(port, "app.*", "").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    target.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let target = p.start_target(port).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    source.kill();
    target.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let target = p.start_target(port).await?;
    let source = p.start_source(port, "app.*", "").await?;
    for w in writers {
        w.await??;
    }
    let src = p.src().await?;
    let dst = p.dst().await?;
    wait_equal(&src, &dst, &["app.hot", "app.a"], Duration::from_secs(60)).await?;
    // Exactly once: the target's position and event count match what the source made.
    assert_exactly_once(&src, &dst).await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// The target is down for a while: the transmitter retries, then catches up.
#[tokio::test]
async fn unreachable_target_is_retried_then_caught_up() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let source = p.start_source(port, "app.*", "").await?;
    let src = p.src().await?;
    for i in 0..20 {
        src.batch_execute(&format!(
            "insert into app.a select g, {i}, 'v' from generate_series({}, {}) g",
            i * 100,
            i * 100 + 99
        ))
        .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pending = scalar_i64(
        &src,
        "select count(*) from teleport.batch where acked_at is null",
    )
    .await?;
    assert!(pending > 0, "batches wait while the target is down");
    // The failure is visible in `status`, with the reason.
    let cfg = pgteleport::config::Config::from_yaml(
        &p.source_yaml(port, "app.*", ""),
        std::path::Path::new("s.yml"),
        |_| None,
    )?;
    let report = pgteleport::status::status(&cfg).await?;
    assert!(
        report.contains("last error") && report.contains(&format!("127.0.0.1:{port}")),
        "{report}"
    );
    assert!(!report.contains("last error  none"), "{report}");
    let target = p.start_target(port).await?;
    let dst = p.dst().await?;
    wait_equal(&src, &dst, &["app.a"], Duration::from_secs(60)).await?;
    assert_eq!(scalar_i64(&dst, "select count(*) from app.a").await?, 2000);
    wait_for(
        "status shows no error after catching up",
        Duration::from_secs(10),
        || async {
            Ok(pgteleport::status::status(&cfg)
                .await?
                .contains("last error  none"))
        },
    )
    .await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// After thousands of acknowledged events the queue tables are emptied by rotation
/// (TRUNCATE), not by per-row deletes.
#[tokio::test]
async fn queue_is_emptied_by_rotation() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    for round in 0..5 {
        src.batch_execute(&format!(
            "insert into app.a select g, {round}, 'v' from generate_series({}, {}) g;
             update app.a set v = 'u' where txn = {round};",
            round * 2000,
            round * 2000 + 1999
        ))
        .await?;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    wait_equal(&src, &dst, &["app.a"], Duration::from_secs(60)).await?;
    let captured = scalar_i64(&src, "select last_value from teleport.event_id_seq").await?;
    assert!(captured >= 20_000, "captured {captured} events");
    wait_for("all queue tables empty", Duration::from_secs(30), || async {
        let n = scalar_i64(
            &src,
            "select (select count(*) from teleport.event_0) + (select count(*) from teleport.event_1) + (select count(*) from teleport.event_2)",
        )
        .await?;
        Ok(n == 0)
    })
    .await?;
    let rotations = scalar_i64(&src, "select last_value from teleport.queue_rotation").await?;
    assert!(rotations >= 2, "queue rotated {rotations} times");
    // Emptied by TRUNCATE: no dead tuples were ever made in the event tables.
    let dead = scalar_i64(
        &src,
        "select coalesce(sum(n_tup_del + n_tup_upd), 0)::int8 from pg_stat_user_tables where schemaname = 'teleport' and relname like 'event_%'",
    )
    .await?;
    assert_eq!(dead, 0, "no per-row delete or update on the queue");
    let size = scalar_i64(
        &src,
        "select sum(pg_relation_size(c.oid))::int8 from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = 'teleport' and c.relname in ('event_0', 'event_1', 'event_2')",
    )
    .await?;
    assert_eq!(size, 0, "the event tables' heap is empty after truncation");
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Regression: a writer whose xid is the newest when writers are moved to the next queue
/// table is not covered by that moment's snapshot (its xmax is the latest *completed* xid
/// + 1). The first rule compared with that xmax and emptied the old table as soon as the
/// writer committed, before its events were batched: they were lost. Driven step by step.
#[tokio::test]
async fn a_queue_table_is_not_emptied_under_the_newest_writer() -> anyhow::Result<()> {
    use pgteleport::stage::Step;
    let p = Pair::new("create schema app; create table app.t (id int primary key);").await?;
    let yaml = p
        .source_yaml(9, "app.*", "")
        .replace("rotation: 300", "rotation: 1");
    let cfg =
        pgteleport::config::Config::from_yaml(&yaml, std::path::Path::new("s.yml"), |_| None)?;
    let mut c = p.src().await?;
    pgteleport::capture::install(&mut c, &cfg).await?;
    let mut batcher = pgteleport::batcher::Batcher::new(&cfg);
    let mut vacuum = pgteleport::vacuum::Vacuum::new(&cfg);
    // One committed row, batched and acknowledged: the current table (event_0) has rows.
    c.execute("insert into app.t values (0)", &[]).await?;
    batcher.step(&mut c).await?;
    c.execute("update teleport.batch set acked_at = now()", &[])
        .await?;
    // The writer: its xid is the newest; half its rows go into event_0 ...
    let w = p.src().await?;
    w.batch_execute("begin; insert into app.t select g from generate_series(1, 500) g;")
        .await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    vacuum.step(&mut c).await?; // moves writers to event_1
    assert_eq!(
        scalar_i64(&c, "select last_value % 3 from teleport.queue_rotation").await?,
        1
    );
    // ... and half into event_1.
    w.batch_execute("insert into app.t select g from generate_series(501, 1000) g;")
        .await?;
    batcher.step(&mut c).await?; // nothing new is visible: the writer is still open
                                 // The writer commits while the vacuum looks at event_0 (whose TRUNCATE would wait for
                                 // the writer's lock, then empty it).
    let commit = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        w.batch_execute("commit").await
    });
    vacuum.step(&mut c).await?;
    commit.await??;
    batcher.step(&mut c).await?;
    let batched = scalar_i64(
        &c,
        "select coalesce(sum(events), 0)::int8 from teleport.batch where acked_at is null",
    )
    .await?;
    assert_eq!(batched, 1000, "every event of the writer is in a batch");
    Ok(())
}

/// Diffing mode records which columns each table's row trigger knew from which event on
/// (what the transmitter needs to read the images written before the ddlwatcher's look).
/// A record is forgotten once no event in the queue needs it: all but a table's latest
/// after the queue tables holding events before that latest one were emptied, and a
/// dropped table's. Driven step by step.
#[tokio::test]
async fn records_of_the_columns_a_trigger_knew_go_with_their_events() -> anyhow::Result<()> {
    use pgteleport::stage::Step;
    let p = Pair::new(
        "create schema app;
         create table app.t (id int primary key);
         create table app.d (id int primary key);",
    )
    .await?;
    let yaml = p
        .source_yaml(9, "app.*", "")
        .replace("rotation: 300", "rotation: 1");
    let cfg =
        pgteleport::config::Config::from_yaml(&yaml, std::path::Path::new("s.yml"), |_| None)?;
    let mut c = p.src().await?;
    pgteleport::capture::install(&mut c, &cfg).await?;
    let records = "select string_agg(c.relname || ':' || array_to_string(f.columns, ',') || ':' || array_to_string(f.json, ','), ' ' order by c.relname, f.from_ev)
                     from teleport.capture_form f left join pg_class c on c.oid = f.relid";
    assert_eq!(texts(&c, records).await?, ["d:id: t:id:"]);
    // Installed again unchanged: nothing new. Then a column added (the trigger made again),
    // written before and after, and a table dropped.
    pgteleport::capture::install(&mut c, &cfg).await?;
    assert_eq!(texts(&c, records).await?, ["d:id: t:id:"]);
    c.batch_execute(
        "insert into app.t values (1);
         alter table app.t add column j jsonb;
         insert into app.t values (2, '\"x\"');
         drop table app.d;",
    )
    .await?;
    pgteleport::capture::install(&mut c, &cfg).await?;
    c.execute("insert into app.t values (3, '1')", &[]).await?;
    let before = scalar_i64(&c, "select count(*) from teleport.capture_form").await?;
    assert_eq!(before, 3, "{:?}", texts(&c, records).await?);
    let mut batcher = pgteleport::batcher::Batcher::new(&cfg);
    let mut vacuum = pgteleport::vacuum::Vacuum::new(&cfg);
    // Batches acknowledged, the queue rotated and emptied: the records go.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 4;
    loop {
        c.execute("insert into app.t values ($1, null)", &[&n])
            .await?;
        n += 1;
        batcher.step(&mut c).await?;
        c.execute("update teleport.batch set acked_at = now()", &[])
            .await?;
        vacuum.step(&mut c).await?;
        if texts(&c, records).await? == ["t:id,j:j"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records left: {:?}",
            texts(&c, records).await?
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Events before the latest record were all gone by then.
    let first = scalar_i64(&c, "select min(from_ev) from teleport.capture_form").await?;
    let left = scalar_i64(
        &c,
        &format!(
            "select count(*) from (select ev_id from teleport.event_0 union all select ev_id from teleport.event_1
                                   union all select ev_id from teleport.event_2) e where e.ev_id < {first}"
        ),
    )
    .await?;
    assert_eq!(left, 0);
    Ok(())
}

/// Subtransactions and two-phase commit: changes of a savepoint rolled back, and of a
/// PL/pgSQL block left by an exception, never arrive; those of a savepoint released do. A
/// prepared transaction's changes arrive only once it is committed (COMMIT PREPARED), after
/// changes committed while it was prepared, and never when it is rolled back.
#[tokio::test]
async fn savepoints_and_prepared_transactions_arrive_as_committed() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "begin;
         insert into app.a values (1, 1, 'one');
         savepoint s1;
         insert into app.a values (2, 1, 'two');
         update app.a set v = 'changed then undone' where id = 1;
         rollback to savepoint s1;
         insert into app.a values (3, 1, 'three');
         savepoint s2;
         update app.a set v = 'three, kept' where id = 3;
         delete from app.a where id = 1;
         release savepoint s2;
         savepoint s3;
         insert into app.a values (4, 1, 'nested');
         savepoint s4;
         update app.a set v = 'inner, undone' where id = 4;
         rollback to savepoint s4;
         release savepoint s3;
         commit;
         do $$
         begin
             insert into app.a values (10, 2, 'before the block');
             begin
                 insert into app.a values (11, 2, 'in the failed block');
                 update app.a set v = 'failed block' where id = 10;
                 raise exception 'undo the block';
             exception when others then
                 null;
             end;
             insert into app.a values (12, 2, 'after the block');
         end $$;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.a"], Duration::from_secs(20)).await?;
    assert_eq!(
        texts(&dst, "select id || ':' || v from app.a order by id").await?,
        [
            "3:three, kept",
            "4:nested",
            "10:before the block",
            "12:after the block"
        ]
    );
    // Prepared: invisible until COMMIT PREPARED, while later transactions arrive.
    // One statement a call: PREPARE TRANSACTION and COMMIT PREPARED refuse to run in a
    // transaction block, which a multi-statement query is.
    for sql in [
        "begin",
        "insert into app.b values (20, 3, 'prepared')",
        "update app.a set v = 'by the prepared one' where id = 3",
        "prepare transaction 'pgteleport_p1'",
        "begin",
        "insert into app.b values (40, 3, 'rolled back')",
        "prepare transaction 'pgteleport_p2'",
        "insert into app.b values (30, 4, 'committed meanwhile')",
    ] {
        src.batch_execute(sql).await?;
    }
    wait_texts(
        &dst,
        "the transaction committed while two were prepared",
        Duration::from_secs(20),
        "select id || ':' || v from app.b order by id",
        &["30:committed meanwhile"],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        texts(&dst, "select v from app.a where id = 3").await?,
        ["three, kept"],
        "a prepared transaction's change arrived before its commit"
    );
    src.batch_execute("commit prepared 'pgteleport_p1'").await?;
    src.batch_execute("rollback prepared 'pgteleport_p2'")
        .await?;
    wait_equal(&src, &dst, &["app.a", "app.b"], Duration::from_secs(20)).await?;
    assert_eq!(
        texts(&dst, "select id || ':' || v from app.b order by id").await?,
        ["20:prepared", "30:committed meanwhile"]
    );
    assert_exactly_once(&src, &dst).await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A capture trigger disabled (or set to fire in replica mode only) is reported by `status`
/// with the fix, and no longer once it fires again; what was written meanwhile did not
/// replicate (`verify` finds it), and what is written afterwards does.
#[tokio::test]
async fn a_disabled_capture_trigger_is_reported_with_its_fix() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target) = p.start_both("app.*").await?;
    let port = target.local_addr.expect("listening").port();
    let src = p.src().await?;
    let dst = p.dst().await?;
    let cfg = p.source_config(port, "app.*", "")?;
    src.batch_execute("insert into app.a values (1, 1, 'before')")
        .await?;
    wait_equal(&src, &dst, &["app.a"], Duration::from_secs(20)).await?;
    let report = pgteleport::status::status(&cfg).await?;
    assert!(
        report.contains("capture     every capture trigger fires"),
        "{report}"
    );
    src.batch_execute(
        "alter table app.a disable trigger pgteleport_capture;
         alter table app.b enable replica trigger pgteleport_truncate;
         insert into app.a values (2, 2, 'while disabled');",
    )
    .await?;
    // (The source instance's watcher logs each at its next look: an error with the fix.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = pgteleport::status::status(&cfg).await?;
    assert!(
        report.contains("capture     pgteleport_capture of app.a is disabled: its changes do not replicate — ALTER TABLE app.a ENABLE TRIGGER \"pgteleport_capture\", then compare the table with `pgteleport verify`"),
        "{report}"
    );
    assert!(
        report.contains("capture     pgteleport_truncate of app.b is replica only"),
        "{report}"
    );
    src.batch_execute(
        "alter table app.a enable trigger pgteleport_capture;
         alter table app.b enable trigger pgteleport_truncate;
         insert into app.a values (3, 3, 'after');",
    )
    .await?;
    wait_texts(
        &dst,
        "the row written after the trigger was enabled again",
        Duration::from_secs(20),
        "select id || ':' || v from app.a order by id",
        &["1:before", "3:after"],
    )
    .await?;
    let report = pgteleport::status::status(&cfg).await?;
    assert!(
        report.contains("capture     every capture trigger fires"),
        "{report}"
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}
