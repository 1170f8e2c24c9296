//! The input's manifests, one per date folder: with `--require-manifest`, a folder is
//! copied only once its `_manifest.json` exists at the input, and each object must match
//! the size and SHA-256 it records. Without it, a manifest still tells the part sizes of
//! the objects egress-dump wrote, so their copies keep their ETags. Each folder's manifest
//! is read once, when the march first reaches the folder; one larger than
//! [`manifest::MAX_BYTES`] is refused unread.

use std::collections::{BTreeSet, HashMap};

use egress_common::manifest::{self, Manifest};
use egress_store::{key, ErrorKind, GetOptions, ObjectMeta, Store, StoreError};
use futures::StreamExt;

/// What one object must be, according to its folder's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// A folder's manifest at the input, as far as this run is concerned.
#[derive(Debug, Clone)]
pub enum Folder {
    /// The folder has a usable manifest.
    Complete(Box<Listed>),
    /// No manifest (the folder may still be being written).
    NoManifest,
    /// A manifest that cannot be used, and why.
    Unusable(String),
}

/// What a usable manifest lists, and which version of it was read (the version its
/// objects are checked against, and the one the output gets). Its bytes are not kept:
/// every day's manifest held until the hand-over made memory grow with the days of a
/// run (88.6 MiB for 730 days of 96 KB manifests, found by an adversarial run); they are
/// read again to be published ([`InputManifests::bytes_as_read`]).
#[derive(Debug, Clone)]
pub struct Listed {
    objects: HashMap<String, Entry>,
    /// The manifest's SHA-256.
    sha256: [u8; 32],
    /// Its metadata as read.
    pub meta: ObjectMeta,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    <sha2::Sha256 as sha2::Digest>::digest(bytes).into()
}

#[derive(Debug, Clone)]
struct Entry {
    expected: Expected,
    part_sizes: Option<Vec<u64>>,
    seen: bool,
}

/// Every folder met so far.
pub struct InputManifests {
    source: Store,
    folders: HashMap<String, Folder>,
    has_objects: HashMap<String, bool>,
    /// Objects the output holds in a day folder whose manifest does not list them.
    unlisted_at_output: HashMap<String, BTreeSet<String>>,
}

impl InputManifests {
    /// Manifests read from `source`.
    pub fn new(source: Store) -> InputManifests {
        InputManifests {
            source,
            folders: HashMap::new(),
            has_objects: HashMap::new(),
            unlisted_at_output: HashMap::new(),
        }
    }

    /// The state of `folder`, reading its manifest the first time.
    pub async fn folder(&mut self, folder: &str) -> Result<&mut Folder, StoreError> {
        if !self.folders.contains_key(folder) {
            let state = self.read(folder).await?;
            self.folders.insert(folder.to_string(), state);
        }
        self.folders
            .get_mut(folder)
            .ok_or_else(|| StoreError::new(ErrorKind::Other, "internal: folder state lost"))
    }

    async fn read(&self, folder: &str) -> Result<Folder, StoreError> {
        let manifest_key = manifest::key_in(folder);
        let (body, meta) = match self.source.get(&manifest_key, GetOptions::default()).await {
            Ok(got) if got.meta.size > manifest::MAX_BYTES => {
                return Ok(Folder::Unusable(manifest::too_large(got.meta.size)))
            }
            Ok(got) => (got.body.collect().await?, got.meta),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Folder::NoManifest),
            Err(e) => return Err(e),
        };
        Ok(match Manifest::parse(&body) {
            Ok(m) => Folder::Complete(Box::new(listed(folder, &m, &body, meta))),
            Err(reason) => Folder::Unusable(reason),
        })
    }

    /// True while the input's manifest of `folder` is still the version read: the same
    /// ETag where both have one, else the same bytes.
    pub async fn unchanged(&self, folder: &str) -> Result<bool, StoreError> {
        let Some(Folder::Complete(listed)) = self.folders.get(folder) else {
            return Ok(false);
        };
        let key = manifest::key_in(folder);
        let now = match self.source.head(&key).await {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if let (Some(read), Some(now)) = (&listed.meta.etag, &now.etag) {
            return Ok(read == now);
        }
        let again = self.source.get(&key, GetOptions::default()).await?;
        Ok(sha256(&again.body.collect().await?) == listed.sha256)
    }

    /// `folder`'s manifest read again, to be published: `None` unless it is still the
    /// version read (same ETag where the input gives one, and the same bytes).
    pub async fn bytes_as_read(&self, folder: &str) -> Result<Option<bytes::Bytes>, StoreError> {
        let Some(Folder::Complete(listed)) = self.folders.get(folder) else {
            return Ok(None);
        };
        let options = GetOptions {
            if_match: listed.meta.etag.clone(),
            ..GetOptions::default()
        };
        let got = match self.source.get(&manifest::key_in(folder), options).await {
            Ok(got) if got.meta.size == listed.meta.size => got,
            Ok(_) => return Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::NotFound | ErrorKind::PreconditionFailed
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let body = got.body.collect().await?;
        Ok((sha256(&body) == listed.sha256).then_some(body))
    }

    /// The manifest entry for `key`, marking it seen at the input.
    pub async fn see(
        &mut self,
        object_key: &str,
    ) -> Result<Option<(Expected, Option<Vec<u64>>)>, StoreError> {
        let folder = manifest::folder_of(object_key).to_string();
        Ok(match self.folder(&folder).await? {
            Folder::Complete(listed) => listed.objects.get_mut(object_key).map(|e| {
                e.seen = true;
                (e.expected.clone(), e.part_sizes.clone())
            }),
            _ => None,
        })
    }

    /// True when a usable manifest at the input lists `object_key`.
    pub async fn lists(&mut self, object_key: &str) -> Result<bool, StoreError> {
        let folder = manifest::folder_of(object_key).to_string();
        Ok(match self.folder(&folder).await? {
            Folder::Complete(listed) => listed.objects.contains_key(object_key),
            _ => false,
        })
    }

    /// Objects the manifest of `folder` lists that the input listing had, with what each
    /// must be.
    pub fn seen(&self, folder: &str) -> Vec<(String, Expected)> {
        match self.folders.get(folder) {
            Some(Folder::Complete(listed)) => {
                let seen: std::collections::BTreeMap<&String, &Expected> = listed
                    .objects
                    .iter()
                    .filter(|(_, e)| e.seen)
                    .map(|(k, e)| (k, &e.expected))
                    .collect();
                seen.into_iter()
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// The output holds `key`: remember it when its day has a manifest that does not list
    /// it (it must go before that manifest is published there).
    pub async fn at_output(&mut self, key: &str) -> Result<(), StoreError> {
        let folder = manifest::folder_of(key).to_string();
        let unlisted = match self.folder(&folder).await? {
            Folder::Complete(listed) => !listed.objects.contains_key(key),
            _ => false,
        };
        if unlisted && !manifest::is_manifest(key) {
            self.unlisted_at_output
                .entry(folder)
                .or_default()
                .insert(key.to_string());
        }
        Ok(())
    }

    /// Objects the output holds in `folder` that its manifest does not list.
    pub fn unlisted_at_output(&self, folder: &str) -> Vec<String> {
        self.unlisted_at_output
            .get(folder)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Objects the manifest of `folder` lists that the input listing did not have.
    pub fn missing(&self, folder: &str) -> Vec<String> {
        match self.folders.get(folder) {
            Some(Folder::Complete(listed)) => {
                let missing: BTreeSet<&String> = listed
                    .objects
                    .iter()
                    .filter(|(_, e)| !e.seen)
                    .map(|(k, _)| k)
                    .collect();
                missing.into_iter().cloned().collect()
            }
            _ => Vec::new(),
        }
    }

    /// True when the input has objects in `folder` but no manifest for it: the folder is
    /// being written, and its objects at the output must not be deleted.
    pub async fn in_progress(&mut self, folder: &str) -> Result<bool, StoreError> {
        if !matches!(self.folder(folder).await?, Folder::NoManifest) {
            return Ok(false);
        }
        if let Some(known) = self.has_objects.get(folder) {
            return Ok(*known);
        }
        let mut pages = self.source.list(&key::dir_prefix(folder));
        let mut found = false;
        while let Some(page) = pages.next().await {
            if page?.iter().any(|o| manifest::folder_of(&o.key) == folder) {
                found = true;
                break;
            }
        }
        self.has_objects.insert(folder.to_string(), found);
        Ok(found)
    }
}

fn listed(folder: &str, m: &Manifest, raw: &[u8], meta: ObjectMeta) -> Listed {
    let objects = m
        .objects()
        .into_iter()
        .map(|o| {
            let entry = Entry {
                expected: Expected {
                    size: o.bytes,
                    sha256: o.sha256.to_string(),
                },
                part_sizes: o.part_sizes.map(<[u64]>::to_vec),
                seen: false,
            };
            (key::join(folder, o.file), entry)
        })
        .collect();
    Listed {
        objects,
        sha256: sha256(raw),
        meta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_store::{Body, LocalStore, ObjectStore, PutOptions};
    use std::sync::Arc;

    fn manifest_json(files: &[(&str, u64, Option<Vec<u64>>)]) -> Vec<u8> {
        let tables: Vec<serde_json::Value> = files
            .iter()
            .map(|(file, size, parts)| {
                serde_json::json!({
                    "table": file, "schema": "public", "name": file, "file": file, "key": file,
                    "rows": 1, "uncompressed_bytes": 1, "compressed_bytes": size,
                    "sha256": "00", "uncompressed_sha256": "00", "columns": [], "part_sizes": parts
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "format_version": 1, "tool": "egress-dump", "tool_version": "t", "date": "d",
            "run_started": "", "run_finished": "", "compression_level": 6, "header": false,
            "snapshot": {"taken_at": "", "txid_snapshot": "", "wal_lsn": null, "server_version": ""},
            "tables": tables
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn folders_are_read_once_and_track_what_the_input_has() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path()));
        let json = manifest_json(&[("a.csv.gz", 10, Some(vec![6, 4])), ("b.csv.gz", 3, None)]);
        let objects = [
            ("d1/_manifest.json", json),
            ("d2/x.csv.gz", b"x".to_vec()),
            ("d3/broken/_manifest.json", b"{".to_vec()),
        ];
        for (key, body) in objects {
            let body = Body::from_bytes(body);
            store.put(key, body, &PutOptions::default()).await.unwrap();
        }
        let mut gates = InputManifests::new(store);
        let (expected, parts) = gates.see("d1/a.csv.gz").await.unwrap().unwrap();
        assert_eq!(expected.size, 10);
        assert_eq!(parts, Some(vec![6, 4]));
        assert_eq!(gates.missing("d1"), ["d1/b.csv.gz"]);
        assert!(gates.see("d2/x.csv.gz").await.unwrap().is_none());
        assert!(gates.in_progress("d2").await.unwrap());
        assert!(!gates.in_progress("gone").await.unwrap());
        assert!(!gates.in_progress("d1").await.unwrap());
        assert!(matches!(
            gates.folder("d3/broken").await.unwrap(),
            Folder::Unusable(_)
        ));
    }
}
