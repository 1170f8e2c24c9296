//! TLS to PostgreSQL with libpq's `sslmode` semantics, on rustls.
//!
//! | mode        | encrypt        | verify chain | verify host name |
//! |-------------|----------------|--------------|------------------|
//! | disable     | no             | -            | -                |
//! | allow/prefer| if server can  | no           | no               |
//! | require     | yes            | only if a root certificate is configured (as libpq) | no |
//! | verify-ca   | yes            | yes          | no               |
//! | verify-full | yes            | yes          | yes              |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use egress_common::ConfigError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslMode {
    /// Never use TLS.
    Disable,
    /// Treated as `prefer` (TLS when the server offers it).
    Allow,
    /// TLS when the server offers it, without verification (libpq's default).
    Prefer,
    /// Always TLS; verify the chain only if a root certificate is configured.
    Require,
    /// Always TLS; verify the chain against the root certificate.
    VerifyCa,
    /// Always TLS; verify the chain and that the certificate names the host.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConfigError::new(format!(
                    "PGSSLMODE '{other}' is not valid: use disable, allow, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }
}

/// `PGSSLROOTCERT`, else libpq's default `~/.postgresql/root.crt` when it exists.
pub(super) fn root_cert_path(configured: Option<&str>) -> Option<PathBuf> {
    if let Some(path) = configured {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")?;
    let default = Path::new(&home).join(".postgresql/root.crt");
    default.exists().then_some(default)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the connector for `mode`. Certificate problems are configuration errors (exit 2).
pub(super) fn connector(
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<MakeRustlsConnect, ConfigError> {
    let provider = provider();
    let roots = match (mode, root_cert) {
        (SslMode::Disable | SslMode::Allow | SslMode::Prefer, _) => None,
        (SslMode::Require, None) => None,
        (_, Some(path)) => Some(load_roots(path)?),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(ConfigError::new(format!(
                "PGSSLMODE={} needs a CA certificate: set PGSSLROOTCERT to the CA bundle file (for RDS, the global bundle from AWS) or to 'system'",
                if mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" }
            )))
        }
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(Relaxed {
            chain: None,
            provider: provider.clone(),
        }),
        Some(roots) => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| ConfigError::new(format!("cannot use the CA certificate: {e}")))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(Relaxed {
                    chain: Some(webpki),
                    provider: provider.clone(),
                })
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(format!("TLS set-up failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn load_roots(path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut store = RootCertStore::empty();
    if path.as_os_str() == "system" {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    }
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| {
        ConfigError::new(format!(
            "cannot read PGSSLROOTCERT file '{shown}': {e}; give a readable PEM CA bundle"
        ))
    })?;
    let mut reader = std::io::BufReader::new(pem.as_slice());
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert = cert.map_err(|e| {
            ConfigError::new(format!("'{shown}' is not a PEM certificate file: {e}"))
        })?;
        store.add(cert).map_err(|e| {
            ConfigError::new(format!("'{shown}' holds an unusable certificate: {e}"))
        })?;
    }
    if store.is_empty() {
        return Err(ConfigError::new(format!(
            "'{shown}' contains no PEM certificates: give the CA bundle in PEM form"
        )));
    }
    Ok(store)
}

/// libpq's checks below `verify-full`: `prefer`/`require` without a root certificate
/// encrypt and verify nothing (`chain` is None); `verify-ca` wants the chain to lead to the
/// given CA but not the host name. Handshake signatures are always checked.
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
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
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libpq_modes() {
        assert_eq!(
            "verify-full".parse::<SslMode>().unwrap(),
            SslMode::VerifyFull
        );
        assert_eq!("REQUIRE".parse::<SslMode>().unwrap(), SslMode::Require);
        assert!("maybe".parse::<SslMode>().is_err());
    }

    #[test]
    fn verify_modes_need_a_ca() {
        assert!(connector(SslMode::VerifyFull, None).is_err());
        assert!(connector(SslMode::Require, None).is_ok());
        match connector(SslMode::VerifyCa, Some(Path::new("/nonexistent/ca.pem"))) {
            Err(err) => assert!(err.to_string().contains("PGSSLROOTCERT"), "{err}"),
            Ok(_) => panic!("an unreadable CA file must be rejected"),
        }
    }
}
