//! Test harness: a shared throwaway cluster, fresh databases and non-superuser roles per
//! test, both instances in-process, and waits with deadlines.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use pgteleport::cluster::Cluster;
use pgteleport::config::Config;
use pgteleport::instance::{self, Running};
use tokio_postgres::Client;

pub const PASSWORD: &str = "test-password";
pub const TOKEN: &str = "test-token-0123456789";

pub fn cluster() -> Arc<Cluster> {
    static C: OnceLock<Arc<Cluster>> = OnceLock::new();
    C.get_or_init(|| Arc::new(Cluster::shared().expect("shared test cluster")))
        .clone()
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGTELEPORT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// One test's world: a source database and role, a target database and role.
pub struct Pair {
    pub cluster: Arc<Cluster>,
    pub id: String,
    pub src_db: String,
    pub src_role: String,
    pub dst_db: String,
    pub dst_role: String,
}

impl Pair {
    /// Creates both databases and roles (no SUPERUSER, REPLICATION or CREATEROLE), and runs
    /// `schema` in both as their owners.
    pub async fn new(schema: &str) -> Result<Self> {
        Self::new_on(cluster(), schema).await
    }

    /// As [`Pair::new`], with a different schema script on each side.
    pub async fn new2(src_schema: &str, dst_schema: &str) -> Result<Self> {
        let p = Self::new_on(cluster(), "").await?;
        p.src().await?.batch_execute(src_schema).await?;
        p.dst().await?.batch_execute(dst_schema).await?;
        Ok(p)
    }

    /// As [`Pair::new`], on a given cluster.
    pub async fn new_on(cluster: Arc<Cluster>, schema: &str) -> Result<Self> {
        init_logging();
        let id = format!("{:08x}", fastrand::u32(..));
        let p = Pair {
            cluster: cluster.clone(),
            src_db: format!("src_{id}"),
            src_role: format!("src_{id}"),
            dst_db: format!("dst_{id}"),
            dst_role: format!("dst_{id}"),
            id,
        };
        drop_when_gone(
            &cluster,
            &p.keep_marker(),
            &[&p.src_db, &p.dst_db],
            &[&p.src_role, &p.dst_role],
        );
        for (db, role) in [(&p.src_db, &p.src_role), (&p.dst_db, &p.dst_role)] {
            cluster.create_role(role, PASSWORD).await?;
            cluster.create_database(db, role).await?;
            cluster
                .connect(db, role, PASSWORD)
                .await?
                .batch_execute(schema)
                .await?;
        }
        Ok(p)
    }

    /// Keeps both databases and roles after this process ends (for a look at a failure).
    pub fn keep(&self) {
        let _ = std::fs::write(self.keep_marker(), b"");
    }

    fn keep_marker(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("pgteleport-keep-{}", self.id))
    }

    /// Makes the source role a superuser (on PostgreSQL 15 only one may create event
    /// triggers).
    pub async fn make_src_superuser(&self) -> Result<()> {
        self.cluster
            .admin("postgres")
            .await?
            .batch_execute(&format!("alter role {} superuser", self.src_role))
            .await?;
        Ok(())
    }

    /// A target on a free port whose stall reports come after 300 ms
    /// (`processing_intervals.stall_report`).
    pub async fn start_target_reporting_stalls(&self) -> Result<Running> {
        let yaml = format!(
            "{}processing_intervals: {{stall_report: 300}}\n",
            self.target_yaml(0)
        );
        let cfg = Config::from_yaml(&yaml, Path::new("<test target>"), |_| None)?;
        Ok(instance::start(cfg).await?)
    }

    /// The source config lines for schema changes by event triggers (`event_triggers`) or by
    /// diffing; for event triggers the source role is made a superuser first.
    pub async fn ddl_mode(&self, event_triggers: bool) -> Result<&'static str> {
        if !event_triggers {
            return Ok("");
        }
        self.make_src_superuser().await?;
        Ok("use_event_triggers: true\n")
    }

    pub async fn src(&self) -> Result<Client> {
        self.cluster
            .connect(&self.src_db, &self.src_role, PASSWORD)
            .await
    }

    pub async fn dst(&self) -> Result<Client> {
        self.cluster
            .connect(&self.dst_db, &self.dst_role, PASSWORD)
            .await
    }

    pub fn target_yaml(&self, port: u16) -> String {
        self.target_yaml_with(port, "")
    }

    /// The target's config with more `server` keys (`"key: value, "` each).
    pub fn target_yaml_with(&self, port: u16, server_options: &str) -> String {
        format!(
            "database: {{name: tgt-{id}, database: {db}, hostname: 127.0.0.1, port: {pgport}, username: {role}, password: {PASSWORD}}}\n\
             server: {{hostname: 127.0.0.1, port: {port}, {server_options}auth_token: {TOKEN}}}\n",
            id = self.id,
            db = self.dst_db,
            role = self.dst_role,
            pgport = self.cluster.port,
        )
    }

    pub fn source_yaml(&self, target_port: u16, expression: &str, extra: &str) -> String {
        format!(
            "processing_intervals: {{batcher: 50, transmitter: 20, vacuum: 100, rotation: 300, ddlwatcher: 200}}\n\
             database: {{name: src-{id}, database: {db}, hostname: 127.0.0.1, port: {pgport}, username: {role}, password: {PASSWORD}}}\n\
             targets:\n  t1:\n    target_expression: \"{expression}\"\n    endpoint: {{hostname: 127.0.0.1, port: {target_port}}}\n    auth_token: {TOKEN}\n{extra}",
            id = self.id,
            db = self.src_db,
            role = self.src_role,
            pgport = self.cluster.port,
        )
    }

    /// [`Pair::source_yaml`] whose target `t1` writes every table into `apply_schema`.
    pub fn source_yaml_into(
        &self,
        target_port: u16,
        expression: &str,
        extra: &str,
        apply_schema: &str,
    ) -> String {
        self.source_yaml(target_port, expression, extra).replace(
            &format!("    auth_token: {TOKEN}\n"),
            &format!("    auth_token: {TOKEN}\n    apply_schema: {apply_schema}\n"),
        )
    }

    pub async fn start_target(&self, port: u16) -> Result<Running> {
        self.start_target_with(port, "").await
    }

    /// A target with more `server` keys (`"key: value, "` each).
    pub async fn start_target_with(&self, port: u16, server_options: &str) -> Result<Running> {
        let cfg = Config::from_yaml(
            &self.target_yaml_with(port, server_options),
            Path::new("<test target>"),
            |_| None,
        )?;
        Ok(instance::start(cfg).await?)
    }

    /// The source instance's configuration of [`Pair::source_yaml`].
    pub fn source_config(&self, target_port: u16, expression: &str, extra: &str) -> Result<Config> {
        Ok(Config::from_yaml(
            &self.source_yaml(target_port, expression, extra),
            Path::new("<test source>"),
            |_| None,
        )?)
    }

    pub async fn start_source(
        &self,
        target_port: u16,
        expression: &str,
        extra: &str,
    ) -> Result<Running> {
        let cfg = self.source_config(target_port, expression, extra)?;
        Ok(instance::start(cfg).await?)
    }

    /// Starts a target on a free port and a source replicating `expression` to it.
    pub async fn start_both(&self, expression: &str) -> Result<(Running, Running)> {
        self.start_both_with(expression, "").await
    }

    /// As [`Pair::start_both`], with more lines for target `t1` (see [`Pair::source_yaml`]).
    pub async fn start_both_with(
        &self,
        expression: &str,
        extra: &str,
    ) -> Result<(Running, Running)> {
        let target = self.start_target(0).await?;
        let port = target.local_addr.expect("target listens").port();
        let source = self.start_source(port, expression, extra).await?;
        Ok((source, target))
    }

    /// Stops `source`, commits `n` transactions on the source database while it is down —
    /// the `i`-th (from 1) made of the statements `txn(i)` — and starts a source instance
    /// replicating `expression` to the target of `target` again: a backlog, which reaches
    /// the target in few batches.
    pub async fn with_backlog(
        &self,
        source: Running,
        target: &Running,
        expression: &str,
        n: i64,
        txn: impl Fn(i64) -> String,
    ) -> Result<Running> {
        source.shutdown().await?;
        let src = self.src().await?;
        for i in 1..=n {
            src.batch_execute(&txn(i)).await?;
        }
        let port = target.local_addr.expect("target listens").port();
        self.start_source(port, expression, "").await
    }
}

/// Drops `dbs` and `roles` once this test process has ended, unless the file `keep` exists
/// then ([`Pair::keep`]): every test process of a run
/// shares one cluster, and hundreds of tests' databases left behind (6.6 GB a run) can fill
/// a small CI disk. `PGTELEPORT_KEEP_TEST_DATABASES=1` keeps them for a look after a run.
///
/// A process of its own waits for this one to end, whatever way it ends (a panic, a
/// timeout's kill): `Drop` of [`Pair`] would run too early (a `let Started { .. } = …`
/// drops the fields it leaves at once) or block (`DROP DATABASE … WITH (FORCE)` waits for
/// the backends it ends to exit, and one blocked writing to a connection of this process
/// would wait for this process, which waits for the drop).
fn drop_when_gone(cluster: &Cluster, keep: &Path, dbs: &[&str], roles: &[&str]) {
    if std::env::var_os("PGTELEPORT_KEEP_TEST_DATABASES").is_some() {
        return;
    }
    let Ok(bindir) = pgteleport::cluster::bindir() else {
        return;
    };
    let mut sh = std::process::Command::new("sh");
    sh.args([
        "-c",
        "pid=$1; keep=$2; shift 2; tail --pid=\"$pid\" -f /dev/null;
         if [ -e \"$keep\" ]; then rm -f \"$keep\"; else exec \"$@\"; fi",
        "sh",
    ])
    .arg(std::process::id().to_string())
    .arg(keep)
    .arg(bindir.join("psql"))
    .args([
        "-X",
        "-q",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "postgres",
    ])
    .arg("-p")
    .arg(cluster.port.to_string());
    // One `-c` each: DROP DATABASE cannot run in the transaction several statements of one
    // `-c` make.
    for db in dbs {
        let db = ddlwatcher::quote_ident(db);
        sh.arg("-c")
            .arg(format!("drop database if exists {db} with (force)"));
    }
    for role in roles {
        let role = ddlwatcher::quote_ident(role);
        sh.arg("-c").arg(format!("drop role if exists {role}"));
    }
    // Errors are nobody's business (a server a test crashed, a role with grants left): the
    // test's outcome is decided by then, and the cluster is removed after the run.
    let _ = sh
        .env("PGPASSWORD", pgteleport::cluster::ADMIN_PASSWORD)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Waits (30 s at most) until stage `stage` of this process reports a step that waits for a
/// lock held by backend `holder`; its report.
pub async fn wait_blocked_by(stage: &str, holder: i32) -> Result<pgteleport::stage::Stall> {
    let mut seen = None;
    let what = format!("a stall report of {stage} naming pid {holder}");
    let found = wait_for(&what, Duration::from_secs(30), || {
        let stall = pgteleport::stage::stalls()
            .into_iter()
            .find(|s| s.stage == stage && s.blocked);
        let named = stall
            .as_ref()
            .is_some_and(|s| s.detail.contains(&format!("held by pid {holder} ")));
        seen = stall;
        async move { Ok(named) }
    })
    .await;
    match (found, seen) {
        (Ok(()), Some(stall)) => Ok(stall),
        (r, seen) => bail!("{:?}; last seen: {seen:?}", r.err()),
    }
}

/// Rows of `table` as text, ordered, for comparing source and target exactly.
pub async fn rows(c: &Client, table: &str) -> Result<Vec<String>> {
    // An alias no test's column has: a column of that name would be read instead of the
    // whole row (a table with a column `x` compared only that column).
    texts(
        c,
        &format!("select whole_row_::text from {table} whole_row_ order by whole_row_::text"),
    )
    .await
}

/// The first (text) column of every row of `sql`.
pub async fn texts(c: &Client, sql: &str) -> Result<Vec<String>> {
    Ok(c.query(sql, &[]).await?.iter().map(|r| r.get(0)).collect())
}

/// Waits until `table` holds the same rows on both sides.
pub async fn wait_equal(
    src: &Client,
    dst: &Client,
    tables: &[&str],
    within: Duration,
) -> Result<()> {
    let same: Vec<(&str, &str)> = tables.iter().map(|t| (*t, *t)).collect();
    wait_equal_as(src, dst, &same, within).await
}

/// [`wait_equal`] for tables the target holds under other names: (source, target) pairs.
pub async fn wait_equal_as(
    src: &Client,
    dst: &Client,
    tables: &[(&str, &str)],
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let mut diff = None;
        for (t, on_target) in tables {
            let a = rows(src, t).await?;
            // A table the target does not have yet (its snapshot or DDL is coming).
            let b = match rows(dst, on_target).await {
                Ok(b) => b,
                Err(e) => {
                    diff = Some(format!("{on_target} on the target: {e}"));
                    break;
                }
            };
            if a != b {
                diff = Some(format!(
                    "{t} (target {on_target}): source {} rows, target {} rows",
                    a.len(),
                    b.len()
                ));
                break;
            }
        }
        match diff {
            None => return Ok(()),
            Some(d) if Instant::now() > deadline => {
                bail!("tables equal within {within:?}: still differ ({d})")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits for `cond` with a deadline naming what was awaited.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} within {within:?}: not reached");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (30 s at most) until a session of `c`'s database waits on a lock while running a
/// query that contains `query` (any query: `""`).
pub async fn wait_lock_waiter(c: &Client, what: &str, query: &str) -> Result<()> {
    wait_for(what, Duration::from_secs(30), || async {
        Ok(lock_waiters(c, query).await? > 0)
    })
    .await
}

/// How many sessions of `c`'s database wait on a lock while running a query that contains
/// `query` (any query: `""`).
async fn lock_waiters(c: &Client, query: &str) -> Result<i64> {
    Ok(c.query_one(
        "select count(*) from pg_stat_activity
          where datname = current_database() and wait_event_type = 'Lock'
            and strpos(query, $1) > 0",
        &[&query],
    )
    .await?
    .get(0))
}

/// Waits until `sql` on `c` returns exactly `want` (its first column, in order); an error
/// (a table not there yet) counts as not yet.
pub async fn wait_texts<S: AsRef<str>>(
    c: &Client,
    what: &str,
    within: Duration,
    sql: &str,
    want: &[S],
) -> Result<()> {
    wait_for(what, within, || async {
        let got = texts(c, sql).await.unwrap_or_default();
        Ok(got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g == w.as_ref()))
    })
    .await
}

/// The source's last transmit error (empty when none).
pub async fn last_error(src: &Client) -> Result<String> {
    Ok(src
        .query_one(
            "select coalesce(last_error, '') from teleport.target_state",
            &[],
        )
        .await?
        .get(0))
}

pub async fn scalar_i64(c: &Client, sql: &str) -> Result<i64> {
    Ok(c.query_one(sql, &[]).await?.get(0))
}

/// Row count and an order-independent checksum of the rows' text.
pub async fn checksum(c: &Client, table: &str) -> Result<(i64, i64)> {
    let r = c
        .query_one(
            &format!(
                "select count(*), coalesce(sum(hashtext(whole_row_::text)::int8), 0)::int8 from {table} whole_row_"
            ),
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// Waits until `tables` have equal checksums on both sides (for large tables).
pub async fn wait_equal_checksum(
    src: &Client,
    dst: &Client,
    tables: &[&str],
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let mut diff = None;
        for t in tables {
            let (a, b) = (
                checksum(src, t).await?,
                checksum(dst, t).await.unwrap_or((-1, -1)),
            );
            if a != b {
                diff = Some(format!("{t}: source {a:?}, target {b:?}"));
                break;
            }
        }
        match diff {
            None => return Ok(()),
            Some(d) if Instant::now() > deadline => {
                bail!("tables equal within {within:?}: still differ ({d})")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Exactly once: waits until the source has every batch acknowledged, then checks that the
/// target applied as many events as the source put into batches, and is at the source's
/// last batch.
pub async fn assert_exactly_once(src: &Client, dst: &Client) -> Result<()> {
    wait_for(
        "every batch acknowledged",
        Duration::from_secs(30),
        || async {
            Ok(scalar_i64(
                src,
                "select count(*) from teleport.batch where acked_at is null",
            )
            .await?
                == 0)
        },
    )
    .await?;
    let made = scalar_i64(src, "select next_seq - 1 from teleport.target_state").await?;
    let events_made = scalar_i64(
        src,
        "select coalesce(sum(events), 0)::int8 from teleport.batch",
    )
    .await?;
    let applied = scalar_i64(dst, "select seq from teleport.applied").await?;
    let events_applied = scalar_i64(dst, "select events from teleport.applied").await?;
    if (applied, events_applied) != (made, events_made) {
        bail!("target at batch {applied} with {events_applied} events applied; the source made {made} batches of {events_made} events");
    }
    Ok(())
}

/// Tables whose keys and foreign keys take many shapes: a composite key referred to with
/// ON UPDATE CASCADE and ON DELETE SET NULL, a foreign key to a UNIQUE constraint that is
/// not the key (cascading into another table's key), a tree referring to itself with ON
/// DELETE CASCADE, two tables referring to each other with deferred foreign keys, and
/// quoted names. `ZOO_TABLES` lists them; `ZOO_DML` changes each in every way.
pub const ZOO: &str = r#"
create schema zoo;
create table zoo.region (country text, code int, name text, primary key (country, code));
create table zoo.shop (id int primary key, country text, code int,
                       foreign key (country, code) references zoo.region on update cascade on delete set null);
create table zoo.item (label text, sku text not null unique, id int primary key);
create table zoo.stock (shop int references zoo.shop on delete cascade,
                        sku text references zoo.item (sku) on update cascade, qty int check (qty >= 0),
                        primary key (sku, shop));
create table zoo.tree (id int primary key, up int references zoo.tree on delete cascade, v text);
create table zoo.husband (id int primary key, wife int);
create table zoo.wife (id int primary key, husband int references zoo.husband deferrable initially deferred);
alter table zoo.husband add foreign key (wife) references zoo.wife deferrable initially deferred;
create table zoo."Odd Table" ("Key Col" int primary key, "Mixed Case" text, "select" int);
create table zoo."we""ird.name" ("col""q" int primary key, "a.b" text);
create table zoo.booking (id int primary key, during tsrange, gone text, note text,
                          exclude using gist (during with &&));
alter table zoo.booking drop column gone;
create table zoo.owner (id int primary key);
create table zoo.pet (id int primary key, owner int not null default 0 references zoo.owner on delete set default);
"#;

pub const ZOO_TABLES: &[&str] = &[
    "zoo.region",
    "zoo.shop",
    "zoo.item",
    "zoo.stock",
    "zoo.tree",
    "zoo.husband",
    "zoo.wife",
    r#"zoo."Odd Table""#,
    r#"zoo."we""ird.name""#,
    "zoo.booking",
    "zoo.owner",
    "zoo.pet",
];

/// Rows for every `ZOO` table, then changes of every kind (key changes by cascade too),
/// statement by statement — run it as one string: each statement is its own transaction
/// but for the two explicit ones.
pub const ZOO_DML: &str = r#"
insert into zoo.region values ('fr', 1, 'a'), ('fr', 2, 'b'), ('de', 1, 'c');
insert into zoo.shop values (1, 'fr', 1), (2, 'fr', 2), (3, 'de', 1);
insert into zoo.item values ('i1', 's1', 1), ('i2', 's2', 2);
insert into zoo.stock values (1, 's1', 5), (2, 's1', 6), (3, 's2', 7);
update zoo.region set code = 10 where country = 'fr' and code = 1;
update zoo.item set sku = 's1b' where id = 1;
delete from zoo.region where country = 'de';
delete from zoo.shop where id = 2;
insert into zoo.tree values (1, null, 'root'), (2, 1, 'a'), (3, 2, 'b'), (4, 1, 'c');
update zoo.tree set up = 4 where id = 3;
delete from zoo.tree where id = 2;
delete from zoo.tree where id = 1;
insert into zoo.tree values (1, null, 'root again'), (5, 1, 'x');
begin; insert into zoo.husband values (1, 1), (2, 2); insert into zoo.wife values (1, 1), (2, 2); commit;
begin; update zoo.husband set wife = null where id = 1; delete from zoo.wife where id = 1; update zoo.wife set husband = 1 where id = 2; commit;
insert into zoo."Odd Table" values (1, 'a', 1), (2, 'b', 2);
update zoo."Odd Table" set "Key Col" = 3, "select" = 9 where "Key Col" = 1;
delete from zoo."Odd Table" where "Key Col" = 2;
insert into zoo."we""ird.name" values (1, 'x'), (2, 'y');
update zoo."we""ird.name" set "col""q" = 3, "a.b" = 'z' where "col""q" = 1;
insert into zoo.booking values (1, '[2026-01-01, 2026-01-05)', 'a'), (2, '[2026-01-05, 2026-01-09)', 'b');
update zoo.booking set during = '[2026-02-01, 2026-02-03)' where id = 1;
update zoo.booking set during = '[2026-01-01, 2026-01-06)', note = 'moved' where id = 2;
insert into zoo.owner values (0), (1), (2);
insert into zoo.pet values (1, 1), (2, 2), (3, 1);
delete from zoo.owner where id = 1;
"#;

/// Columns (name and type) of every table in `schema`, as the catalog says.
/// A catalog function reading an object another session drops meanwhile returns NULL: that
/// read is an error here, and the caller reads again.
pub async fn shape(c: &Client, schemas: &[&str]) -> anyhow::Result<Vec<String>> {
    c.query(
        "select c.relname || '.' || a.attname || ':' || format_type(a.atttypid, a.atttypmod) || case when a.attnotnull then ' not null' else '' end
                || case when a.attcollation <> t.typcollation then ' collate ' || a.attcollation::regcollation::text else '' end
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
           join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
           join pg_type t on t.oid = a.atttypid
          where n.nspname = any($1) and c.relkind in ('r', 'v', 'c')
         union all
         select 'domain ' || t.typname || ':' || format_type(t.typbasetype, t.typtypmod)
                || case when t.typcollation <> b.typcollation then ' collate ' || t.typcollation::regcollation::text else '' end
                || case when t.typnotnull then ' not null' else '' end || coalesce(' default ' || t.typdefault, '')
                || coalesce((select ' ' || string_agg(pg_get_constraintdef(k.oid), ' ' order by pg_get_constraintdef(k.oid))
                               from pg_constraint k where k.contypid = t.oid), '')
           from pg_type t join pg_namespace n on n.oid = t.typnamespace join pg_type b on b.oid = t.typbasetype
          where n.nspname = any($1) and t.typtype = 'd'
         union all
         select 'index ' || indexname || ':' || replace(indexdef, ' ' || schemaname || '.', ' ')
           from pg_indexes where schemaname = any($1)
         union all
         select 'constraint ' || c.conrelid::regclass::text || '.' || conname || ':' || pg_get_constraintdef(c.oid)
           from pg_constraint c join pg_namespace n on n.oid = c.connamespace
          where n.nspname = any($1) and c.contype in ('f', 'u', 'c')
         union all
         select 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || '):' || p.prosrc
           from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = any($1)
         union all
         select 'default ' || c.relname || '.' || a.attname || ':' || pg_get_expr(d.adbin, d.adrelid)
           from pg_attrdef d join pg_class c on c.oid = d.adrelid join pg_namespace n on n.oid = c.relnamespace
           join pg_attribute a on a.attrelid = d.adrelid and a.attnum = d.adnum
          where n.nspname = any($1)
         union all
         select 'enum ' || t.typname || ':' || string_agg(e.enumlabel, ',' order by e.enumsortorder)
           from pg_type t join pg_namespace n on n.oid = t.typnamespace join pg_enum e on e.enumtypid = t.oid
          where n.nspname = any($1) group by t.typname
          order by 1",
        &[&schemas],
    )
    .await?
    .iter()
    .map(|r| {
        let line = r
            .get::<_, Option<String>>(0)
            .ok_or_else(|| anyhow::anyhow!("an object vanished while reading the catalog"))?;
        Ok(schemas
            .iter()
            .fold(line, |acc, s| acc.replace(&format!("{s}."), "")))
    })
    .collect()
}

/// The end of many tests: writes `sql` on the source, waits until `tables` hold the same
/// rows (30 s) and schema `app` has the same shape (20 s) on both sides, and shuts both
/// instances down; an error says `context`.
pub async fn ends_equal(
    src: &Client,
    dst: &Client,
    sql: &str,
    tables: &[&str],
    (source, target): (Running, Running),
    context: &str,
) -> Result<()> {
    let context = |e: anyhow::Error| e.context(context.to_string());
    src.batch_execute(sql)
        .await
        .map_err(|e| context(e.into()))?;
    wait_equal(src, dst, tables, Duration::from_secs(30))
        .await
        .map_err(context)?;
    wait_same_shape(src, dst, &["app"], Duration::from_secs(20))
        .await
        .map_err(context)?;
    source.shutdown().await?;
    target.shutdown().await?;
    Ok(())
}

/// Waits until the target's [`shape`] of `schemas` is the source's (the schema versions
/// may arrive after the rows); says what differs when it is not within `within`.
pub async fn wait_same_shape(
    src: &Client,
    dst: &Client,
    schemas: &[&str],
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        // A read that meets a table the stream drops at that moment ("could not open
        // relation with OID …", PostgreSQL's catalog functions racing a DROP) is read again.
        let (a, b) = match (shape(src, schemas).await, shape(dst, schemas).await) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e))
                if Instant::now() < deadline
                    && format!("{e:#}").contains("could not open relation with OID") =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            (a, b) => (a?, b?),
        };
        if a == b {
            return Ok(());
        }
        if Instant::now() > deadline {
            let only = |x: &[String], y: &[String]| {
                x.iter()
                    .filter(|l| !y.contains(l))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            bail!(
                "the source's schema on the target within {within:?}: not reached; only on the source: {:?}; only on the target: {:?}",
                only(&a, &b),
                only(&b, &a)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `sql` on `c` in a task and waits (30 s at most) until it is done or a session of
/// `watch`'s database waits on a lock (it, most likely): the task, and whether it was
/// still running then (waiting).
pub async fn run_until_done_or_waiting(
    c: Client,
    sql: &str,
    watch: &Client,
) -> Result<(
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    bool,
)> {
    let sql = sql.to_string();
    let task = tokio::spawn(async move { c.batch_execute(&sql).await });
    wait_for(
        "the statement done or waiting",
        Duration::from_secs(30),
        || async { Ok(task.is_finished() || lock_waiters(watch, "").await? > 0) },
    )
    .await?;
    let waiting = !task.is_finished();
    Ok((task, waiting))
}
