//! The compression stage: CSV chunks in, gzip parts of the requested sizes out.
//!
//! Runs on a blocking thread so that compressing overlaps reading from PostgreSQL and
//! uploading. It also hashes both sides of the stream, so no second read is ever needed.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// What went through the compressor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompressStats {
    /// CSV bytes in.
    pub uncompressed_bytes: u64,
    /// gzip bytes out (the object's size).
    pub compressed_bytes: u64,
    /// SHA-256 of the CSV, hex.
    pub uncompressed_sha256: String,
    /// SHA-256 of the gzip object, hex.
    pub compressed_sha256: String,
}

/// The downstream stage went away (it failed and reports why).
#[derive(Debug, thiserror::Error)]
#[error("the upload stage stopped")]
pub struct Closed;

/// Compress everything from `input` into parts sent on `output`, part `n` being at least
/// `part_size(n)` bytes except the last. Ends when `input` closes; the caller decides
/// whether that was the end of the data or a failure upstream.
pub fn compress(
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    level: u32,
    part_size: impl Fn(u32) -> usize,
    progress: &crate::progress::Counters,
) -> Result<CompressStats, Closed> {
    let mut part_number = 1;
    let mut target = part_size(part_number);
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(target + 64 * 1024),
        Compression::new(level),
    );
    let mut raw_hash = Sha256::new();
    let mut gz_hash = Sha256::new();
    let mut stats = CompressStats::default();
    let mut emit = |part: Vec<u8>, stats: &mut CompressStats| -> Result<(), Closed> {
        gz_hash.update(&part);
        stats.compressed_bytes += part.len() as u64;
        progress.add_compressed(part.len() as u64);
        output.blocking_send(Bytes::from(part)).map_err(|_| Closed)
    };
    while let Some(chunk) = input.blocking_recv() {
        raw_hash.update(&chunk);
        stats.uncompressed_bytes += chunk.len() as u64;
        // Writing into a Vec cannot fail.
        let _ = encoder.write_all(&chunk);
        if encoder.get_ref().len() >= target {
            part_number += 1;
            target = part_size(part_number);
            let part = std::mem::replace(encoder.get_mut(), Vec::with_capacity(target + 64 * 1024));
            emit(part, &mut stats)?;
        }
    }
    let last = encoder.finish().unwrap_or_default();
    emit(last, &mut stats)?;
    stats.uncompressed_sha256 = hex::encode(raw_hash.finalize());
    stats.compressed_sha256 = hex::encode(gz_hash.finalize());
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn parts_concatenate_to_one_valid_gzip_stream() {
        let (in_tx, in_rx) = mpsc::channel(1024);
        let (out_tx, mut out_rx) = mpsc::channel(1024);
        let mut data = Vec::new();
        for i in 0..20_000u32 {
            data.extend_from_slice(
                format!("{i},\"x,{}\"\n", i.wrapping_mul(2_654_435_761)).as_bytes(),
            );
        }
        for chunk in data.chunks(4096) {
            in_tx.try_send(Bytes::copy_from_slice(chunk)).unwrap();
        }
        drop(in_tx);
        let counters = crate::progress::Counters::default();
        let stats = compress(in_rx, out_tx, 6, |_| 1024, &counters).unwrap();
        let mut joined = Vec::new();
        let mut parts = 0;
        while let Ok(part) = out_rx.try_recv() {
            joined.extend_from_slice(&part);
            parts += 1;
        }
        assert!(parts > 2);
        assert_eq!(stats.compressed_bytes, joined.len() as u64);
        assert_eq!(stats.uncompressed_bytes, data.len() as u64);
        assert_eq!(
            stats.compressed_sha256,
            hex::encode(Sha256::digest(&joined))
        );
        assert_eq!(
            stats.uncompressed_sha256,
            hex::encode(Sha256::digest(&data))
        );
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(joined.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn empty_input_is_a_valid_empty_gzip() {
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(1);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        drop(in_tx);
        let stats = compress(in_rx, out_tx, 6, |_| 1024, &Default::default()).unwrap();
        let part = out_rx.try_recv().unwrap();
        assert_eq!(stats.uncompressed_bytes, 0);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&part[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }
}
