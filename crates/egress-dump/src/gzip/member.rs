//! gzip member framing (RFC 1952): a fixed header, the deflate stream, and a trailer of
//! the CRC-32 and length of the uncompressed data, combined from per-block CRCs.

/// Header: magic, deflate, no flags, no mtime (reproducible output), no extra flags,
/// OS = Unix.
pub const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

/// The trailer being accumulated as blocks are appended in order.
#[derive(Debug, Default)]
pub struct Trailer {
    crc: crc32fast::Hasher,
    len: u64,
}

impl Trailer {
    /// Append a block whose data had CRC `crc` and `len` bytes.
    pub fn append(&mut self, crc: &crc32fast::Hasher, len: u64) {
        self.crc.combine(crc);
        self.len += len;
    }

    /// CRC-32 and ISIZE (length modulo 2^32), little-endian.
    pub fn bytes(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&self.crc.finalize().to_le_bytes());
        out[4..].copy_from_slice(&((self.len & 0xffff_ffff) as u32).to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn header_deflate_and_combined_trailer_form_a_member() {
        let (a, b) = (b"hello, ".as_slice(), b"world\n".as_slice());
        let mut trailer = Trailer::default();
        for block in [a, b] {
            let mut crc = crc32fast::Hasher::new();
            crc.update(block);
            trailer.append(&crc, block.len() as u64);
        }
        let mut deflate =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        std::io::Write::write_all(&mut deflate, b"hello, world\n").unwrap();
        let member = [
            HEADER.as_slice(),
            &deflate.finish().unwrap(),
            &trailer.bytes(),
        ]
        .concat();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(member.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello, world\n");
    }
}
