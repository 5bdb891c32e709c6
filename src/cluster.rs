//! Throwaway PostgreSQL clusters for the demo and the tests.
//!
//! `initdb` + `pg_ctl` from the installed server binaries, in a temporary directory, on a
//! free loopback port. When running as root the server runs as the `postgres` OS user
//! (PostgreSQL refuses root). The bootstrap superuser is `postgres` with password
//! [`ADMIN_PASSWORD`]; replication itself always runs as ordinary roles.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use tokio_postgres::{Client, NoTls};

/// Password of the bootstrap superuser of every throwaway cluster (loopback only).
pub const ADMIN_PASSWORD: &str = "pgteleport-admin";

/// A running throwaway cluster.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    /// Stop and remove on drop.
    owned: bool,
}

/// Directory with `initdb`, `pg_ctl` and `postgres`.
pub fn bindir() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("PGTELEPORT_PG_BINDIR") {
        return Ok(PathBuf::from(d));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("initdb").exists() {
            return Ok(d);
        }
    }
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    found.retain(|d| d.join("initdb").exists());
    found.sort();
    found
        .pop()
        .context("no PostgreSQL server binaries found (looked for pg_config --bindir and /usr/lib/postgresql/*/bin); install postgresql-15 or set PGTELEPORT_PG_BINDIR")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn postgres_ids() -> Result<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns null or a pointer to a static passwd record.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root, but there is no `postgres` OS user to run PostgreSQL as");
    }
    // SAFETY: checked non-null above.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn command(bindir: &Path, program: &str) -> Command {
    let path = bindir.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut c: Command, what: &str) -> Result<()> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Cluster {
    /// Creates and starts a new cluster in a fresh temporary directory.
    pub fn start_new(label: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "pgteleport-{label}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        Self::init(&dir)?;
        let mut c = Cluster {
            dir,
            port: 0,
            bindir: bindir()?,
            owned: true,
        };
        c.start()?;
        Ok(c)
    }

    fn init(dir: &Path) -> Result<()> {
        let bindir = bindir()?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pwfile = dir.join("pwfile");
        fs::File::create(&pwfile)?.write_all(ADMIN_PASSWORD.as_bytes())?;
        let data = dir.join("data");
        fs::create_dir_all(&data)?;
        if is_root() {
            let (uid, gid) = postgres_ids()?;
            for p in [dir, &pwfile, &data] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to postgres", p.display()))?;
            }
        }
        let mut c = command(&bindir, "initdb");
        c.arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(c, "initdb")
    }

    /// Starts the server (again), on a new free port if it has none yet.
    pub fn start(&mut self) -> Result<()> {
        let mut last = None;
        for _ in 0..5 {
            if self.port == 0 {
                self.port = free_port()?;
            }
            let mut c = command(&self.bindir, "pg_ctl");
            c.arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=off \
                     -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
                     -c shared_buffers=128MB -c max_wal_size=2GB -c max_prepared_transactions=10",
                    self.port,
                    self.dir.display()
                ))
                .arg("start");
            match run(c, "pg_ctl start") {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    self.port = 0;
                }
            }
        }
        let log = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        Err(last.expect("tried").context(format!("server log:\n{log}")))
    }

    /// `pg_ctl stop -m immediate`: the server dies as in a crash.
    pub fn stop_immediate(&self) -> Result<()> {
        let mut c = command(&self.bindir, "pg_ctl");
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        run(c, "pg_ctl stop")
    }

    /// Connects as the bootstrap superuser (for setting up tests and the demo only).
    pub async fn admin(&self, database: &str) -> Result<Client> {
        self.connect(database, "postgres", ADMIN_PASSWORD).await
    }

    /// Connects as `user`.
    pub async fn connect(&self, database: &str, user: &str, password: &str) -> Result<Client> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .dbname(database)
            .user(user)
            .password(password)
            .connect(NoTls)
            .await
            .with_context(|| format!("connecting to {database} on port {} as {user}", self.port))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Creates a login role without SUPERUSER, REPLICATION or CREATEROLE.
    pub async fn create_role(&self, name: &str, password: &str) -> Result<()> {
        let admin = self.admin("postgres").await?;
        admin
            .batch_execute(&format!(
                "create role {} login nosuperuser noreplication nocreaterole nocreatedb password {}",
                ddlwatcher::quote_ident(name),
                ddlwatcher::quote_literal(password)
            ))
            .await?;
        Ok(())
    }

    /// Creates a database owned by the superuser where `role` gets CREATE (and nothing more).
    pub async fn create_database(&self, name: &str, role: &str) -> Result<()> {
        let admin = self.admin("postgres").await?;
        let db = ddlwatcher::quote_ident(name);
        admin
            .batch_execute(&format!("create database {db}"))
            .await?;
        admin
            .batch_execute(&format!(
                "grant create, connect on database {db} to {r}",
                r = ddlwatcher::quote_ident(role)
            ))
            .await?;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            let _ = self.stop_immediate();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Cluster {
    /// The cluster shared by every test process of a run: started by the first process that
    /// needs it (under a file lock), reused by the others, stopped by the test command
    /// (`scripts/test.sh`) at the end. Tests isolate themselves with fresh databases and roles.
    pub fn shared() -> Result<Self> {
        let dir = std::env::var("PGTELEPORT_TEST_CLUSTER")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir().join("pgteleport-test-cluster"));
        let lock_path = dir.with_extension("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an open descriptor; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("cannot lock {}", lock_path.display());
        }
        let bindir = bindir()?;
        let port_file = dir.join("port");
        if let Some(port) = fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
        {
            let mut status = command(&bindir, "pg_ctl");
            status.arg("-D").arg(dir.join("data")).arg("status");
            let running = status
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            let mut c = Cluster {
                dir: dir.clone(),
                port,
                bindir: bindir.clone(),
                owned: false,
            };
            if running {
                return Ok(c);
            }
            if c.start().is_ok() {
                fs::write(&port_file, c.port.to_string())?;
                return Ok(c);
            }
        }
        let _ = fs::remove_dir_all(&dir);
        Self::init(&dir)?;
        let mut c = Cluster {
            dir,
            port: 0,
            bindir,
            owned: false,
        };
        c.start()?;
        fs::write(&port_file, c.port.to_string())?;
        drop(lock);
        Ok(c)
    }
}
