//! `pgteleport check`: validates a config and tests what the instance will need.

use std::fmt::Write as _;

use bytes::Bytes;
use ddlwatcher::{Catalog, TargetExpression};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

use crate::config::Config;
use crate::db;

/// A report: lines and whether everything passed.
#[derive(Debug, Default)]
pub struct Report {
    pub text: String,
    pub ok: bool,
}

impl Report {
    fn pass(&mut self, what: &str) {
        let _ = writeln!(self.text, "  ok    {what}");
    }
    fn fail(&mut self, what: &str) {
        self.ok = false;
        let _ = writeln!(self.text, "  FAIL  {what}");
    }
    fn warn(&mut self, what: &str) {
        let _ = writeln!(self.text, "  warn  {what}");
    }
}

/// Runs every check; never fails itself, the report says what is wrong.
pub async fn check(config: &Config) -> Report {
    let mut r = Report {
        ok: true,
        ..Default::default()
    };
    let roles = config.roles();
    let _ = writeln!(
        r.text,
        "instance `{}`: {}",
        config.database.name,
        match (roles.source, roles.target) {
            (true, true) => "source and target",
            (true, false) => "source",
            (false, true) => "target",
            (false, false) => "nothing to do",
        }
    );
    let d = &config.database;
    let client = match db::connect(d, "check").await {
        Ok(c) => {
            r.pass(&format!(
                "connect to database `{}` on {}:{} as `{}`",
                d.database, d.hostname, d.port, d.username
            ));
            c
        }
        Err(e) => {
            r.fail(&e.to_string());
            return r;
        }
    };
    match client
        .query_one(
            "select has_database_privilege(current_user, current_database(), 'CREATE'),
                    (select rolsuper from pg_roles where rolname = current_user)",
            &[],
        )
        .await
    {
        Ok(row) => {
            let (create, superuser): (bool, bool) = (row.get(0), row.get(1));
            if create {
                r.pass("CREATE on the database (for the internal schema)");
            } else {
                r.fail(&format!(
                    "role `{}` lacks CREATE on database `{}`: GRANT CREATE ON DATABASE \"{}\" TO \"{}\"",
                    d.username, d.database, d.database, d.username
                ));
            }
            match (config.use_event_triggers, superuser) {
                (true, true) => r.pass("superuser, as use_event_triggers: true needs (to create event triggers)"),
                (true, false) => r.fail(&format!(
                    "use_event_triggers: true, but role `{}` may not create event triggers (on PostgreSQL 15 only a superuser may):                      run the source instance as one, or set use_event_triggers: false (the ddlwatcher then diffs the catalog, without superuser)",
                    d.username
                )),
                (false, true) => r.warn("the role is a superuser; pgteleport does not need that (only use_event_triggers: true does)"),
                (false, false) => {}
            }
        }
        Err(e) => r.fail(&format!("reading privileges: {}", db::describe(&e))),
    }
    for (name, target) in &config.targets {
        let Ok(expr) = TargetExpression::parse(&target.target_expression) else {
            continue; // validated when loading
        };
        match Catalog::read(&client, &expr, &config.internal_schema)
            .await
            .map(|c| c.tables)
        {
            Ok(tables) if tables.is_empty() => r.warn(&format!(
                "target `{name}`: target_expression `{}` matches no table",
                expr.as_str()
            )),
            Ok(tables) => {
                let mut bad = 0;
                for t in &tables {
                    if t.replica_key().is_none() {
                        bad += 1;
                        r.fail(&format!(
                            "target `{name}`: table {} has no primary key",
                            t.qualified()
                        ));
                    }
                    let can: bool = client
                        .query_one("select has_table_privilege($1::oid, 'TRIGGER')", &[&t.oid])
                        .await
                        .map(|row| row.get(0))
                        .unwrap_or(false);
                    if !can {
                        bad += 1;
                        r.fail(&format!(
                            "target `{name}`: no TRIGGER privilege on {}: GRANT TRIGGER ON {} TO \"{}\"",
                            t.qualified(),
                            t.qualified(),
                            d.username
                        ));
                    }
                }
                if bad == 0 {
                    r.pass(&format!(
                        "target `{name}`: {} table(s) can be captured",
                        tables.len()
                    ));
                }
            }
            Err(e) => r.fail(&format!(
                "target `{name}`: reading the catalog: {}",
                db::describe_read(&e)
            )),
        }
        let (base, connector) = match crate::tls::https_connector(&target.endpoint) {
            Ok(x) => x,
            Err(e) => {
                r.fail(&format!("target `{name}`: {e}"));
                continue;
            }
        };
        let http = HttpClient::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
        let mut req = hyper::Request::get(format!(
            "{base}/v1/position/{}/{name}",
            config.database.name
        ));
        if let Some(t) = &target.auth_token {
            req = req.header("authorization", format!("Bearer {}", t.expose()));
        }
        let req = req.body(Empty::new()).expect("valid request");
        match tokio::time::timeout(std::time::Duration::from_secs(10), http.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                r.pass(&format!(
                    "target `{name}` at {base} accepts this source (applied batch {})",
                    v.get("applied_seq").and_then(|s| s.as_i64()).unwrap_or(0)
                ));
            }
            Ok(Ok(resp)) => {
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                r.fail(&format!(
                    "target `{name}` at {base} answered {status}: {} {}",
                    String::from_utf8_lossy(&body),
                    if status == 401 {
                        "— check targets.<name>.auth_token against the target's server.auth_token"
                    } else {
                        ""
                    }
                ));
            }
            Ok(Err(e)) => r.fail(&format!(
                "target `{name}` at {base} unreachable: {e} — is the target instance running?"
            )),
            Err(_) => r.fail(&format!("target `{name}` at {base}: no answer within 10 s")),
        }
    }
    r
}
