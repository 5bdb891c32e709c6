//! Partitioned tables and table inheritance: rows reach the target, whatever partition or
//! child table they are in or move to.

mod common;

use std::time::Duration;

use anyhow::Context;
use common::*;

const SCHEMA: &str = "
create schema app;
create table app.m (id int not null, at date not null, v text, primary key (id, at)) partition by range (at);
create table app.m_2024 partition of app.m for values from ('2024-01-01') to ('2025-01-01');
create table app.m_2025 partition of app.m for values from ('2025-01-01') to ('2026-01-01');
";

/// Existing rows arrive with the initial snapshot (the target gets one table, `app.m`,
/// holding every partition's rows); then inserts, updates inside a partition and across
/// partitions, deletes, rows of a partition created later and TRUNCATE of the partitioned
/// table replicate, and source and target end equal. (Events of a partition were once
/// queued under the partition's name, which the target does not have: the mirror stalled.)
#[tokio::test]
async fn partitioned_tables_load_and_replicate() -> anyhow::Result<()> {
    let p = Pair::new2(SCHEMA, "").await?;
    let src = p.src().await?;
    src.batch_execute(
        "insert into app.m select g, date '2024-01-01' + g, 'v' || g from generate_series(1, 500) g",
    )
    .await?;
    let (source, target) = p
        .start_both_with("app.*", "    do_initial_snapshot: true\n")
        .await?;
    let dst = p.dst().await?;
    wait_equal(&src, &dst, &["app.m"], Duration::from_secs(30)).await?;
    src.batch_execute(
        "insert into app.m values (1000, '2024-06-01', 'new 2024'), (1001, '2025-06-01', 'new 2025');
         update app.m set v = 'same partition' where id = 10;
         update app.m set at = '2025-03-03', v = 'moved' where id = 20;
         update app.m set at = '2024-02-02' where id = 1001;
         delete from app.m where id between 30 and 39;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.m"], Duration::from_secs(30)).await?;
    assert_eq!(
        texts(
            &dst,
            "select v || '@' || at from app.m where id in (10, 20, 1001) order by id"
        )
        .await?,
        vec![
            "same partition@2024-01-11",
            "moved@2025-03-03",
            "new 2025@2024-02-02"
        ]
    );
    // A partition created later gets the capture trigger with it; TRUNCATE of the
    // partitioned table empties it on the target.
    src.batch_execute(
        "create table app.m_2026 partition of app.m for values from ('2026-01-01') to ('2027-01-01');
         insert into app.m values (3000, '2026-05-05', 'in a new partition');",
    )
    .await?;
    wait_equal(&src, &dst, &["app.m"], Duration::from_secs(30)).await?;
    src.batch_execute(
        "truncate app.m; insert into app.m values (4000, '2024-12-31', 'after truncate')",
    )
    .await?;
    wait_equal(&src, &dst, &["app.m"], Duration::from_secs(30)).await?;
    assert_eq!(
        texts(&dst, "select id || ':' || v from app.m").await?,
        vec!["4000:after truncate"]
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Table inheritance (not partitioning): parent and child are tables of their own, each
/// captured under its name; rows written through the parent (an UPDATE or DELETE reaching
/// the child's rows) replicate into the child, and each table holds its own rows on the
/// target as on the source.
#[tokio::test]
async fn inheritance_children_replicate_as_their_own_tables() -> anyhow::Result<()> {
    let p = Pair::new2(
        "create schema app;
         create table app.parent (id int primary key, v text);
         create table app.child (extra int) inherits (app.parent);
         alter table app.child add primary key (id);
         insert into app.parent values (1, 'p1'), (2, 'p2');
         insert into app.child values (10, 'c10', 100), (11, 'c11', 110);",
        "",
    )
    .await?;
    let (source, target) = p
        .start_both_with("app.*", "    do_initial_snapshot: true\n")
        .await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    wait_equal(
        &src,
        &dst,
        &["only app.parent", "app.child"],
        Duration::from_secs(30),
    )
    .await?;
    src.batch_execute(
        "insert into app.child values (12, 'c12', 120);
         update app.parent set v = v || '!' where id in (1, 10);
         delete from app.parent where id in (2, 11);",
    )
    .await?;
    wait_equal(
        &src,
        &dst,
        &["only app.parent", "app.child"],
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(
        texts(
            &dst,
            "select id || ':' || v from only app.parent order by id"
        )
        .await?,
        vec!["1:p1!"]
    );
    assert_eq!(
        texts(
            &dst,
            "select id || ':' || v || ':' || extra from app.child order by id"
        )
        .await?,
        vec!["10:c10!:100", "12:c12:120"]
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A partitioned table created while replication runs (diffing mode), rows already in it
/// when the watcher notices, then written on: the target gets it as one table with every
/// row, under `apply_schema`.
#[tokio::test]
async fn a_partitioned_table_created_later_replicates_into_apply_schema() -> anyhow::Result<()> {
    let p = Pair::new2(
        "create schema app; create table app.t (id int primary key);",
        "",
    )
    .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let cfg = pgteleport::config::Config::from_yaml(
        &p.source_yaml_into(port, "app.*", "    do_initial_snapshot: true\n", "mirror"),
        std::path::Path::new("s.yml"),
        |_| None,
    )?;
    let source = pgteleport::instance::start(cfg).await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    src.batch_execute("insert into app.t values (1)").await?;
    wait_equal_as(
        &src,
        &dst,
        &[("app.t", "mirror.t")],
        Duration::from_secs(30),
    )
    .await?;
    src.batch_execute(&format!(
        "{}
         insert into app.m select g, date '2024-01-01' + g * 2, 'v' || g from generate_series(1, 300) g;",
        SCHEMA.replace("create schema app;", "")
    ))
    .await?;
    src.batch_execute(
        "update app.m set at = at + 365, v = 'moved' where id <= 5;
         delete from app.m where id between 100 and 109;",
    )
    .await?;
    wait_equal_as(
        &src,
        &dst,
        &[("app.m", "mirror.m")],
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(
        scalar_i64(&dst, "select count(*) from mirror.m where v = 'moved'").await?,
        5
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A partitioned table and partitions with awkward names (quotes, a comma, spaces, case,
/// non-ASCII) in a schema with an awkward name: the names travel in the trigger's
/// arguments and come out whole. (The initial load once refused every table whose name
/// was not ASCII: its COPY header carried raw UTF-8, which the target could not read.)
#[tokio::test]
async fn partitions_with_awkward_names_replicate() -> anyhow::Result<()> {
    let p = Pair::new2(
        r#"create schema "Ap,p ""x""";
           create table "Ap,p ""x"""."Mé ""T"", 1" (id int, "K y" text, primary key (id, "K y")) partition by list ("K y");
           create table "Ap,p ""x"""."part 'a'" partition of "Ap,p ""x"""."Mé ""T"", 1" for values in ('a', 'b');
           create table "Ap,p ""x"""."part ""c""" partition of "Ap,p ""x"""."Mé ""T"", 1" for values in ('c');"#,
        "",
    )
    .await?;
    let (source, target) = p
        .start_both_with("Ap?p*.*", "    do_initial_snapshot: true\n")
        .await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    let table = r#""Ap,p ""x"""."Mé ""T"", 1""#;
    src.batch_execute(&format!(
        "insert into {table} values (1, 'a'), (2, 'c'), (3, 'b');
         update {table} set \"K y\" = 'c' where id = 1;
         delete from {table} where id = 3;"
    ))
    .await?;
    wait_equal(&src, &dst, &[table], Duration::from_secs(30)).await?;
    assert_eq!(
        texts(
            &dst,
            &format!("select id || ':' || \"K y\" from {table} order by id")
        )
        .await?,
        vec!["1:c", "2:c"]
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Partition maintenance changes the partitioned table's rows without row events, and
/// each must reach the target: TRUNCATE of one partition; DETACH of a partition (whose
/// range a default partition then takes new rows in — before the ddlwatcher's next look,
/// in diffing mode); DROP of a partition that holds rows; ATTACH of a table that holds rows
/// (one that was replicated as a table of its own until then), written to at once; and a
/// partition created and written to before anyone looked.
async fn partition_maintenance(event_triggers: bool) -> anyhow::Result<()> {
    let p = Pair::new2(
        &format!("{SCHEMA}\ncreate table app.m_other partition of app.m default;"),
        "",
    )
    .await?;
    if event_triggers {
        p.make_src_superuser().await?;
    }
    let src = p.src().await?;
    src.batch_execute(
        "insert into app.m select g, date '2024-01-01' + g * 2, 'v' || g from generate_series(1, 300) g;
         insert into app.m values (900, '2031-01-01', 'in the default partition')",
    )
    .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let mut extra = "    do_initial_snapshot: true\n".to_string();
    if event_triggers {
        extra.push_str("use_event_triggers: true\n");
    }
    let source = p.start_source(port, "app.*", &extra).await?;
    let dst = p.dst().await?;
    let within = Duration::from_secs(30);
    wait_equal(&src, &dst, &["app.m"], within).await?;
    let count = |year: i32| {
        format!(
            "select count(*) from app.m where at >= '{year}-01-01' and at < '{}-01-01'",
            year + 1
        )
    };
    assert!(scalar_i64(&dst, &count(2024)).await? > 100);

    // TRUNCATE of one partition: its rows go, the others stay.
    src.batch_execute(
        "truncate app.m_2024; insert into app.m values (1000, '2024-07-07', 'after truncate')",
    )
    .await?;
    wait_equal(&src, &dst, &["app.m"], within).await?;
    assert_eq!(scalar_i64(&dst, &count(2024)).await?, 1);
    assert!(scalar_i64(&dst, &count(2025)).await? > 100);

    // DETACH: the partition's rows leave the partitioned table; a row written into its
    // range right after lands in the default partition and must stay.
    src.batch_execute(
        "alter table app.m detach partition app.m_2025;
         insert into app.m values (1001, '2025-05-05', 'into the default partition');",
    )
    .await?;
    wait_equal(&src, &dst, &["app.m"], within).await?;
    assert_eq!(scalar_i64(&dst, &count(2025)).await?, 1);
    // The detached table matches `app.*`: a table of its own now, with its rows.
    wait_equal(&src, &dst, &["app.m_2025"], within).await?;

    // DROP of a partition that holds rows.
    src.batch_execute(
        "create table app.m_2026 partition of app.m for values from ('2026-01-01') to ('2027-01-01');
         insert into app.m select 2000 + g, date '2026-01-01' + g, 'w' || g from generate_series(1, 50) g;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.m"], within).await?;
    assert_eq!(scalar_i64(&dst, &count(2026)).await?, 50);
    src.batch_execute("drop table app.m_2026").await?;
    wait_equal(&src, &dst, &["app.m"], within).await?;
    assert_eq!(scalar_i64(&dst, &count(2026)).await?, 0);

    // ATTACH of a table with rows, replicated as a table of its own until then (its own
    // capture trigger must go first: PostgreSQL clones the partitioned table's under that
    // name); rows written through the partitioned table at once.
    src.batch_execute(
        "create table app.m_2027 (like app.m including all);
         insert into app.m_2027 select 3000 + g, date '2027-01-01' + g, 'x' || g from generate_series(1, 40) g;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.m_2027"], within).await?;
    src.batch_execute(
        "begin;
         drop trigger pgteleport_capture on app.m_2027;
         alter table app.m attach partition app.m_2027 for values from ('2027-01-01') to ('2028-01-01');
         commit;
         update app.m set v = 'updated after attach' where id = 3001;
         delete from app.m where id = 3002;
         insert into app.m values (3100, '2027-12-12', 'inserted after attach');",
    )
    .await?;
    wait_equal(&src, &dst, &["app.m"], within).await?;
    assert_eq!(scalar_i64(&dst, &count(2027)).await?, 40);
    wait_for("the attached table to leave the target", within, || async {
        Ok(scalar_i64(
            &dst,
            "select count(*) from pg_class where relname = 'm_2027'",
        )
        .await?
            == 0)
    })
    .await?;

    // A partition created and written to at once, then truncated through its parent.
    src.batch_execute(
        "create table app.m_2028 partition of app.m for values from ('2028-01-01') to ('2029-01-01');
         insert into app.m values (4000, '2028-02-02', 'new partition');
         update app.m set v = 'new partition, updated' where id = 4000;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.m"], within).await?;
    src.batch_execute("truncate app.m").await?;
    wait_equal(&src, &dst, &["app.m"], within).await?;
    assert_eq!(scalar_i64(&dst, "select count(*) from app.m").await?, 0);
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Diffing mode: a partition detached and attached again between two looks of the
/// ddlwatcher (here while the source instance is down) had no row trigger in between —
/// PostgreSQL drops the cloned trigger at DETACH and clones it anew at ATTACH — and the
/// catalog looks as before. Rows changed meanwhile must arrive all the same: the watcher
/// sees the new clone and takes the partition in again (its range emptied on the target,
/// its rows queued, in one transaction under its lock). Rows written after the ATTACH and
/// after the look too. (Event-trigger mode sees the DETACH and the ATTACH. Its failures
/// here, about one run in five under load, came when the initial snapshot was cut short by
/// the shutdown and redone after the ATTACH: the DETACH's version deleted the range the
/// copy held — see `a_partition_detached_before_a_load_keeps_its_rows`.)
#[tokio::test]
async fn a_partition_detached_and_attached_again_between_looks_arrives_as_it_is(
) -> anyhow::Result<()> {
    for event_triggers in [false, true] {
        let p = Pair::new2(SCHEMA, "").await?;
        if event_triggers {
            p.make_src_superuser().await?;
        }
        let src = p.src().await?;
        src.batch_execute(
            "insert into app.m select g, date '2024-01-01' + g * 2, 'v' || g from generate_series(1, 300) g",
        )
        .await?;
        let target = p.start_target(0).await?;
        let port = target.local_addr.unwrap().port();
        let mut extra = "    do_initial_snapshot: true\n".to_string();
        if event_triggers {
            extra.push_str("use_event_triggers: true\n");
        }
        let source = p.start_source(port, "app.*", &extra).await?;
        let dst = p.dst().await?;
        let within = Duration::from_secs(30);
        wait_equal(&src, &dst, &["app.m"], within).await?;
        source.shutdown().await?;
        src.batch_execute(
            "alter table app.m detach partition app.m_2025;
             update app.m_2025 set v = 'changed while detached' where id % 3 = 0;
             delete from app.m_2025 where id % 5 = 0;
             insert into app.m_2025 values (5000, '2025-06-06', 'inserted while detached');
             -- (Event-trigger mode captured it as a table of its own: README.)
             drop trigger if exists pgteleport_capture on app.m_2025;
             alter table app.m attach partition app.m_2025 for values from ('2025-01-01') to ('2026-01-01');
             update app.m set v = 'after the attach' where id = 5000;
             insert into app.m values (5001, '2025-07-07', 'inserted after the attach');",
        )
        .await?;
        let source = p.start_source(port, "app.*", &extra).await?;
        wait_equal(&src, &dst, &["app.m"], within)
            .await
            .with_context(|| format!("event triggers: {event_triggers}"))?;
        src.batch_execute(
            "update app.m set v = 'after the look' where id in (5001, 200);
             delete from app.m where id = 201;",
        )
        .await?;
        wait_equal(&src, &dst, &["app.m"], within)
            .await
            .with_context(|| format!("after the look; event triggers: {event_triggers}"))?;
        source.shutdown().await?;
        target.shutdown().await?;
    }
    Ok(())
}

/// A partition detached and attached again (written to meanwhile) before an initial load:
/// the copy holds its rows as they are after the ATTACH, so the DETACH's schema version,
/// applied after the copy, must not delete its range again (the load's snapshot saw the
/// DETACH's transaction, like its row events, which are skipped). The target once lost
/// the partition's rows whenever a load, or an initial snapshot redone after a restart,
/// came after such a version.
#[tokio::test]
async fn a_partition_detached_before_a_load_keeps_its_rows() -> anyhow::Result<()> {
    for event_triggers in [true, false] {
        let p = Pair::new2(SCHEMA, "").await?;
        let extra = p.ddl_mode(event_triggers).await?;
        let src = p.src().await?;
        src.batch_execute(
            "insert into app.m select g, date '2024-01-01' + g * 2, 'v' || g from generate_series(1, 300) g",
        )
        .await?;
        let target = p.start_target(0).await?;
        let port = target.local_addr.unwrap().port();
        // Capture installed, nothing sent yet.
        p.start_source(port, "app.*", extra)
            .await?
            .shutdown()
            .await?;
        src.batch_execute(
            "alter table app.m detach partition app.m_2025;
             update app.m_2025 set v = 'changed while detached' where id % 3 = 0;
             drop trigger if exists pgteleport_capture on app.m_2025;
             alter table app.m attach partition app.m_2025 for values from ('2025-01-01') to ('2026-01-01');
             update app.m set v = 'after the attach' where id % 7 = 0;",
        )
        .await?;
        let opts = pgteleport::load::LoadOptions {
            target: "t1".into(),
            truncate: false,
            copy_again: None,
            workers: 2,
            range_bytes: 16 << 20,
            split: Default::default(),
            progress: Some(false),
            lock_wait: pgteleport::load::DEFAULT_LOCK_WAIT,
        };
        let summary = pgteleport::load::run(&p.source_config(port, "app.*", extra)?, opts).await?;
        assert_eq!(summary.tables, 1, "{summary}");
        let source = p.start_source(port, "app.*", extra).await?;
        let dst = p.dst().await?;
        let within = Duration::from_secs(30);
        wait_equal(&src, &dst, &["app.m"], within)
            .await
            .with_context(|| format!("event triggers: {event_triggers}"))?;
        src.batch_execute("update app.m set v = 'after the load' where id in (250, 251)")
            .await?;
        wait_equal(&src, &dst, &["app.m"], within)
            .await
            .with_context(|| format!("after the load; event triggers: {event_triggers}"))?;
        source.shutdown().await?;
        target.shutdown().await?;
    }
    Ok(())
}

#[tokio::test]
async fn partition_maintenance_replicates() -> anyhow::Result<()> {
    partition_maintenance(false).await
}

#[tokio::test]
async fn partition_maintenance_replicates_in_event_trigger_mode() -> anyhow::Result<()> {
    partition_maintenance(true).await
}

/// `uninstall` removes every trigger pgteleport made — on a plain table, a partitioned
/// table and its partitions (their TRUNCATE triggers; the cloned row triggers go with the
/// partitioned table's), a table with a DEFERRABLE key (its statement trigger) — and the
/// internal schema; the rows stay, and the tables take writes as before.
#[tokio::test]
async fn uninstall_removes_every_trigger_and_keeps_the_rows() -> anyhow::Result<()> {
    let p = Pair::new2(
        &format!(
            "{SCHEMA}
             create table app.plain (id int primary key, v text);
             create table app.k (id int primary key deferrable, v text);
             insert into app.m values (1, '2024-03-03', 'a'), (2, '2025-03-03', 'b');
             insert into app.plain values (1, 'p');"
        ),
        "",
    )
    .await?;
    let (source, target) = p.start_both("app.*").await?;
    let mut src = p.src().await?;
    let ours = "select count(*) from pg_trigger where tgname like 'pgteleport%'";
    assert!(scalar_i64(&src, ours).await? >= 8, "triggers installed");
    source.shutdown().await?;
    target.shutdown().await?;
    let touched = pgteleport::capture::uninstall(&mut src, "teleport").await?;
    assert!(touched.iter().any(|t| t.contains("m_2024")), "{touched:?}");
    assert_eq!(scalar_i64(&src, ours).await?, 0);
    assert_eq!(
        scalar_i64(
            &src,
            "select count(*) from pg_namespace where nspname = 'teleport'"
        )
        .await?,
        0
    );
    assert_eq!(scalar_i64(&src, "select count(*) from app.m").await?, 2);
    src.batch_execute("truncate app.m_2024; update app.k set id = id + 1; insert into app.plain values (2, 'after')")
        .await?;
    Ok(())
}

/// A trigger on a partition of a target table fires for the rows applied to that table (the
/// role has no replica mode), so the table keeps source order as one with a trigger of its
/// own does: the trigger records how many rows of another table it sees, which rows applied
/// after all of that table's rows would not match.
#[tokio::test]
async fn a_trigger_on_a_target_partition_keeps_its_table_in_source_order() -> anyhow::Result<()> {
    let schema = "
create schema app;
create table app.b (id int primary key);
create table app.m (id int not null, at date not null, seen int, primary key (id, at)) partition by range (at);
create table app.m_2024 partition of app.m for values from ('2024-01-01') to ('2025-01-01');
create function app.count_b() returns trigger language plpgsql as
  $$ begin new.seen := (select count(*) from app.b); return new; end $$;
create trigger count_b before insert on app.m_2024 for each row execute function app.count_b();
";
    let p = Pair::new2(schema, schema).await?;
    let (source, target) = p.start_both("app.*").await?;
    let source = p
        .with_backlog(source, &target, "app.*", 30, |i| {
            format!("insert into app.b values ({i}); insert into app.m values ({i}, '2024-03-01', null);")
        })
        .await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    wait_equal(&src, &dst, &["app.b", "app.m"], Duration::from_secs(30)).await?;
    assert_eq!(
        scalar_i64(&dst, "select count(distinct seen) from app.m").await?,
        30
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}
