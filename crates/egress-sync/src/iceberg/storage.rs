//! egress-store as iceberg-rust's storage: the one storage layer under the tables. Iceberg
//! names files by absolute URI (`s3://bucket/path/...`, `file:///dir/...`); a [`Root`]
//! turns those into keys of the store they live in, and back.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use egress_store::{Body, ErrorKind, GetOptions, PutOptions, Store, StoreError};
use futures::stream::BoxStream;
use futures::StreamExt;
use iceberg::io::{FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage};
use serde::{Deserialize, Serialize};

/// Where a store's keys start, as a URI: `s3://bucket/prefix` or `file:///abs/dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root(String);

impl Root {
    /// The URI of the root of `location`'s store.
    pub fn of(location: &egress_common::Location) -> Root {
        match location {
            egress_common::Location::S3 { bucket, prefix } => match prefix.is_empty() {
                true => Root(format!("s3://{bucket}")),
                false => Root(format!("s3://{bucket}/{prefix}")),
            },
            egress_common::Location::Local(dir) => {
                let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                let text = abs.display().to_string();
                Root(format!("file://{}", text.trim_end_matches('/')))
            }
        }
    }

    /// The URI of `key`.
    pub fn uri(&self, key: &str) -> String {
        format!("{}/{key}", self.0)
    }

    /// The key of `uri`, when it lies under this root.
    pub fn key<'a>(&self, uri: &'a str) -> Option<&'a str> {
        uri.strip_prefix(self.0.as_str())?.strip_prefix('/')
    }

    /// The root's own URI.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the tables are: a store, its root's URI, and the key prefix of the tables in it
/// (`_iceberg` for the default warehouse inside the output).
#[derive(Debug, Clone)]
pub struct Warehouse {
    /// The store (writes asked of the run's lease).
    pub store: Store,
    /// Its root's URI.
    pub root: Root,
    /// The tables' key prefix in it.
    pub prefix: String,
}

impl Warehouse {
    /// The URI of the folder of table `name` in `namespace`.
    pub fn table_uri(&self, namespace: &str, name: &str) -> String {
        let key = egress_store::key::join(&self.prefix, &format!("{namespace}/{name}"));
        self.root.uri(&key)
    }
}

/// A store as iceberg-rust's [`Storage`]. Serialised (iceberg's storages are), the store
/// itself is not: a deserialised one only names its root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableStorage {
    root: Root,
    #[serde(skip)]
    store: Option<Store>,
}

impl TableStorage {
    /// `store`, whose keys start at `root`.
    pub fn new(store: Store, root: Root) -> TableStorage {
        TableStorage {
            root,
            store: Some(store),
        }
    }

    /// The store and key `path` names.
    fn locate<'a>(&'a self, path: &'a str) -> iceberg::Result<(&'a Store, &'a str)> {
        let store = self.store.as_ref().ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                "a storage without its store",
            )
        })?;
        let key = self.root.key(path).ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!("{path} lies outside {}", self.root.as_str()),
            )
        })?;
        Ok((store, key))
    }

    /// The store and key of `path`.
    pub fn locate_store<'a>(&'a self, path: &'a str) -> iceberg::Result<(&'a Store, &'a str)> {
        self.locate(path)
    }

    /// Write `bytes` to `path` in one PUT.
    pub async fn write_bytes(&self, path: &str, bytes: Bytes) -> iceberg::Result<()> {
        Storage::write(self, path, bytes).await
    }

    fn shared(&self) -> Arc<dyn Storage> {
        Arc::new(self.clone())
    }
}

/// A store's error as iceberg's, the store's message kept.
pub fn to_iceberg(e: StoreError) -> iceberg::Error {
    let kind = match e.kind() {
        ErrorKind::NotFound => iceberg::ErrorKind::DataInvalid,
        _ => iceberg::ErrorKind::Unexpected,
    };
    iceberg::Error::new(kind, e.to_string())
}

/// Read a whole object.
async fn read_all(store: &Store, key: &str, range: Option<(u64, u64)>) -> iceberg::Result<Bytes> {
    let options = GetOptions {
        range,
        ..GetOptions::default()
    };
    let got = store.get(key, options).await.map_err(to_iceberg)?;
    got.body.collect().await.map_err(to_iceberg)
}

#[async_trait]
#[typetag::serde(name = "egress")]
impl Storage for TableStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let (store, key) = self.locate(path)?;
        match store.head(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(to_iceberg(e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let (store, key) = self.locate(path)?;
        let meta = store.head(key).await.map_err(to_iceberg)?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let (store, key) = self.locate(path)?;
        read_all(store, key, None).await
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let (store, key) = self.locate(path)?;
        Ok(Box::new(Reader {
            store: store.clone(),
            key: key.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let (store, key) = self.locate(path)?;
        let options = PutOptions::default();
        store
            .put(key, Body::from_bytes(bs), &options)
            .await
            .map_err(to_iceberg)?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        self.locate(path)?;
        Ok(Box::new(Writer {
            storage: self.clone(),
            path: path.to_string(),
            bytes: Vec::new(),
            closed: false,
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let (store, key) = self.locate(path)?;
        store.delete(key).await.map_err(to_iceberg)
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let (store, prefix) = self.locate(path)?;
        let mut pages = store.list(prefix);
        while let Some(page) = pages.next().await {
            for object in page.map_err(to_iceberg)? {
                store.delete(&object.key).await.map_err(to_iceberg)?;
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        self.locate(path)?;
        Ok(InputFile::new(self.shared(), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        self.locate(path)?;
        Ok(OutputFile::new(self.shared(), path.to_string()))
    }
}

/// Ranged reads of one object.
struct Reader {
    store: Store,
    key: String,
}

#[async_trait]
impl FileRead for Reader {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        let len = range.end.saturating_sub(range.start);
        read_all(&self.store, &self.key, Some((range.start, len))).await
    }
}

/// Metadata files are small (a manifest holds one day's entries): written in one PUT
/// when closed, so that a file is whole or absent.
struct Writer {
    storage: TableStorage,
    path: String,
    bytes: Vec<u8>,
    closed: bool,
}

#[async_trait]
impl FileWrite for Writer {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        self.bytes.extend_from_slice(&bs);
        Ok(())
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        if self.closed {
            return Err(iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("{} closed twice", self.path),
            ));
        }
        self.closed = true;
        let bytes = Bytes::from(std::mem::take(&mut self.bytes));
        self.storage.write(&self.path, bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_store::MemoryStore;

    #[test]
    fn a_root_maps_keys_to_uris_and_back() {
        let root = Root::of(&egress_common::Location::S3 {
            bucket: "b".into(),
            prefix: "out/x".into(),
        });
        assert_eq!(
            root.uri("2026-01-01/t.parquet"),
            "s3://b/out/x/2026-01-01/t.parquet"
        );
        assert_eq!(root.key("s3://b/out/x/k"), Some("k"));
        assert_eq!(root.key("s3://b/out/xy/k"), None);
        let local = Root::of(&egress_common::Location::Local("/tmp/o/".into()));
        assert_eq!(local.uri("k"), "file:///tmp/o/k");
    }

    #[tokio::test]
    async fn files_are_written_whole_and_read_in_ranges() {
        let store: Store = Arc::new(MemoryStore::new());
        let root = Root("s3://b".into());
        let storage = TableStorage::new(store.clone(), root);
        let out = storage.new_output("s3://b/m/a.avro").expect("output");
        let mut w = out.writer().await.expect("writer");
        w.write(Bytes::from_static(b"hello ")).await.expect("write");
        assert!(!storage.exists("s3://b/m/a.avro").await.expect("exists"));
        w.write(Bytes::from_static(b"world")).await.expect("write");
        w.close().await.expect("close");
        let input = storage.new_input("s3://b/m/a.avro").expect("input");
        assert_eq!(input.metadata().await.expect("meta").size, 11);
        let r = input.reader().await.expect("reader");
        assert_eq!(&r.read(6..11).await.expect("range")[..], b"world");
        assert!(storage.new_input("s3://other/k").is_err());
    }
}
