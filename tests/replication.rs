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
