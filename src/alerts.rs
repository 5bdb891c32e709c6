//! Alerts: the source instance evaluates each alert configuration (made through
//! `POST /api/v1/alerts/config`) every `processing_intervals.alerts` ms and posts a FIRING
//! message when a threshold is first exceeded and a RESOLVED message when it no longer is —
//! once each: the firing set is kept in `alert_state`, written only after delivery, so a
//! failed delivery is retried at the next evaluation and a restart sends nothing twice.
//!
//! | threshold | value | subject |
//! |---|---|---|
//! | `lag_seconds` | age of the mirror's oldest unacknowledged batch | each mirror |
//! | `held_minutes` | minutes the mirror's transmits have been failing (or its batch held) | each mirror |
//! | `queue_mb` | size of the queue tables | the instance |
//! | `open_connections` | connections to this database | the instance |
//! | `blocked_seconds` | seconds a step has waited for a lock another session holds, as reported past `processing_intervals.stall_report` (the message names the sessions) | each stage |
//!
//! A Slack configuration gets `{"text": …}`; a webhook gets the fields as JSON. Messages
//! carry names and numbers only, never row values; the URL is never logged.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use ddlwatcher::quote_ident;
use http_body_util::Full;
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::config::{Config, Endpoint};
use crate::stage::{Progress, Step, StepError};

/// The alert stage of a source instance.
pub struct Alerter {
    schema: String,
    source: String,
}

/// One evaluated condition.
#[derive(Debug, Clone)]
struct Reading {
    alert: &'static str,
    subject: String,
    value: f64,
    /// More for the message (what a blocked stage waits for).
    detail: Option<String>,
}

impl Alerter {
    pub fn new(config: &Config) -> Self {
        Self {
            schema: quote_ident(&config.internal_schema),
            source: config.database.name.clone(),
        }
    }

    async fn readings(&self, client: &Client) -> Result<Vec<Reading>, StepError> {
        let s = &self.schema;
        let mut out = Vec::new();
        let mirrors = crate::mirror::figures(client, s, None)
            .await
            .map_err(StepError::db("reading mirrors for alerts"))?;
        for f in mirrors.into_iter().filter(|f| f.state != "TERMINATED") {
            out.push(Reading {
                alert: "lag_seconds",
                subject: f.name.clone(),
                value: f.lag_seconds(),
                detail: None,
            });
            out.push(Reading {
                alert: "held_minutes",
                subject: f.name,
                value: f.failing_minutes,
                detail: None,
            });
        }
        let bytes = crate::vacuum::queue_bytes(client, s)
            .await
            .map_err(StepError::db("reading the queue size for alerts"))?;
        let row = client
            .query_one(
                "select count(*)::float8 from pg_catalog.pg_stat_activity where datname = current_database()",
                &[],
            )
            .await
            .map_err(StepError::db("counting connections for alerts"))?;
        out.push(Reading {
            alert: "queue_mb",
            subject: String::new(),
            value: bytes as f64 / 1_048_576.0,
            detail: None,
        });
        out.push(Reading {
            alert: "open_connections",
            subject: String::new(),
            value: row.get(0),
            detail: None,
        });
        // The stages of this process that wait for a lock now (the longest wait of each).
        for stall in crate::stage::longest_stalls()
            .into_iter()
            .filter(|s| s.blocked)
        {
            out.push(Reading {
                alert: "blocked_seconds",
                subject: stall.stage,
                value: stall.seconds,
                detail: Some(stall.detail),
            });
        }
        Ok(out)
    }
}

/// The message of an alert changing state.
fn message(
    source: &str,
    service: &str,
    channel: Option<&str>,
    firing: bool,
    reading: &Reading,
    threshold: f64,
) -> Value {
    let what = match reading.alert {
        "lag_seconds" => format!(
            "lag of mirror `{}` is {:.0} s (threshold {threshold} s)",
            reading.subject, reading.value
        ),
        "held_minutes" => format!(
            "mirror `{}` has been failing or held for {:.1} min (threshold {threshold} min)",
            reading.subject, reading.value
        ),
        "queue_mb" => format!(
            "the queue holds {:.1} MB (threshold {threshold} MB)",
            reading.value
        ),
        "blocked_seconds" if firing => format!(
            "stage `{}` has waited {:.0} s for a lock (threshold {threshold} s): {}",
            reading.subject,
            reading.value,
            reading.detail.as_deref().unwrap_or("")
        ),
        "blocked_seconds" => format!(
            "stage `{}` no longer waits for a lock (threshold {threshold} s)",
            reading.subject
        ),
        _ => format!(
            "{:.0} connections are open (threshold {threshold})",
            reading.value
        ),
    };
    let status = if firing { "FIRING" } else { "RESOLVED" };
    let text = format!("[pgteleport {source}] {status}: {what}");
    if service == "slack" {
        let mut m = json!({"text": text});
        if let Some(c) = channel {
            m["channel"] = Value::String(c.to_string());
        }
        m
    } else {
        json!({
            "status": status.to_lowercase(),
            "alert": reading.alert,
            "mirror": (!reading.subject.is_empty() && reading.alert != "blocked_seconds")
                .then_some(&reading.subject),
            "stage": (reading.alert == "blocked_seconds").then_some(&reading.subject),
            "source": source,
            "value": reading.value,
            "threshold": threshold,
            "message": text,
        })
    }
}

/// Splits an http(s) URL into its endpoint and the path (with query) to request; `None`
/// unless the host is a DNS name or an IP address (IPv6 in brackets) and the path holds no
/// spaces or control characters.
pub(crate) fn split_url(url: &str) -> Option<(Endpoint, String)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse::<u16>() {
            Ok(port) => (h.trim_start_matches('[').trim_end_matches(']'), port),
            Err(_) => (authority, if tls { 443 } else { 80 }),
        },
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let dns = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    };
    let literal = authority.starts_with('[');
    let host_ok = if literal {
        host.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        dns(host) || host.parse::<std::net::Ipv4Addr>().is_ok()
    };
    let path_ok = !path.chars().any(|c| c.is_control() || c.is_whitespace());
    let port_ok = match authority.rsplit_once(':') {
        Some((h, p)) if !literal || h.ends_with(']') => p.parse::<u16>().is_ok_and(|p| p > 0),
        _ => true,
    };
    if !host_ok || !path_ok || !port_ok {
        return None;
    }
    Some((
        Endpoint {
            hostname: host.to_string(),
            port,
            timeout_seconds: 10,
            tls,
            ca_cert: None,
        },
        path,
    ))
}

/// Posts `body` to `url`; an error names the configuration, never the URL (it may hold a
/// token, as Slack's do).
async fn deliver(config_id: i64, url: &str, body: &Value) -> Result<(), String> {
    let (endpoint, path) = split_url(url)
        .ok_or_else(|| format!("alert config {config_id}: the URL is not http(s)"))?;
    let (base, connector) = crate::tls::https_connector(&endpoint)
        .map_err(|e| format!("alert config {config_id}: {e}"))?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(connector);
    let req = hyper::Request::post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|_| format!("alert config {config_id}: the URL is not usable"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
        .await
        .map_err(|_| format!("alert config {config_id}: no answer within 10 s"))?
        .map_err(|e| {
            // The chain may hold the URL: keep only the kind of failure.
            let kind = if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            format!("alert config {config_id}: {kind}")
        })?;
    if !resp.status().is_success() {
        return Err(format!(
            "alert config {config_id}: the receiver answered {}",
            resp.status()
        ));
    }
    Ok(())
}

impl Step for Alerter {
    fn name(&self) -> String {
        "alerts".into()
    }

    async fn step(&mut self, client: &mut Client) -> Result<Progress, StepError> {
        let s = self.schema.clone();
        let configs = client
            .query(
                &format!("select id, service_type, config from {s}.alert_config order by id"),
                &[],
            )
            .await
            .map_err(StepError::db("reading alert configs"))?;
        if configs.is_empty() {
            return Ok(Progress::Idle);
        }
        let mut readings = self.readings(client).await?;
        let firing_rows = client
            .query(
                &format!("select config_id, alert, subject from {s}.alert_state"),
                &[],
            )
            .await
            .map_err(StepError::db("reading firing alerts"))?;
        let firing: HashSet<(i64, String, String)> = firing_rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        // A stage that waited and no longer does has no reading: 0, to resolve its alert.
        for (_, alert, subject) in &firing {
            if alert == "blocked_seconds"
                && !readings
                    .iter()
                    .any(|r| r.alert == "blocked_seconds" && &r.subject == subject)
            {
                readings.push(Reading {
                    alert: "blocked_seconds",
                    subject: subject.clone(),
                    value: 0.0,
                    detail: None,
                });
            }
        }
        let mut failures = Vec::new();
        for c in &configs {
            let (id, service, config): (i64, String, Value) = (c.get(0), c.get(1), c.get(2));
            let Some(url) = config.get("url").and_then(Value::as_str) else {
                continue;
            };
            let channel = config.get("channel").and_then(Value::as_str);
            let thresholds: HashMap<&str, f64> = [
                "lag_seconds",
                "queue_mb",
                "held_minutes",
                "open_connections",
                "blocked_seconds",
            ]
            .into_iter()
            .filter_map(|k| config.get(k).and_then(Value::as_f64).map(|v| (k, v)))
            .collect();
            for r in &readings {
                let Some(&threshold) = thresholds.get(r.alert) else {
                    continue;
                };
                let key = (id, r.alert.to_string(), r.subject.clone());
                let now_firing = r.value > threshold;
                if now_firing == firing.contains(&key) {
                    continue; // de-duplicated: nothing changed
                }
                let body = message(&self.source, &service, channel, now_firing, r, threshold);
                if let Err(e) = deliver(id, url, &body).await {
                    failures.push(e);
                    continue; // not recorded: tried again at the next evaluation
                }
                let sql = if now_firing {
                    format!("insert into {s}.alert_state (config_id, alert, subject, value) values ($1, $2, $3, $4) on conflict do nothing")
                } else {
                    format!("delete from {s}.alert_state where config_id = $1 and alert = $2 and subject = $3 and $4::float8 is not null")
                };
                client
                    .execute(&sql, &[&id, &r.alert, &r.subject, &r.value])
                    .await
                    .map_err(StepError::db("recording an alert"))?;
                tracing::info!(
                    config = id,
                    alert = r.alert,
                    subject = %r.subject,
                    value = r.value,
                    threshold,
                    state = if now_firing { "firing" } else { "resolved" },
                    "alert delivered"
                );
            }
        }
        if !failures.is_empty() {
            return Err(StepError::Other(format!(
                "alert delivery failed: {}",
                failures.join("; ")
            )));
        }
        Ok(Progress::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        let (e, p) = split_url("https://hooks.slack.com/services/T/B/x?a=1").unwrap();
        assert_eq!(
            (e.hostname.as_str(), e.port, e.tls, p.as_str()),
            ("hooks.slack.com", 443, true, "/services/T/B/x?a=1")
        );
        let (e, p) = split_url("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (e.hostname.as_str(), e.port, p.as_str()),
            ("127.0.0.1", 9000, "/")
        );
        assert!(split_url("ftp://x").is_none());
        assert!(split_url("http://[::1/x").is_none());
        assert!(split_url("http://h:99999/").is_none());
        assert!(split_url("http://h/a b").is_none());
        assert!(split_url("http://\u{1}/").is_none());
        let (e, _) = split_url("http://[::1]:8080/x").unwrap();
        assert_eq!((e.hostname.as_str(), e.port), ("::1", 8080));
        assert!(split_url("http:///x").is_none());
    }

    #[test]
    fn messages_name_what_and_how_much() {
        let r = Reading {
            alert: "lag_seconds",
            subject: "m1".into(),
            value: 42.0,
            detail: None,
        };
        let slack = message("src", "slack", Some("#ops"), true, &r, 30.0);
        assert_eq!(
            slack["text"],
            "[pgteleport src] FIRING: lag of mirror `m1` is 42 s (threshold 30 s)"
        );
        assert_eq!(slack["channel"], "#ops");
        let hook = message("src", "webhook", None, false, &r, 30.0);
        assert_eq!(
            (hook["status"].as_str(), hook["mirror"].as_str()),
            (Some("resolved"), Some("m1"))
        );
    }
}
