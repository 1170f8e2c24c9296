//! Test harness for egress: real servers (PostgreSQL, S3 look-alikes, Ceph RGW) on
//! loopback, torn down when dropped (also when a test panics). A missing server binary
//! fails the test with install instructions; it never skips.

pub mod ceph;
pub mod postgres;
pub mod process;
pub mod s3;

pub use ceph::CephRgw;
pub use postgres::PgServer;
pub use s3::{S3Endpoint, S3Kind, S3Server};

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1");
    listener.local_addr().expect("local address").port()
}

/// Gunzip `data` fully, panicking on an invalid stream.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip stream");
    out
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
