//! Compressing one block, with one of two engines.
//!
//! - **libdeflate** (the default) compresses a whole block at once and makes it a complete
//!   gzip member; the object is a run of members, one per block (RFC 1952 allows it, and
//!   every reader we test reads them all). On the benchmark table it gives 0.88x the size of
//!   `gzip -9` for 0.73x zlib-rs's CPU at the same level (see the README's "Compression").
//! - **zlib-rs** deflates a block primed with the previous block's last 32 KiB and ends it
//!   byte-aligned (sync flush), so the blocks join into one gzip member: for readers that
//!   stop after the first member (`--single-gzip-member`).

use flate2::{Compress, Compression, FlushCompress, Status};
use libdeflater::{CompressionLvl, Compressor};

/// Deflate's window: what a primed block may refer back to in the previous one.
pub const WINDOW: usize = 32 * 1024;

/// The compressor failed; the block is not valid.
#[derive(Debug, thiserror::Error)]
#[error("deflate failed: {0}")]
pub struct DeflateError(String);

impl DeflateError {
    /// An error with this message.
    pub fn from_message(message: String) -> DeflateError {
        DeflateError(message)
    }
}

/// Which library compresses, and so how the object is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// libdeflate: one gzip member per block.
    Libdeflate,
    /// zlib-rs: primed blocks joined into a single gzip member.
    Zlib,
}

impl Engine {
    /// True when each block is a gzip member of its own (no outer header or trailer).
    pub fn member_per_block(self) -> bool {
        self == Engine::Libdeflate
    }

    /// The library's level for `--compression-level level`, chosen by measurement on two
    /// tables (README, "Compression"). libdeflate's 9 compresses our CSVs within 0.2% of
    /// its 8 for 1.6x the CPU, so 9 means 8; zlib-rs's 9 compresses them worse than its 8
    /// (9,146,231 vs 8,482,223 bytes for 34 MiB of the benchmark table), so 9 means 8 there
    /// too.
    pub fn level(self, level: u32) -> u32 {
        level.clamp(1, 8)
    }
}

/// One thread's compressor (libdeflate's keeps its tables between blocks).
pub enum Encoder {
    /// libdeflate at a level.
    Libdeflate(Box<Compressor>),
    /// zlib-rs at a level.
    Zlib(u32),
}

impl Encoder {
    /// A compressor of `engine` for `--compression-level level`.
    pub fn new(engine: Engine, level: u32) -> Result<Encoder, DeflateError> {
        let level = engine.level(level);
        Ok(match engine {
            Engine::Libdeflate => {
                let lvl = CompressionLvl::new(level as i32)
                    .map_err(|e| DeflateError(format!("libdeflate level {level}: {e:?}")))?;
                Encoder::Libdeflate(Box::new(Compressor::new(lvl)))
            }
            Engine::Zlib => Encoder::Zlib(level),
        })
    }

    /// Compress `data`: a whole gzip member (libdeflate), or raw deflate primed with
    /// `dictionary` that ends the stream when `last` (zlib-rs).
    pub fn block(
        &mut self,
        data: &[u8],
        dictionary: &[u8],
        last: bool,
    ) -> Result<Vec<u8>, DeflateError> {
        match self {
            Encoder::Libdeflate(c) => gzip_member(c, data),
            Encoder::Zlib(level) => deflate_primed(data, dictionary, last, *level),
        }
    }
}

fn gzip_member(c: &mut Compressor, data: &[u8]) -> Result<Vec<u8>, DeflateError> {
    let mut out = vec![0u8; c.gzip_compress_bound(data.len())];
    let n = c
        .gzip_compress(data, &mut out)
        .map_err(|e| DeflateError(format!("libdeflate: {e:?}")))?;
    out.truncate(n);
    Ok(out)
}

/// Raw deflate of `data` by zlib-rs, primed with `dictionary`; `last` ends the stream.
fn deflate_primed(
    data: &[u8],
    dictionary: &[u8],
    last: bool,
    level: u32,
) -> Result<Vec<u8>, DeflateError> {
    let mut z = Compress::new(Compression::new(level), false);
    if !dictionary.is_empty() {
        z.set_dictionary(dictionary)
            .map_err(|e| DeflateError(format!("cannot prime the block: {e}")))?;
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let consumed = z.total_in() as usize;
        let status = z
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(|e| DeflateError(e.to_string()))?;
        let all_in = z.total_in() as usize == data.len();
        // Done when the stream ended (last block), or everything went in and the flush
        // left room in the output (so nothing is still pending inside the compressor).
        if status == Status::StreamEnd || (!last && all_in && out.len() < out.capacity()) {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64 * 1024));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::read_all;
    use super::*;

    fn inflate(data: &[u8]) -> Vec<u8> {
        read_all(flate2::read::DeflateDecoder::new(data))
    }

    fn text() -> Vec<u8> {
        (0..20_000u32)
            .flat_map(|i| format!("{i},row {}\n", i % 97).into_bytes())
            .collect()
    }

    #[test]
    fn primed_blocks_concatenate_into_one_stream() {
        let text = text();
        let (a, b) = text.split_at(text.len() / 2);
        let mut z = Encoder::new(Engine::Zlib, 6).unwrap();
        let first = z.block(a, &[], false).unwrap();
        let second = z.block(b, &a[a.len() - WINDOW..], true).unwrap();
        assert_eq!(inflate(&[first, second].concat()), text);
    }

    #[test]
    fn libdeflate_blocks_are_gzip_members_that_concatenate() {
        let text = text();
        let (a, b) = text.split_at(text.len() / 3);
        for level in 1..=9 {
            let mut c = Encoder::new(Engine::Libdeflate, level).unwrap();
            let joined = [
                c.block(a, &[], false).unwrap(),
                c.block(b, &[], true).unwrap(),
            ]
            .concat();
            let out = read_all(flate2::read::MultiGzDecoder::new(joined.as_slice()));
            assert_eq!(out, text, "level {level}");
        }
    }

    #[test]
    fn incompressible_and_empty_blocks() {
        let noise: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut z = Encoder::new(Engine::Zlib, 9).unwrap();
        assert_eq!(inflate(&z.block(&noise, &[], true).unwrap()), noise);
        assert!(inflate(&z.block(&[], &[], true).unwrap()).is_empty());
        let mut c = Encoder::new(Engine::Libdeflate, 9).unwrap();
        let member = c.block(&noise, &[], true).unwrap();
        assert!(member.len() < noise.len() + 1024);
        assert_eq!(Engine::Libdeflate.level(9), 8);
        assert_eq!(Engine::Zlib.level(1), 1);
    }
}
