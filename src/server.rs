//! The instance's HTTP server: health, and on a target the batch endpoint.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | 200 `{"status":"ok"}` |
//! | `POST /v1/batches` | 200 applied or duplicate (`applied_seq`); 400 malformed or truncated; 401 token; 403 a source token for another source; 408 the body stalled; 409 out of sequence (`applied_seq`); 413 a segment too large; 422 target schema behind; 503 database unavailable; 500 other apply failure |
//! | `GET /v1/position/{source}/{target}` | 200 `{"applied_seq": n}` |
//! | `GET /v1/stalls` | 200 `{"stalls": [{"stage", "seconds", "blocked", "detail"}]}`: the steps running past `stall_report` now (an initial load's sender shows them while its request waits) |
//! | `GET /readyz` | 200 `{"status":"ready"}` when the database answers, else 503 |
//! | `GET /metrics` | Prometheus text (see [`crate::api`]) |
//! | `/api/v1/…` | the management API of a source instance (see [`crate::api`], `openapi.json`) |
//!
//! Every error body is JSON `{"error": "…"}`; nothing is ever an error behind 200.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::applier::{Applier, ApplyError, Outcome, Segments};
use crate::config::{Secret, Server as ServerConfig};
use crate::wire;

/// Shared state of the HTTP handlers.
pub struct Server {
    applier: Option<Arc<Applier>>,
    /// The REST API, `/metrics` and `/readyz`.
    api: Option<Arc<crate::api::Api>>,
    token: Option<Secret>,
    source_tokens: std::collections::BTreeMap<String, Secret>,
    max_body: usize,
    max_batch: usize,
    read_timeout: Duration,
}

type Body = Full<Bytes>;

impl Server {
    pub fn new(config: &ServerConfig, applier: Option<Arc<Applier>>) -> Self {
        Self {
            applier,
            api: None,
            token: config.auth_token.clone(),
            source_tokens: config.source_tokens.clone(),
            max_body: config.max_body_bytes,
            max_batch: config.max_batch_bytes,
            read_timeout: Duration::from_secs(config.read_timeout_seconds),
        }
    }

    /// Also serves the REST API (`/api/v1`), `/metrics` and `/readyz`.
    pub fn with_api(mut self, api: crate::api::Api) -> Self {
        self.api = Some(Arc::new(api));
        self
    }

    /// Serves connections from `listener` until `shutdown`; in-flight requests finish.
    /// With `tls`, every connection is HTTPS (a handshake that fails or takes over 10 s is
    /// dropped).
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: CancellationToken,
    ) {
        // Connection tasks live in a JoinSet: if this task is aborted (a simulated crash),
        // dropping the set aborts every request in flight, as a killed process would.
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let (stream, peer) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let shutdown = shutdown.clone();
            let tls = tls.clone();
            connections.spawn(async move {
                match tls {
                    None => this.serve(stream, peer, shutdown).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => this.serve(s, peer, shutdown).await,
                            Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        while connections.join_next().await.is_some() {}
    }

    /// Serves one connection until it ends; on shutdown, lets its request in flight finish.
    async fn serve<IO>(self: Arc<Self>, io: IO, peer: SocketAddr, shutdown: CancellationToken)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(move |req| {
            let this = self.clone();
            async move { Ok::<_, std::convert::Infallible>(this.handle(req, peer).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "http connection ended") },
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path().to_string();
        if let Some(api) = &self.api {
            if path.starts_with("/api/") || path == "/metrics" || path == "/readyz" {
                if let Some(r) = api.handle(req).await {
                    return r;
                }
                return if path.starts_with("/api/") {
                    error(
                        StatusCode::NOT_FOUND,
                        &format!("no such endpoint: {path} (the API is under /api/v1)"),
                    )
                } else {
                    error(StatusCode::METHOD_NOT_ALLOWED, &format!("{path}: use GET"))
                };
            }
        }
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => reply(StatusCode::OK, json!({"status": "ok"})),
            (&Method::POST, "/v1/batches") => self.batches(req, peer).await,
            (&Method::GET, p) if p.starts_with("/v1/position/") => self.position(&req, p).await,
            (&Method::GET, "/v1/stalls") => match self.authorize(&req) {
                // What an initial load's sender shows while its request waits here.
                Ok(_) => reply(StatusCode::OK, json!({"stalls": crate::stage::stalls()})),
                Err(r) => *r,
            },
            (&Method::POST, p) if p.starts_with("/v1/load/") => self.load(req, peer).await,
            (_, "/v1/batches") => error(StatusCode::METHOD_NOT_ALLOWED, "use POST /v1/batches"),
            _ => error(
                StatusCode::NOT_FOUND,
                &format!("no such endpoint: {} {path}", req.method()),
            ),
        }
    }

    /// Checks the bearer token in constant time; returns the applier and, for a token of
    /// `server.source_tokens`, the one source it admits. Logs never show the token.
    fn authorize<B>(
        &self,
        req: &Request<B>,
    ) -> Result<(&Applier, Option<String>), Box<Response<Body>>> {
        let Some(applier) = self.applier.as_deref() else {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "this instance does not accept batches: it has no server.auth_token (or allow_unauthenticated)",
            )));
        };
        if self.token.is_none() && self.source_tokens.is_empty() {
            return Ok((applier, None)); // allow_unauthenticated
        }
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let same = |p: &str, t: &Secret| bool::from(p.as_bytes().ct_eq(t.expose().as_bytes()));
        let bound = |p: &str| self.source_tokens.iter().find(|(_, t)| same(p, t));
        match presented {
            Some(p) if self.token.as_ref().is_some_and(|t| same(p, t)) => Ok((applier, None)),
            Some(p) if let Some((source, _)) = bound(p) => Ok((applier, Some(source.clone()))),
            Some(_) => Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "wrong bearer token",
            ))),
            None => Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "missing `Authorization: Bearer <token>` header",
            ))),
        }
    }

    async fn position(&self, req: &Request<Incoming>, path: &str) -> Response<Body> {
        let (applier, admitted) = match self.authorize(req) {
            Ok(a) => a,
            Err(r) => return *r,
        };
        let parts: Vec<&str> = path
            .trim_start_matches("/v1/position/")
            .split('/')
            .collect();
        let [source, target] = parts.as_slice() else {
            return error(
                StatusCode::NOT_FOUND,
                "use GET /v1/position/{source}/{target}",
            );
        };
        if let Err(r) = admits(&admitted, source) {
            return *r;
        }
        match applier.position(source, target).await {
            Ok(seq) => reply(
                StatusCode::OK,
                json!({"source": source, "target": target, "applied_seq": seq}),
            ),
            Err(e) => apply_error(&e),
        }
    }

    async fn batches(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let (applier, admitted) = match self.authorize(&req) {
            Ok(a) => a,
            Err(r) => {
                tracing::warn!(%peer, status = r.status().as_u16(), "batch refused: not authorized");
                return *r;
            }
        };
        let zstd = match req
            .headers()
            .get(CONTENT_ENCODING)
            .map(HeaderValue::as_bytes)
        {
            None | Some(b"identity") => false,
            Some(b"zstd") => true,
            Some(other) => {
                return error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &format!(
                        "content-encoding `{}` is not supported; use zstd or none",
                        String::from_utf8_lossy(other)
                    ),
                )
            }
        };
        // The batch is applied while it streams in: segment by segment, in one transaction.
        let reader = match wire::SegmentReader::new(zstd, self.max_batch) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let mut segments = BodySegments {
            body: req.into_body(),
            reader,
            ended: false,
            read_timeout: self.read_timeout,
            admitted,
        };
        let span = tracing::info_span!("apply", %peer);
        let started = std::time::Instant::now();
        let result =
            tracing::Instrument::instrument(applier.apply(&mut segments), span.clone()).await;
        let _e = span.enter();
        match result {
            Ok(Outcome::Applied {
                applied_seq,
                ddl_version,
                events,
                runs,
            }) => {
                tracing::info!(
                    batch_seq = applied_seq,
                    events,
                    runs,
                    ms = started.elapsed().as_millis() as u64,
                    "batch applied"
                );
                reply(
                    StatusCode::OK,
                    json!({"status": "applied", "applied_seq": applied_seq, "ddl_version": ddl_version}),
                )
            }
            Ok(Outcome::Duplicate { applied_seq }) => {
                tracing::info!(applied_seq, "batch already applied; acknowledged again");
                reply(
                    StatusCode::OK,
                    json!({"status": "duplicate", "applied_seq": applied_seq}),
                )
            }
            Err(e) => {
                crate::stage::count_error("applier", apply_error_kind(&e));
                tracing::warn!(error = %e, "batch not applied");
                apply_error(&e)
            }
        }
    }
}

impl Server {
    /// The initial load's endpoints: prepare, start, copy (streamed), finish.
    async fn load(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let (applier, admitted) = match self.authorize(&req) {
            Ok(a) => a,
            Err(r) => {
                tracing::warn!(%peer, status = r.status().as_u16(), "load request refused: not authorized");
                return *r;
            }
        };
        let path = req.uri().path().to_string();
        if path == "/v1/load/copy" {
            let header = req
                .headers()
                .get("x-pgteleport-copy")
                // Raw bytes: a sender may have put UTF-8 there (HTTP allows it, `to_str` not).
                .map(|h| serde_json::from_slice::<wire::CopyHeader>(h.as_bytes()));
            let header = match header {
                Some(Ok(h)) => h,
                Some(Err(e)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("x-pgteleport-copy header: {e}"),
                    )
                }
                None => return error(StatusCode::BAD_REQUEST, "missing x-pgteleport-copy header"),
            };
            if let Err(r) = admits(&admitted, &header.source) {
                return *r;
            }
            let started = std::time::Instant::now();
            return match applier
                .watch(applier.load_copy(&header, req.into_body()))
                .await
            {
                Ok(Some(rows)) => {
                    tracing::info!(table = %format!("{}.{}", header.schema, header.table), range = header.range, rows, ms = started.elapsed().as_millis() as u64, "range copied");
                    reply(StatusCode::OK, json!({"status": "copied", "rows": rows}))
                }
                Ok(None) => reply(StatusCode::OK, json!({"status": "duplicate", "rows": 0})),
                Err(e) => {
                    tracing::warn!(error = %e, "range not copied");
                    apply_error(&e)
                }
            };
        }
        let body = match Limited::new(req.into_body(), self.max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the body failed: {e}"),
                )
            }
        };
        // Every load message names its source: a source token admits its own only.
        #[derive(serde::Deserialize)]
        struct Named {
            source: String,
        }
        if let Ok(Named { source }) = serde_json::from_slice::<Named>(&body) {
            if let Err(r) = admits(&admitted, &source) {
                return *r;
            }
        } else if admitted.is_some() {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid request: it names no `source`",
            );
        }
        fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response<Body>>> {
            serde_json::from_slice(body).map_err(|e| {
                Box::new(error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid request: {e}"),
                ))
            })
        }
        let result = match path.as_str() {
            "/v1/load/prepare" => match parse::<wire::LoadPrepare>(&body) {
                Ok(m) => applier
                    .watch(applier.load_prepare(&m))
                    .await
                    .map(|(t, w)| json!({"tables": t, "wal_level_minimal": w})),
                Err(r) => return *r,
            },
            "/v1/load/done" => match parse::<wire::LoadDone>(&body) {
                Ok(m) => applier.load_done(&m).await.map(|d| json!({"done": d})),
                Err(r) => return *r,
            },
            "/v1/load/start" => match parse::<wire::LoadStart>(&body) {
                Ok(m) => applier
                    .watch(applier.load_start(&m))
                    .await
                    .map(|()| json!({"status": "started"})),
                Err(r) => return *r,
            },
            "/v1/load/finish" => match parse::<wire::LoadFinish>(&body) {
                Ok(m) => applier
                    .watch(applier.load_finish(&m))
                    .await
                    .map(|rows| json!({"status": "done", "rows": rows})),
                Err(r) => return *r,
            },
            "/v1/load/foreign-keys" => match parse::<wire::LoadForeignKeys>(&body) {
                Ok(m) => applier
                    .watch(applier.load_foreign_keys(&m))
                    .await
                    .map(|added| json!(added)),
                Err(r) => return *r,
            },
            _ => {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("no such endpoint: POST {path}"),
                )
            }
        };
        match result {
            Ok(v) => reply(StatusCode::OK, v),
            Err(e) => {
                tracing::warn!(error = %e, path, "load request failed");
                apply_error(&e)
            }
        }
    }
}

/// The segments of a batch request body, decoded as its chunks arrive.
struct BodySegments {
    body: Incoming,
    reader: wire::SegmentReader,
    ended: bool,
    read_timeout: Duration,
    /// The only source the request's token admits (`server.source_tokens`).
    admitted: Option<String>,
}

impl Segments for BodySegments {
    async fn next_segment(&mut self) -> Result<Option<wire::Batch>, ApplyError> {
        loop {
            if let Some(s) = self.reader.next_segment().map_err(decode_error)? {
                if let Some(a) = &self.admitted {
                    if *a != s.source {
                        return Err(ApplyError::Forbidden {
                            message: wrong_source(a, &s.source),
                        });
                    }
                }
                return Ok(Some(s));
            }
            if self.ended {
                self.reader.finish().map_err(decode_error)?;
                return Ok(None);
            }
            let frame = tokio::time::timeout(self.read_timeout, self.body.frame())
                .await
                .map_err(|_| ApplyError::Timeout {
                    message: format!(
                        "the batch body sent nothing for {} s (server.read_timeout_seconds); its transaction was rolled back",
                        self.read_timeout.as_secs()
                    ),
                })?;
            match frame {
                None => self.ended = true,
                Some(Err(e)) => {
                    return Err(ApplyError::Unavailable {
                        message: format!("the batch body broke off: {e}"),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.reader.feed(data);
                    }
                }
            }
        }
    }
}

fn wrong_source(admitted: &str, claimed: &str) -> String {
    format!("this token admits source `{admitted}` only, not `{claimed}` (server.source_tokens)")
}

/// Refuses (403) a request for `source` made with a token that admits another source.
fn admits(admitted: &Option<String>, source: &str) -> Result<(), Box<Response<Body>>> {
    match admitted {
        Some(a) if a != source => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            &wrong_source(a, source),
        ))),
        _ => Ok(()),
    }
}

fn decode_error(e: wire::DecodeError) -> ApplyError {
    match e {
        wire::DecodeError::TooLarge { limit } => ApplyError::TooLarge {
            message: format!(
                "a batch segment is larger than server.max_batch_bytes ({limit} bytes) once decompressed"
            ),
        },
        e => ApplyError::BadRequest {
            message: e.to_string(),
        },
    }
}

/// The kind of a batch's failure, as `/metrics` counts it (`pgteleport_errors_total`).
fn apply_error_kind(e: &ApplyError) -> &'static str {
    match e {
        ApplyError::Gap { .. } | ApplyError::Conflict { .. } => "position",
        ApplyError::SchemaBehind { .. } => "schema_behind",
        ApplyError::Unavailable { .. } => "unavailable",
        ApplyError::Failed { .. } => "apply_failed",
        ApplyError::LoadInProgress { .. } => "load_in_progress",
        ApplyError::BadRequest { .. } | ApplyError::TooLarge { .. } => "bad_request",
        ApplyError::Timeout { .. } => "timeout",
        ApplyError::Forbidden { .. } => "forbidden",
    }
}

fn apply_error(e: &ApplyError) -> Response<Body> {
    match e {
        ApplyError::Gap { applied_seq, .. } => reply(
            StatusCode::CONFLICT,
            json!({"error": e.to_string(), "applied_seq": applied_seq, "expected_seq": applied_seq + 1}),
        ),
        ApplyError::SchemaBehind { .. } => error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        ApplyError::Unavailable { .. } => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        ApplyError::Failed { .. } => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        ApplyError::LoadInProgress { .. } => error(StatusCode::LOCKED, &e.to_string()),
        ApplyError::Conflict { .. } => error(StatusCode::CONFLICT, &e.to_string()),
        ApplyError::BadRequest { .. } => error(StatusCode::BAD_REQUEST, &e.to_string()),
        ApplyError::TooLarge { .. } => error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
        ApplyError::Timeout { .. } => error(StatusCode::REQUEST_TIMEOUT, &e.to_string()),
        ApplyError::Forbidden { .. } => error(StatusCode::FORBIDDEN, &e.to_string()),
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    reply(status, json!({"error": message}))
}
