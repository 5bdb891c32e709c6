//! Error reporting to Sentry (`sentry_endpoint`, a DSN): ERROR log events (a stage that
//! stopped, the instance failing) and panics become Sentry events with their fields (stage,
//! mirror, batch) as context; INFO and WARN lines ride along as breadcrumbs. Nothing that
//! can hold data leaves: PostgreSQL details are never logged, values a message quotes are
//! replaced, and every secret of the config is blanked out before an event is sent.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::Config;

static GUARD: OnceLock<sentry::ClientInitGuard> = OnceLock::new();

/// Starts the Sentry client when the config names an endpoint; returns whether it did.
pub fn init(config: &Config) -> bool {
    let Some(dsn) = config.sentry_endpoint.as_ref() else {
        return false;
    };
    let dsn: sentry::types::Dsn = match dsn.expose().parse() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("warning: sentry_endpoint is not a valid DSN ({e}); errors are not reported");
            return false;
        }
    };
    let mut secrets: Vec<String> = vec![
        config.database.password.expose().to_string(),
        config
            .sentry_endpoint
            .as_ref()
            .map(|s| s.expose().to_string())
            .unwrap_or_default(),
    ];
    if let Some(s) = &config.server {
        secrets.extend(s.auth_token.iter().map(|t| t.expose().to_string()));
        secrets.extend(s.api_password.iter().map(|t| t.expose().to_string()));
        secrets.extend(s.source_tokens.values().map(|t| t.expose().to_string()));
    }
    for t in config.targets.values() {
        secrets.extend(t.auth_token.iter().map(|t| t.expose().to_string()));
    }
    secrets.retain(|s| s.len() >= 3);
    let instance = config.database.name.clone();
    let mut options = sentry::ClientOptions::new()
        .send_default_pii(false)
        .shutdown_timeout(Duration::from_secs(5));
    options.dsn = Some(dsn);
    options.release = sentry::release_name!();
    options.before_send = Some(Arc::new(move |mut event| {
        scrub_event(&mut event, &secrets);
        event.tags.insert("instance".into(), instance.clone());
        Some(event)
    }));
    options.before_breadcrumb = Some(Arc::new(|mut b| {
        b.message = b.message.map(|m| scrub_values(&m));
        b.data.clear();
        Some(b)
    }));
    let _ = GUARD.set(sentry::init(options));
    true
}

/// The tracing layer that feeds Sentry (a no-op until [`init`] ran).
pub fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::Layer;
    ErrorLayer::new()
        .with_filter(LevelFilter::ERROR)
        .and_then(BreadcrumbLayer::new().with_filter(LevelFilter::INFO))
}

/// Sends what is queued (before the process exits).
pub fn flush() {
    if let Some(client) = sentry::Hub::current().client() {
        client.flush(Some(Duration::from_secs(5)));
    }
}

fn scrub_event(event: &mut sentry::protocol::Event<'static>, secrets: &[String]) {
    let clean = |s: &str| {
        let mut out = scrub_values(s);
        for secret in secrets {
            out = out.replace(secret.as_str(), "[secret]");
        }
        out
    };
    event.message = event.message.as_deref().map(clean);
    if let Some(m) = event.logentry.as_mut() {
        m.message = clean(&m.message);
    }
    for e in event.exception.values.iter_mut() {
        e.value = e.value.as_deref().map(clean);
    }
    for v in event.extra.values_mut() {
        if let sentry::protocol::Value::String(s) = v {
            *s = clean(s);
        }
    }
    for ctx in event.contexts.values_mut() {
        if let sentry::protocol::Context::Other(map) = ctx {
            for v in map.values_mut() {
                if let sentry::protocol::Value::String(s) = v {
                    *s = clean(s);
                }
            }
        }
    }
    event.breadcrumbs.values.iter_mut().for_each(|b| {
        b.message = b.message.as_deref().map(clean);
    });
    event.request = None;
    event.user = None;
    event.server_name = None;
}

/// Replaces what a message quotes after a colon (PostgreSQL's `invalid input syntax for
/// type integer: "abc"`, `Key (id)=(5)`) with a placeholder: values never leave.
pub fn scrub_values(s: &str) -> String {
    // `type integer: "abc"`, then `Key (a, b)=(1, 2)`.
    blank_between(&blank_between(s, ": \"", '"'), ")=(", ')')
}

/// `s` with the text between each `open` and the next `close` replaced by `[value]` (to the
/// end when no `close` follows).
fn blank_between(s: &str, open: &str, close: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(open) {
        out.push_str(&rest[..i + open.len()]);
        out.push_str("[value]");
        let after = &rest[i + open.len()..];
        match after.find(close) {
            Some(j) => {
                out.push(close);
                rest = &after[j + close.len_utf8()..];
            }
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_replaced() {
        assert_eq!(
            scrub_values("invalid input syntax for type integer: \"abc\" (SQLSTATE 22P02)"),
            "invalid input syntax for type integer: \"[value]\" (SQLSTATE 22P02)"
        );
        assert_eq!(
            scrub_values("Key (id, b)=(5, x) already exists"),
            "Key (id, b)=([value]) already exists"
        );
        assert_eq!(
            scrub_values("table `app.t`: 3 rows"),
            "table `app.t`: 3 rows"
        );
    }
}
