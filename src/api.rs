//! The management API of a source instance, under `/api/v1`, in the shapes PeerDB users
//! know (`flowJobName`, `requestedFlowState`, `peer`/`allow_update`), with honest status
//! codes: 200 done (or nothing to change), 201 created, 400 malformed, 401 no or wrong
//! password, 404 unknown name, 409 conflict, 422 the connection or value does not
//! validate (the driver's message), 503 the instance's database is unreachable, 500 other
//! server faults. Every error body is `{"error": "…"}`. Creates are idempotent: a repeated
//! create with the same content changes nothing and duplicates nothing.
//!
//! Also `/metrics` (Prometheus text) and `/readyz` for every instance.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use ddlwatcher::quote_ident;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::config::{Config, Database, Endpoint, Secret};
use crate::db;
use crate::mirror::{self, Action, MirrorError, State};

type Body = Full<Bytes>;

/// Largest API request body.
const MAX_REQUEST: usize = 1 << 20;

/// The API and the operational endpoints of one instance.
pub struct Api {
    config: Config,
    password: Option<Secret>,
    /// Why `/api/v1` is not served (a listener beyond loopback without a password).
    disabled: Option<String>,
    /// Restarts the source pipeline (a mirror was created).
    reload: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// An API failure: its status and message.
#[derive(Debug)]
pub struct Failure(StatusCode, String);

impl Failure {
    fn bad(m: impl Into<String>) -> Self {
        Failure(StatusCode::BAD_REQUEST, m.into())
    }
}

impl From<MirrorError> for Failure {
    fn from(e: MirrorError) -> Self {
        let status = match &e {
            MirrorError::Unknown(_) => StatusCode::NOT_FOUND,
            MirrorError::Conflict { .. } => StatusCode::CONFLICT,
            MirrorError::Db { source, .. } => db_status(source),
        };
        Failure(status, e.to_string())
    }
}

fn db_status(e: &tokio_postgres::Error) -> StatusCode {
    if e.as_db_error().is_none() {
        StatusCode::SERVICE_UNAVAILABLE // the connection, not the statement
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

fn pg(context: &str) -> impl FnOnce(tokio_postgres::Error) -> Failure + '_ {
    move |e| Failure(db_status(&e), format!("{context}: {}", db::describe(&e)))
}

type Answer = Result<(StatusCode, Value), Failure>;

impl Api {
    pub fn new(config: &Config) -> Self {
        let password = config
            .server
            .as_ref()
            .and_then(|s| s.api_password.clone().or_else(|| s.auth_token.clone()));
        let disabled = match &config.server {
            Some(s) if password.is_none() && !s.is_loopback() && config.roles().source => {
                let m = format!(
                    "the REST API is off: this instance listens on {} and has no API password. \
                     Set server.api_password (or PGTELEPORT_API_PASSWORD), or listen on 127.0.0.1",
                    s.hostname
                );
                tracing::warn!("{m}");
                Some(m)
            }
            _ => None,
        };
        Self {
            config: config.clone(),
            password,
            disabled,
            reload: None,
        }
    }

    /// What to notify when a mirror was created (the instance restarts its pipeline).
    pub fn with_reload(mut self, reload: std::sync::Arc<tokio::sync::Notify>) -> Self {
        self.reload = Some(reload);
        self
    }

    fn schema(&self) -> String {
        quote_ident(&self.config.internal_schema)
    }

    /// Answers `/api/v1/…`, `/metrics` and `/readyz`; `None` for any other path.
    pub async fn handle(&self, req: Request<Incoming>) -> Option<Response<Body>> {
        let path = req.uri().path().to_string();
        if let Some(allowed) = allowed_methods(&path) {
            if !allowed.split(", ").any(|m| m == req.method().as_str()) {
                let mut r = failure(Failure(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{} {path}: use {allowed}", req.method()),
                ));
                r.headers_mut()
                    .insert(hyper::header::ALLOW, HeaderValue::from_static(allowed));
                return Some(r);
            }
        }
        let answer = match (req.method().clone(), path.as_str()) {
            (Method::GET, "/readyz") => self.ready().await,
            (Method::GET, "/metrics") => {
                return Some(match self.metrics().await {
                    Ok(text) => {
                        let mut r = Response::new(Full::new(Bytes::from(text)));
                        r.headers_mut().insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                        );
                        r
                    }
                    Err(f) => failure(f),
                });
            }
            (Method::GET, "/api/v1/openapi.json") => Ok((StatusCode::OK, openapi())),
            (_, p) if p.starts_with("/api/v1/") && self.disabled.is_some() => Err(Failure(
                StatusCode::FORBIDDEN,
                self.disabled.clone().unwrap_or_default(),
            )),
            (method, p) if p.starts_with("/api/v1/") => {
                if let Err(f) = self.authenticate(&req) {
                    let mut r = failure(f);
                    r.headers_mut().insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"pgteleport\""),
                    );
                    return Some(r);
                }
                if !self.config.roles().source {
                    Err(Failure(
                        StatusCode::NOT_FOUND,
                        "this instance is not a source (no `targets`, no `api_mirrors: true`): the API runs on the source instance".into(),
                    ))
                } else {
                    self.route(method, p, req).await
                }
            }
            _ => return None,
        };
        Some(match answer {
            Ok((status, body)) => reply(status, body),
            Err(f) => failure(f),
        })
    }

    async fn route(&self, method: Method, path: &str, req: Request<Incoming>) -> Answer {
        match (method, path) {
            (Method::GET, "/api/v1/mirrors/list") => self.mirrors_list().await,
            (Method::POST, "/api/v1/mirrors/status") => self.mirror_status(body(req).await?).await,
            (Method::POST, "/api/v1/mirrors/state_change") => {
                self.state_change(body(req).await?).await
            }
            (Method::GET, "/api/v1/peers/list") => self.peers_list().await,
            (Method::POST, "/api/v1/peers/create") => self.peer_create(body(req).await?).await,
            (Method::GET, "/api/v1/alerts/config") => self.alerts_list().await,
            (Method::POST, "/api/v1/alerts/config") => self.alert_create(body(req).await?).await,
            (Method::POST, "/api/v1/flows/cdc/create") => {
                self.mirror_create(body(req).await?).await
            }
            (m, p) => Err(Failure(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {m} {p} (GET /api/v1/openapi.json lists them)"),
            )),
        }
    }

    /// With a password set, every API request must carry it: HTTP Basic (any user name)
    /// or a bearer token. Compared in constant time; never logged.
    fn authenticate(&self, req: &Request<Incoming>) -> Result<(), Failure> {
        let Some(password) = &self.password else {
            return Ok(());
        };
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let presented: Option<Vec<u8>> = match header {
            Some(h) if let Some(token) = h.strip_prefix("Bearer ") => {
                Some(token.as_bytes().to_vec())
            }
            Some(h) if let Some(encoded) = h.strip_prefix("Basic ") => {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|raw| {
                        let colon = raw.iter().position(|&b| b == b':')?;
                        Some(raw[colon + 1..].to_vec())
                    })
            }
            _ => None,
        };
        match presented {
            Some(p) if bool::from(p.ct_eq(password.expose().as_bytes())) => Ok(()),
            Some(_) => Err(Failure(StatusCode::UNAUTHORIZED, "wrong password".into())),
            None => Err(Failure(
                StatusCode::UNAUTHORIZED,
                "missing credentials: send the API password with HTTP Basic (any user name) or `Authorization: Bearer <password>`".into(),
            )),
        }
    }

    async fn client(&self) -> Result<tokio_postgres::Client, Failure> {
        db::connect(&self.config.database, "api")
            .await
            .map_err(|e| Failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }

    async fn ready(&self) -> Answer {
        let client = self.client().await?;
        client
            .simple_query("select 1")
            .await
            .map_err(pg("checking the database"))?;
        Ok((StatusCode::OK, json!({"status": "ready"})))
    }

    async fn mirrors_list(&self) -> Answer {
        let client = self.client().await?;
        let s = self.schema();
        let rows = client
            .query(
                &format!(
                    "select t.target, t.state, t.state_reason, t.state_changed_at::text, m.definition ->> 'destinationName'
                       from {s}.target_state t left join {s}.mirror m on m.name = t.target order by t.target"
                ),
                &[],
            )
            .await
            .map_err(pg("reading mirrors"))?;
        let mirrors: Vec<Value> = rows
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                let destination = self
                    .config
                    .targets
                    .get(&name)
                    .map(|t| format!("{}:{}", t.endpoint.hostname, t.endpoint.port))
                    .or_else(|| r.get::<_, Option<String>>(4));
                json!({
                    "name": name,
                    "sourceName": self.config.database.name,
                    "destinationName": destination,
                    "state": r.get::<_, String>(1),
                    "stateReason": r.get::<_, Option<String>>(2),
                    "stateChangedAt": r.get::<_, String>(3),
                    "isCdc": true,
                    "fromConfig": self.config.targets.contains_key(&name),
                })
            })
            .collect();
        Ok((StatusCode::OK, json!({"mirrors": mirrors})))
    }

    async fn mirror_status(&self, v: Value) -> Answer {
        let req: StatusRequest = parse(v)?;
        let name = non_empty(req.flow_job_name)?;
        let include = req.include_flow_info.unwrap_or(false);
        let client = self.client().await?;
        let s = self.schema();
        let f = crate::mirror::figures(&client, &s, Some(&name))
            .await
            .map_err(pg("reading the mirror"))?
            .pop()
            .ok_or_else(|| Failure::from(MirrorError::Unknown(name.clone())))?;
        let mut out = json!({
            "flowJobName": name,
            "state": f.state,
            "currentFlowState": format!("STATUS_{}", f.state),
            "stateReason": f.state_reason,
            "stateChangedAt": f.state_changed_at,
        });
        if include {
            let queue_bytes = queue_bytes(&client, &s).await?;
            let tables = crate::mirror::rows_per_table(&client, &s, &name)
                .await
                .map_err(pg("reading rows per table"))?;
            let rows_per_table: Vec<Value> = tables
                .into_iter()
                .map(|(schema, table, [i, u, d, t])| {
                    json!({
                        "tableName": format!("{schema}.{table}"),
                        "counts": {"insertCount": i, "updateCount": u, "deleteCount": d,
                                   "truncateCount": t, "totalCount": i + u + d},
                    })
                })
                .collect();
            out["cdcStatus"] = json!({
                "batchesMade": f.made,
                "batchesAcknowledged": f.acked,
                "lastAcknowledgedAt": f.acked_at,
                "lastError": f.last_error,
                "lastErrorAt": f.last_error_at,
                "failures": f.failures,
                "schemaVersionAcknowledged": f.ddl_acked,
                "batchesPending": f.pending,
                "queueDepth": f.queued_events,
                "lagSeconds": f.lag_seconds(),
                "queueBytes": queue_bytes,
                "rowsPerTable": rows_per_table,
            });
        }
        Ok((StatusCode::OK, out))
    }

    async fn state_change(&self, v: Value) -> Answer {
        let req: StateChangeRequest = parse(v)?;
        let name = non_empty(req.flow_job_name)?;
        let requested = req.requested_flow_state;
        let action = Action::parse(&requested).ok_or_else(|| {
            Failure::bad(format!(
                "`requestedFlowState` `{requested}` is not STATUS_PAUSED, STATUS_RUNNING or STATUS_TERMINATED (or pause, resume, terminate)"
            ))
        })?;
        let mut client = self.client().await?;
        let (state, changed) =
            mirror::change(&mut client, &self.schema(), &name, action, None).await?;
        Ok((
            StatusCode::OK,
            json!({"flowJobName": name, "state": state.as_str(), "changed": changed}),
        ))
    }

    async fn peers_list(&self) -> Answer {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "select name, kind, config, created_at::text, updated_at::text from {}.peer order by name",
                    self.schema()
                ),
                &[],
            )
            .await
            .map_err(pg("reading peers"))?;
        let items: Vec<Value> = rows
            .iter()
            .map(|r| {
                let kind: String = r.get(1);
                let mut config: Value = r.get(2);
                // Secrets never leave: only whether one is set.
                for secret in ["password", "auth_token"] {
                    if let Some(obj) = config.as_object_mut() {
                        if obj.remove(secret).is_some() {
                            obj.insert(format!("{secret}_set"), Value::Bool(true));
                        }
                    }
                }
                let key = if kind == "postgres" {
                    "postgres_config"
                } else {
                    "pgteleport_config"
                };
                json!({
                    "name": r.get::<_, String>(0),
                    "type": kind.to_uppercase(),
                    key: config,
                    "createdAt": r.get::<_, String>(3),
                    "updatedAt": r.get::<_, String>(4),
                })
            })
            .collect();
        Ok((StatusCode::OK, json!({"items": items})))
    }

    async fn peer_create(&self, v: Value) -> Answer {
        let req: PeerCreate =
            serde_json::from_value(v).map_err(|e| Failure::bad(format!("invalid peer: {e}")))?;
        let peer = req.peer;
        check_name(&peer.name)?;
        let (kind, config) = peer.definition()?;
        let mut client = self.client().await?;
        let s = self.schema();
        let existing: Option<Value> = client
            .query_opt(
                &format!("select config from {s}.peer where name = $1 and kind = $2"),
                &[&peer.name, &kind],
            )
            .await
            .map_err(pg("reading peers"))?
            .map(|r| r.get(0));
        let other_kind: bool = client
            .query_one(
                &format!("select exists (select 1 from {s}.peer where name = $1 and kind <> $2)"),
                &[&peer.name, &kind],
            )
            .await
            .map_err(pg("reading peers"))?
            .get(0);
        if other_kind && !req.allow_update {
            return Err(Failure(
                StatusCode::CONFLICT,
                format!(
                    "peer `{}` exists with another type; set allow_update: true to replace it",
                    peer.name
                ),
            ));
        }
        if existing.as_ref() == Some(&config) {
            return Ok((
                StatusCode::OK,
                json!({"name": peer.name, "status": "unchanged"}),
            ));
        }
        if existing.is_some() && !req.allow_update {
            return Err(Failure(
                StatusCode::CONFLICT,
                format!(
                    "peer `{}` exists with another definition; set allow_update: true to change it",
                    peer.name
                ),
            ));
        }
        validate_peer(&peer.name, &kind, &config).await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let n = tx
            .execute(
                &format!(
                    "insert into {s}.peer (name, kind, config) values ($1, $2, $3)
                     on conflict (name) do update set kind = excluded.kind, config = excluded.config, updated_at = clock_timestamp()
                      where $4"
                ),
                &[&peer.name, &kind, &config, &req.allow_update],
            )
            .await
            .map_err(pg("recording the peer"))?;
        if n == 0 {
            // Created by a concurrent request meanwhile, with other content.
            return Err(Failure(
                StatusCode::CONFLICT,
                format!(
                    "peer `{}` was created meanwhile; set allow_update: true to change it",
                    peer.name
                ),
            ));
        }
        tx.commit().await.map_err(pg("commit"))?;
        if existing.is_some() || other_kind {
            tracing::info!(peer = %peer.name, "peer updated");
            Ok((
                StatusCode::OK,
                json!({"name": peer.name, "status": "updated"}),
            ))
        } else {
            tracing::info!(peer = %peer.name, "peer created");
            Ok((
                StatusCode::CREATED,
                json!({"name": peer.name, "status": "created"}),
            ))
        }
    }

    /// Creates a mirror: stored in the database, run by this instance from now on (its
    /// pipeline restarts with it) and after restarts. Idempotent by name and definition.
    async fn mirror_create(&self, v: Value) -> Answer {
        let req: CdcCreate = parse(v)?;
        let f = req.connection_configs;
        let name = non_empty(f.flow_job_name)?;
        crate::config::check_name(&name)
            .map_err(|m| Failure::bad(format!("flowJobName `{name}` {m}")))?;
        let unprocessable = |m: String| Failure(StatusCode::UNPROCESSABLE_ENTITY, m);
        if self.config.targets.contains_key(&name) {
            return Err(Failure(
                StatusCode::CONFLICT,
                format!("mirror `{name}` is a target of the config file; change it there"),
            ));
        }
        if let Some(src) = f.source_name.as_deref().filter(|s| !s.is_empty()) {
            if src != self.config.database.name {
                return Err(unprocessable(format!(
                    "sourceName `{src}`: this instance replicates `{}` (its database.name); mirrors from another database are created on that database's source instance",
                    self.config.database.name
                )));
            }
        }
        // Over 63 bytes is well-formed JSON the document admits (it counts characters, not
        // bytes) that PostgreSQL cannot take as a name: 422, like other names it refuses.
        let column = |key: &str, v: Option<String>| -> Result<Option<String>, Failure> {
            match v.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(c) if c.contains('\0') => Err(Failure::bad(format!(
                    "{key} `{}` holds a NUL character",
                    c.escape_debug()
                ))),
                Some(c) if c.len() > 63 => Err(unprocessable(format!(
                    "{key} `{c}` is not a column name (at most 63 bytes)"
                ))),
                Some(c) => Ok(Some(c)),
            }
        };
        let soft_delete = column("softDeleteColName", f.soft_delete_col_name)?;
        let synced_at = column("syncedAtColName", f.synced_at_col_name)?;
        if soft_delete.is_some() && soft_delete == synced_at {
            return Err(unprocessable(
                "softDeleteColName and syncedAtColName name the same column".into(),
            ));
        }
        if f.table_mappings.is_empty() {
            return Err(Failure::bad(
                "tableMappings is empty: name at least one table",
            ));
        }
        let mut client = self.client().await?;
        let s = self.schema();
        let mut tables = Vec::new();
        let mut exclude = std::collections::BTreeMap::new();
        let mut renames = std::collections::BTreeMap::new();
        for m in &f.table_mappings {
            let id = m.source_table_identifier.as_str();
            let Some((schema, table)) =
                crate::config::split_table(id).filter(|_| !id.contains(['*', '?', ',', '[', ']']))
            else {
                return Err(Failure::bad(format!(
                    "sourceTableIdentifier `{id}` is not `schema.table`"
                )));
            };
            if let Some(d) = m.destination_table_identifier.as_deref() {
                if !d.is_empty() && d != id {
                    renames.insert(id.to_string(), d.to_string());
                }
            }
            let row = client
                .query_one(
                    &format!(
                        "select c.oid is not null, c.relkind::text in ('r', 'p'), ({key}) is not null,
                                array(select a.attname::text from pg_catalog.pg_attribute a
                                       where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped),
                                array(select a.attname::text from pg_catalog.pg_index i
                                        join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
                                       where i.indexrelid = ({key}))
                           from (select 1) x
                           left join pg_catalog.pg_class c
                             on c.relname = $2 and c.relnamespace = (select n.oid from pg_catalog.pg_namespace n where n.nspname = $1)",
                        key = ddlwatcher::key_index_sql("c.oid")
                    ),
                    &[&schema, &table],
                )
                .await
                .map_err(pg("looking up the mirror's tables"))?;
            let (exists, is_table, keyed): (bool, Option<bool>, bool) =
                (row.get(0), row.get(1), row.get(2));
            if !exists || is_table != Some(true) {
                return Err(unprocessable(format!(
                    "table `{id}` does not exist in database `{}` (or is not a table)",
                    self.config.database.database
                )));
            }
            if !keyed && !self.config.keyless_tables {
                return Err(unprocessable(format!(
                    "table `{id}` has no primary key or unique key: add one, or set keyless_tables: true in the source's config"
                )));
            }
            let (columns, key): (Vec<String>, Vec<String>) = (row.get(3), row.get(4));
            for c in &m.exclude {
                if !columns.contains(c) {
                    return Err(unprocessable(format!(
                        "`{id}` has no column `{c}` to exclude"
                    )));
                }
                if key.contains(c) {
                    return Err(unprocessable(format!(
                        "`{id}`: column `{c}` is in its key and cannot be excluded"
                    )));
                }
            }
            if !m.exclude.is_empty() {
                let mut cols = m.exclude.clone();
                cols.dedup();
                exclude.insert(id.to_string(), cols);
            }
            tables.push(id.to_string());
        }
        let peer: Option<(String, Value)> = client
            .query_opt(
                &format!("select kind, config from {s}.peer where name = $1"),
                &[&f.destination_name],
            )
            .await
            .map_err(pg("reading peers"))?
            .map(|r| (r.get(0), r.get(1)));
        match &peer {
            None => {
                return Err(unprocessable(format!(
                    "destinationName `{}`: no such peer (create it with POST /api/v1/peers/create, type PGTELEPORT)",
                    f.destination_name
                )))
            }
            Some((kind, _)) if kind != "pgteleport" => {
                return Err(unprocessable(format!(
                    "destinationName `{}` is a {kind} peer: a mirror's destination is a pgteleport target instance (a PGTELEPORT peer) that applies the batches",
                    f.destination_name
                )))
            }
            Some(_) => {}
        }
        let definition = crate::mirror::Definition {
            destination_name: f.destination_name.clone(),
            tables,
            do_initial_snapshot: f.do_initial_snapshot,
            snapshot_max_parallel_workers: f
                .snapshot_max_parallel_workers
                .filter(|n| *n > 0)
                .map(|n| n as usize),
            soft_delete_col_name: soft_delete,
            synced_at_col_name: synced_at,
            exclude,
            max_batch_size: f.max_batch_size.filter(|n| *n > 0).map(|n| n as usize),
            renames,
        };
        // The document admits any destination string; what PostgreSQL or the mapping cannot
        // take is 422, like the other names the request refers to.
        crate::config::check_renames(&definition.renames, false).map_err(|(from, m)| {
            unprocessable(format!(
                "tableMappings `{from}`: destinationTableIdentifier: {m}"
            ))
        })?;
        let renames = crate::config::parse_renames(&definition.renames);
        let tables = definition.tables.iter().filter_map(|t| t.split_once('.'));
        if let Some(((fs, ft), (ts, tt))) = crate::config::rename_onto_kept(&renames, tables) {
            return Err(unprocessable(format!(
                "tableMappings `{fs}.{ft}`: destinationTableIdentifier `{ts}.{tt}` is the name table `{ts}.{tt}` keeps on the target"
            )));
        }
        let value = serde_json::to_value(&definition)
            .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        crate::mirror::target_of(&value, peer.as_ref().map(|(_, c)| c)).map_err(unprocessable)?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let existing: Option<Value> = tx
            .query_opt(
                &format!("select definition from {s}.mirror where name = $1 for update"),
                &[&name],
            )
            .await
            .map_err(pg("reading mirrors"))?
            .map(|r| r.get(0));
        if let Some(e) = existing {
            return if e == value {
                Ok((
                    StatusCode::OK,
                    json!({"workflowId": name, "status": "unchanged"}),
                ))
            } else {
                Err(Failure(
                    StatusCode::CONFLICT,
                    format!("mirror `{name}` exists with another definition; terminate it and create one with another name"),
                ))
            };
        }
        let n = tx
            .execute(
                &format!("insert into {s}.mirror (name, definition) values ($1, $2) on conflict do nothing"),
                &[&name, &value],
            )
            .await
            .map_err(pg("recording the mirror"))?;
        // Listed (SETUP) at once; the pipeline installs its capture when it restarts.
        tx.execute(&crate::capture::register_target_sql(&s), &[&name])
            .await
            .map_err(pg("recording the mirror's state"))?;
        tx.commit().await.map_err(pg("commit"))?;
        if n == 0 {
            return Err(Failure(
                StatusCode::CONFLICT,
                format!("mirror `{name}` was created meanwhile"),
            ));
        }
        tracing::info!(mirror = %name, tables = definition.tables.len(), "mirror created");
        if let Some(r) = &self.reload {
            r.notify_one();
        }
        Ok((
            StatusCode::CREATED,
            json!({"workflowId": name, "status": "created"}),
        ))
    }

    async fn alerts_list(&self) -> Answer {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "select id, service_type, config from {}.alert_config order by id",
                    self.schema()
                ),
                &[],
            )
            .await
            .map_err(pg("reading alert configs"))?;
        let configs: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({"id": r.get::<_, i64>(0), "serviceType": r.get::<_, String>(1), "serviceConfig": r.get::<_, Value>(2)})
            })
            .collect();
        Ok((StatusCode::OK, json!({"configs": configs})))
    }

    async fn alert_create(&self, v: Value) -> Answer {
        let req: AlertCreate = parse(v)?;
        let service = req.config.service_type;
        if service != "slack" && service != "webhook" {
            return Err(Failure::bad(format!(
                "`serviceType` `{service}` is not \"slack\" or \"webhook\""
            )));
        }
        let url = &req.config.service_config.url;
        if crate::alerts::split_url(url).is_none() {
            return Err(Failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("`serviceConfig.url` `{url}` is not an http:// or https:// URL"),
            ));
        }
        let c = &req.config.service_config;
        for (key, value, max) in [
            ("lag_seconds", c.lag_seconds, 31_536_000),
            ("queue_mb", c.queue_mb, 1 << 30),
            ("held_minutes", c.held_minutes, 525_600),
            ("open_connections", c.open_connections, 1_000_000),
            ("blocked_seconds", c.blocked_seconds, 31_536_000),
        ] {
            if value.is_some_and(|v| v > max) {
                return Err(Failure(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("`serviceConfig.{key}` must be at most {max}"),
                ));
            }
        }
        let service_config = &serde_json::to_value(&req.config.service_config)
            .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let client = self.client().await?;
        let s = self.schema();
        let inserted = client
            .query_opt(
                &format!(
                    "insert into {s}.alert_config (service_type, config) values ($1, $2)
                     on conflict (service_type, config) do nothing returning id"
                ),
                &[&service, service_config],
            )
            .await
            .map_err(pg("recording the alert config"))?;
        match inserted {
            Some(r) => Ok((
                StatusCode::CREATED,
                json!({"id": r.get::<_, i64>(0), "status": "created"}),
            )),
            None => {
                let id: i64 = client
                    .query_one(
                        &format!("select id from {s}.alert_config where service_type = $1 and config = $2"),
                        &[&service, service_config],
                    )
                    .await
                    .map_err(pg("reading alert configs"))?
                    .get(0);
                Ok((StatusCode::OK, json!({"id": id, "status": "unchanged"})))
            }
        }
    }

    /// Prometheus text: per mirror its state, pending batches and events, the age of the
    /// oldest unshipped batch, acknowledged batches and transmit failures; the queue's
    /// size; on a target, batches, events and statements applied per source.
    async fn metrics(&self) -> Result<String, Failure> {
        let client = self.client().await?;
        let s = self.schema();
        let mut metrics = Metrics::default();
        let roles = self.config.roles();
        if roles.source {
            let mirrors = crate::mirror::figures(&client, &s, None)
                .await
                .map_err(pg("reading mirrors"))?;
            for f in &mirrors {
                let m = format!("{{mirror=\"{}\"}}", escape_label(&f.name));
                for st in State::ALL {
                    let labels = format!("{{mirror=\"{}\",state=\"{st}\"}}", escape_label(&f.name));
                    let on = u8::from(st.as_str() == f.state);
                    metrics.add(
                        "pgteleport_mirror_state",
                        "gauge",
                        "1 for the mirror's current state",
                        &labels,
                        on,
                    );
                }
                metrics.add(
                    "pgteleport_batches_acknowledged_total",
                    "counter",
                    "batches the target acknowledged",
                    &m,
                    f.acked,
                );
                metrics.add(
                    "pgteleport_transmit_failures",
                    "gauge",
                    "consecutive failed transmits",
                    &m,
                    f.failures,
                );
                metrics.add(
                    "pgteleport_batches_pending",
                    "gauge",
                    "batches cut and not yet acknowledged",
                    &m,
                    f.pending,
                );
                metrics.add(
                    "pgteleport_queue_events",
                    "gauge",
                    "events in batches not yet acknowledged",
                    &m,
                    f.queued_events,
                );
                metrics.add(
                    "pgteleport_oldest_unshipped_seconds",
                    "gauge",
                    "age of the oldest batch not yet acknowledged (lag)",
                    &m,
                    f.lag_seconds(),
                );
            }
            let bytes = queue_bytes(&client, &s).await?;
            metrics.add(
                "pgteleport_queue_bytes",
                "gauge",
                "size of the queue tables (all mirrors)",
                "",
                bytes,
            );
        }
        for (stage, kind, n) in crate::stage::error_counts() {
            metrics.add(
                "pgteleport_errors_total",
                "counter",
                "failed steps and batches since the process started, by stage (or applier) and kind",
                &format!(
                    "{{stage=\"{}\",kind=\"{kind}\"}}",
                    escape_label(&stage)
                ),
                n,
            );
        }
        for stall in crate::stage::longest_stalls() {
            metrics.add(
                "pgteleport_stage_stalled_seconds",
                "gauge",
                "how long a stage's step has run, while past processing_intervals.stall_report; blocked=\"true\" when it waits for a lock another session holds",
                &format!(
                    "{{stage=\"{}\",blocked=\"{}\"}}",
                    escape_label(&stall.stage),
                    stall.blocked
                ),
                stall.seconds,
            );
        }
        if roles.target {
            let rows = client
                .query(
                    &format!(
                        "select source, target, seq, events, runs,
                                extract(epoch from clock_timestamp() - applied_at)::float8
                           from {s}.applied order by source, target"
                    ),
                    &[],
                )
                .await
                .map_err(pg("reading applied positions"))?;
            for r in &rows {
                let l = format!(
                    "{{source=\"{}\",target=\"{}\"}}",
                    escape_label(r.get(0)),
                    escape_label(r.get(1))
                );
                metrics.add(
                    "pgteleport_applied_batches_total",
                    "counter",
                    "batches applied",
                    &l,
                    r.get::<_, i64>(2),
                );
                metrics.add(
                    "pgteleport_applied_events_total",
                    "counter",
                    "events applied",
                    &l,
                    r.get::<_, i64>(3),
                );
                metrics.add(
                    "pgteleport_apply_statements_total",
                    "counter",
                    "statements the applied events took",
                    &l,
                    r.get::<_, i64>(4),
                );
                metrics.add(
                    "pgteleport_seconds_since_last_apply",
                    "gauge",
                    "seconds since the last batch was applied",
                    &l,
                    r.get::<_, f64>(5),
                );
            }
        }
        Ok(metrics.render())
    }
}

/// Size of the queue tables, in bytes.
async fn queue_bytes(client: &tokio_postgres::Client, s: &str) -> Result<i64, Failure> {
    crate::vacuum::queue_bytes(client, s)
        .await
        .map_err(pg("reading the queue's size"))
}

/// Prometheus text, by metric family (each with its HELP and TYPE once).
#[derive(Default)]
struct Metrics(BTreeMap<&'static str, (&'static str, &'static str, Vec<String>)>);

impl Metrics {
    /// One sample `name{labels} value` (`labels` with its braces, or empty).
    fn add(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: &str,
        value: impl std::fmt::Display,
    ) {
        self.0
            .entry(name)
            .or_insert((kind, help, Vec::new()))
            .2
            .push(format!("{name}{labels} {value}"));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (name, (kind, help, lines)) in &self.0 {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::bad(format!("invalid request: {e}")))
}

fn non_empty(name: String) -> Result<String, Failure> {
    if name.is_empty() {
        Err(Failure::bad("`flowJobName` must not be empty"))
    } else {
        Ok(name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StatusRequest {
    flow_job_name: String,
    #[serde(default)]
    include_flow_info: Option<bool>,
}

/// `POST /api/v1/flows/cdc/create`, in PeerDB's shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CdcCreate {
    connection_configs: FlowConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FlowConfig {
    flow_job_name: String,
    #[serde(default)]
    source_name: Option<String>,
    destination_name: String,
    table_mappings: Vec<TableMapping>,
    #[serde(default)]
    do_initial_snapshot: bool,
    #[serde(default)]
    snapshot_max_parallel_workers: Option<u32>,
    #[serde(default)]
    max_batch_size: Option<u32>,
    #[serde(default)]
    soft_delete_col_name: Option<String>,
    #[serde(default)]
    synced_at_col_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TableMapping {
    source_table_identifier: String,
    #[serde(default)]
    destination_table_identifier: Option<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StateChangeRequest {
    flow_job_name: String,
    requested_flow_state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertCreate {
    config: AlertConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AlertConfig {
    #[serde(alias = "service_type")]
    service_type: String,
    #[serde(alias = "service_config")]
    service_config: AlertServiceConfig,
}

/// Where alerts go and when they fire.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AlertServiceConfig {
    /// Slack incoming-webhook URL, or any HTTP endpoint that takes a JSON POST.
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    /// Alert when a mirror's lag exceeds this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lag_seconds: Option<u64>,
    /// Alert when the queue exceeds this many MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queue_mb: Option<u64>,
    /// Alert when a batch has been held or failing for this many minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held_minutes: Option<u64>,
    /// Alert when the instance's database has more open connections than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open_connections: Option<u64>,
    /// Alert when a stage's step has waited this many seconds for a lock another session
    /// holds (see `processing_intervals.stall_report`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blocked_seconds: Option<u64>,
}

/// A peer name: 1–63 letters, digits, `_` or `-`, starting with a letter or `_`.
fn check_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Failure::bad(format!(
            "peer name `{name}` must be 1–63 letters, digits, `_` or `-`, starting with a letter or `_`"
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerCreate {
    peer: Peer,
    #[serde(default, alias = "allowUpdate")]
    allow_update: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Peer {
    name: String,
    /// `POSTGRES` (or PeerDB's number 3) or `PGTELEPORT`.
    #[serde(rename = "type")]
    kind: Value,
    #[serde(default, alias = "postgresConfig")]
    postgres_config: Option<PostgresPeer>,
    #[serde(default, alias = "pgteleportConfig")]
    pgteleport_config: Option<TargetPeer>,
}

/// A PostgreSQL database.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PostgresPeer {
    host: String,
    #[serde(default = "default_port")]
    port: u16,
    user: String,
    #[serde(default)]
    password: String,
    database: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sslmode: Option<String>,
    /// libpq-style options (`connect_timeout`, `application_name`, `options`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    options: BTreeMap<String, String>,
}

fn default_port() -> u16 {
    5432
}

/// A pgteleport target instance.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TargetPeer {
    endpoint: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_token: Option<String>,
}

impl Peer {
    /// The stored kind and configuration.
    fn definition(&self) -> Result<(String, Value), Failure> {
        let kind = match &self.kind {
            Value::String(s) if s.eq_ignore_ascii_case("postgres") => "postgres",
            Value::Number(n) if n.as_u64() == Some(3) => "postgres",
            Value::String(s) if s.eq_ignore_ascii_case("pgteleport") => "pgteleport",
            other => {
                return Err(Failure::bad(format!(
                    "peer type {other} is not POSTGRES (3) or PGTELEPORT"
                )))
            }
        };
        let config = match (kind, &self.postgres_config, &self.pgteleport_config) {
            ("postgres", Some(c), None) => serde_json::to_value(c),
            ("pgteleport", None, Some(c)) => serde_json::to_value(c),
            ("postgres", _, _) => {
                return Err(Failure::bad(
                    "a POSTGRES peer needs `postgres_config` (host, port, user, password, database; sslmode, options) and nothing else",
                ))
            }
            _ => {
                return Err(Failure::bad(
                    "a PGTELEPORT peer needs `pgteleport_config` (endpoint: {hostname, port, tls}, auth_token) and nothing else",
                ))
            }
        }
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok((kind.to_string(), config))
    }
}

/// Connects to the peer (a PostgreSQL peer: logs in; a target: `GET /healthz`), with the
/// driver's message on failure (422).
async fn validate_peer(name: &str, kind: &str, config: &Value) -> Result<(), Failure> {
    let unprocessable = |m: String| Failure(StatusCode::UNPROCESSABLE_ENTITY, m);
    if kind == "postgres" {
        let p: PostgresPeer =
            serde_json::from_value(config.clone()).map_err(|e| Failure::bad(e.to_string()))?;
        let mut options = p.options.clone();
        if let Some(m) = &p.sslmode {
            options.insert("sslmode".into(), m.clone());
        }
        let database = Database {
            name: format!("peer {name}"),
            database: p.database,
            hostname: p.host,
            username: p.user,
            password: Secret::new(p.password),
            port: p.port,
            sslmode: None,
            sslrootcert: None,
            options,
        };
        crate::config::check_connection_options(&database)
            .map_err(|m| unprocessable(format!("peer `{name}`: {m}")))?;
        let connect = db::connect(&database, "peer check");
        let client = tokio::time::timeout(Duration::from_secs(15), connect)
            .await
            .map_err(|_| unprocessable(format!("peer `{name}`: no answer within 15 s")))?
            .map_err(|e| unprocessable(format!("peer `{name}`: {e}")))?;
        client
            .simple_query("select 1")
            .await
            .map_err(|e| unprocessable(format!("peer `{name}`: {}", db::describe(&e))))?;
        return Ok(());
    }
    let p: TargetPeer =
        serde_json::from_value(config.clone()).map_err(|e| Failure::bad(e.to_string()))?;
    let endpoint: Endpoint = serde_json::from_value(p.endpoint)
        .map_err(|e| Failure::bad(format!("peer `{name}`: endpoint: {e}")))?;
    let (base, connector) = crate::tls::https_connector(&endpoint)
        .map_err(|e| unprocessable(format!("peer `{name}`: {e}")))?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(connector);
    let req = Request::get(format!("{base}/healthz"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| {
            unprocessable(format!(
                "peer `{name}`: {base} is not a usable address: {e}"
            ))
        })?;
    let resp = tokio::time::timeout(Duration::from_secs(15), http.request(req))
        .await
        .map_err(|_| unprocessable(format!("peer `{name}`: {base} did not answer within 15 s")))?
        .map_err(|e| unprocessable(format!("peer `{name}`: {base}: {}", db::error_chain(&e))))?;
    if resp.status() != StatusCode::OK {
        return Err(unprocessable(format!(
            "peer `{name}`: {base}/healthz answered {}",
            resp.status()
        )));
    }
    Ok(())
}

/// The methods a known path takes (for 405 and its `Allow` header).
fn allowed_methods(path: &str) -> Option<&'static str> {
    Some(match path {
        "/readyz"
        | "/metrics"
        | "/api/v1/openapi.json"
        | "/api/v1/mirrors/list"
        | "/api/v1/peers/list" => "GET",
        "/api/v1/mirrors/status"
        | "/api/v1/mirrors/state_change"
        | "/api/v1/peers/create"
        | "/api/v1/flows/cdc/create" => "POST",
        "/api/v1/alerts/config" => "GET, POST",
        _ => return None,
    })
}

/// Whether any string value of `v` holds U+0000, which PostgreSQL cannot store.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        // Keys are left to each request's own checks: an unknown field (400) or connection
        // option (422) is refused with its name.
        Value::Object(o) => o.values().any(has_nul),
        _ => false,
    }
}

async fn body(req: Request<Incoming>) -> Result<Value, Failure> {
    let bytes = Limited::new(req.into_body(), MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| {
            Failure::bad(format!(
                "could not read the body (at most {MAX_REQUEST} bytes): {e}"
            ))
        })?
        .to_bytes();
    if bytes.is_empty() {
        return Err(Failure::bad("the body is empty: send a JSON object"));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::bad(format!("the body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Failure::bad("the body must be a JSON object"));
    }
    if has_nul(&v) {
        return Err(Failure::bad(
            "a string of the body holds U+0000, which PostgreSQL cannot store",
        ));
    }
    Ok(v)
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn failure(f: Failure) -> Response<Body> {
    if f.0.is_server_error() {
        tracing::warn!(status = f.0.as_u16(), error = %f.1, "API request failed");
    }
    reply(f.0, json!({"error": f.1}))
}

/// The OpenAPI document of the API (checked in as `openapi.json`).
pub fn openapi() -> Value {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is valid JSON")
}
