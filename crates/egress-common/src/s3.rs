//! Building an S3 client that works against AWS S3 and against S3-compatible stores
//! (Ceph RGW, MinIO), and turning S3 errors into messages a person can act on.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::exit::{ExitCode, Failure};
use crate::secret::Secret;

/// How to reach one S3-compatible endpoint.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Custom endpoint (Ceph RGW, MinIO, a test server); `None` means AWS S3.
    pub endpoint_url: Option<String>,
    /// Region; defaults to the AWS chain's region, else `us-east-1`.
    pub region: Option<String>,
    /// Static access key; `None` uses the standard AWS credential chain.
    pub access_key_id: Option<String>,
    /// Static secret key, paired with `access_key_id`.
    pub secret_access_key: Option<Secret>,
    /// Connect and per-attempt read timeout.
    pub timeout: Duration,
    /// Attempts per request (first try included) for transient errors.
    pub max_attempts: u32,
    /// Extra CA certificates (PEM) to trust, e.g. an internal Ceph endpoint's CA
    /// (`AWS_CA_BUNDLE`).
    pub ca_bundle: Option<std::path::PathBuf>,
}

/// Name printed as the credentials' source in SDK debug output.
const PROVIDER_NAME: &str = "egress-static";

/// Build a client for `settings`.
///
/// With a custom endpoint we use path-style addressing and send or validate flexible
/// checksums only when an operation requires them: Ceph RGW 16 and older MinIO reject the
/// aws-chunked trailers the newest SDK defaults produce.
pub async fn client(settings: &S3Settings) -> Result<aws_sdk_s3::Client, Failure> {
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
        );
    if shared.region().is_none() {
        builder = builder.region(Region::new("us-east-1"));
    }
    if let Some(endpoint) = &settings.endpoint_url {
        builder = builder
            .endpoint_url(endpoint.clone())
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Ok(aws_sdk_s3::Client::from_conf(builder.build()))
}

/// An HTTPS client that trusts the system roots plus the PEM certificates in `path`.
fn https_client_trusting(
    path: &std::path::Path,
) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, Failure> {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let pem = std::fs::read(path).map_err(|e| {
        Failure::usage(anyhow::anyhow!(
            "cannot read AWS_CA_BUNDLE file '{}': {e}; give a readable PEM bundle or unset AWS_CA_BUNDLE",
            path.display()
        ))
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(Failure::usage(anyhow::anyhow!(
            "AWS_CA_BUNDLE file '{}' holds no PEM certificate",
            path.display()
        )));
    }
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| {
            Failure::usage(anyhow::anyhow!(
                "AWS_CA_BUNDLE '{}' is unusable: {e}",
                path.display()
            ))
        })?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
}

/// Abort multipart uploads under `prefix` that were started before `before`: what a
/// killed run (SIGKILL, node loss) left behind. Stores without ListMultipartUploads are
/// skipped. Returns how many were aborted.
pub async fn abort_stale_uploads(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    before: aws_smithy_types::DateTime,
) -> usize {
    let list_prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let mut aborted = 0;
    let mut key_marker: Option<String> = None;
    let mut id_marker: Option<String> = None;
    loop {
        let listed = client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(&list_prefix)
            .set_key_marker(key_marker.clone())
            .set_upload_id_marker(id_marker.clone())
            .send()
            .await;
        let page = match listed {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!(error = %crate::exit::error_chain(&e), "cannot list pending multipart uploads");
                return aborted;
            }
        };
        for upload in page.uploads() {
            let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                continue;
            };
            if upload
                .initiated()
                .is_some_and(|t| t.secs() >= before.secs())
            {
                continue;
            }
            let abort = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await;
            if abort.is_ok() {
                tracing::info!(key, "aborted a multipart upload left by an earlier run");
                aborted += 1;
            }
        }
        if !page.is_truncated().unwrap_or(false) {
            return aborted;
        }
        key_marker = page.next_key_marker().map(str::to_string);
        id_marker = page.next_upload_id_marker().map(str::to_string);
        if key_marker.is_none() {
            return aborted;
        }
    }
}

/// What kind of S3 failure happened, for choosing an exit code and a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Problem {
    /// Unknown access key or bad signature: the credentials are wrong.
    Credentials,
    /// Credentials are valid but lack a permission.
    AccessDenied,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The bucket lives in another region than the one configured.
    WrongRegion,
    /// The endpoint could not be reached or timed out.
    Unreachable,
    /// Anything else.
    Other,
}

impl S3Problem {
    /// The exit code this problem maps to: wrong input is 2, a broken run is 1.
    pub fn exit_code(self) -> ExitCode {
        match self {
            S3Problem::Credentials
            | S3Problem::AccessDenied
            | S3Problem::NoSuchBucket
            | S3Problem::WrongRegion => ExitCode::Usage,
            S3Problem::Unreachable | S3Problem::Other => ExitCode::Runtime,
        }
    }
}

/// Classify an SDK error.
pub fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> S3Problem {
    let status = err.raw_response().map(|r| r.status().as_u16());
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => S3Problem::Unreachable,
        SdkError::ServiceError(service) => {
            classify_code(service.err().code(), status).unwrap_or(S3Problem::Other)
        }
        SdkError::ResponseError(_) => classify_code(None, status).unwrap_or(S3Problem::Other),
        _ => S3Problem::Other,
    }
}

/// Classify from an S3 error code (and optional HTTP status).
pub fn classify_code(code: Option<&str>, status: Option<u16>) -> Option<S3Problem> {
    let by_code = match code {
        Some(
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidToken"
            | "ExpiredToken"
            | "InvalidClientTokenId"
            | "AuthorizationHeaderMalformed",
        ) => Some(S3Problem::Credentials),
        Some("AccessDenied" | "AllAccessDisabled" | "Forbidden") => Some(S3Problem::AccessDenied),
        Some("NoSuchBucket") => Some(S3Problem::NoSuchBucket),
        Some("PermanentRedirect" | "IllegalLocationConstraintException") => {
            Some(S3Problem::WrongRegion)
        }
        Some("SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout") => {
            Some(S3Problem::Unreachable)
        }
        _ => None,
    };
    by_code.or(match status {
        Some(403) => Some(S3Problem::AccessDenied),
        Some(404) => Some(S3Problem::NoSuchBucket),
        Some(301) => Some(S3Problem::WrongRegion),
        Some(500..=599) => Some(S3Problem::Unreachable),
        _ => None,
    })
}

/// Turn an SDK error into a one-line, actionable failure.
///
/// `what` says what we were doing (`"listing s3://b/p"`); `credentials_hint` names the
/// variables that hold this side's keys (they differ between the two binaries).
pub fn failure<E>(
    err: &SdkError<E, HttpResponse>,
    what: &str,
    bucket: &str,
    credentials_hint: &str,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let problem = classify(err);
    let code = match err {
        SdkError::ServiceError(s) => s.err().code().map(str::to_string),
        _ => None,
    };
    let detail = match (&code, err) {
        (Some(code), _) => code.clone(),
        (None, SdkError::DispatchFailure(_)) => {
            format!("could not connect: {}", crate::exit::error_chain(err))
        }
        (None, SdkError::TimeoutError(_)) => "timed out".to_string(),
        (None, other) => {
            let status = other
                .raw_response()
                .map(|r| format!("HTTP {}: ", r.status().as_u16()))
                .unwrap_or_default();
            format!("{status}{}", crate::exit::error_chain(other))
        }
    };
    let message = match problem {
        S3Problem::Credentials => format!(
            "{what}: S3 rejected the credentials ({detail}); check {credentials_hint}"
        ),
        S3Problem::AccessDenied => format!(
            "{what}: access denied to bucket '{bucket}' ({detail}); check {credentials_hint} and the bucket policy"
        ),
        S3Problem::NoSuchBucket => format!(
            "{what}: bucket '{bucket}' does not exist ({detail}); create it or fix the bucket name"
        ),
        S3Problem::WrongRegion => format!(
            "{what}: bucket '{bucket}' is in another region ({detail}); set the region to the bucket's"
        ),
        S3Problem::Unreachable => format!(
            "{what}: the S3 endpoint is unreachable or failing ({detail}); check the endpoint URL and network (and AWS_CA_BUNDLE for a private CA), then retry"
        ),
        S3Problem::Other => format!("{what}: {detail}"),
    };
    Failure {
        code: problem.exit_code(),
        error: anyhow::anyhow!(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_problems() {
        assert_eq!(
            classify_code(Some("InvalidAccessKeyId"), None),
            Some(S3Problem::Credentials)
        );
        assert_eq!(
            classify_code(Some("SignatureDoesNotMatch"), Some(403)),
            Some(S3Problem::Credentials)
        );
        assert_eq!(
            classify_code(Some("NoSuchBucket"), None),
            Some(S3Problem::NoSuchBucket)
        );
        assert_eq!(
            classify_code(None, Some(404)),
            Some(S3Problem::NoSuchBucket)
        );
        assert_eq!(classify_code(None, Some(503)), Some(S3Problem::Unreachable));
        assert_eq!(classify_code(Some("Weird"), Some(400)), None);
        assert_eq!(S3Problem::Credentials.exit_code(), ExitCode::Usage);
        assert_eq!(S3Problem::Unreachable.exit_code(), ExitCode::Runtime);
    }
}
