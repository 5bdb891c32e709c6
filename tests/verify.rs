//! `pgteleport verify`: equal tables pass; each kind of planted difference is found.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use pgteleport::config::Config;
use pgteleport::verify::{render, verify};

#[tokio::test]
async fn verify_finds_changed_missing_and_extra_rows() -> anyhow::Result<()> {
    let p = Pair::new(
        "create schema app; create table app.a (id int primary key, v text);
         create table app.b (k1 int, k2 text, n numeric, primary key (k1, k2));",
    )
    .await?;
    let (source, target) = p.start_both("app.*").await?;
    let port = target.local_addr.unwrap().port();
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute(
        "insert into app.a select g, 'v' || g from generate_series(1, 500) g;
         insert into app.b select g, 'k' || g, g / 3.0 from generate_series(1, 300) g;",
    )
    .await?;
    let cfg = Config::from_yaml(
        &p.source_yaml(port, "app.*", ""),
        Path::new("s.yml"),
        |_| None,
    )?;
    let tcfg = Config::from_yaml(&p.target_yaml(port), Path::new("t.yml"), |_| None)?;
    let reports = verify(&cfg, "t1", &tcfg.database, Duration::from_secs(30), 100).await?;
    assert!(reports.iter().all(|r| r.equal()), "{}", render(&reports));
    assert_eq!(reports.iter().map(|r| r.source_rows).sum::<i64>(), 800);
    let a = reports.iter().find(|r| r.table == "\"app\".\"a\"").unwrap();
    assert_eq!(
        a.chunks,
        6,
        "500 rows in chunks of 100: {}",
        render(&reports)
    );

    // Plant one difference of each kind on the target, behind replication's back.
    dst.batch_execute(
        "update app.a set v = 'tampered' where id = 7;
         delete from app.a where id = 8;
         update app.a set v = 'tampered' where id = 450;
         insert into app.b values (9999, 'extra', 1);",
    )
    .await?;
    let reports = verify(&cfg, "t1", &tcfg.database, Duration::from_secs(30), 100).await?;
    let a = reports.iter().find(|r| r.table == "\"app\".\"a\"").unwrap();
    let b = reports.iter().find(|r| r.table == "\"app\".\"b\"").unwrap();
    assert_eq!(a.changed, vec!["(450)", "(7)"], "{}", render(&reports));
    assert_eq!(
        (a.chunks, a.differing_chunks),
        (6, 2),
        "only the chunks holding ids 7, 8 and 450 differ: {}",
        render(&reports)
    );
    assert_eq!((a.source_rows, a.target_rows), (500, 499));
    assert_eq!(a.missing, vec!["(8)"], "{}", render(&reports));
    assert_eq!(b.extra, vec!["(9999,extra)"], "{}", render(&reports));
    let text = render(&reports);
    assert!(
        !text.contains("tampered"),
        "row values never appear: {text}"
    );
    // A change made on the source while verify runs is waited for, not reported.
    src.batch_execute("update app.a set v = 'fresh' where id = 1")
        .await?;
    dst.batch_execute("update app.a set v = 'v7' where id = 7; update app.a set v = 'v450' where id = 450; insert into app.a values (8, 'v8'); delete from app.b where k1 = 9999")
        .await?;
    let reports = verify(&cfg, "t1", &tcfg.database, Duration::from_secs(30), 100).await?;
    assert!(reports.iter().all(|r| r.equal()), "{}", render(&reports));
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Verify compares whole rows also of a table with a column named as its row alias (`x`:
/// only that column was compared, and a changed value passed), and an inheritance parent by
/// its own rows (its children are tables of their own; counting theirs made it differ).
#[tokio::test]
async fn verify_compares_whole_rows_and_a_parents_own_rows() -> anyhow::Result<()> {
    let p = Pair::new(
        "create schema app; create table app.t (x int primary key, v text);
         create table app.parent (id int primary key, v text);
         create table app.child (extra int) inherits (app.parent);
         alter table app.child add primary key (id);",
    )
    .await?;
    let (source, target) = p.start_both("app.*").await?;
    let port = target.local_addr.unwrap().port();
    let (src, dst) = (p.src().await?, p.dst().await?);
    src.batch_execute(
        "insert into app.t select g, 'v' || g from generate_series(1, 50) g;
         insert into app.parent values (1, 'p1'), (2, 'p2');
         insert into app.child values (1, 'c1', 10), (3, 'c3', 30);",
    )
    .await?;
    wait_equal(&src, &dst, &["app.t", "app.child"], Duration::from_secs(20)).await?;
    let cfg = Config::from_yaml(
        &p.source_yaml(port, "app.*", ""),
        Path::new("s.yml"),
        |_| None,
    )?;
    let tcfg = Config::from_yaml(&p.target_yaml(port), Path::new("t.yml"), |_| None)?;
    let reports = verify(&cfg, "t1", &tcfg.database, Duration::from_secs(30), 100).await?;
    assert!(reports.iter().all(|r| r.equal()), "{}", render(&reports));
    let parent = reports
        .iter()
        .find(|r| r.table == "\"app\".\"parent\"")
        .unwrap();
    assert_eq!((parent.source_rows, parent.target_rows), (2, 2));
    dst.batch_execute("update app.t set v = 'tampered' where x = 3")
        .await?;
    let reports = verify(&cfg, "t1", &tcfg.database, Duration::from_secs(30), 100).await?;
    let t = reports.iter().find(|r| r.table == "\"app\".\"t\"").unwrap();
    assert_eq!(t.changed, vec!["(3)"], "{}", render(&reports));
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}
