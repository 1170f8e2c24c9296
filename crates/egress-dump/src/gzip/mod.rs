//! The compression stage: CSV chunks in, gzip parts of exact sizes out.
//!
//! Runs on its own threads so that compressing overlaps reading from PostgreSQL and
//! uploading. Like pigz, it cuts the stream into blocks and compresses them in parallel
//! ([`parallel`], [`deflate`]): by default each block becomes a gzip member of its own
//! (libdeflate); with `--single-gzip-member` the blocks join into one member with a combined
//! CRC-32 ([`member`]). The result is cut into parts of exact sizes ([`parts`]). It also
//! hashes both sides of the stream, so the manifest never needs a second read.

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

pub use deflate::Engine;

/// Uncompressed bytes per block. A block compressed on its own (libdeflate) cannot refer
/// back into the previous one: 512 KiB blocks give 0.2% more output than 1 MiB ones and
/// 0.2% less than 256 KiB ones on the benchmark table (measured), with half the memory of
/// 1 MiB. A primed block (zlib-rs) loses only its flush: 256 KiB keeps the ratio within
/// 0.1% of a single stream.
fn block_size(engine: Engine) -> usize {
    match engine {
        Engine::Libdeflate => 512 * 1024,
        Engine::Zlib => 256 * 1024,
    }
}

/// What went through the compressor.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompressStats {
    /// CSV bytes in.
    pub uncompressed_bytes: u64,
    /// gzip bytes out (the object's size).
    pub compressed_bytes: u64,
    /// SHA-256 of the CSV, hex.
    pub uncompressed_sha256: String,
    /// SHA-256 of the gzip object, hex.
    pub compressed_sha256: String,
    /// gzip members in the object.
    pub gzip_members: u64,
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
    /// The library, and so one member per block or a single one.
    pub engine: Engine,
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

/// The ends of the dump's middle stage (gzip, or the Parquet writer): the bytes it reads,
/// the parts it sends, and the counters its output is counted in.
pub struct Stage<'a> {
    /// The bytes in (CSV, or a binary `COPY` stream); closed at their end.
    pub input: mpsc::Receiver<Bytes>,
    /// The parts out, in order.
    pub output: mpsc::Sender<Bytes>,
    /// Where the bytes sent are counted.
    pub progress: &'a Counters,
}

impl<'a> Stage<'a> {
    /// The stage between `input` and `output`, counted in `progress`.
    pub fn new(
        input: mpsc::Receiver<Bytes>,
        output: mpsc::Sender<Bytes>,
        progress: &'a Counters,
    ) -> Self {
        Stage {
            input,
            output,
            progress,
        }
    }
}

/// Compress everything from the stage's input into parts sent on its output. Ends when
/// the input closes; the caller decides whether that was the end of the data or a failure
/// upstream.
pub fn compress<F: Fn(u32) -> usize + Send>(
    stage: Stage<'_>,
    settings: Settings<F>,
) -> Result<CompressStats, CompressError> {
    let (mut input, output, progress) = (stage.input, stage.output, stage.progress);
    let threads = settings.threads.max(1);
    let engine = settings.engine;
    let block_len = block_size(engine);
    std::thread::scope(|scope| {
        let workers = parallel::Workers {
            threads,
            in_flight: threads * 3,
            engine,
            level: settings.level,
        };
        let (mut submit, in_order) = parallel::start(scope, workers);
        let part_size = settings.part_size;
        let framing = Framing::of(engine);
        let collector =
            scope.spawn(move || collect(in_order, &output, framing, part_size, progress));

        // Read and cut into blocks on this thread; hash the CSV as it passes (SHA-NI makes
        // this far cheaper than deflate).
        let mut raw_hash = Sha256::new();
        let mut uncompressed = 0u64;
        let mut block = Vec::with_capacity(block_len);
        let mut open = true;
        'read: while let Some(chunk) = input.blocking_recv() {
            raw_hash.update(&chunk);
            uncompressed += chunk.len() as u64;
            let mut rest: &[u8] = &chunk;
            while !rest.is_empty() {
                let take = rest.len().min(block_len - block.len());
                block.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if block.len() == block_len {
                    let full = std::mem::replace(&mut block, Vec::with_capacity(block_len));
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
        let collected = collector.join().map_err(|_| CompressError::Closed)??;
        Ok(CompressStats {
            uncompressed_bytes: uncompressed,
            compressed_bytes: collected.bytes,
            uncompressed_sha256: hex::encode(raw_hash.finalize()),
            compressed_sha256: collected.sha256,
            gzip_members: collected.members,
        })
    })
}

/// How blocks become the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Each block is a gzip member already: concatenate them.
    MemberPerBlock,
    /// Raw deflate blocks: one header before them, one trailer after.
    SingleMember,
}

impl Framing {
    fn of(engine: Engine) -> Framing {
        if engine.member_per_block() {
            Framing::MemberPerBlock
        } else {
            Framing::SingleMember
        }
    }
}

/// What the collector sent.
struct Collected {
    bytes: u64,
    sha256: String,
    members: u64,
}

/// Frame the blocks as the object, cut it into parts, hash and send them.
fn collect(
    blocks: parallel::InOrder,
    output: &mpsc::Sender<Bytes>,
    framing: Framing,
    part_size: impl Fn(u32) -> usize,
    progress: &Counters,
) -> Result<Collected, CompressError> {
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
    let single = framing == Framing::SingleMember;
    if single {
        cutter.push(&member::HEADER, &mut send)?;
    }
    let mut trailer = member::Trailer::default();
    let mut members = u64::from(single);
    let mut finished = false;
    for (index, block) in blocks.enumerate() {
        let block = block?;
        trailer.append(&block.crc, block.len);
        // An empty last block after full ones would be an empty member: leave it out.
        if single || block.len > 0 || index == 0 {
            cutter.push(&block.data, &mut send)?;
            members += u64::from(!single);
        }
        if block.last {
            finished = true;
            break;
        }
    }
    if !finished {
        // The reader stopped before the final block: nothing valid to finish.
        return Err(CompressError::Closed);
    }
    if single {
        cutter.push(&trailer.bytes(), &mut send)?;
    }
    send(cutter.finish())?;
    Ok(Collected {
        bytes: total,
        sha256: hex::encode(hash.finalize()),
        members,
    })
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
        engine: Engine,
    ) -> (Vec<Bytes>, CompressStats) {
        let (in_tx, in_rx) = mpsc::channel(data.len() / chunk.max(1) + 2);
        let (out_tx, mut out_rx) = mpsc::channel(100_000);
        for c in data.chunks(chunk) {
            in_tx.try_send(Bytes::copy_from_slice(c)).unwrap();
        }
        drop(in_tx);
        let settings = Settings {
            level: 6,
            engine,
            threads,
            part_size: |_| part,
        };
        let stats = compress(Stage::new(in_rx, out_tx, &Counters::default()), settings).unwrap();
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

    /// Everything `reader` gives (the decoders of these tests).
    pub(super) fn read_all(mut reader: impl Read) -> Vec<u8> {
        let mut back = Vec::new();
        reader.read_to_end(&mut back).unwrap();
        back
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        read_all(flate2::read::MultiGzDecoder::new(data))
    }

    /// What a reader that stops after the first member sees.
    fn first_member(data: &[u8]) -> Vec<u8> {
        read_all(flate2::read::GzDecoder::new(data))
    }

    #[test]
    fn parallel_blocks_form_valid_gzip_cut_into_exact_parts() {
        let data = csv(200_000);
        for (engine, threads) in [
            (Engine::Libdeflate, 1),
            (Engine::Libdeflate, 3),
            (Engine::Zlib, 1),
            (Engine::Zlib, 3),
        ] {
            let (parts, stats) = run(&data, 10_000, 100_000, threads, engine);
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
            assert_eq!(gunzip(&joined), data, "{engine:?}");
            let blocks = data.len().div_ceil(block_size(engine)) as u64;
            match engine {
                Engine::Libdeflate => assert_eq!(stats.gzip_members, blocks),
                Engine::Zlib => {
                    assert_eq!(stats.gzip_members, 1);
                    assert_eq!(first_member(&joined), data, "one member");
                }
            }
        }
    }

    #[test]
    fn an_exact_multiple_of_the_block_adds_no_empty_member() {
        let data = vec![b'x'; 2 * block_size(Engine::Libdeflate)];
        let (parts, stats) = run(&data, 4096, 1 << 20, 2, Engine::Libdeflate);
        assert_eq!(stats.gzip_members, 2);
        assert_eq!(gunzip(&parts.concat()), data);
    }

    #[test]
    fn ratios_match_a_single_stream() {
        let data = csv(300_000);
        let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        std::io::Write::write_all(&mut single, &data).unwrap();
        let single = single.finish().unwrap().len() as f64;
        let (parts, _) = run(&data, 65_536, 1 << 30, 2, Engine::Zlib);
        let primed = parts.concat().len() as f64;
        assert!(
            primed <= single * 1.005,
            "primed {primed} vs single {single}"
        );
        let (parts, _) = run(&data, 65_536, 1 << 30, 2, Engine::Libdeflate);
        let members = parts.concat().len() as f64;
        assert!(
            members <= single,
            "libdeflate {members} vs zlib single {single}"
        );
    }

    #[test]
    fn empty_input_is_a_valid_empty_gzip() {
        for engine in [Engine::Libdeflate, Engine::Zlib] {
            let (parts, stats) = run(&[], 1, 1024, 2, engine);
            assert_eq!(parts.len(), 1);
            assert_eq!(stats.uncompressed_bytes, 0);
            assert_eq!(stats.gzip_members, 1);
            assert!(first_member(&parts[0]).is_empty());
        }
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
            engine: Engine::Libdeflate,
            threads: 2,
            part_size: |_| 1000,
        };
        assert!(matches!(
            compress(Stage::new(in_rx, out_tx, &Counters::default()), settings),
            Err(CompressError::Closed)
        ));
    }
}
