//! The compression stage: CSV chunks in, gzip parts of the requested sizes out.
//!
//! Runs on its own threads so that compressing overlaps reading from PostgreSQL and
//! uploading. Like pigz, it cuts the stream into blocks, deflates them in parallel (each
//! primed with the previous block's last 32 KiB, so the ratio stays that of one stream)
//! and joins them into one standard gzip member with a combined CRC-32. It also hashes
//! both sides of the stream, so the manifest never needs a second read.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::progress::Counters;

/// Uncompressed bytes per block. Larger blocks lose less to flush boundaries; 256 KiB
/// keeps the ratio within 0.1% of a single stream (measured) and the memory small.
const BLOCK: usize = 256 * 1024;
/// Deflate's window: what a block may refer back to in the previous one.
const WINDOW: usize = 32 * 1024;

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

/// Compression threads for this machine: the CPUs this process may use (cgroup quota
/// included), at most 8.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

struct Job {
    index: u64,
    data: Vec<u8>,
    dictionary: Vec<u8>,
    last: bool,
}

struct Done {
    index: u64,
    deflated: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
    last: bool,
}

/// Compress everything from `input` into parts sent on `output`, part `n` being exactly
/// `part_size(n)` bytes except the last. Ends when `input` closes; the caller decides
/// whether that was the end of the data or a failure upstream.
pub fn compress(
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    level: u32,
    part_size: impl Fn(u32) -> usize + Send,
    progress: &Counters,
    threads: usize,
) -> Result<CompressStats, Closed> {
    let threads = threads.max(1);
    // Blocks in flight (queued, compressing, or waiting to be put in order) are bounded
    // by tokens, so memory stays fixed however fast the input is.
    let in_flight = threads * 3;
    let (job_tx, job_rx) = sync_channel::<Job>(in_flight);
    let (done_tx, done_rx) = sync_channel::<Done>(in_flight);
    let (token_tx, token_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = token_tx.send(());
    }
    let job_rx = Arc::new(Mutex::new(job_rx));

    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            scope.spawn(move || deflate_worker(job_rx, done_tx, level));
        }
        drop(done_tx);
        let collector =
            scope.spawn(move || collect(done_rx, token_tx, &output, &part_size, progress));

        // Read and dispatch on this thread; hash the CSV as it passes (SHA-NI makes this
        // far cheaper than deflate).
        let mut raw_hash = Sha256::new();
        let mut uncompressed = 0u64;
        let mut index = 0u64;
        let mut block = Vec::with_capacity(BLOCK);
        let mut dictionary: Vec<u8> = Vec::new();
        let dispatch =
            |data: Vec<u8>, last: bool, index: &mut u64, dictionary: &mut Vec<u8>| -> bool {
                if token_rx.recv().is_err() {
                    return false;
                }
                let next_dictionary = data[data.len().saturating_sub(WINDOW)..].to_vec();
                let job = Job {
                    index: *index,
                    data,
                    dictionary: std::mem::replace(dictionary, next_dictionary),
                    last,
                };
                *index += 1;
                job_tx.send(job).is_ok()
            };
        let mut open = true;
        while let Some(chunk) = input.blocking_recv() {
            raw_hash.update(&chunk);
            uncompressed += chunk.len() as u64;
            let mut rest: &[u8] = &chunk;
            while !rest.is_empty() {
                let take = rest.len().min(BLOCK - block.len());
                block.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if block.len() == BLOCK {
                    let full = std::mem::replace(&mut block, Vec::with_capacity(BLOCK));
                    open = open && dispatch(full, false, &mut index, &mut dictionary);
                }
            }
            if !open {
                break;
            }
        }
        if open {
            open = dispatch(block, true, &mut index, &mut dictionary);
        }
        drop(job_tx);
        let collected = collector.join().map_err(|_| Closed)?;
        let (compressed_bytes, compressed_sha256) = collected?;
        if !open {
            return Err(Closed);
        }
        Ok(CompressStats {
            uncompressed_bytes: uncompressed,
            compressed_bytes,
            uncompressed_sha256: hex::encode(raw_hash.finalize()),
            compressed_sha256,
        })
    })
}

fn deflate_worker(jobs: Arc<Mutex<Receiver<Job>>>, done: SyncSender<Done>, level: u32) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&job.data);
        let deflated = deflate_block(&job.data, &job.dictionary, job.last, level);
        let block = Done {
            index: job.index,
            deflated,
            crc,
            len: job.data.len() as u64,
            last: job.last,
        };
        if done.send(block).is_err() {
            return;
        }
    }
}

/// The zlib-rs level that gives level `level`'s meaning. zlib-rs's level 9 (zlib-ng's
/// tuning) compresses our CSVs worse than its level 8 (measured: 9,146,231 vs 8,482,223
/// bytes for 34 MiB of the benchmark table; on source code the two are within 0.1%), so
/// "best compression" uses level 8.
pub fn backend_level(level: u32) -> u32 {
    if level >= 9 {
        8
    } else {
        level
    }
}

/// Raw deflate of one block: byte-aligned at the end (sync flush) so blocks concatenate,
/// or final (finish) for the last one.
fn deflate_block(data: &[u8], dictionary: &[u8], last: bool, level: u32) -> Vec<u8> {
    let mut z = Compress::new(Compression::new(backend_level(level)), false);
    if !dictionary.is_empty() {
        // Priming cannot fail for a raw stream that has not started.
        let _ = z.set_dictionary(dictionary);
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let consumed = z.total_in() as usize;
        let status = z.compress_vec(&data[consumed..], &mut out, flush);
        let done = match status {
            Ok(Status::StreamEnd) => true,
            Ok(_) => z.total_in() as usize == data.len() && out.len() < out.capacity(),
            Err(_) => true,
        };
        if done {
            return out;
        }
        out.reserve(out.capacity().max(64 * 1024));
    }
}

/// Put blocks back in order, frame them as one gzip member, cut exact-size parts.
fn collect(
    done: Receiver<Done>,
    tokens: SyncSender<()>,
    output: &mpsc::Sender<Bytes>,
    part_size: &impl Fn(u32) -> usize,
    progress: &Counters,
) -> Result<(u64, String), Closed> {
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut part_number = 1u32;
    let mut target = part_size(part_number);
    let mut part: Vec<u8> = Vec::with_capacity(target);
    let mut crc = crc32fast::Hasher::new();
    let mut isize: u64 = 0;
    let mut next = 0u64;
    let mut waiting: BTreeMap<u64, Done> = BTreeMap::new();
    // Header: magic, deflate, no flags, no mtime, no extra flags, OS = Unix.
    let mut pending: Vec<u8> = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let mut emit = |bytes: &[u8],
                    part: &mut Vec<u8>,
                    target: &mut usize,
                    part_number: &mut u32,
                    last: bool|
     -> Result<(), Closed> {
        let mut rest = bytes;
        loop {
            let take = rest.len().min(*target - part.len());
            part.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if part.len() == *target && !(last && rest.is_empty()) {
                *part_number += 1;
                *target = part_size(*part_number);
                let full = std::mem::replace(part, Vec::with_capacity(*target));
                hash.update(&full);
                total += full.len() as u64;
                progress.add_compressed(full.len() as u64);
                output
                    .blocking_send(Bytes::from(full))
                    .map_err(|_| Closed)?;
            }
            if rest.is_empty() {
                break;
            }
        }
        if last {
            let final_part = std::mem::take(part);
            hash.update(&final_part);
            total += final_part.len() as u64;
            progress.add_compressed(final_part.len() as u64);
            output
                .blocking_send(Bytes::from(final_part))
                .map_err(|_| Closed)?;
        }
        Ok(())
    };
    let mut finished = false;
    for block in done.iter() {
        waiting.insert(block.index, block);
        while let Some(block) = waiting.remove(&next) {
            next += 1;
            let _ = tokens.send(());
            isize += block.len;
            crc.combine(&block.crc);
            pending.extend_from_slice(&block.deflated);
            finished = block.last;
            if !finished {
                emit(&pending, &mut part, &mut target, &mut part_number, false)?;
                pending.clear();
            }
        }
    }
    if !finished {
        // Input ended early (the reader stopped): nothing valid to finish.
        return Err(Closed);
    }
    pending.extend_from_slice(&crc.finalize().to_le_bytes());
    pending.extend_from_slice(&((isize & 0xffff_ffff) as u32).to_le_bytes());
    emit(&pending, &mut part, &mut target, &mut part_number, true)?;
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
        let stats = compress(
            in_rx,
            out_tx,
            level,
            |_| part,
            &Counters::default(),
            threads,
        )
        .unwrap();
        let mut parts = Vec::new();
        while let Ok(p) = out_rx.try_recv() {
            parts.push(p);
        }
        (parts, stats)
    }

    fn csv(rows: u32) -> Vec<u8> {
        let mut data = Vec::new();
        for i in 0..rows {
            data.extend_from_slice(
                format!(
                    "{i},\"x,{}\",2024-01-01 00:00:00+00\n",
                    i.wrapping_mul(2_654_435_761)
                )
                .as_bytes(),
            );
        }
        data
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        // A single-member decoder: anything after the first member would be an error here.
        let mut d = flate2::read::GzDecoder::new(data);
        d.read_to_end(&mut back).unwrap();
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
        let mut single = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
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
        assert!(compress(in_rx, out_tx, 6, |_| 1000, &Counters::default(), 2).is_err());
    }
}
