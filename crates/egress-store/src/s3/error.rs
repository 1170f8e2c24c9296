//! S3's errors as [`StoreError`]s: each SDK failure mapped to a kind callers branch on,
//! with a one-line message naming the bucket, the endpoint and the fix, its cause kept.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::error::{chain, ErrorKind, StoreError};

/// Who we are talking to when an S3 request fails, for the message.
#[derive(Debug, Clone, Copy)]
pub(super) struct S3Context<'a> {
    /// The bucket.
    pub bucket: &'a str,
    /// The endpoint, as configured (or "AWS S3").
    pub endpoint: &'a str,
    /// Which variables hold the keys, e.g. `INPUT_ACCESS_KEY_ID / INPUT_SECRET_ACCESS_KEY`.
    pub credentials_hint: &'a str,
}

/// Whether a failed request addressed the bucket (listing) or one object: an HTTP 404
/// without an S3 error code means a missing bucket for the first, a missing object for the
/// second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// A bucket-level request (ListObjectsV2, ListMultipartUploads).
    Bucket,
    /// An object-level request (HEAD, GET, PUT, parts).
    Object,
}

/// The kind an S3 error code (and HTTP status) stands for.
pub(super) fn classify_code(code: Option<&str>, status: Option<u16>, target: Target) -> ErrorKind {
    let by_code = match code {
        Some(
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidToken"
            | "ExpiredToken"
            | "InvalidClientTokenId"
            | "AuthorizationHeaderMalformed",
        ) => Some(ErrorKind::Credentials),
        Some("AccessDenied" | "AllAccessDisabled" | "Forbidden") => Some(ErrorKind::AccessDenied),
        Some("NoSuchBucket") => Some(ErrorKind::BucketNotFound),
        Some("NoSuchKey" | "NotFound") => Some(ErrorKind::NotFound),
        Some("PermanentRedirect" | "IllegalLocationConstraintException") => {
            Some(ErrorKind::WrongRegion)
        }
        Some("PreconditionFailed" | "ConditionalRequestConflict") => {
            Some(ErrorKind::PreconditionFailed)
        }
        Some("BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch" | "InvalidPart") => {
            Some(ErrorKind::ChecksumMismatch)
        }
        Some("NotImplemented" | "MethodNotAllowed") => Some(ErrorKind::Unsupported),
        Some(
            "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout" | "NoSuchUpload",
        ) => Some(ErrorKind::Unreachable),
        _ => None,
    };
    by_code.unwrap_or(match (status, target) {
        (Some(403), _) => ErrorKind::AccessDenied,
        (Some(404), Target::Bucket) => ErrorKind::BucketNotFound,
        (Some(404), Target::Object) => ErrorKind::NotFound,
        (Some(412), _) => ErrorKind::PreconditionFailed,
        (Some(301), _) => ErrorKind::WrongRegion,
        (Some(501), _) => ErrorKind::Unsupported,
        (Some(500..=599), _) => ErrorKind::Unreachable,
        _ => ErrorKind::Other,
    })
}

/// True when the reply does not look like one from an S3 server: a 2xx whose body the SDK
/// could not read, or an error without an S3 error code in a non-XML body (a web server's
/// HTML page).
fn looks_like_not_s3<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    let Some(response) = err.raw_response() else {
        return false;
    };
    let xml = response
        .headers()
        .get("content-type")
        .is_some_and(|t| t.contains("xml"));
    let has_code = match err {
        SdkError::ServiceError(s) => s.err().code().is_some(),
        _ => false,
    };
    let status = response.status().as_u16();
    let empty = response.body().bytes().is_some_and(|b| b.is_empty());
    // A HEAD reply has no body to judge by; everything else from S3 is XML, and a 2xx
    // reply the SDK could not read is not XML (an XML one that failed is a damaged
    // listing: see `unreadable_xml`).
    (200..300).contains(&status) && !xml || (!has_code && !xml && !empty && status != 304)
}

/// True when the connection failed because the server's certificate was refused (rustls
/// says "invalid peer certificate": an unknown issuer, a name that does not match).
fn certificate_refused<E: std::error::Error + 'static>(err: &SdkError<E, HttpResponse>) -> bool {
    chain(err).contains("invalid peer certificate")
}

/// True for a 2xx XML reply that could not be read (a listing page damaged in transit, or
/// holding a key with a character XML cannot carry, such as U+0001): the listing asks again.
pub(super) fn unreadable_xml<E>(err: &SdkError<E, HttpResponse>) -> bool {
    err.raw_response().is_some_and(|r| {
        r.status().is_success()
            && r.headers()
                .get("content-type")
                .is_some_and(|t| t.contains("xml"))
    })
}

/// Turn an SDK error into a typed, one-line [`StoreError`]; `what` says what we were
/// doing (`"listing s3://b/p/"`).
pub(super) fn from_sdk<E>(
    err: &SdkError<E, HttpResponse>,
    what: &str,
    target: Target,
    ctx: S3Context<'_>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = match err {
        SdkError::ServiceError(s) => s.err().code().map(str::to_string),
        _ => None,
    };
    let kind = match err {
        SdkError::DispatchFailure(_) if certificate_refused(err) => ErrorKind::Untrusted,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorKind::Unreachable,
        _ if looks_like_not_s3(err) => ErrorKind::NotS3,
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            classify_code(code.as_deref(), status, target)
        }
        _ => ErrorKind::Other,
    };
    let detail = match (&code, err) {
        (Some(code), _) => code.clone(),
        (None, SdkError::DispatchFailure(_)) => {
            format!("could not connect: {}", chain(err))
        }
        (None, SdkError::TimeoutError(_)) => "timed out".to_string(),
        (None, other) => {
            let status = status.map(|s| format!("HTTP {s}")).unwrap_or_default();
            let cause = chain(other);
            if cause.is_empty() || cause == "service error" {
                status
            } else {
                format!("{status}: {cause}")
            }
        }
    };
    let message = message(kind, what, &detail, ctx);
    StoreError::new(kind, message).caused_by(S3Failure {
        code,
        status,
        detail,
    })
}

/// What S3 answered, kept as a [`StoreError`]'s cause (the SDK's own error holds the whole
/// response and is not `Sync`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub(super) struct S3Failure {
    /// S3's error code (`NoSuchKey`), when it sent one.
    pub code: Option<String>,
    /// The HTTP status, when there was a reply.
    pub status: Option<u16>,
    /// What the message says of it.
    pub detail: String,
}

fn message(kind: ErrorKind, what: &str, detail: &str, ctx: S3Context<'_>) -> String {
    let (bucket, hint) = (ctx.bucket, ctx.credentials_hint);
    match kind {
        ErrorKind::Credentials => {
            format!("{what}: S3 rejected the credentials ({detail}); check {hint}")
        }
        ErrorKind::AccessDenied => format!(
            "{what}: access denied to bucket '{bucket}' ({detail}); check {hint} and the bucket policy"
        ),
        ErrorKind::BucketNotFound => format!(
            "{what}: bucket '{bucket}' does not exist ({detail}); create it or fix the bucket name"
        ),
        ErrorKind::NotFound => format!("{what}: the object does not exist ({detail})"),
        ErrorKind::WrongRegion => format!(
            "{what}: bucket '{bucket}' is in another region ({detail}); set the region to the bucket's"
        ),
        ErrorKind::Unreachable => format!(
            "{what}: the S3 endpoint is unreachable or failing ({detail}); check the endpoint URL and network (and AWS_CA_BUNDLE for a private CA), then retry"
        ),
        ErrorKind::Untrusted => format!(
            "{what}: the TLS certificate of {} is not trusted ({detail}); set AWS_CA_BUNDLE to the PEM file of the CA that signed it, or fix the endpoint's host name",
            ctx.endpoint
        ),
        ErrorKind::NotS3 => format!(
            "{what}: {} does not answer like an S3 server ({detail}); check the endpoint URL",
            ctx.endpoint
        ),
        ErrorKind::ChecksumMismatch => {
            format!("{what}: the store received different bytes than were sent ({detail})")
        }
        _ => format!("{what}: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_map_to_kinds() {
        let object = Target::Object;
        let cases = [
            (Some("InvalidAccessKeyId"), None, ErrorKind::Credentials),
            (
                Some("SignatureDoesNotMatch"),
                Some(403),
                ErrorKind::Credentials,
            ),
            (Some("NoSuchBucket"), Some(404), ErrorKind::BucketNotFound),
            (Some("NoSuchKey"), Some(404), ErrorKind::NotFound),
            (None, Some(404), ErrorKind::NotFound),
            (None, Some(403), ErrorKind::AccessDenied),
            (Some("BadDigest"), Some(400), ErrorKind::ChecksumMismatch),
            (None, Some(412), ErrorKind::PreconditionFailed),
            (None, Some(503), ErrorKind::Unreachable),
            (Some("Weird"), Some(400), ErrorKind::Other),
        ];
        for (code, status, kind) in cases {
            assert_eq!(
                classify_code(code, status, object),
                kind,
                "{code:?} {status:?}"
            );
        }
        assert_eq!(
            classify_code(None, Some(404), Target::Bucket),
            ErrorKind::BucketNotFound
        );
    }
}
