//! An object's bytes in flight: in memory, or a stream of known length (a GET's body fed
//! straight into a PUT, so nothing is buffered).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};

use super::error::{ErrorKind, StoreError};

/// A stream of chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// Bytes to write, or read: `len` of them, in memory or streamed.
pub struct Body {
    len: u64,
    inner: Inner,
}

enum Inner {
    Bytes(Bytes),
    Stream(ByteStream),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").field("len", &self.len).finish()
    }
}

impl Body {
    /// Bytes held in memory.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        Body {
            len: bytes.len() as u64,
            inner: Inner::Bytes(bytes),
        }
    }

    /// A stream that must yield exactly `len` bytes (anything else is an error).
    pub fn from_stream(len: u64, stream: ByteStream) -> Body {
        Body {
            len,
            inner: Inner::Stream(exactly(len, stream)),
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length body.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, when they are already in memory.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.inner {
            Inner::Bytes(b) => Some(b),
            Inner::Stream(_) => None,
        }
    }

    /// The chunks, whichever form the body has.
    pub fn into_stream(self) -> ByteStream {
        match self.inner {
            Inner::Bytes(b) => Box::pin(futures::stream::once(async move { Ok(b) })),
            Inner::Stream(s) => s,
        }
    }

    /// Read everything into memory (for small objects: a manifest).
    pub async fn collect(self) -> Result<Bytes, StoreError> {
        if let Inner::Bytes(b) = self.inner {
            return Ok(b);
        }
        let mut buf = BytesMut::with_capacity(self.len.min(64 << 20) as usize);
        let mut stream = self.into_stream();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }

    /// The same body, computing the MD5 of the bytes as they pass; read it from the tap
    /// once the body has been consumed.
    pub(crate) fn tap_md5(self) -> (Body, Md5Tap) {
        let tap = Md5Tap(Arc::new(Mutex::new(Md5::new())));
        if let Inner::Bytes(b) = &self.inner {
            tap.update(b);
            return (self, tap);
        }
        let inner = tap.clone();
        let len = self.len;
        let stream = self.into_stream().map(move |chunk| {
            if let Ok(c) = &chunk {
                inner.update(c);
            }
            chunk
        });
        (
            Body {
                len,
                inner: Inner::Stream(Box::pin(stream)),
            },
            tap,
        )
    }
}

/// The MD5 of a body's bytes, filled in as the body is consumed.
#[derive(Clone)]
pub(crate) struct Md5Tap(Arc<Mutex<Md5>>);

impl Md5Tap {
    fn update(&self, data: &[u8]) {
        if let Ok(mut h) = self.0.lock() {
            h.update(data);
        }
    }

    /// The digest of everything that passed.
    pub(crate) fn digest(&self) -> [u8; 16] {
        match self.0.lock() {
            Ok(h) => h.clone().finalize().into(),
            Err(_) => [0; 16],
        }
    }
}

/// Fail a stream that yields more or fewer than `len` bytes: a short read must never
/// become a short object.
fn exactly(len: u64, stream: ByteStream) -> ByteStream {
    let mut seen = 0u64;
    let mut ended = false;
    Box::pin(futures::stream::poll_fn({
        let mut stream = stream;
        move |cx| {
            if ended {
                return Poll::Ready(None);
            }
            match stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    seen += chunk.len() as u64;
                    if seen > len {
                        ended = true;
                        return Poll::Ready(Some(Err(length_error(seen, len))));
                    }
                    Poll::Ready(Some(Ok(chunk)))
                }
                Poll::Ready(None) if seen != len => {
                    ended = true;
                    Poll::Ready(Some(Err(length_error(seen, len))))
                }
                other => other,
            }
        }
    }))
}

fn length_error(seen: u64, len: u64) -> StoreError {
    StoreError::new(
        ErrorKind::Unreachable,
        format!("the stream carried {seen} bytes, {len} were expected"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<Result<Bytes, StoreError>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures::stream::iter(items))
    }

    #[tokio::test]
    async fn a_stream_of_the_wrong_length_is_an_error() {
        let ok = Body::from_stream(6, chunks(&[b"abc", b"def"]));
        assert_eq!(ok.collect().await.unwrap(), Bytes::from_static(b"abcdef"));
        let short = Body::from_stream(7, chunks(&[b"abc", b"def"]));
        assert!(short.collect().await.is_err());
        let long = Body::from_stream(5, chunks(&[b"abc", b"def"]));
        assert!(long.collect().await.is_err());
    }

    #[tokio::test]
    async fn the_md5_tap_sees_every_byte() {
        let (body, tap) = Body::from_stream(6, chunks(&[b"abc", b"def"])).tap_md5();
        body.collect().await.unwrap();
        assert_eq!(
            hex::encode(tap.digest()),
            "e80b5017098950fc58aad83c8c14978e"
        );
        let (_, tap) = Body::from_bytes(&b"abcdef"[..]).tap_md5();
        assert_eq!(
            hex::encode(tap.digest()),
            "e80b5017098950fc58aad83c8c14978e"
        );
    }
}
