//! TLS to PostgreSQL, chosen in the URL the way libpq users know: `?sslmode=` `disable` |
//! `prefer` (both plain, the default) | `require` (encrypted, certificate not checked) |
//! `verify-ca` (the certificate must chain to a trusted root) | `verify-full` (and name the host),
//! with `sslrootcert=PATH` for a private CA (default: `~/.postgresql/root.crt` when it exists,
//! else the Mozilla roots from `webpki-roots`; `sslrootcert=system` forces those).
//!
//! rustls (pure Rust, ring) does the TLS so that no OpenSSL is needed on the machine; the
//! `postgres` crate itself only understands `disable|prefer|require`, so the two parameters are
//! taken out of the URL here and the rest is passed on with `sslmode=require`.

use std::path::PathBuf;
use std::sync::Arc;

use postgres::{Client, NoTls};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::RetrievalError;

/// How a connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Plain,
    Require,
    VerifyCa,
    VerifyFull,
}

/// What to connect with: the URL `postgres` gets and the TLS connector, if any.
#[derive(Clone)]
pub struct PgConnector {
    url: String,
    pub mode: SslMode,
    tls: Option<MakeRustlsConnect>,
}

impl PgConnector {
    /// Reads `sslmode` / `sslrootcert` from `url` and prepares the connector (loading the roots).
    pub fn from_url(url: &str) -> Result<Self, RetrievalError> {
        let bad = |m: String| RetrievalError::Invalid(format!("PostgreSQL URL: {m}"));
        let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let mut mode = SslMode::Plain;
        let mut root_cert: Option<String> = None;
        let mut kept: Vec<(String, String)> = Vec::new();
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "sslmode" => {
                    mode = match v.as_ref() {
                        "disable" | "allow" | "prefer" => SslMode::Plain,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(bad(format!(
                                "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                            )));
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(v.into_owned()),
                _ => kept.push((k.into_owned(), v.into_owned())),
            }
        }
        if mode != SslMode::Plain {
            kept.push(("sslmode".into(), "require".into()));
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let tls = match mode {
            SslMode::Plain => None,
            _ => Some(MakeRustlsConnect::new(client_config(
                mode,
                root_cert.as_deref(),
            )?)),
        };
        Ok(PgConnector {
            url: parsed.to_string(),
            mode,
            tls,
        })
    }

    pub fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            None => Client::connect(&self.url, NoTls),
            Some(tls) => Client::connect(&self.url, tls.clone()),
        }
    }
}

fn default_root_file() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
    path.is_file().then_some(path)
}

fn roots(root_cert: Option<&str>) -> Result<RootCertStore, RetrievalError> {
    let file = match root_cert {
        Some("system") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => default_root_file(),
    };
    let mut store = RootCertStore::empty();
    match file {
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let bad =
                |m: String| RetrievalError::Invalid(format!("sslrootcert {}: {m}", path.display()));
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad("no usable certificate in the file".into()));
            }
        }
    }
    Ok(store)
}

fn client_config(
    mode: SslMode,
    root_cert: Option<&str>,
) -> Result<rustls::ClientConfig, RetrievalError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_err = |e: rustls::Error| RetrievalError::Invalid(format!("TLS setup: {e}"));
    let roots = Arc::new(roots(if mode == SslMode::Require {
        Some("system")
    } else {
        root_cert
    })?);
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| RetrievalError::Invalid(format!("TLS roots: {e}")))?;
    let verifier = Arc::new(ModeVerifier {
        mode,
        inner: webpki,
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The web PKI verifier, relaxed as the mode says: `require` accepts any certificate,
/// `verify-ca` any host name on a trusted chain. Handshake signatures are always checked.
#[derive(Debug)]
struct ModeVerifier {
    mode: SslMode,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ModeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match (self.mode, verdict) {
            (SslMode::Require, _) => Ok(ServerCertVerified::assertion()),
            (
                SslMode::VerifyCa,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )),
            ) => Ok(ServerCertVerified::assertion()),
            (_, verdict) => verdict,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_parameters_are_taken_out_of_the_url() {
        let plain = PgConnector::from_url("postgres://u:p@h:5432/db?application_name=x").unwrap();
        assert_eq!(plain.mode, SslMode::Plain);
        assert_eq!(plain.url, "postgres://u:p@h:5432/db?application_name=x");
        let full =
            PgConnector::from_url("postgres://u@h/db?sslmode=verify-full&sslrootcert=system")
                .unwrap();
        assert_eq!(full.mode, SslMode::VerifyFull);
        assert_eq!(full.url, "postgres://u@h/db?sslmode=require");
        let req = PgConnector::from_url("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(req.mode, SslMode::Require);
        let err = PgConnector::from_url("postgres://u@h/db?sslmode=always")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("sslmode=always"), "{err}");
        let err =
            PgConnector::from_url("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/no/such.pem")
                .err()
                .unwrap()
                .to_string();
        assert!(err.contains("/no/such.pem"), "{err}");
    }
}
