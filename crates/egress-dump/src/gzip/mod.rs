//! The compression stage: CSV chunks in, gzip parts of exact sizes out.
//!
//! Runs on its own threads so that compressing overlaps reading from PostgreSQL and
//! uploading. Like pigz, it cuts the stream into blocks, deflates them in parallel
//! ([`parallel`], [`deflate`]) and joins them into one standard gzip member with a
//! combined CRC-32 ([`member`]), cut into parts of exact sizes ([`parts`]). It also hashes
//! both sides of the stream, so the manifest never needs a second read.

pub mod deflate;
pub mod member;
pub mod parallel;
pub mod parts;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::progress::Counters;
use deflate::DeflateError;
use parts::PartCutter;

/// Uncompressed bytes per block. Larger blocks lose less to flush boundaries; 256 KiB
/// keeps the ratio within 0.1% of a single stream (measured) and the memory small.
const BLOCK: usize = 256 * 1024;

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

/// Why compression stopped.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The upload stage went away (it reports why).
    #[error("the upload stage stopped")]
    Closed,
    /// The compressor failed.
    #[error(transparent)]
    Deflate(#[from] DeflateError),
}

/// How to compress.
pub struct Settings<F: Fn(u32) -> usize> {
    /// gzip level, 1-9.
    pub level: u32,
    /// Deflate threads.
    pub threads: usize,
    /// Size of part `n` (1-based); the last part may be shorter.
    pub part_size: F,
}

/// Compression threads for this machine: the CPUs this process may use (cgroup quota
/// included), at most 8.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Compress everything from `input` into parts sent on `output`. Ends when `input` closes;
/// the caller decides whether that was the end of the data or a failure upstream.
pub fn compress<F: Fn(u32) -> usize + Send>(
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    settings: Settings<F>,
    progress: &Counters,
) -> Result<CompressStats, CompressError> {
    let threads = settings.threads.max(1);
    std::thread::scope(|scope| {
        let (mut submit, in_order) = parallel::start(scope, threads, threads * 3, settings.level);
        let part_size = settings.part_size;
        let collector = scope.spawn(move || collect(in_order, &output, part_size, progress));

        // Read and cut into blocks on this thread; hash the CSV as it passes (SHA-NI makes
        // this far cheaper than deflate).
        let mut raw_hash = Sha256::new();
        let mut uncompressed = 0u64;
        let mut block = Vec::with_capacity(BLOCK);
        let mut open = true;
        'read: while let Some(chunk) = input.blocking_recv() {
            raw_hash.update(&chunk);
            uncompressed += chunk.len() as u64;
            let mut rest: &[u8] = &chunk;
            while !rest.is_empty() {
                let take = rest.len().min(BLOCK - block.len());
                block.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if block.len() == BLOCK {
                    let full = std::mem::replace(&mut block, Vec::with_capacity(BLOCK));
                    if !submit.block(full, false) {
                        open = false;
                        break 'read;
                    }
                }
            }
        }
        if open {
            submit.block(block, true);
        }
        drop(submit);
        let (compressed_bytes, compressed_sha256) =
            collector.join().map_err(|_| CompressError::Closed)??;
        Ok(CompressStats {
            uncompressed_bytes: uncompressed,
            compressed_bytes,
            uncompressed_sha256: hex::encode(raw_hash.finalize()),
            compressed_sha256,
        })
    })
}

/// Frame the blocks as one gzip member, cut it into parts, hash and send them.
fn collect(
    blocks: parallel::InOrder,
    output: &mpsc::Sender<Bytes>,
    part_size: impl Fn(u32) -> usize,
    progress: &Counters,
) -> Result<(u64, String), CompressError> {
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut send = |part: Vec<u8>| -> Result<(), CompressError> {
        hash.update(&part);
        total += part.len() as u64;
        progress.add_compressed(part.len() as u64);
        output
            .blocking_send(Bytes::from(part))
            .map_err(|_| CompressError::Closed)
    };
    let mut cutter = PartCutter::new(part_size);
    cutter.push(&member::HEADER, &mut send)?;
    let mut trailer = member::Trailer::default();
    let mut finished = false;
    for block in blocks {
        let block = block?;
        trailer.append(&block.crc, block.len);
        cutter.push(&block.data, &mut send)?;
        if block.last {
            finished = true;
            break;
        }
    }
    if !finished {
        // The reader stopped before the final block: nothing valid to finish.
        return Err(CompressError::Closed);
    }
    cutter.push(&trailer.bytes(), &mut send)?;
    send(cutter.finish())?;
    Ok((total, hex::encode(hash.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run(
        data: &[u8],
        chunk: usize,
        part: usize,
        threads: usize,
        level: u32,
    ) -> (Vec<Bytes>, CompressStats) {
        let (in_tx, in_rx) = mpsc::channel(data.len() / chunk.max(1) + 2);
        let (out_tx, mut out_rx) = mpsc::channel(100_000);
        for c in data.chunks(chunk) {
            in_tx.try_send(Bytes::copy_from_slice(c)).unwrap();
        }
        drop(in_tx);
        let settings = Settings {
            level,
            threads,
            part_size: |_| part,
        };
        let stats = compress(in_rx, out_tx, settings, &Counters::default()).unwrap();
        let mut parts = Vec::new();
        while let Ok(p) = out_rx.try_recv() {
            parts.push(p);
        }
        (parts, stats)
    }

    fn csv(rows: u32) -> Vec<u8> {
        (0..rows)
            .flat_map(|i| {
                format!(
                    "{i},\"x,{}\",2024-01-01 00:00:00+00\n",
                    i.wrapping_mul(2_654_435_761)
                )
                .into_bytes()
            })
            .collect()
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        // A single-member decoder: anything after the first member would be an error here.
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    #[test]
    fn parallel_blocks_form_one_valid_gzip_member_cut_into_exact_parts() {
        let data = csv(200_000);
        for threads in [1, 3] {
            let (parts, stats) = run(&data, 10_000, 100_000, threads, 6);
            assert!(parts.len() > 2);
            assert!(
                parts[..parts.len() - 1].iter().all(|p| p.len() == 100_000),
                "exact part sizes"
            );
            let joined: Vec<u8> = parts.concat();
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
            assert_eq!(gunzip(&joined), data);
        }
    }

    #[test]
    fn ratio_matches_a_single_stream() {
        let data = csv(300_000);
        let (parts, _) = run(&data, 65_536, 1 << 30, 2, 6);
        let ours = parts.concat().len() as f64;
        let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        std::io::Write::write_all(&mut single, &data).unwrap();
        let single = single.finish().unwrap().len() as f64;
        assert!(ours <= single * 1.005, "parallel {ours} vs single {single}");
    }

    #[test]
    fn empty_input_is_a_valid_empty_gzip() {
        let (parts, stats) = run(&[], 1, 1024, 2, 6);
        assert_eq!(parts.len(), 1);
        assert_eq!(stats.uncompressed_bytes, 0);
        assert!(gunzip(&parts[0]).is_empty());
    }

    #[test]
    fn a_closed_output_stops_the_stage() {
        let data = csv(50_000);
        let (in_tx, in_rx) = mpsc::channel(1000);
        let (out_tx, out_rx) = mpsc::channel(1);
        drop(out_rx);
        for c in data.chunks(10_000) {
            in_tx.try_send(Bytes::copy_from_slice(c)).unwrap();
        }
        drop(in_tx);
        let settings = Settings {
            level: 6,
            threads: 2,
            part_size: |_| 1000,
        };
        assert!(matches!(
            compress(in_rx, out_tx, settings, &Counters::default()),
            Err(CompressError::Closed)
        ));
    }
}
