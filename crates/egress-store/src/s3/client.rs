//! Reaching one S3-compatible endpoint: the settings, and the SDK client built from them
//! (retries, timeouts, a private CA, static keys or the AWS chain, path-style addressing and
//! checksums as non-AWS stores need, and the interceptor that keeps the store's clock).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};

use super::clock::{ClockWatch, StoreClock};
use crate::error::{ErrorKind, StoreError};
use crate::secret::Secret;

/// How to reach one S3-compatible endpoint.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Custom endpoint (Ceph RGW, MinIO, a test server); `None` means AWS S3.
    pub endpoint_url: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as non-AWS stores need.
    pub path_style: bool,
    /// Region; defaults to the AWS chain's region, else `us-east-1`.
    pub region: Option<String>,
    /// Static access key; `None` uses the standard AWS credential chain.
    pub access_key_id: Option<String>,
    /// Static secret key, paired with `access_key_id`.
    pub secret_access_key: Option<Secret>,
    /// Connect and per-read timeout; also how long a streamed body may stall.
    pub timeout: Duration,
    /// Attempts per request (first try included) for transient errors.
    pub max_attempts: u32,
    /// Extra CA certificates (PEM) to trust, e.g. an internal Ceph's CA (`AWS_CA_BUNDLE`).
    pub ca_bundle: Option<PathBuf>,
    /// The variables that hold these keys, named when S3 rejects them.
    pub credentials_hint: &'static str,
}

/// True for AWS's own endpoints (`*.amazonaws.com`), which use virtual-host addressing
/// and the SDK's default checksums.
pub fn is_aws_host(url: &str) -> bool {
    let host = url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    host == "amazonaws.com" || host.ends_with(".amazonaws.com")
}

/// Name printed as the credentials' source in SDK debug output.
const PROVIDER_NAME: &str = "egress-static";

/// Build an SDK client for `settings`.
///
/// With path-style addressing (custom endpoints) we send or validate flexible checksums
/// only when an operation requires them: Ceph RGW 16 and older MinIO reject the
/// aws-chunked trailers the newest SDK defaults produce.
pub(super) async fn client(
    settings: &S3Settings,
    clock: Arc<StoreClock>,
) -> Result<aws_sdk_s3::Client, StoreError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(path) = &settings.ca_bundle {
        loader = loader.http_client(https_client_trusting(path)?);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let (Some(key), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            key.clone(),
            secret.expose().to_string(),
            None,
            None,
            PROVIDER_NAME,
        ));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(settings.max_attempts.max(1))
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.timeout)
                .read_timeout(settings.timeout)
                .build(),
        )
        .interceptor(ClockWatch(clock));
    if shared.region().is_none() {
        builder = builder.region(Region::new("us-east-1"));
    }
    if let Some(endpoint) = &settings.endpoint_url {
        builder = builder.endpoint_url(endpoint.clone());
    }
    if settings.path_style {
        builder = builder
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Ok(aws_sdk_s3::Client::from_conf(builder.build()))
}

/// An HTTPS client that trusts the system roots plus the PEM certificates in `path`.
fn https_client_trusting(
    path: &std::path::Path,
) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, StoreError> {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let pem = std::fs::read(path).map_err(|e| {
        StoreError::new(ErrorKind::BadSettings, format!(
            "cannot read AWS_CA_BUNDLE file '{}': {e}; give a readable PEM bundle or unset AWS_CA_BUNDLE",
            path.display()
        ))
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(StoreError::new(
            ErrorKind::BadSettings,
            format!(
                "AWS_CA_BUNDLE file '{}' holds no PEM certificate",
                path.display()
            ),
        ));
    }
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| {
            StoreError::new(
                ErrorKind::BadSettings,
                format!("AWS_CA_BUNDLE '{}' is unusable: {e}", path.display()),
            )
        })?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_endpoints_are_recognised() {
        assert!(is_aws_host("https://s3.amazonaws.com"));
        assert!(is_aws_host(
            "https://bucket.vpce-0a1b.s3.us-east-1.vpce.amazonaws.com/"
        ));
        assert!(is_aws_host("https://s3-fips.us-east-1.amazonaws.com"));
        assert!(!is_aws_host("http://127.0.0.1:9000"));
        assert!(!is_aws_host("https://amazonaws.com.evil.example"));
    }
}
