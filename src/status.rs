//! `pgteleport status`: where each target stands, read from this instance's database.

use std::fmt::Write as _;

use ddlwatcher::quote_ident;

use crate::config::Config;
use crate::db;
use crate::vacuum::queue_state;

/// A readable report of the source's targets (batches made, acknowledged, pending; schema
/// versions; the last transmit error) and of the batches this instance applied as a target.
pub async fn status(config: &Config) -> anyhow::Result<String> {
    let client = db::connect(&config.database, "status").await?;
    let s = quote_ident(&config.internal_schema);
    let mut out = String::new();
    let roles = config.roles();
    if roles.source {
        let mirrors = crate::mirror::figures(&client, &s, None).await?;
        for name in config.targets.keys() {
            let Some(f) = mirrors.iter().find(|f| &f.name == name) else {
                let _ = writeln!(
                    out,
                    "target `{name}`: not installed yet (start the instance or run `install`)"
                );
                continue;
            };
            let (made, acked, acked_at) = (f.made, f.acked, f.acked_at.clone());
            let (err, err_at) = (f.last_error.clone(), f.last_error_at.clone());
            let (pending, events, age) = (f.pending, f.queued_events, f.oldest_seconds);
            let (ddl, ddl_acked, failures) = (f.ddl_version, f.ddl_acked, f.failures);
            let _ = writeln!(out, "target `{name}`");
            let _ = writeln!(
                out,
                "  state       {}{} (since {})",
                f.state,
                f.state_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default(),
                f.state_changed_at
            );
            let _ = writeln!(
                out,
                "  batches     made {made}, acknowledged {acked}{}",
                acked_at
                    .map(|a| format!(" (last at {a})"))
                    .unwrap_or_default()
            );
            let _ = writeln!(
                out,
                "  pending     {pending} batch(es), {events} event(s){}",
                age.map(|a| format!(", oldest waiting {a:.1} s"))
                    .unwrap_or_default()
            );
            let _ = writeln!(out, "  schema      version {ddl}, acknowledged {ddl_acked}");
            match err {
                Some(e) => {
                    let _ = writeln!(
                        out,
                        "  last error  since {}, {failures} attempt(s) — {e}",
                        err_at.unwrap_or_default()
                    );
                }
                None => {
                    let _ = writeln!(out, "  last error  none");
                }
            }
        }
        let q = queue_state(&client, &config.internal_schema).await?;
        let rows: Vec<String> = q
            .tables
            .iter()
            .map(|(i, done, n)| {
                format!(
                    "event_{i}: {n} row(s){}{}",
                    if *i as i64 == q.current {
                        " (current)"
                    } else {
                        ""
                    },
                    if *done { " (empty, done)" } else { "" }
                )
            })
            .collect();
        let _ = writeln!(out, "queue       {}", rows.join("; "));
        match crate::capture::silent_triggers(&client, &config.internal_schema).await {
            Ok(silent) if silent.is_empty() => {
                let _ = writeln!(out, "capture     every capture trigger fires");
            }
            Ok(silent) => {
                for t in silent {
                    let _ = writeln!(
                        out,
                        "capture     {} of {} is {}: its changes do not replicate — {}",
                        t.trigger,
                        t.table,
                        t.state,
                        t.fix()
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "capture     unknown ({})", db::describe(&e));
            }
        }
    }
    waiting(&client, config, &mut out).await;
    if roles.target {
        let applied = client
            .query(
                &format!("select source, target, seq, events, applied_at::text from {s}.applied order by 1, 2"),
                &[],
            )
            .await;
        match applied {
            Ok(rows) if rows.is_empty() => {
                let _ = writeln!(out, "applied     nothing yet");
            }
            Ok(rows) => {
                for r in rows {
                    let (src, tgt, seq, events, at): (String, String, i64, i64, String) =
                        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                    let _ = writeln!(out, "applied     from `{src}` as `{tgt}`: batch {seq}, {events} event(s) in all, last at {at}");
                }
            }
            Err(e) => {
                let _ = writeln!(out, "applied     unknown ({})", db::describe(&e));
            }
        }
        loads(&client, &s, &mut out).await;
    }
    Ok(out)
}

/// A target's tables by how they came: copied by an initial load, made by the stream
/// (complete: a load run again leaves them; `--copy-again` copies them again), or in a load
/// not finished yet (batches wait for it).
async fn loads(client: &tokio_postgres::Client, s: &str, out: &mut String) {
    let rows = client
        .query(
            &format!(
                "select source, target,
                        count(*) filter (where state = 'done' and snapshot is not null),
                        coalesce(sum(rows) filter (where state = 'done' and snapshot is not null), 0)::int8,
                        count(*) filter (where state = 'done' and snapshot is null),
                        coalesce(array_agg(pg_catalog.format('%I.%I (%s)', schema_name, table_name, state)
                                           order by schema_name, table_name)
                                   filter (where state <> 'done'), '{{}}')
                   from {s}.load_table group by 1, 2 order by 1, 2"
            ),
            &[],
        )
        .await;
    match rows {
        Ok(rows) => {
            for r in rows {
                let (src, tgt, copied, rows, made): (String, String, i64, i64, i64) =
                    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                let unfinished: Vec<String> = r.get(5);
                let mut line = format!(
                    "tables      from `{src}` as `{tgt}`: {copied} copied by an initial load ({rows} row(s)), {made} made by the stream"
                );
                if !unfinished.is_empty() {
                    let _ = write!(
                        line,
                        "; a load not finished: {} — its batches wait for it (run it again to resume it)",
                        unfinished.join(", ")
                    );
                }
                let _ = writeln!(out, "{line}");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "tables      unknown ({})", db::describe(&e));
        }
    }
}

/// The instance's connections that wait for a lock another session holds, and who holds
/// it (the stall reports' view, read from `pg_stat_activity` by any process: its own
/// connections by their `application_name`).
async fn waiting(client: &tokio_postgres::Client, config: &Config, out: &mut String) {
    let (prefix, _) = db::application_affixes(&config.database);
    let rows = client
        .query(
            "select pid, application_name,
                    extract(epoch from clock_timestamp() - query_start)::float8
               from pg_stat_activity
              where datname = current_database() and usename = current_user
                and pid <> pg_backend_pid() and wait_event_type = 'Lock'
                and starts_with(application_name, $1)
              order by query_start",
            &[&prefix],
        )
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "waiting     unknown ({})", db::describe(&e));
            return;
        }
    };
    let mut any = false;
    for r in rows {
        let (pid, app, seconds): (i32, String, Option<f64>) = (r.get(0), r.get(1), r.get(2));
        let Ok(Some(wait)) = crate::stage::Wait::of(client, pid).await else {
            continue; // done meanwhile
        };
        if !wait.blocked() {
            continue;
        }
        any = true;
        let _ = writeln!(
            out,
            "waiting     {app} (pid {pid}) for {:.0} s: {}",
            seconds.unwrap_or_default(),
            wait.lock()
        );
    }
    if !any {
        let _ = writeln!(
            out,
            "waiting     no connection of this instance waits for a lock"
        );
    }
}
