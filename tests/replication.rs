//! Replication core: DML end to end between non-superuser roles.

mod common;

use std::time::Duration;

use common::*;

const SCHEMA: &str = "
create schema app;
create table app.customer (id bigint primary key, name text not null, balance numeric(20,4));
create table app.order_line (order_id bigint, line int, qty int not null, note text, primary key (order_id, line));
create table app.parent (id int primary key);
create table app.child (id int primary key, parent_id int not null references app.parent on delete cascade);
";

#[tokio::test]
async fn dml_on_several_tables_with_composite_and_changed_keys() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "insert into app.customer select g, 'c' || g, g * 1.5 from generate_series(1, 200) g;
         insert into app.order_line select g / 10, g % 10, g, null from generate_series(1, 300) g;
         update app.customer set balance = balance + 0.0001 where id % 3 = 0;
         update app.customer set name = 'renamed' where id = 7;
         update app.customer set id = id + 1000 where id between 10 and 20;   -- primary key change
         update app.order_line set line = line + 100 where order_id = 5;         -- composite key change
         update app.order_line set qty = -1 where order_id = 6;
         delete from app.customer where id % 7 = 0;
         delete from app.order_line where order_id = 3 and line < 5;
         insert into app.customer values (7, 'back', 1);  -- re-insert of a deleted key
         begin; update app.customer set name = 'twice-1' where id = 1; update app.customer set name = 'twice-2' where id = 1; commit;",
    )
    .await?;
    wait_equal(
        &src,
        &dst,
        &["app.customer", "app.order_line"],
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(
        scalar_i64(&dst, "select count(*) from app.customer where id > 1000").await?,
        10
    );
    assert_eq!(
        rows(&dst, "(select name from app.customer where id = 1)").await?,
        vec!["(twice-2)"]
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn cascading_foreign_keys_apply_once() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "insert into app.parent select generate_series(1, 10);
         insert into app.child select g, g % 10 + 1 from generate_series(1, 100) g;",
    )
    .await?;
    wait_equal(
        &src,
        &dst,
        &["app.parent", "app.child"],
        Duration::from_secs(20),
    )
    .await?;
    src.batch_execute("delete from app.parent where id <= 3")
        .await?;
    wait_equal(
        &src,
        &dst,
        &["app.parent", "app.child"],
        Duration::from_secs(20),
    )
    .await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A foreign key ON DELETE CASCADE that the target gets while replication runs (as the
/// initial load adds them at its end, or by hand): the applier, which has applied deletes
/// of the child table before, sees it, and accepts the source's cascaded deletes that the
/// target's own cascade made already (the target role may not set
/// session_replication_role here). Before, it kept what it had read first — no such key —
/// and held the batch forever as "the target has diverged".
#[tokio::test]
async fn a_cascading_key_the_target_gets_later_is_seen() -> anyhow::Result<()> {
    let p = Pair::new2(
        SCHEMA,
        "create schema app;
         create table app.parent (id int primary key);
         create table app.child (id int primary key, parent_id int not null);",
    )
    .await?;
    let (source, target) = p.start_both("app.parent, app.child").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    let tables = ["app.parent", "app.child"];
    src.batch_execute(
        "insert into app.parent select generate_series(1, 10);
         insert into app.child select g, g % 10 + 1 from generate_series(1, 100) g;
         delete from app.child where id = 100;",
    )
    .await?;
    wait_equal(&src, &dst, &tables, Duration::from_secs(20)).await?;
    dst.batch_execute(
        "alter table app.child add foreign key (parent_id) references app.parent on delete cascade",
    )
    .await?;
    src.batch_execute("delete from app.parent where id <= 3")
        .await?;
    wait_equal(&src, &dst, &tables, Duration::from_secs(20)).await?;
    assert_eq!(
        scalar_i64(&dst, "select count(*) from app.child").await?,
        70
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn roles_are_ordinary_and_application_roles_need_no_queue_grant() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let admin = p.cluster.admin("postgres").await?;
    for role in [&p.src_role, &p.dst_role] {
        let row = admin
            .query_one(
                "select rolsuper, rolreplication, rolcreaterole, rolbypassrls from pg_roles where rolname = $1",
                &[role],
            )
            .await?;
        let attrs: (bool, bool, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(
            attrs,
            (false, false, false, false),
            "role {role} must be ordinary"
        );
    }
    // An application role with rights on the tables only.
    let app = format!("app_{}", p.id);
    p.cluster.create_role(&app, PASSWORD).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    src.batch_execute(&format!(
        "grant usage on schema app to {app}; grant select, insert, update, delete on all tables in schema app to {app}"
    ))
    .await?;
    let app_client = p.cluster.connect(&p.src_db, &app, PASSWORD).await?;
    app_client
        .batch_execute(
            "insert into app.customer values (1, 'a', 1), (2, 'b', 2);
             update app.customer set name = 'z' where id = 2;
             delete from app.customer where id = 1;",
        )
        .await?;
    let denied = app_client.query("select * from teleport.event", &[]).await;
    assert!(
        denied.is_err(),
        "the application role must not read the queue"
    );
    let dst = p.dst().await?;
    wait_equal(&src, &dst, &["app.customer"], Duration::from_secs(20)).await?;
    assert_eq!(rows(&dst, "app.customer").await?, vec!["(2,z,2.0000)"]);
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// The capture trigger runs as the queue's owner under the writer's search_path (it sets
/// none: that cost 7 % of a writer's TPS). Whatever a writer puts first on its path —
/// operators, functions and types of its own named like those the trigger uses, temporary
/// tables named like the queue's — the trigger uses none of it: the writer's changes of a
/// plain table, a table with an array column, one with a DEFERRABLE key and a partitioned
/// one are all captured, and the writer's objects are not touched.
#[tokio::test]
async fn a_writers_search_path_does_not_reach_the_capture_trigger() -> anyhow::Result<()> {
    let schema = format!(
        "{SCHEMA}
         create table app.tagged (id int primary key, tags int[], doc jsonb);
         create table app.k (id int primary key deferrable, v text);
         create table app.m (id int primary key, v text) partition by range (id);
         create table app.m1 partition of app.m for values from (0) to (1000);"
    );
    let p = Pair::new(&schema).await?;
    let app = format!("app_{}", p.id);
    p.cluster.create_role(&app, PASSWORD).await?;
    p.cluster
        .admin("postgres")
        .await?
        .batch_execute(&format!("grant create on database {} to {app}", p.src_db))
        .await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    src.batch_execute(&format!(
        "grant usage on schema app to {app}; grant select, insert, update, delete on all tables in schema app to {app}"
    ))
    .await?;
    let w = p.cluster.connect(&p.src_db, &app, PASSWORD).await?;
    // Operators with exact argument types (found before pg_catalog's), functions with
    // pg_catalog's signatures (they hide them), types and domains named like the trigger's
    // variable types: each raises when used.
    w.batch_execute(
        r#"create schema evil;
           create function evil.boom() returns boolean language plpgsql
             as $b$ begin raise exception 'hijacked through the search_path'; end $b$;
           do $d$
           declare r record; n int := 0;
           begin
             for r in select * from (values ('=', 'text', 'text'), ('<>', 'text', 'text'),
                 ('=', 'integer', 'integer'), ('<', 'integer', 'integer'), ('>', 'integer', 'integer'),
                 ('-', 'integer', 'integer'), ('+', 'integer', 'integer'), ('=', 'oid', 'oid'),
                 ('%', 'bigint', 'integer'), ('->', 'json', 'text'), ('||', 'text', 'oid'),
                 ('||', 'jsonb', 'jsonb'), ('?', 'jsonb', 'text'), ('->>', 'jsonb', 'text')) v(op, l, r) loop
               n := n + 1;
               execute format('create function evil.op%s(%s, %s) returns boolean language sql as $f$ select evil.boom() $f$',
                              n, r.l, r.r);
               execute format('create operator evil.%s (leftarg = %s, rightarg = %s, function = evil.op%s)',
                              r.op, r.l, r.r, n);
             end loop;
           end $d$;
           create function evil.to_json(anyelement) returns json language plpgsql
             as $b$ begin perform evil.boom(); return null; end $b$;
           create function evil.nextval(regclass) returns bigint language plpgsql
             as $b$ begin perform evil.boom(); return 0; end $b$;
           create function evil.pg_current_xact_id() returns xid8 language plpgsql
             as $b$ begin perform evil.boom(); return null; end $b$;
           create function evil.clock_timestamp() returns timestamptz language plpgsql
             as $b$ begin perform evil.boom(); return null; end $b$;
           create function evil.substr(text, integer, integer) returns text language plpgsql
             as $b$ begin perform evil.boom(); return null; end $b$;
           create function evil.current_setting(text, boolean) returns text language plpgsql
             as $b$ begin perform evil.boom(); return null; end $b$;
           create function evil.pg_sequence_last_value(regclass) returns bigint language plpgsql
             as $b$ begin perform evil.boom(); return null; end $b$;
           create function evil.octet_length(text) returns integer language plpgsql
             as $b$ begin perform evil.boom(); return null; end $b$;
           create function evil.unnest(anyarray) returns setof anyelement language plpgsql
             as $b$ begin perform evil.boom(); end $b$;
           create type evil.json as (x int);
           create domain evil.text as pg_catalog.text check (value is null);
           create domain evil.oid as pg_catalog.oid check (value is null);
           create domain evil."char" as pg_catalog."char" check (value is null);
           set search_path = evil, pg_catalog;
           create temp table event_0 (id int8, txid xid8, at timestamptz, op "char", sch name, tbl name, k json, d json, rel oid);
           create temp table event_1 (like event_0);
           create temp table event_2 (like event_0);
           create temp table known_partition (relid oid, root oid);
           create temp sequence event_id_seq;
           create temp sequence queue_rotation;"#,
    )
    .await?;
    w.batch_execute(
        "insert into app.customer values (1, 'a', 1), (2, 'b', 2);
         update app.customer set name = 'z' where id operator(pg_catalog.=) 2;
         delete from app.customer where id operator(pg_catalog.=) 1;
         insert into app.tagged values (1, '{1,2}', '{\"a\": 1}'), (2, '{3}', null);
         update app.tagged set tags = '{4,5,6}' where id operator(pg_catalog.=) 1;
         update app.tagged set id = 3 where id operator(pg_catalog.=) 2;
         insert into app.k values (1, 'one'), (2, 'two');
         update app.k set id = id operator(pg_catalog.+) 1;
         insert into app.m values (1, 'm1'), (2, 'm2');
         update app.m set v = 'changed' where id operator(pg_catalog.=) 2;
         delete from app.m where id operator(pg_catalog.=) 1;",
    )
    .await?;
    let dst = p.dst().await?;
    let tables = ["app.customer", "app.tagged", "app.k", "app.m"];
    wait_equal(&src, &dst, &tables, Duration::from_secs(20)).await?;
    assert_eq!(rows(&dst, "app.customer").await?, vec!["(2,z,2.0000)"]);
    assert_eq!(
        rows(&dst, "app.tagged").await?,
        vec![r#"(1,"{4,5,6}","{""a"": 1}")"#, "(3,{3},)"]
    );
    assert_eq!(rows(&dst, "app.k").await?, vec!["(2,one)", "(3,two)"]);
    assert_eq!(rows(&dst, "app.m").await?, vec!["(2,changed)"]);
    for table in ["event_0", "event_1", "event_2", "known_partition"] {
        let n = scalar_i64(&w, &format!("select count(*) from pg_temp.{table}")).await?;
        assert_eq!(n, 0, "the writer's temporary table {table} got rows");
    }
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn replica_role_keeps_target_triggers_and_cascades_quiet() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let dst = p.dst().await?;
    dst.batch_execute(
        "create table app.audit (n serial primary key, what text);
         create function app.audit_fn() returns trigger language plpgsql as
           $$ begin insert into app.audit (what) values (tg_op); return null; end $$;
         create trigger audit after insert or update or delete on app.customer for each row execute function app.audit_fn();",
    )
    .await?;
    p.cluster
        .admin(&p.dst_db)
        .await?
        .batch_execute(&format!(
            "grant set on parameter session_replication_role to {}",
            p.dst_role
        ))
        .await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    src.batch_execute(
        "insert into app.customer values (1, 'a', 1);
         insert into app.parent select generate_series(1, 5);
         insert into app.child select g, g % 5 + 1 from generate_series(1, 50) g;
         delete from app.parent where id = 1;",
    )
    .await?;
    wait_equal(
        &src,
        &dst,
        &["app.customer", "app.parent", "app.child"],
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(
        scalar_i64(&dst, "select count(*) from app.audit").await?,
        0,
        "target trigger fired during apply"
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn table_without_primary_key_is_refused_with_a_clear_message() -> anyhow::Result<()> {
    let p = Pair::new("create schema app; create table app.nokey (a int, b text);").await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let err = match p.start_source(port, "app.*", "").await {
        Ok(_) => panic!("a table without primary key must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("\"app\".\"nokey\"") && err.contains("primary key"),
        "{err}"
    );
    // Nothing was installed half-way: no trigger on the table.
    let src = p.src().await?;
    let triggers = scalar_i64(
        &src,
        "select count(*) from pg_trigger where tgrelid = 'app.nokey'::regclass",
    )
    .await?;
    assert_eq!(triggers, 0);
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn second_instance_with_the_same_name_refuses_to_run() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target) = p.start_both("app.*").await?;
    let port = target.local_addr.unwrap().port();
    let err = match p.start_source(port, "app.*", "").await {
        Ok(_) => panic!("a second instance must refuse"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("already running"), "{err}");
    // When the first stops, a new one takes over.
    source.shutdown().await?;
    let again = p.start_source(port, "app.*", "").await?;
    again.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn truncate_is_replicated_in_order_with_the_dml_around_it() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "insert into app.customer select g, 'c' || g, g from generate_series(1, 50) g;
         insert into app.parent select generate_series(1, 10);
         insert into app.child select g, g % 10 + 1 from generate_series(1, 40) g;",
    )
    .await?;
    wait_equal(
        &src,
        &dst,
        &["app.customer", "app.parent", "app.child"],
        Duration::from_secs(20),
    )
    .await?;
    // DML, TRUNCATE and DML again in one transaction; then two tables tied by a foreign key
    // in one statement, and one through CASCADE.
    src.batch_execute(
        "begin;
         update app.customer set name = 'before' where id = 1;
         truncate app.customer;
         insert into app.customer values (7, 'after', 1);
         commit;
         truncate app.parent, app.child;
         insert into app.parent values (1), (2); insert into app.child values (1, 1), (2, 2);
         truncate app.parent cascade;
         insert into app.parent values (3);",
    )
    .await?;
    wait_equal(
        &src,
        &dst,
        &["app.customer", "app.parent", "app.child"],
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(rows(&dst, "app.customer").await?, vec!["(7,after,1.0000)"]);
    assert_eq!(rows(&dst, "app.parent").await?, vec!["(3)"]);
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Connections the server cuts under a running instance (an administrator's
/// pg_terminate_backend, an idle-session timeout, a pooler) are made again: the stages
/// prepare their statements again on the new connections, and nothing is lost or doubled.
#[tokio::test]
async fn pipeline_connections_cut_by_the_server_are_made_again() -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    // Every stage's connection but the instance lock's (losing that one stops the instance).
    let cut = "select count(pg_catalog.pg_terminate_backend(pid)) from pg_catalog.pg_stat_activity
                where datname = current_database() and pid <> pg_backend_pid()
                  and application_name like 'pgteleport %' and application_name not like '%instance lock%'";
    for round in 0..3 {
        src.batch_execute(&format!(
            "insert into app.customer select g, 'c' || g, g from generate_series({}, {}) g;
             update app.customer set name = 'round {round}' where id % 7 = 0;",
            round * 100 + 1,
            round * 100 + 100
        ))
        .await?;
        wait_equal(&src, &dst, &["app.customer"], Duration::from_secs(30)).await?;
        // The transmitter and the batcher connect again lazily, at their next step: cut
        // once both are connected (the other stages' connections go too, when there).
        wait_for(
            "the transmitter and the batcher connected",
            Duration::from_secs(30),
            || async {
                Ok(scalar_i64(
                    &src,
                    "select count(*) from pg_stat_activity where datname = current_database()
                        and (application_name like 'pgteleport transmitter %' or application_name = 'pgteleport batcher')",
                )
                .await?
                    == 2)
            },
        )
        .await?;
        let on_source = scalar_i64(&src, cut).await?;
        assert!(
            on_source >= 2,
            "round {round}: {on_source} source connections cut"
        );
        let on_target = scalar_i64(&dst, cut).await?;
        assert!(
            on_target >= 1,
            "round {round}: {on_target} target connections cut"
        );
    }
    src.batch_execute(
        "update app.customer set name = 'after' where id % 2 = 0;
         delete from app.customer where id % 5 = 0;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.customer"], Duration::from_secs(30)).await?;
    assert_eq!(
        scalar_i64(&dst, "select count(*) from app.customer").await?,
        240
    );
    assert_exactly_once(&src, &dst).await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn target_sequences_follow_the_source() -> anyhow::Result<()> {
    let schema = "create schema app; create table app.s (id bigserial primary key, v text);
                  create sequence app.standalone start 10;";
    let p = Pair::new(schema).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "insert into app.s (v) select 'x' from generate_series(1, 25);
         select nextval('app.standalone') from generate_series(1, 7);",
    )
    .await?;
    wait_equal(&src, &dst, &["app.s"], Duration::from_secs(20)).await?;
    for seq in ["app.s_id_seq", "app.standalone"] {
        let want = scalar_i64(&src, &format!("select last_value from {seq}")).await?;
        wait_for(
            &format!("target {seq} at {want}"),
            Duration::from_secs(20),
            || async {
                Ok(scalar_i64(&dst, &format!("select last_value from {seq}")).await? == want)
            },
        )
        .await?;
    }
    // After a switchover the target hands out the next value, never one the source used.
    let next: i64 = dst
        .query_one("select nextval('app.s_id_seq')", &[])
        .await?
        .get(0);
    assert_eq!(next, 26);
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn table_with_a_unique_key_but_no_primary_key_replicates() -> anyhow::Result<()> {
    let schema = "create schema app;
                  create table app.u (code text not null, region int not null, v text, note text);
                  create unique index u_code_region on app.u (code, region);
                  create table app.r (a int not null, b int);
                  create unique index r_a on app.r (a);
                  alter table app.r replica identity using index r_a;";
    let p = Pair::new(schema).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "insert into app.u select 'c' || g, g % 3, 'v', null from generate_series(1, 100) g;
         update app.u set v = 'changed' where region = 1;
         update app.u set code = 'renamed' where code = 'c2';
         delete from app.u where region = 0;
         insert into app.r select g, g from generate_series(1, 20) g;
         update app.r set b = -b where a < 5; delete from app.r where a > 15;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.u", "app.r"], Duration::from_secs(20)).await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn keyless_table_by_full_row_identity_keeps_duplicates_right() -> anyhow::Result<()> {
    let p = Pair::new(
        "create schema app; create table app.log (who text, n int, at date, tags text[]);",
    )
    .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let source = p
        .start_source(port, "app.*", "keyless_tables: true\n")
        .await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "insert into app.log values ('a', 1, '2020-01-01', '{x}'), ('a', 1, '2020-01-01', '{x}'), ('b', null, null, null), ('b', null, null, null), ('c', 3, null, '{}');
         delete from app.log where ctid = (select ctid from app.log where who = 'a' limit 1);
         update app.log set n = 9 where ctid = (select ctid from app.log where who = 'b' limit 1);
         update app.log set tags = '{y,z}' where who = 'c';",
    )
    .await?;
    wait_equal(&src, &dst, &["app.log"], Duration::from_secs(20)).await?;
    assert_eq!(
        rows(&dst, "app.log").await?,
        vec![
            "(a,1,2020-01-01,{x})",
            "(b,,,)",
            "(b,9,,)",
            "(c,3,,\"{y,z}\")"
        ],
        "two identical rows, one deleted: exactly one remains"
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_20mb_value_untouched_by_an_update_is_not_shipped_again() -> anyhow::Result<()> {
    let p = Pair::new("create schema app; create table app.big (id int primary key, n int, blob bytea, doc text);").await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    // Capture installed, nothing shipping yet: the queue can be inspected.
    let cfg = pgteleport::config::Config::from_yaml(
        &p.source_yaml(port, "app.*", ""),
        std::path::Path::new("s.yml"),
        |_| None,
    )?;
    let mut admin_src = p.src().await?;
    pgteleport::capture::install(&mut admin_src, &cfg).await?;
    let src = p.src().await?;
    src.batch_execute(
        "insert into app.big values (1, 0, (select string_agg(decode(md5(g::text), 'hex'), '') from generate_series(1, 1310720) g), repeat('d', 1000));
         update app.big set n = 1 where id = 1;
         update app.big set n = n where id = 1;",
    )
    .await?;
    let sizes: Vec<i32> = src
        .query("select octet_length(ev_data::text) from teleport.event where ev_op = 'U' order by ev_id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        sizes.len(),
        1,
        "an update that changes nothing queues nothing: {sizes:?}"
    );
    assert!(
        sizes[0] < 100,
        "the update ships only id and n, not 20 MB: {} bytes",
        sizes[0]
    );
    let source = p.start_source(port, "app.*", "").await?;
    let dst = p.dst().await?;
    let q = "select id, n, md5(blob), length(blob), md5(doc) from app.big";
    wait_for(
        "the 20 MB row and its update on the target",
        Duration::from_secs(60),
        || async {
            let a = src.query_one(q, &[]).await?;
            let b = dst.query_opt(q, &[]).await?;
            Ok(b.is_some_and(|b| {
                (
                    a.get::<_, i32>(1),
                    a.get::<_, String>(2),
                    a.get::<_, i32>(3),
                ) == (
                    b.get::<_, i32>(1),
                    b.get::<_, String>(2),
                    b.get::<_, i32>(3),
                )
            }))
        },
    )
    .await?;
    let len: i32 = dst
        .query_one("select length(blob) from app.big", &[])
        .await?
        .get(0);
    assert_eq!(len, 20 * 1024 * 1024);
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

async fn grant_replica_role(p: &Pair) -> anyhow::Result<()> {
    p.cluster
        .admin(&p.dst_db)
        .await?
        .batch_execute(&format!(
            "grant set on parameter session_replication_role to {}",
            p.dst_role
        ))
        .await?;
    Ok(())
}

/// With replica mode, a backlog of small transactions is applied in runs that span
/// transactions (a few statements per batch); rows inserted, updated, deleted, inserted
/// again and re-keyed end as on the source, around a TRUNCATE of another table.
#[tokio::test]
async fn runs_across_transactions_end_equal_in_few_statements() -> anyhow::Result<()> {
    runs_across_transactions(true).await
}

/// Without replica mode the same holds for tables that no foreign key, trigger or rule
/// ties to others (`customer`, `order_line`; `parent` is referenced by `child`).
#[tokio::test]
async fn runs_across_transactions_without_replica_mode_for_tables_without_foreign_keys(
) -> anyhow::Result<()> {
    runs_across_transactions(false).await
}

async fn runs_across_transactions(replica: bool) -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    if replica {
        grant_replica_role(&p).await?;
    }
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    src.batch_execute("insert into app.parent select generate_series(1, 10)")
        .await?;
    let dst = p.dst().await?;
    wait_equal(&src, &dst, &["app.parent"], Duration::from_secs(20)).await?;
    // A backlog: the source instance is stopped while the transactions commit.
    source.shutdown().await?;
    let port = target.local_addr.unwrap().port();
    let mut c = p.src().await?;
    for i in 0..400i64 {
        let tx = c.transaction().await?;
        tx.execute("insert into app.customer values ($1, 'n', 0)", &[&i])
            .await?;
        tx.execute(
            "update app.customer set balance = balance + 1, name = name || 'u' where id = $1",
            &[&(i / 2)],
        )
        .await?;
        tx.execute(
            "insert into app.order_line values ($1, $2, 1, null) on conflict (order_id, line) do update set qty = app.order_line.qty + 1",
            &[&(i % 7), &((i % 60) as i32)],
        )
        .await?;
        if i % 3 == 0 && i > 0 {
            tx.execute("delete from app.customer where id = $1", &[&(i - 1)])
                .await?;
        }
        if i % 5 == 0 && i > 0 {
            // The row deleted above comes back with other values.
            tx.execute(
                "insert into app.customer values ($1, 'again', -1) on conflict (id) do update set name = 'again'",
                &[&(i - 1)],
            )
            .await?;
        }
        if i % 50 == 7 {
            // A key change: the row moves to a free key.
            tx.execute(
                "update app.customer set id = id + 100000 where id = $1",
                &[&(i / 2)],
            )
            .await?;
        }
        if i == 200 {
            tx.execute("truncate app.order_line", &[]).await?;
        }
        tx.commit().await?;
    }
    let source = p.start_source(port, "app.*", "").await?;
    wait_equal(
        &src,
        &dst,
        &["app.customer", "app.order_line", "app.parent"],
        Duration::from_secs(60),
    )
    .await?;
    let (events, runs) = {
        let r = dst
            .query_one(
                "select sum(events)::int8, sum(runs)::int8 from teleport.applied",
                &[],
            )
            .await?;
        (r.get::<_, i64>(0), r.get::<_, i64>(1))
    };
    assert!(events > 1000, "{events} events applied");
    assert!(
        runs * 5 < events,
        "{events} events took {runs} statements: the runs did not span transactions"
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Without replica mode the target's foreign-key actions fire, so tables a foreign key ties
/// together keep source order: a child row inserted, its parent deleted (the cascade deletes
/// the child on both sides), inserted again and given a new child. Applied out of order the
/// new child would come before the parent's delete, whose cascade on the target would take
/// it — without any error.
#[tokio::test]
async fn without_replica_mode_tables_tied_by_a_foreign_key_keep_source_order() -> anyhow::Result<()>
{
    let p = Pair::new(SCHEMA).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute("insert into app.parent select generate_series(1, 20)")
        .await?;
    wait_equal(&src, &dst, &["app.parent"], Duration::from_secs(20)).await?;
    let source = p
        .with_backlog(source, &target, "app.*", 20, |i| {
            format!(
                "insert into app.child values ({a}, {i});
                 delete from app.parent where id = {i};
                 insert into app.parent values ({i});
                 insert into app.child values ({b}, {i});",
                a = i * 2,
                b = i * 2 + 1
            )
        })
        .await?;
    wait_equal(
        &src,
        &dst,
        &["app.parent", "app.child"],
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(
        scalar_i64(&dst, "select count(*) from app.child").await?,
        20
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// The first part of a batch is planned while the batch waits for the target's position
/// lock, with what the batch before found reorderable. A trigger created on the target
/// between two batches makes its table keep source order from the next batch on: the plan
/// made before the lock is made again under it. (Applied across transactions, every row of
/// the second backlog would see all 60 rows of `app.b`.)
#[tokio::test]
async fn a_trigger_created_on_the_target_between_batches_keeps_the_next_in_source_order(
) -> anyhow::Result<()> {
    let schema = "
create schema app;
create table app.b (id int primary key);
create table app.m (id int primary key, seen int);
";
    let p = Pair::new2(schema, schema).await?;
    let (source, target) = p.start_both("app.*").await?;
    let txn =
        |i: i64| format!("insert into app.b values ({i}); insert into app.m values ({i}, null);");
    let source = p.with_backlog(source, &target, "app.*", 30, txn).await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    wait_equal(&src, &dst, &["app.b", "app.m"], Duration::from_secs(30)).await?;
    dst.batch_execute(
        "create function app.count_b() returns trigger language plpgsql as
           $$ begin new.seen := (select count(*) from app.b); return new; end $$;
         create trigger count_b before insert on app.m for each row execute function app.count_b();
         alter table app.m enable always trigger count_b;",
    )
    .await?;
    let source = p
        .with_backlog(source, &target, "app.*", 30, |i| txn(i + 30))
        .await?;
    wait_for(
        "the second backlog on the target",
        Duration::from_secs(30),
        || async { Ok(scalar_i64(&dst, "select count(*) from app.m").await? == 60) },
    )
    .await?;
    assert_eq!(
        scalar_i64(&dst, "select count(distinct seen) from app.m where id > 30").await?,
        30,
        "each row of the second backlog saw the rows of app.b inserted before it"
    );
    assert_eq!(
        scalar_i64(
            &dst,
            "select count(*) from app.m where id > 30 and seen <> id"
        )
        .await?,
        0
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Without replica mode a table whose foreign key refers to itself keeps source order: its
/// rows are each other's parents, and a run spanning transactions could apply a child's
/// move to a parent before the parent's delete, whose ON DELETE SET NULL then empties the
/// child's reference on the target only — silently, every check passes.
#[tokio::test]
async fn without_replica_mode_a_table_referring_to_itself_keeps_source_order() -> anyhow::Result<()>
{
    let schema = format!(
        "{SCHEMA}
         create table app.node (id int primary key, parent_id int references app.node on delete set null, v text);"
    );
    let p = Pair::new(&schema).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "insert into app.node select 1000 + g, null, 'parent' from generate_series(1, 20) g;
         insert into app.node select g, 1000 + g, 'child' from generate_series(1, 20) g;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.node"], Duration::from_secs(20)).await?;
    // Per child: touched, its parent deleted (the child's reference set null), the parent
    // back, the child moved to it again.
    let source = p
        .with_backlog(source, &target, "app.*", 20, |i| {
            format!(
                "update app.node set v = 'touched' where id = {i};
                 delete from app.node where id = 1000 + {i};
                 insert into app.node values (1000 + {i}, null, 'parent again');
                 update app.node set parent_id = 1000 + {i} where id = {i};"
            )
        })
        .await?;
    wait_equal(&src, &dst, &["app.node"], Duration::from_secs(30)).await?;
    assert_eq!(
        scalar_i64(
            &dst,
            "select count(*) from app.node where id <= 20 and parent_id = id + 1000"
        )
        .await?,
        20
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Without replica mode a table with a foreign key is still applied in runs that span
/// transactions when the batch changes no other table its keys tie it to: children of
/// parents the batch leaves alone, between rows of an unrelated table.
#[tokio::test]
async fn without_replica_mode_a_child_whose_parents_the_batch_leaves_alone_is_applied_in_runs(
) -> anyhow::Result<()> {
    let p = Pair::new(SCHEMA).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute("insert into app.parent select generate_series(1, 10)")
        .await?;
    wait_equal(&src, &dst, &["app.parent"], Duration::from_secs(20)).await?;
    let before = scalar_i64(&dst, "select sum(runs)::int8 from teleport.applied").await?;
    let source = p
        .with_backlog(source, &target, "app.*", 200, |i| {
            format!(
                "insert into app.child values ({i}, {p});
                 insert into app.customer values ({i}, 'c', 0);
                 update app.child set parent_id = {q} where id = {i};",
                p = i % 10 + 1,
                q = (i + 3) % 10 + 1
            )
        })
        .await?;
    wait_equal(
        &src,
        &dst,
        &["app.parent", "app.child", "app.customer"],
        Duration::from_secs(30),
    )
    .await?;
    let runs = scalar_i64(&dst, "select sum(runs)::int8 from teleport.applied").await? - before;
    assert!(
        runs * 5 < 600,
        "600 events took {runs} statements: the child's runs did not span transactions"
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Without replica mode a rule on a target table runs for the applied rows, so the table
/// keeps source order: a rule logging how many rows of another table each insert sees.
#[tokio::test]
async fn without_replica_mode_a_table_with_a_rule_keeps_source_order() -> anyhow::Result<()> {
    let schema = "create schema app;
                  create table app.b (id int primary key);
                  create table app.m (id int primary key);";
    let rule = "create schema other;
                create table other.log (id int, seen bigint);
                create rule log_b as on insert to app.m
                    do also insert into other.log values (new.id, (select count(*) from app.b));";
    let p = Pair::new2(schema, &format!("{schema}{rule}")).await?;
    let (source, target) = p.start_both("app.*").await?;
    let source = p
        .with_backlog(source, &target, "app.*", 30, |i| {
            format!("insert into app.b values ({i}); insert into app.m values ({i});")
        })
        .await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    wait_equal(&src, &dst, &["app.b", "app.m"], Duration::from_secs(30)).await?;
    assert_eq!(
        scalar_i64(&dst, "select count(*) from other.log where seen = id").await?,
        30,
        "each insert saw the rows of app.b inserted before it on the source"
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A unique value moved from one row to another (update, then insert in a later
/// transaction): applied out of order the insert would collide, so the batch is applied
/// again in source order, in the same transaction, and ends equal.
#[tokio::test]
async fn a_unique_value_moved_between_rows_falls_back_to_source_order() -> anyhow::Result<()> {
    let schema = "create schema app; create table app.u (id int primary key, email text not null unique, n int);";
    let p = Pair::new(schema).await?;
    grant_replica_role(&p).await?;
    let (source, target) = p.start_both("app.*").await?;
    let port = target.local_addr.unwrap().port();
    source.shutdown().await?;
    let src = p.src().await?;
    for i in 0..50 {
        src.batch_execute(&format!(
            "insert into app.u values ({a}, 'x{i}', 0);
             update app.u set email = 'y{i}' where id = {a};
             insert into app.u values ({b}, 'x{i}', 1);",
            a = i * 2,
            b = i * 2 + 1
        ))
        .await?;
    }
    let source = p.start_source(port, "app.*", "").await?;
    let dst = p.dst().await?;
    wait_equal(&src, &dst, &["app.u"], Duration::from_secs(60)).await?;
    assert_eq!(scalar_i64(&dst, "select count(*) from app.u").await?, 100);
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// The transmitter keeps two batches in flight: the next one is read, sent and waits on the
/// target's position lock while the target applies the one before it (a target trigger
/// makes that apply take two seconds). Both apply once, in order, without a resync.
#[tokio::test]
async fn the_next_batch_waits_on_the_target_while_the_one_before_applies() -> anyhow::Result<()> {
    let schema = "create schema app; create table app.t (id int primary key, v text not null);";
    let slow = "create function app.slow() returns trigger language plpgsql as
                 $$ begin if new.v = 'slow' then perform pg_sleep(2); end if; return new; end $$;
                create trigger slow before insert on app.t for each row execute function app.slow();
                alter table app.t enable always trigger slow;";
    let p = Pair::new2(schema, &format!("{schema}{slow}")).await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let src = p.src().await?;
    let dst = p.dst().await?;
    // Capture installed, then a backlog of one-event transactions, each its own batch.
    p.start_source(port, "app.*", "").await?.shutdown().await?;
    src.batch_execute("insert into app.t values (1, 'slow')")
        .await?;
    for i in 2..=6 {
        src.execute("insert into app.t values ($1, 'x')", &[&i])
            .await?;
    }
    let source = p
        .start_source(port, "app.*", "max_events_per_batch: 1\n")
        .await?;
    let waiting = "select count(*) from pg_stat_activity
                    where datname = current_database() and wait_event_type = 'Lock'
                      and query like '%teleport%.applied%'";
    wait_for(
        "a batch waiting on the target's position lock",
        Duration::from_secs(10),
        || async { Ok(scalar_i64(&dst, waiting).await? == 1) },
    )
    .await?;
    // The slow batch is still applying: nothing of it is visible yet.
    assert_eq!(scalar_i64(&dst, "select count(*) from app.t").await?, 0);
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(20)).await?;
    assert_exactly_once(&src, &dst).await?;
    let (failures, error): (i64, Option<String>) = {
        let r = src
            .query_one(
                "select failures, last_error from teleport.target_state",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (failures, error),
        (0, None),
        "the pipelined batches needed no retry"
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// With `soft_delete_col_name` and `synced_at_col_name` (PeerDB's options) a delete marks
/// the target row instead of removing it, an insert of that key again revives it with the
/// new values, and every row written carries the time it was applied; the two columns are
/// added to the target table.
#[tokio::test]
async fn soft_deletes_mark_rows_and_synced_at_records_the_apply() -> anyhow::Result<()> {
    let p =
        Pair::new("create schema app; create table app.t (id int primary key, v text);").await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let source = p
        .start_source(
            port,
            "app.*",
            "    soft_delete_col_name: _deleted\n    synced_at_col_name: _synced_at\n",
        )
        .await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "insert into app.t select g, 'v' || g from generate_series(1, 20) g;
         update app.t set v = 'u' where id <= 5;
         delete from app.t where id between 3 and 8;
         insert into app.t values (4, 'again');
         update app.t set id = 100 where id = 20;",
    )
    .await?;
    let live = "select format('%s %s', id, v) from app.t where not _deleted order by id";
    let want = texts(&src, "select format('%s %s', id, v) from app.t order by id").await?;
    wait_texts(
        &dst,
        "live rows equal",
        Duration::from_secs(20),
        live,
        &want,
    )
    .await?;
    assert_eq!(
        texts(
            &dst,
            "select id::text from app.t where _deleted order by id"
        )
        .await?,
        vec!["3", "5", "6", "7", "8"],
        "deleted rows stay, marked; the revived one is live"
    );
    assert_eq!(
        scalar_i64(&dst, "select count(*) from app.t where _synced_at is null").await?,
        0
    );
    assert_eq!(
        texts(
            &dst,
            "select format('%s %s %s', attname, format_type(atttypid, atttypmod), attnotnull)
               from pg_attribute where attrelid = 'app.t'::regclass and attname like '\\_%' order by attnum"
        )
        .await?,
        vec!["_deleted boolean t", "_synced_at timestamp with time zone f"]
    );
    // A later delete of the revived row marks it again, with a newer sync time.
    let before = scalar_i64(
        &dst,
        "select (extract(epoch from _synced_at) * 1e6)::int8 from app.t where id = 4",
    )
    .await?;
    src.execute("delete from app.t where id = 4", &[]).await?;
    wait_for("row 4 marked deleted", Duration::from_secs(20), || async {
        Ok(scalar_i64(&dst, "select count(*) from app.t where id = 4 and _deleted").await? == 1)
    })
    .await?;
    let after = scalar_i64(
        &dst,
        "select (extract(epoch from _synced_at) * 1e6)::int8 from app.t where id = 4",
    )
    .await?;
    assert!(after > before, "synced_at moved on: {before} -> {after}");
    // `verify` ignores the target's own columns and the rows marked deleted.
    let extra = "    soft_delete_col_name: _deleted\n    synced_at_col_name: _synced_at\n";
    assert_verified(&p, port, extra).await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// `exclude_columns`: a column never leaves the source. The snapshot creates the target
/// table without it (and without the index and check constraint on it), copies the other
/// columns, and streamed inserts, updates and deletes carry no trace of it.
#[tokio::test]
async fn excluded_columns_never_reach_the_target() -> anyhow::Result<()> {
    let schema = "create schema app;
        create table app.p (id int primary key, name text not null, secret text check (secret <> 'forbidden'), note text);
        create index p_secret on app.p (secret);";
    let p = Pair::new2(schema, "create schema app;").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "insert into app.p select g, 'n' || g, 'password-' || g, null from generate_series(1, 50) g",
    )
    .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let source = p
        .start_source(
            port,
            "app.*",
            "    do_initial_snapshot: true\n    exclude_columns: {\"app.p\": [secret]}\n",
        )
        .await?;
    let projected = "select format('%s %s %s', id, name, note) from app.p order by id";
    let want = texts(&src, projected).await?;
    wait_texts(
        &dst,
        "the snapshot",
        Duration::from_secs(30),
        projected,
        &want,
    )
    .await?;
    src.batch_execute(
        "insert into app.p values (51, 'new', 'password-51', 'x');
         update app.p set secret = 'password-changed', note = 'y' where id <= 10;
         update app.p set secret = 'only the secret' where id = 11;
         delete from app.p where id = 12;",
    )
    .await?;
    let want = texts(&src, projected).await?;
    wait_texts(
        &dst,
        "the stream",
        Duration::from_secs(20),
        projected,
        &want,
    )
    .await?;
    assert_eq!(
        texts(
            &dst,
            "select attname::text from pg_attribute where attrelid = 'app.p'::regclass and attnum > 0 and not attisdropped order by attnum"
        )
        .await?,
        vec!["id", "name", "note"]
    );
    assert_eq!(
        scalar_i64(
            &dst,
            "select count(*) from pg_indexes where tablename = 'p' and indexname = 'p_secret'"
        )
        .await?,
        0
    );
    // `verify` compares the columns both sides hold, and finds a change to one of them.
    let extra = "    do_initial_snapshot: true\n    exclude_columns: {\"app.p\": [secret]}\n";
    assert_verified(&p, port, extra).await?;
    dst.execute("update app.p set note = 'tampered' where id = 30", &[])
        .await?;
    let reports = verify_target(&p, port, extra).await?;
    assert_eq!(
        reports[0].changed,
        vec!["(30)"],
        "{}",
        pgteleport::verify::render(&reports)
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// `rename_tables`: two tables replicate under other names (one into another schema) —
/// the snapshot creates them there with their keys, indexes and foreign key, live changes and schema
/// changes follow them, and `verify` compares each with its destination.
#[tokio::test]
async fn renamed_tables_replicate_under_their_destination_names() -> anyhow::Result<()> {
    let p = Pair::new2(
        "create schema app;
         create table app.orders (id int primary key, v text);
         create index orders_v on app.orders (v);
         create table app.lines (id int primary key, order_id int not null references app.orders, qty int);
         create table app.kept (id int primary key, v text);
         insert into app.orders select g, 'o' || g from generate_series(1, 300) g;
         insert into app.lines select g, g % 300 + 1, g from generate_series(1, 600) g;
         insert into app.kept values (1, 'same name');",
        "",
    )
    .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let renames = "    do_initial_snapshot: true\n    rename_tables: {\"app.orders\": \"archive.orders_v2\", \"app.lines\": \"app.order_lines\"}\n";
    let source = p.start_source(port, "app.*", renames).await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    let pairs = [
        ("app.orders", "archive.orders_v2"),
        ("app.lines", "app.order_lines"),
        ("app.kept", "app.kept"),
    ];
    wait_equal_as(&src, &dst, &pairs, Duration::from_secs(30)).await?;
    src.batch_execute(
        "insert into app.orders select g, 'new' from generate_series(301, 350) g;
         update app.orders set v = 'changed' where id % 10 = 0;
         delete from app.lines where id <= 50;
         update app.lines set qty = -qty where id % 7 = 0;
         alter table app.orders add column note text;
         update app.orders set note = 'noted' where id < 20;
         create index orders_note on app.orders (note);",
    )
    .await?;
    wait_equal_as(&src, &dst, &pairs, Duration::from_secs(30)).await?;
    assert_eq!(
        texts(
            &dst,
            "select format('%s.%s', schemaname, indexname) from pg_indexes
              where schemaname in ('app', 'archive') order by 1"
        )
        .await?,
        vec![
            "app.kept_pkey",
            "app.order_lines_pkey",
            "archive.orders_note",
            "archive.orders_v",
            "archive.orders_v2_pkey",
        ],
        "keys and indexes on the destination tables"
    );
    assert_eq!(
        texts(
            &dst,
            "select pg_get_constraintdef(oid) from pg_constraint where conrelid = 'app.order_lines'::regclass and contype = 'f'"
        )
        .await?,
        vec!["FOREIGN KEY (order_id) REFERENCES archive.orders_v2(id)"],
        "the foreign key refers to the destination of the table it refers to"
    );
    assert_eq!(
        scalar_i64(
            &dst,
            "select count(*) from pg_class where relname in ('orders', 'lines')"
        )
        .await?,
        0,
        "nothing under the source names"
    );
    let reports = assert_verified(&p, port, renames).await?;
    assert_eq!(reports.len(), 3);
    assert!(
        reports.iter().all(|r| r.target_rows > 0),
        "{}",
        pgteleport::verify::render(&reports)
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// `verify` of target `t1` of [`Pair::source_yaml`] with `extra` target keys.
async fn verify_target(
    p: &Pair,
    port: u16,
    extra: &str,
) -> anyhow::Result<Vec<pgteleport::verify::TableReport>> {
    let path = std::path::Path::new("s.yml");
    let cfg =
        pgteleport::config::Config::from_yaml(&p.source_yaml(port, "app.*", extra), path, |_| {
            None
        })?;
    let tcfg = pgteleport::config::Config::from_yaml(&p.target_yaml(port), path, |_| None)?;
    pgteleport::verify::verify(&cfg, "t1", &tcfg.database, Duration::from_secs(30), 1000).await
}

/// [`verify_target`], asserting that every table is equal; returns the reports.
async fn assert_verified(
    p: &Pair,
    port: u16,
    extra: &str,
) -> anyhow::Result<Vec<pgteleport::verify::TableReport>> {
    let reports = verify_target(p, port, extra).await?;
    assert!(
        reports.iter().all(|r| r.equal()),
        "{}",
        pgteleport::verify::render(&reports)
    );
    Ok(reports)
}

/// A batch's table filter (the target expression's regular expression) is matched with
/// LIKE patterns on the queue's name columns: in PostgreSQL they select exactly the names
/// the regular expression selects, and the expression's own matcher.
#[tokio::test]
async fn table_filters_select_what_their_regular_expressions_select() -> anyhow::Result<()> {
    let c = cluster().admin("postgres").await?;
    let names: Vec<String> = [
        "public.a",
        "public.ab",
        "public.a_b",
        "public.axb",
        "public.a%b",
        "public.a%%b",
        "public.a\\b",
        "public.a\\\\b",
        "public.",
        "Public.a",
        "app.order_1",
        "app.orderx1",
        "app.order_12",
        "app.order_",
        "s1.a.b",
        "s1.a.bc",
        "s1.axb",
        "s12.a.b",
        "x.100%",
        "x.1000",
        "x.100",
        "é.ü",
        "é.üx",
        "e.u",
        "p.q|r",
        "p.q",
        "pq.r",
        "a b.c d",
        "a b.c",
        "q.it's",
        "q.it\"s",
    ]
    .map(String::from)
    .to_vec();
    let expressions = [
        "public.*",
        "public.a_b",
        "public.a%b, app.order_?",
        "s?.a.b*",
        "x.100%",
        "é.ü*",
        "p.q|r",
        "public.a\\b",
        "*.*",
        "?.*",
        "a b.c*",
        "q.it's, q.it\"s",
        "public.a*b",
    ];
    for expression in expressions {
        let parsed = ddlwatcher::TargetExpression::parse(expression)?;
        let filter = parsed.to_regex();
        let condition = pgteleport::batcher::filter_condition(&filter);
        assert!(!condition.contains('~'), "{expression}: {condition}");
        let rows = c
            .query(
                &format!(
                    "select n, {condition}, (e.ev_schema::text || '.' || e.ev_table::text) ~ b.filter
                       from (select n, split_part(n, '.', 1)::name as ev_schema,
                                    substr(n, strpos(n, '.') + 1)::name as ev_table
                               from unnest($1::text[]) n) e,
                            (select $2::text as filter) b"
                ),
                &[&names, &filter],
            )
            .await?;
        assert_eq!(rows.len(), names.len());
        let mut selected = 0;
        for r in rows {
            let name: String = r.get(0);
            let (like, regex): (bool, bool) = (r.get(1), r.get(2));
            let (schema, table) = name.split_once('.').unwrap();
            assert_eq!(
                like, regex,
                "{expression} on {name}: LIKE {like}, regex {regex}"
            );
            assert_eq!(
                like,
                parsed.matches(schema, table),
                "{expression} on {name}"
            );
            selected += usize::from(like);
        }
        assert!(selected > 0, "{expression} selects none of the names");
    }
    Ok(())
}

/// Two mirrors of one source with different expressions: every transaction touches the
/// tables of both and of neither, so each mirror's batches are cut and read with its
/// filter; each target schema ends with exactly its tables, equal to the source. Foreign
/// keys follow their tables into each mirror's schema when both ends are in it (the
/// snapshot adds them); one to a table another mirror has is left out.
#[tokio::test]
async fn mirrors_with_different_expressions_receive_only_their_tables() -> anyhow::Result<()> {
    let p = Pair::new2(
        "create schema app;
         create table app.a_x (id int primary key, v text);
         create table app.axe (id int primary key, v text);
         create table app.ab (id int primary key, v text, axe_id int references app.axe);
         create table app.bb (id int primary key, v text);
         create table app.b_1 (id int primary key, v text, bb_id int references app.bb on delete set null);",
        "create schema one; create schema two;",
    )
    .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    // t1: app.a_x and app.ab (`?b`) and app.bb (`?b`); never app.axe (`a_*` is a literal
    // underscore). t2: app.bb, app.b_1 and app.axe.
    let yaml = p
        .source_yaml_into(port, "app.a_*, app.?b", "    do_initial_snapshot: true\n", "one")
        .replace("targets:\n", &format!(
            "targets:\n  t2:\n    target_expression: \"app.b*, app.axe\"\n    endpoint: {{hostname: 127.0.0.1, port: {port}}}\n    auth_token: {TOKEN}\n    apply_schema: two\n    do_initial_snapshot: true\n"
        ));
    let cfg = pgteleport::config::Config::from_yaml(
        &yaml,
        std::path::Path::new("<test source>"),
        |_| None,
    )?;
    let source = pgteleport::instance::start(cfg).await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    for round in 0..3 {
        src.batch_execute(&format!(
            "begin;
             insert into app.a_x select g, 'a' || g from generate_series({round} * 100 + 1, {round} * 100 + 100) g;
             insert into app.axe select g, 'x' || g from generate_series({round} * 100 + 1, {round} * 100 + 100) g;
             insert into app.ab select g, 'b' || g, g from generate_series({round} * 100 + 1, {round} * 100 + 100) g;
             insert into app.bb select g, 'y' || g from generate_series({round} * 100 + 1, {round} * 100 + 100) g;
             insert into app.b_1 select g, 'z' || g, g from generate_series({round} * 100 + 1, {round} * 100 + 100) g;
             update app.a_x set v = v || '!' where id % 3 = 0;
             update app.axe set v = v || '!' where id % 4 = 0;
             delete from app.bb where id % 5 = 0;
             commit;"
        ))
        .await?;
    }
    let pairs = [
        ("app.a_x", "one.a_x"),
        ("app.ab", "one.ab"),
        ("app.bb", "one.bb"),
        ("app.bb", "two.bb"),
        ("app.b_1", "two.b_1"),
        ("app.axe", "two.axe"),
    ];
    wait_equal_as(&src, &dst, &pairs, Duration::from_secs(30)).await?;
    assert_eq!(
        texts(
            &dst,
            "select format('%s.%s', schemaname, tablename) from pg_tables
              where schemaname in ('one', 'two') order by 1"
        )
        .await?,
        vec!["one.a_x", "one.ab", "one.bb", "two.axe", "two.b_1", "two.bb"],
        "each mirror's tables, and no other"
    );
    let keys = "select conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) from pg_constraint
                 where connamespace in ('one'::regnamespace, 'two'::regnamespace) and contype = 'f'";
    wait_texts(
        &dst,
        "the foreign key within mirror two (one.ab's refers to a table mirror one lacks)",
        Duration::from_secs(10),
        keys,
        &["two.b_1 FOREIGN KEY (bb_id) REFERENCES two.bb(id) ON DELETE SET NULL"],
    )
    .await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// An update of a table that leaves only its key to write (the other column excluded) still
/// needs its row on the target: a row missing there stops the stream as diverged, like any
/// update, instead of passing unseen (the applier had nothing to set and skipped it).
#[tokio::test]
async fn an_update_with_only_its_key_to_write_needs_its_row_on_the_target() -> anyhow::Result<()> {
    let p = Pair::new2(
        "create schema app; create table app.x (id int primary key, secret text);",
        "create schema app; create table app.x (id int primary key);",
    )
    .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let source = p
        .start_source(
            port,
            "app.*",
            "    exclude_columns: {\"app.x\": [secret]}\n",
        )
        .await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    src.batch_execute("insert into app.x select g, 's' || g from generate_series(1, 5) g")
        .await?;
    let ids = "select id::text from app.x order by id";
    wait_texts(
        &dst,
        "the rows",
        Duration::from_secs(20),
        ids,
        &["1", "2", "3", "4", "5"],
    )
    .await?;
    dst.batch_execute("delete from app.x where id = 2").await?;
    src.batch_execute("update app.x set secret = 'changed' where id in (2, 3); insert into app.x values (6, 's6')")
        .await?;
    wait_for(
        "the divergence reported",
        Duration::from_secs(20),
        || async {
            let e = last_error(&src).await?;
            Ok(e.contains("\"app\".\"x\"")
                && e.contains("2 row(s) named by the source but 1 found"))
        },
    )
    .await?;
    assert_eq!(
        texts(&dst, ids).await?,
        ["1", "3", "4", "5"],
        "nothing of the batch applied"
    );
    dst.batch_execute("insert into app.x values (2)").await?;
    wait_texts(
        &dst,
        "the stream after the row is back",
        Duration::from_secs(20),
        ids,
        &["1", "2", "3", "4", "5", "6"],
    )
    .await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A row removed on the target outside replication: the source's update of it, then its
/// delete, stop the stream with an error naming the table and the divergence — no update
/// or delete "does nothing" — and nothing of the failing batch is applied; once the row is
/// back, the stream goes on and ends equal.
#[tokio::test]
async fn a_row_missing_on_the_target_stops_updates_and_deletes_with_the_table_named(
) -> anyhow::Result<()> {
    let p =
        Pair::new("create schema app; create table app.t (id int primary key, v text);").await?;
    grant_replica_role(&p).await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute("insert into app.t select g, 'v' || g from generate_series(1, 100) g")
        .await?;
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(20)).await?;
    for (change, expected) in [
        (
            "update app.t set v = 'changed' where id between 40 and 60",
            "Update",
        ),
        ("delete from app.t where id between 40 and 60", "Delete"),
    ] {
        dst.batch_execute("delete from app.t where id = 50").await?;
        let before = rows(&dst, "app.t").await?;
        src.batch_execute(&format!(
            "begin; insert into app.t values (1000, 'with the change'); {change}; commit;"
        ))
        .await?;
        wait_for(
            "the divergence reported",
            Duration::from_secs(20),
            || async {
                let e = last_error(&src).await?;
                Ok(e.contains("\"app\".\"t\"")
                    && e.contains("21 row(s) named by the source but 20 found"))
            },
        )
        .await?;
        let e = last_error(&src).await?;
        assert!(e.contains(expected), "{e}");
        assert_eq!(
            rows(&dst, "app.t").await?,
            before,
            "nothing of the batch applied"
        );
        // Put the row back as the source had it before the batch.
        dst.batch_execute("insert into app.t values (50, 'v50')")
            .await?;
        wait_equal(&src, &dst, &["app.t"], Duration::from_secs(30)).await?;
        src.batch_execute("delete from app.t where id = 1000; insert into app.t select g, 'v' || g from generate_series(40, 60) g on conflict do nothing")
            .await?;
        wait_equal(&src, &dst, &["app.t"], Duration::from_secs(30)).await?;
    }
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A keyless table whose columns have no equality operator (json, point, xml): updates and
/// deletes still find their row (its columns compared by their text).
#[tokio::test]
async fn keyless_rows_with_json_point_and_xml_columns_are_found() -> anyhow::Result<()> {
    let p = Pair::new("create schema app; create table app.k (doc json, at point, xm xml, n int);")
        .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let source = p
        .start_source(port, "app.*", "keyless_tables: true\n")
        .await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    src.batch_execute(
        "insert into app.k values ('{\"a\": 1, \"a\": 2}', '(1,2)', '<r>1</r>', 1), ('[1, 2]', '(3,4)', '<r>2</r>', 2), (null, null, null, 3);
         update app.k set n = 10 where n = 1;
         update app.k set doc = '{\"b\": null}' where n = 3;
         delete from app.k where n = 2;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.k"], Duration::from_secs(20)).await?;
    assert_eq!(
        texts(&dst, "select coalesce(doc::text, '-') || ' ' || coalesce(at::text, '-') || ' ' || coalesce(xm::text, '-') || ' ' || n from app.k order by n").await?,
        vec!["{\"b\": null} - - 3", "{\"a\": 1, \"a\": 2} (1,2) <r>1</r> 10"]
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A keyless table whose target table has a column of its own (with a default): updates
/// and deletes find their row by the columns the image has. The whole row was compared,
/// the target's own column with it: "0 found", held for good. (A version applied ahead of
/// its event gives the target such a column for a while too.)
#[tokio::test]
async fn keyless_rows_are_found_when_the_target_table_has_more_columns() -> anyhow::Result<()> {
    let p = Pair::new2(
        "create schema app; create table app.k (a int, b text);",
        "create schema app; create table app.k (a int, b text, note text default 'target''s own');",
    )
    .await?;
    let (source, target) = p.start_both_with("app.*", "keyless_tables: true\n").await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    src.batch_execute(
        "insert into app.k values (1, 'one'), (2, 'two'), (2, 'two'), (3, null);
         update app.k set b = 'uno' where a = 1;
         delete from app.k where a = 2;
         update app.k set b = 'three' where a = 3;",
    )
    .await?;
    let projected = "select format('%s %s', a, b) from app.k order by a";
    let want = texts(&src, projected).await?;
    wait_texts(&dst, "the rows", Duration::from_secs(20), projected, &want).await?;
    assert_eq!(
        texts(&dst, "select distinct note from app.k").await?,
        ["target's own"]
    );
    assert_eq!(last_error(&src).await?, "");
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A keyless table whose target has an index (here on `a`): each update and delete finds
/// its row through it — one read of the whole table per event before (what native logical
/// replication does with REPLICA IDENTITY FULL up to PostgreSQL 15) — and still by the
/// whole old row: NULLs (no `=` match) and values the index's `=` calls equal but whose
/// text differs (`1.0` and `1.00`) are matched exactly.
#[tokio::test]
async fn keyless_rows_are_found_through_an_index_of_the_target() -> anyhow::Result<()> {
    let setup = "create schema app;
         create table app.k (a int, b numeric, c text);
         create index k_a on app.k (a);
         create index k_b on app.k (b);
         insert into app.k select g, g, 'row ' || g from generate_series(1, 5000) g;
         insert into app.k values (null, 1.0, 'null a'), (7, 1.00, 'seven twice');";
    let p = Pair::new2(setup, setup).await?;
    let (source, target) = p.start_both_with("app.*", "keyless_tables: true\n").await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    let scans = "select format('%s %s', seq_scan, coalesce(idx_scan, 0))
                   from pg_stat_user_tables where relid = 'app.k'::regclass";
    let before = texts(&dst, scans).await?;
    src.batch_execute(
        "update app.k set c = c || ' changed' where a between 100 and 299;
         delete from app.k where a between 300 and 399;
         update app.k set c = 'b was 1.00' where b = 1.00 and c = 'seven twice';
         update app.k set c = 'no a' where a is null;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.k"], Duration::from_secs(60)).await?;
    assert_eq!(
        texts(
            &dst,
            "select format('%s %s', b, c) from app.k where b = 1 and c <> 'row 1' order by c"
        )
        .await?,
        ["1.00 b was 1.00", "1.0 no a"]
    );
    assert_eq!(last_error(&src).await?, "");
    source.shutdown().await?;
    // The target's backends report their counters when their connections close.
    target.shutdown().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = texts(&dst, scans).await?;
    let counts =
        |t: &[String]| -> Vec<i64> { t[0].split(' ').map(|n| n.parse().unwrap()).collect() };
    let (b, a) = (counts(&before), counts(&after));
    assert!(
        a[0] - b[0] < 20 && a[1] - b[1] >= 300,
        "sequential scans {} and index scans {} for 302 events (before: {before:?}, after: {after:?})",
        a[0] - b[0],
        a[1] - b[1]
    );
    Ok(())
}

/// A keyless table whose target has no index: a run of deletes, or of updates (a
/// statement's, a transaction's), is applied as one statement reading the table once (by
/// hash on each row's whole text), not one read of the whole table per row — and still
/// exactly: as many of identical rows as named, NULL apart from `''`, `1.0` apart from
/// `1.00`; an update of a row an earlier one of the run wrote (not there before the run)
/// goes one row at a time.
#[tokio::test]
async fn keyless_updates_and_deletes_read_the_target_table_once_per_run() -> anyhow::Result<()> {
    let setup = "create schema app;
         create table app.k (a int, b numeric, c text, j jsonb);
         insert into app.k select g, g, 'row ' || g, jsonb_build_object('g', g) from generate_series(1, 3000) g;
         insert into app.k select 7, 7, 'three', null from generate_series(1, 5);
         insert into app.k values (null, 1.0, '', '[]'), (null, 1.0, null, '[]'), (8, 1.00, 'x', null), (8, 1.0, 'x', null);";
    let p = Pair::new2(setup, setup).await?;
    let (source, target) = p.start_both_with("app.*", "keyless_tables: true\n").await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    let scans = "select seq_scan from pg_stat_user_tables where relid = 'app.k'::regclass";
    let before = scalar_i64(&dst, scans).await?;
    src.batch_execute(
        "delete from app.k where a between 100 and 599 and c like 'row %';
         update app.k set c = c || '!', j = j || '{\"u\": \"\"}' where a between 1000 and 1499;
         delete from app.k where ctid in (select ctid from app.k where c = 'three' limit 2);
         begin;
         update app.k set c = 'first' where ctid = (select ctid from app.k where c = 'three' limit 1);
         update app.k set c = 'second' where ctid = (select ctid from app.k where c = 'three' limit 1);
         commit;
         delete from app.k where a is null and c = '';
         delete from app.k where b::text = '1.00';
         begin;
         update app.k set c = 'y' where c = 'x';
         update app.k set c = 'z' where c = 'y';
         commit;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.k"], Duration::from_secs(60)).await?;
    assert_eq!(
        texts(
            &dst,
            "select format('%s %s %s', a, b, quote_nullable(c)) from app.k where c is null or c not like 'row %' order by 1"
        )
        .await?,
        [" 1.0 NULL", "7 7 'first'", "7 7 'second'", "7 7 'three'", "8 1.0 'z'"]
    );
    assert_eq!(last_error(&src).await?, "");
    source.shutdown().await?;
    // The target's backends report their counters when their connections close.
    target.shutdown().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = scalar_i64(&dst, scans).await?;
    // One per row (over 1 010) when applied a row at a time; the comparisons of the
    // tables while waiting count too.
    assert!(
        after - before < 150,
        "{} sequential scans of the target table for 1 010 updates and deletes in 9 statements",
        after - before
    );
    Ok(())
}

/// A keyless table referencing another with `ON DELETE CASCADE`, on both sides: without
/// replica mode the target's own cascade removes the child rows when the parent's delete is
/// applied, and the source's cascaded deletes of them (whole old rows) then find nothing —
/// the end state is the same, as for a keyed child. They held the stream ("1 row(s) named
/// by the source but 0 found").
#[tokio::test]
async fn a_keyless_childs_rows_removed_by_the_targets_own_cascade_are_passed_over(
) -> anyhow::Result<()> {
    let setup = "create schema app;
         create table app.parent (id int primary key);
         create table app.child (pid int references app.parent on delete cascade, v text);
         insert into app.parent select generate_series(1, 5);
         insert into app.child select g % 5 + 1, 'v' || g from generate_series(1, 20) g;
         insert into app.child values (1, 'v1'), (1, 'v1');";
    let p = Pair::new2(setup, setup).await?;
    let (source, target) = p.start_both_with("app.*", "keyless_tables: true\n").await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    src.batch_execute(
        "delete from app.parent where id = 1;
         delete from app.parent where id in (2, 3);
         delete from app.child where pid = 4 and v = 'v3';",
    )
    .await?;
    wait_equal(
        &src,
        &dst,
        &["app.parent", "app.child"],
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(scalar_i64(&dst, "select count(*) from app.child").await?, 7);
    assert_eq!(last_error(&src).await?, "");
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// A `DEFERRABLE` primary key lets one statement move keys through each other: a shift
/// (`SET id = id + 1`, rows in any order) and a swap. The target gets the key DEFERRABLE too
/// (from the snapshot, and for a table created later), and applies the key changes of one
/// statement as one UPDATE. (They were applied one by one: duplicate key, the mirror held
/// for ever.)
#[tokio::test]
async fn key_shifts_and_swaps_under_a_deferrable_key_replicate() -> anyhow::Result<()> {
    let p = Pair::new2(
        "create schema app;
         create table app.k (id int primary key deferrable, v text);
         insert into app.k select g, 'v' || g from generate_series(1, 10) g;",
        "",
    )
    .await?;
    let (source, target) = p
        .start_both_with("app.*", "    do_initial_snapshot: true\n")
        .await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    let within = Duration::from_secs(30);
    wait_equal(&src, &dst, &["app.k"], within).await?;
    src.batch_execute(
        "update app.k set id = id + 1;
         update app.k set id = case id when 2 then 3 when 3 then 2 end where id in (2, 3);
         update app.k set id = 12 - id, v = v || '!';
         begin;
         update app.k set id = 100 where id = 4;
         update app.k set id = 101 where id = 100;
         commit;
         create table app.k2 (id int primary key deferrable initially deferred, v text);
         insert into app.k2 select g, 'w' || g from generate_series(1, 5) g;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.k", "app.k2"], within).await?;
    src.batch_execute(
        "update app.k2 set id = 6 - id;
         begin;
         update app.k2 set id = 0 where id = 1;
         update app.k2 set id = 1 where id = 2;
         update app.k2 set id = 2 where id = 0;
         commit;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.k", "app.k2"], within).await?;
    // Without a primary key, a DEFERRABLE unique constraint on NOT NULL columns is the key.
    src.batch_execute(
        "create table app.u (a int not null, v text, constraint u_a unique (a) deferrable);
         insert into app.u select g, 'u' || g from generate_series(1, 5) g;",
    )
    .await?;
    wait_equal(&src, &dst, &["app.u"], within).await?;
    src.batch_execute("update app.u set a = a + 1; update app.u set a = 8 - a;")
        .await?;
    wait_equal(&src, &dst, &["app.k", "app.k2", "app.u"], within).await?;
    assert_eq!(
        texts(
            &dst,
            "select conrelid::regclass::text || ' ' || condeferrable || ' ' || condeferred from pg_constraint
              where contype = 'p' and connamespace = 'app'::regnamespace order by 1"
        )
        .await?,
        ["app.k true false", "app.k2 true true"]
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// One statement's key changes under a DEFERRABLE key, when its rows ship different column
/// sets: a row over 2 KB ships only the columns that changed (and its key), a smaller row
/// whole. They stay one UPDATE, each row keeping what it did not ship. (Applied in parts by
/// column set, the shift met a duplicate key and held the mirror.)
#[tokio::test]
async fn a_deferrable_key_shift_over_rows_of_different_sizes_replicates() -> anyhow::Result<()> {
    let p = Pair::new2(
        "create schema app;
         create table app.w (id int primary key deferrable, v text, big text);
         insert into app.w select g, 'v' || g, case when g % 2 = 0 then repeat('x', 3000) else 's' end
           from generate_series(1, 8) g;",
        "",
    )
    .await?;
    let (source, target) = p
        .start_both_with("app.*", "    do_initial_snapshot: true\n")
        .await?;
    let (src, dst) = (p.src().await?, p.dst().await?);
    let within = Duration::from_secs(30);
    wait_equal(&src, &dst, &["app.w"], within).await?;
    src.batch_execute(
        "update app.w set id = id + 1, v = v || '!';
         update app.w set id = 10 - id;
         update app.w set id = case id when 2 then 3 when 3 then 2 end, big = big || 'y' where id in (2, 3);",
    )
    .await?;
    wait_equal(&src, &dst, &["app.w"], within).await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// An `exclude_columns` entry that names no column of an existing table (a typo, or a
/// column renamed before pgteleport first saw it) is refused at start, naming it: the
/// column it meant would otherwise replicate. A table that does not exist yet may be named.
#[tokio::test]
async fn an_exclusion_naming_no_column_is_refused() -> anyhow::Result<()> {
    let p = Pair::new2(
        "create schema app; create table app.p (id int primary key, secret2 text);",
        "",
    )
    .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let err = match p
        .start_source(
            port,
            "app.*",
            "    exclude_columns: {\"app.p\": [secret], \"app.later\": [x]}\n",
        )
        .await
    {
        Ok(_) => anyhow::bail!("started with an exclusion that fits no column"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("exclude_columns names column `secret` of app.p, which has no such column"),
        "{err}"
    );
    let source = p
        .start_source(
            port,
            "app.*",
            "    exclude_columns: {\"app.p\": [secret2], \"app.later\": [x]}\n",
        )
        .await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Every shape of key and foreign key in `ZOO`, changed in every way (`ZOO_DML`: cascaded
/// key changes, deferred foreign keys, a tree, quoted names) while the target has the same
/// foreign keys and the target role may not set replica mode (its foreign-key actions
/// fire) — first live, then again as a backlog that reaches the target in one batch, which
/// the applier may reorder: end equal.
#[tokio::test]
async fn keys_and_foreign_keys_of_every_shape_replicate() -> anyhow::Result<()> {
    keys_and_foreign_keys_of_every_shape(false).await
}

/// The same in replica mode (the target's foreign-key actions stay quiet).
#[tokio::test]
async fn keys_and_foreign_keys_of_every_shape_replicate_in_replica_mode() -> anyhow::Result<()> {
    keys_and_foreign_keys_of_every_shape(true).await
}

async fn keys_and_foreign_keys_of_every_shape(replica: bool) -> anyhow::Result<()> {
    let p = Pair::new(ZOO).await?;
    if replica {
        grant_replica_role(&p).await?;
    }
    let (source, target) = p.start_both("zoo.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(ZOO_DML).await?;
    wait_equal(&src, &dst, ZOO_TABLES, Duration::from_secs(30)).await?;
    let source = p
        .with_backlog(source, &target, "zoo.*", 1, |_| {
            format!(
                "{}{ZOO_DML}",
                "delete from zoo.stock; delete from zoo.shop; delete from zoo.region; delete from zoo.item;
                 delete from zoo.tree; update zoo.husband set wife = null; delete from zoo.wife;
                 delete from zoo.husband; delete from zoo.\"Odd Table\"; delete from zoo.\"we\"\"ird.name\";
                 delete from zoo.booking; delete from zoo.pet; delete from zoo.owner;"
            )
        })
        .await?;
    wait_equal(&src, &dst, ZOO_TABLES, Duration::from_secs(30)).await?;
    assert_eq!(
        rows(&dst, "zoo.stock").await?,
        vec!["(1,s1b,5)", "(3,s2,7)"],
        "the item's key change cascaded into stock's key"
    );
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Keys of unusual shapes: an array, a key with a json-typed neighbour column and a text
/// array in it, a stored generated column, a key over 2 KB of text (large rows ship only
/// their changed columns and the key): inserts, updates, key changes (also through the
/// generated column's base) and deletes arrive exactly, live and as a backlog.
#[tokio::test]
async fn keys_of_arrays_generated_columns_and_long_text_replicate() -> anyhow::Result<()> {
    let p = Pair::new(
        "create schema app;
         create table app.arr (k int[] primary key, v text);
         create table app.mixed (a text[], b int, j jsonb, v text, primary key (a, b));
         create table app.gen (base int not null, k int generated always as (base * 2) stored primary key, v text);
         create table app.long (k text primary key, big text, v int);",
    )
    .await?;
    let (source, target) = p.start_both("app.*").await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    let tables = ["app.arr", "app.mixed", "app.gen", "app.long"];
    let dml = |round: i32| {
        format!(
            "insert into app.arr select array[g, {round}], 'v' || g from generate_series(1, 20) g;
             update app.arr set v = 'u' where k[1] % 3 = 0 and k[2] = {round};
             update app.arr set k = k || 0 where k[1] % 5 = 0 and k[2] = {round};
             delete from app.arr where k[1] % 7 = 0 and k[2] = {round};
             insert into app.mixed select array['x' || g, 'y'], {round}, jsonb_build_object('g', g), 'v' from generate_series(1, 20) g;
             update app.mixed set j = j || '{{\"u\": true}}', v = 'u' where b = {round} and a[1] like 'x1%';
             update app.mixed set a = a || 'z'::text where b = {round} and a[1] in ('x2', 'x3');
             delete from app.mixed where b = {round} and a[1] = 'x4';
             insert into app.gen (base, v) select g + {round} * 100, 'v' from generate_series(1, 20) g;
             update app.gen set v = 'u' where base % 3 = 0 and base / 100 = {round};
             update app.gen set base = base + 50 where base % 4 = 0 and base / 100 = {round};
             delete from app.gen where base % 7 = 0 and base / 100 = {round};
             insert into app.long select repeat(md5(g::text), 80) || {round}, repeat('b', 3000), g from generate_series(1, 10) g;
             update app.long set v = -v where v % 2 = 0 and right(k, 1) = '{round}';
             update app.long set k = k || 'x' where v = 3 and right(k, 1) = '{round}';
             delete from app.long where v = 5 and right(k, 1) = '{round}';"
        )
    };
    src.batch_execute(&dml(1)).await?;
    wait_equal(&src, &dst, &tables, Duration::from_secs(30)).await?;
    let source = p
        .with_backlog(source, &target, "app.*", 1, |_| dml(2))
        .await?;
    wait_equal(&src, &dst, &tables, Duration::from_secs(30)).await?;
    assert_exactly_once(&src, &dst).await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}
