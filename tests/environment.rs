//! Bad environments: each gives one readable error naming the object and what to grant or
//! change — and never a secret.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use pgteleport::config::Config;

fn source(p: &Pair, yaml: &str) -> anyhow::Result<Config> {
    let _ = p;
    Ok(Config::from_yaml(yaml, Path::new("s.yml"), |_| None)?)
}

async fn start_error(cfg: Config) -> String {
    match tokio::time::timeout(Duration::from_secs(30), pgteleport::instance::start(cfg)).await {
        Ok(Ok(running)) => {
            let _ = running.shutdown().await;
            "started".into()
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 30 s".into(),
    }
}

#[tokio::test]
async fn unreachable_database_and_wrong_password_are_named_without_the_password(
) -> anyhow::Result<()> {
    let p = Pair::new("create schema app; create table app.t (id int primary key);").await?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let yaml = p.source_yaml(9, "app.*", "").replace(
        &format!("port: {}, username", p.cluster.port),
        &format!("port: {closed}, username"),
    );
    let e = start_error(source(&p, &yaml)?).await;
    assert!(
        e.contains(&format!("127.0.0.1:{closed}")) && e.contains("is the server running"),
        "{e}"
    );
    let yaml = p
        .source_yaml(9, "app.*", "")
        .replace(PASSWORD, "not-the-password");
    let e = start_error(source(&p, &yaml)?).await;
    assert!(e.contains("password") && e.contains(&p.src_role), "{e}");
    assert!(!e.contains("not-the-password"), "the password leaked: {e}");
    Ok(())
}

#[tokio::test]
async fn missing_create_on_the_database_names_the_grant() -> anyhow::Result<()> {
    let p = Pair::new("").await?;
    let admin = p.cluster.admin("postgres").await?;
    let db = format!("nocreate_{}", p.id);
    admin
        .batch_execute(&format!("create database {db}"))
        .await?;
    let a = p.cluster.admin(&db).await?;
    a.batch_execute(&format!(
        "grant connect on database {db} to {r}; create schema app authorization {r};
         create table app.t (id int primary key); alter table app.t owner to {r};",
        r = p.src_role
    ))
    .await?;
    let yaml = p.source_yaml(9, "app.*", "").replace(
        &format!("database: {}", p.src_db),
        &format!("database: {db}"),
    );
    let e = start_error(source(&p, &yaml)?).await;
    assert!(
        e.contains("GRANT CREATE ON DATABASE") && e.contains(&db),
        "{e}"
    );
    Ok(())
}

#[tokio::test]
async fn a_table_without_the_trigger_right_names_the_table_and_the_grant() -> anyhow::Result<()> {
    let p = Pair::new("create schema app; create table app.mine (id int primary key);").await?;
    let other = format!("other_{}", p.id);
    p.cluster.create_role(&other, PASSWORD).await?;
    let a = p.cluster.admin(&p.src_db).await?;
    a.batch_execute(&format!(
        "create table app.theirs (id int primary key); alter table app.theirs owner to {other};
         grant select on app.theirs to {};",
        p.src_role
    ))
    .await?;
    let e = start_error(source(&p, &p.source_yaml(9, "app.*", ""))?).await;
    assert!(
        e.contains("\"app\".\"theirs\"") && e.contains("GRANT TRIGGER ON"),
        "{e}"
    );
    // Nothing half-installed on the table the role does own either.
    let n = scalar_i64(
        &p.src().await?,
        "select count(*) from pg_trigger where tgname = 'pgteleport_capture'",
    )
    .await?;
    assert_eq!(n, 0, "capture triggers left behind");
    Ok(())
}

#[tokio::test]
async fn an_expression_matching_nothing_is_reported_by_check() -> anyhow::Result<()> {
    let p = Pair::new("create schema app; create table app.t (id int primary key);").await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let report = pgteleport::check::check(&source(&p, &p.source_yaml(port, "nosuch.*", ""))?).await;
    assert!(
        report.text.contains("nosuch.*") && report.text.contains("matches no table"),
        "{}",
        report.text
    );
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_target_schema_owned_by_someone_else_names_the_schema_and_the_fix() -> anyhow::Result<()>
{
    let p = Pair::new(
        "create schema app; create table app.t (id int primary key); insert into app.t values (1);",
    )
    .await?;
    let other = format!("owner_{}", p.id);
    p.cluster.create_role(&other, PASSWORD).await?;
    p.cluster
        .admin(&p.dst_db)
        .await?
        .batch_execute(&format!("create schema mirror authorization {other}"))
        .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let yaml = p.source_yaml_into(port, "app.*", "", "mirror");
    let load = pgteleport::load::LoadOptions {
        target: "t1".into(),
        truncate: false,
        copy_again: None,
        workers: 1,
        range_bytes: 64 << 20,
        split: Default::default(),
        progress: Some(false),
        lock_wait: pgteleport::load::DEFAULT_LOCK_WAIT,
    };
    let e = match pgteleport::load::run(&source(&p, &yaml)?, load).await {
        Ok(_) => "loaded".to_string(),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("schema `mirror`") && e.contains("GRANT USAGE, CREATE ON SCHEMA \"mirror\""),
        "{e}"
    );
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_schema_change_into_a_schema_owned_by_someone_else_says_what_to_grant(
) -> anyhow::Result<()> {
    let p = Pair::new("create schema app;").await?;
    let other = format!("owner2_{}", p.id);
    p.cluster.create_role(&other, PASSWORD).await?;
    p.cluster
        .admin(&p.dst_db)
        .await?
        .batch_execute(&format!(
            "create schema mirror authorization {other}; grant usage on schema mirror to {};",
            p.dst_role
        ))
        .await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.unwrap().port();
    let yaml = p.source_yaml_into(port, "app.*", "", "mirror");
    let source = pgteleport::instance::start(source(&p, &yaml)?).await?;
    let src = p.src().await?;
    src.batch_execute("create table app.n (id int primary key); insert into app.n values (1);")
        .await?;
    wait_for(
        "the failure named in status",
        Duration::from_secs(30),
        || async {
            let e: Option<String> = src
                .query_one("select last_error from teleport.target_state", &[])
                .await?
                .get(0);
            Ok(e.is_some_and(|e| {
                e.contains("permission denied for schema mirror")
                    && e.contains("GRANT USAGE, CREATE ON SCHEMA")
            }))
        },
    )
    .await?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}
