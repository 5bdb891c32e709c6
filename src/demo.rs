//! `pgteleport demo`: two throwaway clusters, a small shop schema, a live workload,
//! replicated between them while the demo prints what it does and the lag.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::instance;

const SCHEMA: &str = "
create schema shop;
create table shop.customer (id bigint primary key, name text not null, balance numeric(14,2) not null default 0);
create table shop.orders (id bigint primary key, customer_id bigint not null references shop.customer, placed_at timestamptz not null, note text);
create table shop.order_line (order_id bigint not null references shop.orders on delete cascade, line int not null, sku text not null, qty int not null, primary key (order_id, line));
create table shop.heartbeat (id int primary key, at timestamptz not null);
";

/// Runs the demo until `duration` or Ctrl-C.
pub async fn run(duration: Option<Duration>, rate: u32) -> Result<()> {
    println!("pgteleport demo: creating two throwaway PostgreSQL clusters …");
    let src = Cluster::start_new("demo-source").context("starting the source cluster")?;
    let dst = Cluster::start_new("demo-target").context("starting the target cluster")?;
    println!(
        "  source cluster on 127.0.0.1:{}  ({})",
        src.port,
        src.dir.display()
    );
    println!(
        "  target cluster on 127.0.0.1:{}  ({})",
        dst.port,
        dst.dir.display()
    );
    for (c, role) in [(&src, "shop_replicator"), (&dst, "shop_applier")] {
        c.create_role(role, "demo-password").await?;
        c.create_database("shop", role).await?;
        let client = c.connect("shop", role, "demo-password").await?;
        client.batch_execute(SCHEMA).await?;
    }
    // Lets the applier keep target triggers and foreign-key actions quiet (PostgreSQL 15+).
    dst.admin("shop")
        .await?
        .batch_execute("grant set on parameter session_replication_role to shop_applier")
        .await?;
    println!("  roles `shop_replicator` (source) and `shop_applier` (target): no superuser, no replication");

    let token = format!("demo-{:016x}", fastrand::u64(..));
    let target_cfg = format!(
        "database: {{name: shop-target, database: shop, hostname: 127.0.0.1, port: {}, username: shop_applier, password: demo-password}}\n\
         server: {{hostname: 127.0.0.1, port: 0, auth_token: {token}}}\n",
        dst.port
    );
    let target_cfg = Config::from_yaml(&target_cfg, Path::new("<demo target>"), |_| None)?;
    let target = instance::start(target_cfg).await?;
    let addr = target.local_addr.context("target listens")?;
    let source_cfg = format!(
        "processing_intervals: {{batcher: 100, transmitter: 50, vacuum: 500, rotation: 10000}}\n\
         database: {{name: shop-source, database: shop, hostname: 127.0.0.1, port: {}, username: shop_replicator, password: demo-password}}\n\
         targets:\n  replica:\n    target_expression: \"shop.*\"\n    endpoint: {{hostname: 127.0.0.1, port: {}}}\n    auth_token: {token}\n",
        src.port,
        addr.port()
    );
    let source_cfg = Config::from_yaml(&source_cfg, Path::new("<demo source>"), |_| None)?;
    let source = instance::start(source_cfg).await?;
    println!("  target instance listening on {addr}; source instance capturing `shop.*` → replica");
    println!("workload: ~{rate} transactions/s (new customers, orders with lines, balance updates, deletes); Ctrl-C to stop\n");

    let stop = CancellationToken::new();
    let workload = tokio::spawn(workload(
        src.connect("shop", "shop_replicator", "demo-password")
            .await?,
        rate,
        stop.clone(),
    ));
    let started = Instant::now();
    let watcher_src = src
        .connect("shop", "shop_replicator", "demo-password")
        .await?;
    let watcher_dst = dst.connect("shop", "shop_applier", "demo-password").await?;
    let mut beat = 0i32;
    loop {
        let timed_out = duration.is_some_and(|d| started.elapsed() >= d);
        if timed_out {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { println!("\nCtrl-C: stopping"); break; }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        beat += 1;
        // Lag: write a heartbeat on the source, time until the target shows it.
        let written: String = watcher_src
            .query_one(
                "insert into shop.heartbeat values (1, clock_timestamp()) on conflict (id) do update set at = excluded.at
                 returning at::text",
                &[],
            )
            .await?
            .get(0);
        let sent = Instant::now();
        let mut lag = None;
        while sent.elapsed() < Duration::from_secs(5) {
            let seen: bool = watcher_dst
                .query_one(
                    "select exists(select 1 from shop.heartbeat where at >= $1::text::timestamptz)",
                    &[&written],
                )
                .await?
                .get(0);
            if seen {
                lag = Some(sent.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let s = counts(&watcher_src).await?;
        let t = counts(&watcher_dst).await?;
        let applied: i64 = watcher_dst
            .query_opt("select seq from teleport.applied limit 1", &[])
            .await
            .ok()
            .flatten()
            .map_or(0, |r| r.get(0));
        println!(
            "t={beat:>3}s  source rows {s:>7}  target rows {t:>7}  batches applied {applied:>5}  heartbeat lag {}",
            lag.map_or("> 5 s".to_string(), |l| format!("{:.0} ms", l * 1000.0))
        );
    }
    stop.cancel();
    let written = workload.await.context("workload task")??;
    println!(
        "\nworkload stopped after {written} transactions; waiting for the target to catch up …"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (a, b) = (checksum(&watcher_src).await?, checksum(&watcher_dst).await?);
        if a == b {
            println!(
                "in sync: source and target tables are identical ({} rows)",
                counts(&watcher_src).await?
            );
            break;
        }
        if Instant::now() > deadline {
            println!("NOT in sync after 60 s: source {a:?} target {b:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    source.shutdown().await?;
    target.shutdown().await?;
    println!("instances stopped; removing the throwaway clusters");
    drop((src, dst));
    Ok(())
}

async fn counts(c: &tokio_postgres::Client) -> Result<i64> {
    Ok(c.query_one(
        "select (select count(*) from shop.customer) + (select count(*) from shop.orders) + (select count(*) from shop.order_line)",
        &[],
    )
    .await?
    .get(0))
}

async fn checksum(c: &tokio_postgres::Client) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for t in ["customer", "orders", "order_line"] {
        let row = c
            .query_one(
                &format!("select coalesce(md5(string_agg(x::text, ',' order by x::text)), '') from shop.{t} x"),
                &[],
            )
            .await?;
        out.push(row.get(0));
    }
    Ok(out)
}

async fn workload(
    client: tokio_postgres::Client,
    rate: u32,
    stop: CancellationToken,
) -> Result<u64> {
    let mut client = client;
    let mut n: u64 = 0;
    let mut next_customer: i64 = 1;
    let mut next_order: i64 = 1;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(n),
            _ = tick.tick() => {}
        }
        let tx = client.transaction().await?;
        match fastrand::u8(..10) {
            0..=2 => {
                tx.execute(
                    "insert into shop.customer (id, name) values ($1::int8, 'customer ' || $1::int8::text)",
                    &[&next_customer],
                )
                .await?;
                next_customer += 1;
            }
            3..=6 if next_customer > 1 => {
                let cust = fastrand::i64(1..next_customer);
                let exists: bool = tx
                    .query_one(
                        "select exists(select 1 from shop.customer where id = $1)",
                        &[&cust],
                    )
                    .await?
                    .get(0);
                if exists {
                    tx.execute(
                        "insert into shop.orders values ($1, $2, clock_timestamp(), null)",
                        &[&next_order, &cust],
                    )
                    .await?;
                    for line in 1..=fastrand::i32(1..5) {
                        tx.execute(
                            "insert into shop.order_line values ($1, $2::int4, 'sku-' || $2::int4::text, $3)",
                            &[&next_order, &line, &fastrand::i32(1..10)],
                        )
                        .await?;
                    }
                    tx.execute(
                        "update shop.customer set balance = balance + 9.99 where id = $1",
                        &[&cust],
                    )
                    .await?;
                    next_order += 1;
                }
            }
            7..=8 if next_order > 1 => {
                let o = fastrand::i64(1..next_order);
                tx.execute(
                    "update shop.order_line set qty = qty + 1 where order_id = $1",
                    &[&o],
                )
                .await?;
                tx.execute(
                    "update shop.orders set note = 'changed' where id = $1",
                    &[&o],
                )
                .await?;
            }
            _ if next_order > 1 => {
                let o = fastrand::i64(1..next_order);
                tx.execute("delete from shop.orders where id = $1", &[&o])
                    .await?;
            }
            _ => {}
        }
        tx.commit().await?;
        n += 1;
    }
}
