//! TLS to PostgreSQL with rustls, following libpq's `sslmode` meanings:
//!
//! | sslmode | encrypted | certificate chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | – | – |
//! | `prefer` | if the server offers it | no | no |
//! | `require` | yes | only when `sslrootcert` is given (as libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! Roots: `sslrootcert` (PEM) when given, otherwise the Mozilla roots (webpki-roots).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why a TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: {message}")]
    RootCert {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("{key} {path}: {message}")]
    ServerCert {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// What the driver needs for one `sslmode`.
pub enum Tls {
    Plain,
    Rustls(SslMode, MakeRustlsConnect),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(key: &'static str, rootcert: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match rootcert {
        Some(path) => {
            let err = |message: String| TlsError::RootCert {
                key,
                path: path.display().to_string(),
                message,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("holds no PEM certificate".into()));
            }
            for c in certs {
                store.add(c).map_err(|e| err(e.to_string()))?;
            }
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(store)
}

/// Builds the connector for `mode` (one of libpq's names; validated with the config).
pub fn for_mode(mode: &str, rootcert: Option<&Path>) -> Result<Tls, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let config = match mode {
        "disable" => return Ok(Tls::Plain),
        "prefer" | "require" if rootcert.is_none() => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
        "prefer" | "require" | "verify-ca" => {
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots("sslrootcert", rootcert)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        _ => builder
            .with_root_certificates(roots("sslrootcert", rootcert)?)
            .with_no_client_auth(),
    };
    let ssl = if mode == "prefer" {
        SslMode::Prefer
    } else {
        SslMode::Require
    };
    Ok(Tls::Rustls(ssl, MakeRustlsConnect::new(config)))
}

/// `prefer`/`require` without a root certificate: encrypt, trust any certificate (libpq).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The HTTP(S) connector every client of a target uses (transmitter, initial load, check).
pub type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A request body of a target's clients: streamed (batches, COPY data) or whole.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::io::Error>;

/// A client of a target (transmitter, initial load, check).
pub type HttpClient = hyper_util::client::legacy::Client<HttpsConnector, Body>;

/// A request to a target: `path` under its base URL, JSON, with the bearer token when
/// there is one.
pub fn request(
    base: &str,
    token: Option<&str>,
    method: hyper::Method,
    path: &str,
) -> hyper::http::request::Builder {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json");
    match token {
        Some(t) => req.header("authorization", format!("Bearer {t}")),
        None => req,
    }
}

/// An empty request body.
pub fn empty() -> Body {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Sends `req` and reads the whole answer: its status and body; the error chain of a
/// request or answer that failed.
pub async fn exchange(
    http: &HttpClient,
    req: hyper::Request<Body>,
) -> Result<(hyper::StatusCode, bytes::Bytes), String> {
    use http_body_util::BodyExt;
    let resp = http
        .request(req)
        .await
        .map_err(|e| crate::db::error_chain(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// The base URL of `endpoint` and a connector for it: HTTPS (certificate chain and host name
/// verified against `ca_cert`, or the Mozilla roots) when `endpoint.tls`, plain HTTP otherwise.
pub fn https_connector(
    endpoint: &crate::config::Endpoint,
) -> Result<(String, HttpsConnector), TlsError> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
    http.set_nodelay(true);
    http.enforce_http(false);
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots("endpoint.ca_cert", endpoint.ca_cert.as_deref())?)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config);
    let connector = if endpoint.tls {
        builder.https_only().enable_http1().wrap_connector(http)
    } else {
        builder.https_or_http().enable_http1().wrap_connector(http)
    };
    let scheme = if endpoint.tls { "https" } else { "http" };
    Ok((
        format!("{scheme}://{}:{}", endpoint.hostname, endpoint.port),
        connector,
    ))
}

/// The TLS acceptor of a target's HTTP server, when `server.tls_cert` is set.
pub fn acceptor(
    server: &crate::config::Server,
) -> Result<Option<tokio_rustls::TlsAcceptor>, TlsError> {
    let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key) else {
        return Ok(None);
    };
    let err = |key: &'static str, path: &Path, message: String| TlsError::ServerCert {
        key,
        path: path.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err("server.tls_cert", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("server.tls_cert", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err(
            "server.tls_cert",
            cert,
            "holds no PEM certificate".into(),
        ));
    }
    let private = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .map_err(|e| err("server.tls_key", key, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            err(
                "server.tls_key",
                key,
                format!("does not fit the certificate: {e}"),
            )
        })?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}
