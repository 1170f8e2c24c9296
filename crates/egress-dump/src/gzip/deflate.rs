//! Deflating one block: raw deflate, primed with the previous block's last 32 KiB so the
//! ratio stays that of one stream, ending byte-aligned (sync flush) so blocks concatenate,
//! or final for the last block.

use flate2::{Compress, Compression, FlushCompress, Status};

/// Deflate's window: what a block may refer back to in the previous one.
pub const WINDOW: usize = 32 * 1024;

/// The compressor failed; the block is not valid deflate.
#[derive(Debug, thiserror::Error)]
#[error("deflate failed: {0}")]
pub struct DeflateError(String);

/// The zlib-rs level that gives level `level`'s meaning. zlib-rs's level 9 (zlib-ng's
/// tuning) compresses our CSVs worse than its level 8 (measured: 9,146,231 vs 8,482,223
/// bytes for 34 MiB of the benchmark table; on source code the two are within 0.1%), so
/// "best compression" uses level 8.
pub fn backend_level(level: u32) -> u32 {
    level.min(8)
}

/// Raw deflate of `data`, primed with `dictionary`; `last` ends the stream.
pub fn deflate_block(
    data: &[u8],
    dictionary: &[u8],
    last: bool,
    level: u32,
) -> Result<Vec<u8>, DeflateError> {
    let mut z = Compress::new(Compression::new(backend_level(level)), false);
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
    use super::*;
    use std::io::Read;

    fn inflate(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn primed_blocks_concatenate_into_one_stream() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("{i},row {}\n", i % 97).into_bytes())
            .collect();
        let (a, b) = text.split_at(text.len() / 2);
        let first = deflate_block(a, &[], false, 6).unwrap();
        let second = deflate_block(b, &a[a.len() - WINDOW..], true, 6).unwrap();
        assert_eq!(inflate(&[first, second].concat()), text);
    }

    #[test]
    fn incompressible_and_empty_blocks() {
        let noise: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(
            inflate(&deflate_block(&noise, &[], true, 9).unwrap()),
            noise
        );
        assert!(inflate(&deflate_block(&[], &[], true, 6).unwrap()).is_empty());
        assert_eq!(backend_level(9), 8);
        assert_eq!(backend_level(1), 1);
    }
}
