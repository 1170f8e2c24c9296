//! Bodies between our streams and the SDK's: a GET's body as our stream (failing when it
//! stalls), ours as the SDK's (in memory and retryable, or streamed with its exact length).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::error::{ErrorKind, StoreError};
use crate::Body;

/// `bytes 0-99/1000` -> (0, 1000).
pub(super) fn parse_content_range(range: &str) -> Option<(u64, u64)> {
    let rest = range.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (start, _) = span.split_once('-')?;
    Some((start.parse().ok()?, total.parse().ok()?))
}

/// A GET's body as our stream, failing when no byte arrives for `timeout`: a store that
/// goes silent mid-body must not hang a run.
pub(super) fn stall_guarded(
    body: aws_sdk_s3::primitives::ByteStream,
    timeout: Duration,
    what: String,
) -> crate::ByteStream {
    futures::stream::unfold(Some(body), move |state| {
        let what = what.clone();
        async move {
            let mut body = state?;
            match tokio::time::timeout(timeout, body.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok::<Bytes, StoreError>(chunk), Some(body))),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((
                    Err(StoreError::new(
                        ErrorKind::Unreachable,
                        format!("{what}: the connection broke: {}", crate::chain(&e)),
                    )),
                    None,
                )),
                Err(_) => Some((
                    Err(StoreError::new(
                        ErrorKind::Unreachable,
                        format!("{what}: no data for {}s", timeout.as_secs()),
                    )),
                    None,
                )),
            }
        }
    })
    .boxed()
}

/// The body as the AWS SDK takes it: in memory (signed, retryable), or streamed with its
/// exact length (sent once; our callers retry whole transfers).
pub(super) fn sdk_body(body: Body) -> aws_sdk_s3::primitives::ByteStream {
    if let Some(bytes) = body.as_bytes() {
        return aws_sdk_s3::primitives::ByteStream::from(bytes.clone());
    }
    let len = body.len();
    aws_sdk_s3::primitives::ByteStream::from_body_1_x(Sized {
        stream: sync_wrapper::SyncWrapper::new(body.into_stream()),
        remaining: len,
    })
}

/// A stream with a known length, as an HTTP body (the SDK then sends Content-Length).
struct Sized {
    stream: sync_wrapper::SyncWrapper<crate::ByteStream>,
    remaining: u64,
}

impl http_body::Body for Sized {
    type Data = Bytes;
    type Error = StoreError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, StoreError>>> {
        let this = self.get_mut();
        match this.stream.get_mut().as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 5-9/100"), Some((5, 100)));
        assert_eq!(parse_content_range("bytes */100"), None);
    }
}
