//! A Parquet file's columns, from its footer: two ranged reads at most (the tail, then
//! the footer when it is larger than the tail read).

use egress_store::{GetOptions, Store};

use super::storage::to_iceberg;

/// The tail read first: the dump's footers are a few KiB (one row group's statistics per
/// 128 MiB of file).
const TAIL: u64 = 64 * 1024;

/// The Arrow schema of the Parquet object `key` of `size` bytes (its embedded Arrow
/// schema where it has one: the extension types, such as UUID, survive).
pub async fn columns(store: &Store, key: &str, size: u64) -> iceberg::Result<arrow_schema::Schema> {
    let invalid =
        |why: String| iceberg::Error::new(iceberg::ErrorKind::DataInvalid, format!("{key}: {why}"));
    if size < 12 {
        return Err(invalid(format!(
            "{size} bytes is too small for a Parquet file"
        )));
    }
    let tail_len = size.min(TAIL);
    let tail = read(store, key, size - tail_len, tail_len).await?;
    let end: [u8; 8] = tail[tail.len() - 8..]
        .try_into()
        .map_err(|_| invalid("no footer".into()))?;
    let footer_len = parquet::file::metadata::FooterTail::try_from(end)
        .map_err(|e| invalid(e.to_string()))?
        .metadata_length() as u64;
    let needed = footer_len + 8;
    if needed > size {
        return Err(invalid(format!(
            "a footer of {footer_len} bytes in a file of {size}"
        )));
    }
    let footer = match needed <= tail_len {
        true => tail.slice((tail_len - needed) as usize..tail.len() - 8),
        false => read(store, key, size - needed, footer_len).await?,
    };
    let metadata = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer)
        .map_err(|e| invalid(e.to_string()))?;
    let file = metadata.file_metadata();
    parquet::arrow::parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())
        .map_err(|e| invalid(e.to_string()))
}

async fn read(store: &Store, key: &str, offset: u64, len: u64) -> iceberg::Result<bytes::Bytes> {
    let options = GetOptions {
        range: Some((offset, len)),
        ..GetOptions::default()
    };
    let got = store.get(key, options).await.map_err(to_iceberg)?;
    got.body.collect().await.map_err(to_iceberg)
}
