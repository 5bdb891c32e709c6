//! `pgteleport mirror …` and `pgteleport peer …`: the REST API from the command line, with
//! readable tables or `--json` (the API's own answer).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde_json::{json, Value};

use crate::config::{Config, Endpoint, Secret};

/// Where the API is and how to authenticate.
pub struct ApiTarget {
    base: String,
    endpoint: Endpoint,
    password: Option<Secret>,
}

impl ApiTarget {
    /// From `--api URL` (http or https), else the `server` section of `--config FILE`
    /// (an unspecified listen address is reached on 127.0.0.1), else http://127.0.0.1:3000.
    /// The password: PGTELEPORT_API_PASSWORD, else the config's api_password or auth_token.
    pub fn resolve(
        api: Option<&str>,
        config: Option<&Path>,
        ca_cert: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let config = config.map(Config::load).transpose()?;
        let from_config = config.as_ref().and_then(|c| c.server.as_ref());
        let (tls, host, port) = match (api, from_config) {
            (Some(url), _) => parse_url(url)?,
            (None, Some(s)) => {
                let host = match s.hostname.as_str() {
                    "0.0.0.0" | "::" | "" => "127.0.0.1".to_string(),
                    h => h.to_string(),
                };
                (s.tls_cert.is_some(), host, s.port)
            }
            (None, None) => (false, "127.0.0.1".to_string(), 3000),
        };
        let password = std::env::var("PGTELEPORT_API_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .map(Secret::new)
            .or_else(|| from_config.and_then(|s| s.api_password.clone().or(s.auth_token.clone())));
        let endpoint = Endpoint {
            hostname: host,
            port,
            timeout_seconds: 30,
            tls,
            ca_cert,
        };
        let scheme = if tls { "https" } else { "http" };
        Ok(Self {
            base: format!("{scheme}://{}:{}", endpoint.hostname, endpoint.port),
            endpoint,
            password,
        })
    }

    /// One request; a non-2xx answer is an error with the API's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (_, connector) = crate::tls::https_connector(&self.endpoint)?;
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, Full<Bytes>>(connector);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(p) = &self.password {
            req = req.header("authorization", format!("Bearer {}", p.expose()));
        }
        let req = req.body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(30), http.request(req))
            .await
            .map_err(|_| anyhow::anyhow!("{} did not answer within 30 s", self.base))?
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the API at {}: {} (is the source instance running with a `server` section? \
                     give --api URL or --config FILE)",
                    self.base,
                    crate::db::error_chain(&e)
                )
            })?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if !status.is_success() {
            let message = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            let hint = if status.as_u16() == 401 {
                " (set PGTELEPORT_API_PASSWORD)"
            } else {
                ""
            };
            anyhow::bail!("{method} {path}: {status}: {message}{hint}");
        }
        Ok(v)
    }
}

fn parse_url(url: &str) -> anyhow::Result<(bool, String, u16)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        anyhow::bail!("--api `{url}` must start with http:// or https://");
    };
    let authority = rest.trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>()
                .map_err(|_| anyhow::anyhow!("--api `{url}`: port `{p}` is not a number"))?,
        ),
        _ => (authority.to_string(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() || host.contains('/') {
        anyhow::bail!("--api `{url}` must be scheme://host[:port]");
    }
    Ok((tls, host, port))
}

/// A table with a header row, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn render_mirrors(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["mirrors"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|m| {
            vec![
                text(&m["name"]),
                text(&m["state"]),
                text(&m["destinationName"]),
                text(&m["stateChangedAt"]),
                text(&m["stateReason"]),
            ]
        })
        .collect();
    table(
        &["MIRROR", "STATE", "DESTINATION", "SINCE", "REASON"],
        &rows,
    )
}

pub fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mirror {}: {}",
        text(&v["flowJobName"]),
        text(&v["state"])
    );
    if !v["stateReason"].is_null() {
        let _ = writeln!(out, "  reason: {}", text(&v["stateReason"]));
    }
    let _ = writeln!(out, "  since: {}", text(&v["stateChangedAt"]));
    if let Some(info) = v["cdcStatus"].as_object() {
        let ordered: BTreeMap<&String, &Value> = info.iter().collect();
        for (k, val) in ordered {
            let _ = writeln!(out, "  {k}: {}", text(val));
        }
    }
    out
}

pub fn render_peers(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["items"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let (address, database, user) = if let Some(c) = p.get("postgres_config") {
                (
                    format!("{}:{}", text(&c["host"]), text(&c["port"])),
                    text(&c["database"]),
                    text(&c["user"]),
                )
            } else {
                let e = &p["pgteleport_config"]["endpoint"];
                (
                    format!("{}:{}", text(&e["hostname"]), text(&e["port"])),
                    "-".into(),
                    "-".into(),
                )
            };
            vec![
                text(&p["name"]),
                text(&p["type"]),
                address,
                database,
                user,
                text(&p["updatedAt"]),
            ]
        })
        .collect();
    table(
        &["PEER", "TYPE", "ADDRESS", "DATABASE", "USER", "UPDATED"],
        &rows,
    )
}

/// The body of `peer create` for a PostgreSQL peer.
#[allow(clippy::too_many_arguments)]
pub fn postgres_peer(
    name: &str,
    host: &str,
    port: u16,
    user: &str,
    password: Option<String>,
    database: &str,
    sslmode: Option<String>,
    options: &[String],
    allow_update: bool,
) -> anyhow::Result<Value> {
    let mut opts = serde_json::Map::new();
    for o in options {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--option `{o}` must be KEY=VALUE"))?;
        opts.insert(k.to_string(), Value::String(v.to_string()));
    }
    let mut config = json!({"host": host, "port": port, "user": user, "database": database,
                            "password": password.unwrap_or_default()});
    if let Some(m) = sslmode {
        config["sslmode"] = Value::String(m);
    }
    if !opts.is_empty() {
        config["options"] = Value::Object(opts);
    }
    Ok(
        json!({"peer": {"name": name, "type": "POSTGRES", "postgres_config": config}, "allow_update": allow_update}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_url("http://127.0.0.1:3001").unwrap(),
            (false, "127.0.0.1".into(), 3001)
        );
        assert_eq!(
            parse_url("https://api.example/").unwrap(),
            (true, "api.example".into(), 443)
        );
        assert_eq!(
            parse_url("http://[::1]:80").unwrap(),
            (false, "::1".into(), 80)
        );
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://h:port").is_err());
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     BB\nlong  x\n");
    }
}
