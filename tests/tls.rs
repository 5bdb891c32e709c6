//! TLS to PostgreSQL: libpq's sslmode meanings, with rustls, end to end.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgteleport::cluster::Cluster;
use pgteleport::config::Config;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA (`ca.pem`) and a certificate for DNS name `localhost` it signed
/// (`server.crt`, `server.key`), made in `dir`.
fn make_certs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=pgteleport test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    Ok(())
}

/// A private cluster with ssl on; its certificate is for DNS name `localhost` only,
/// signed by a throwaway CA. Returns the cluster and the CA file.
async fn tls_cluster() -> anyhow::Result<(Arc<Cluster>, std::path::PathBuf)> {
    let cluster = Cluster::start_new("tls")?;
    let dir = cluster.dir.join("certs");
    make_certs(&dir)?;
    let data = cluster.dir.join("data");
    for f in ["server.crt", "server.key"] {
        std::fs::copy(dir.join(f), data.join(f))?;
    }
    // The server reads its key as its own user, mode 0600.
    let _ = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(data.join("server.crt"))
        .arg(data.join("server.key"))
        .status();
    Command::new("chmod")
        .arg("600")
        .arg(data.join("server.key"))
        .status()?;
    let admin = cluster.admin("postgres").await?;
    admin.batch_execute("alter system set ssl = on").await?;
    admin.execute("select pg_reload_conf()", &[]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((Arc::new(cluster), dir.join("ca.pem")))
}

fn db_yaml(p: &Pair, host: &str, mode: &str, rootcert: Option<&Path>) -> String {
    let root = rootcert
        .map(|r| format!(", sslrootcert: \"{}\"", r.display()))
        .unwrap_or_default();
    format!(
        "database: {{name: s, database: {}, hostname: {host}, port: {}, username: {}, password: {PASSWORD}, sslmode: {mode}{root}}}\nserver: {{port: 0, allow_unauthenticated: true}}\n",
        p.src_db, p.cluster.port, p.src_role
    )
}

async fn try_connect(yaml: &str) -> Result<bool, String> {
    let cfg = Config::from_yaml(yaml, Path::new("t.yml"), |_| None).map_err(|e| e.to_string())?;
    let client = pgteleport::db::connect(&cfg.database, "tls test")
        .await
        .map_err(|e| e.to_string())?;
    let ssl: bool = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    Ok(ssl)
}

#[tokio::test]
async fn sslmodes_behave_as_libpq_and_replication_runs_over_tls() -> anyhow::Result<()> {
    let (cluster, ca) = tls_cluster().await?;
    let p = Pair::new_on(
        cluster.clone(),
        "create schema app; create table app.t (id int primary key, v text);",
    )
    .await?;

    assert_eq!(
        try_connect(&db_yaml(&p, "127.0.0.1", "disable", None)).await,
        Ok(false)
    );
    assert_eq!(
        try_connect(&db_yaml(&p, "127.0.0.1", "prefer", None)).await,
        Ok(true)
    );
    assert_eq!(
        try_connect(&db_yaml(&p, "127.0.0.1", "require", None)).await,
        Ok(true)
    );
    assert_eq!(
        try_connect(&db_yaml(&p, "127.0.0.1", "verify-ca", Some(&ca))).await,
        Ok(true)
    );
    assert_eq!(
        try_connect(&db_yaml(&p, "localhost", "verify-full", Some(&ca))).await,
        Ok(true)
    );
    // The certificate names `localhost`, not 127.0.0.1: verify-full refuses, verify-ca does not.
    let e = try_connect(&db_yaml(&p, "127.0.0.1", "verify-full", Some(&ca)))
        .await
        .unwrap_err();
    assert!(e.contains("127.0.0.1"), "{e}");
    // An unknown CA is refused by the verifying modes.
    let e = try_connect(&db_yaml(&p, "localhost", "verify-full", None))
        .await
        .unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let e = try_connect(&db_yaml(
        &p,
        "localhost",
        "verify-ca",
        Some(Path::new("/nonexistent/ca.pem")),
    ))
    .await
    .unwrap_err();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");

    // End to end over verify-full on both sides.
    let root = format!(
        ", sslmode: verify-full, sslrootcert: \"{}\"}}",
        ca.display()
    );
    let t_yaml = p
        .target_yaml(0)
        .replace("hostname: 127.0.0.1, port", "hostname: localhost, port")
        .replacen("}\n", &format!("{root}\n"), 1);
    let target =
        pgteleport::instance::start(Config::from_yaml(&t_yaml, Path::new("t.yml"), |_| None)?)
            .await?;
    let port = target.local_addr.unwrap().port();
    let s_yaml = p
        .source_yaml(port, "app.*", "")
        .replace(
            &format!("hostname: 127.0.0.1, port: {}", cluster.port),
            &format!("hostname: localhost, port: {}", cluster.port),
        )
        .replace(
            &format!("password: {PASSWORD}}}"),
            &format!("password: {PASSWORD}{root}"),
        );
    assert!(s_yaml.contains("verify-full"), "{s_yaml}");
    let source =
        pgteleport::instance::start(Config::from_yaml(&s_yaml, Path::new("s.yml"), |_| None)?)
            .await?;
    let src = p.src().await?;
    let dst = p.dst().await?;
    src.batch_execute("insert into app.t select g, 'v' || g from generate_series(1, 100) g; update app.t set v = 'u' where id < 10;").await?;
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(20)).await?;
    let admin = cluster.admin("postgres").await?;
    let plain = admin
        .query_one(
            "select count(*) from pg_stat_activity a join pg_stat_ssl s using (pid) where a.application_name like 'pgteleport%' and not s.ssl",
            &[],
        )
        .await?
        .get::<_, i64>(0);
    assert_eq!(plain, 0, "every pgteleport connection uses TLS");
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn https_between_instances_verifies_the_target_certificate() -> anyhow::Result<()> {
    let p =
        Pair::new("create schema app; create table app.t (id int primary key, v text);").await?;
    let dir = std::env::temp_dir().join(format!("pgteleport-https-{}", fastrand::u32(..)));
    make_certs(&dir)?;
    let tls = format!(
        "tls_cert: \"{}\", tls_key: \"{}\", ",
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    );
    let target = p.start_target_with(0, &tls).await?;
    let port = target.local_addr.unwrap().port();
    let source_with = |endpoint: &str| -> anyhow::Result<Config> {
        let yaml = p.source_yaml(port, "app.*", "").replace(
            &format!("endpoint: {{hostname: 127.0.0.1, port: {port}}}"),
            endpoint,
        );
        Ok(Config::from_yaml(&yaml, Path::new("s.yml"), |_| None)?)
    };
    let src = p.src().await?;
    let dst = p.dst().await?;
    // Without our CA (the Mozilla roots only): the certificate is refused, nothing applied.
    let source = pgteleport::instance::start(source_with(&format!(
        "endpoint: {{hostname: localhost, port: {port}, tls: true}}"
    ))?)
    .await?;
    src.execute("insert into app.t values (1, 'one')", &[])
        .await?;
    wait_for("a certificate error", Duration::from_secs(20), || async {
        Ok(last_error(&src)
            .await?
            .to_lowercase()
            .contains("certificate"))
    })
    .await?;
    assert_eq!(scalar_i64(&dst, "select count(*) from app.t").await?, 0);
    source.shutdown().await?;
    // Plain HTTP to the HTTPS server: refused as well.
    let source = pgteleport::instance::start(source_with(&format!(
        "endpoint: {{hostname: localhost, port: {port}}}"
    ))?)
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(scalar_i64(&dst, "select count(*) from app.t").await?, 0);
    source.shutdown().await?;
    // With the CA: verified, replicated.
    let source = pgteleport::instance::start(source_with(&format!(
        "endpoint: {{hostname: localhost, port: {port}, tls: true, ca_cert: \"{}\"}}",
        dir.join("ca.pem").display()
    ))?)
    .await?;
    src.execute("insert into app.t values (2, 'two')", &[])
        .await?;
    wait_equal(&src, &dst, &["app.t"], Duration::from_secs(20)).await?;
    source.shutdown().await?;
    target.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn https_configuration_mistakes_are_named() {
    let base =
        "database: {name: s, database: d, hostname: h, port: 5432, username: u, password: p}\n";
    let e = Config::from_yaml(
        &format!("{base}server: {{port: 1, auth_token: x, tls_cert: /c.pem}}\n"),
        Path::new("t.yml"),
        |_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("server.tls_key") && e.contains("tls_cert"),
        "{e}"
    );
    let e = Config::from_yaml(
        &format!("{base}targets:\n  t:\n    target_expression: a.*\n    endpoint: {{hostname: h, port: 1, ca_cert: /ca.pem}}\n"),
        Path::new("s.yml"),
        |_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("endpoint.ca_cert") && e.contains("tls: true"),
        "{e}"
    );
}
