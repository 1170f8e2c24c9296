//! `--verify`: check a side against its manifests without copying anything.

use std::collections::HashMap;

use anyhow::anyhow;
use egress_common::manifest::Manifest;
use egress_common::units::human_bytes;
use egress_common::Failure;
use sha2::{Digest, Sha256};

use crate::gate;
use crate::object::ObjectInfo;
use crate::store::Store;

/// Objects are hashed in reads of this size, so memory stays small for any object.
const READ_BYTES: u64 = 8 * 1024 * 1024;

/// Per folder: the problems found (empty when it verified).
#[derive(Debug, Default)]
pub struct Verification {
    /// Folder -> problems (empty: OK).
    pub folders: Vec<(String, Vec<String>)>,
    /// Folders holding objects but no manifest.
    pub without_manifest: Vec<String>,
}

/// Check every folder that has a manifest: each listed object present, with the recorded
/// size and SHA-256. Prints one line per folder.
pub async fn verify(store: &Store, label: &str) -> Result<Verification, Failure> {
    let mut listing = store.list().await?;
    listing.retain(|o| o.key != crate::store::STATE_KEY);
    let by_key: HashMap<&str, &ObjectInfo> = listing.iter().map(|o| (o.key.as_str(), o)).collect();
    let gated = gate::split(listing.clone());
    let mut result = Verification {
        without_manifest: gated.incomplete,
        ..Default::default()
    };
    for manifest_object in gated.complete.iter().filter(|o| gate::is_manifest(&o.key)) {
        let folder = gate::folder(&manifest_object.key).to_string();
        let mut problems = Vec::new();
        let mut bytes = 0;
        let manifest = match store.read_optional(&manifest_object.key).await? {
            Some(body) => Manifest::parse(&body),
            None => Err("manifest disappeared while verifying".to_string()),
        };
        match manifest {
            Err(e) => problems.push(format!("{}: {e}", manifest_object.key)),
            Ok(manifest) => {
                for table in &manifest.tables {
                    let key = if folder.is_empty() {
                        table.file.clone()
                    } else {
                        format!("{folder}/{}", table.file)
                    };
                    let Some(object) = by_key.get(key.as_str()) else {
                        problems.push(format!("{key}: missing"));
                        continue;
                    };
                    if object.size != table.compressed_bytes {
                        problems.push(format!(
                            "{key}: {} bytes, the manifest says {}",
                            object.size, table.compressed_bytes
                        ));
                        continue;
                    }
                    let sha = sha256(store, &key, object.size).await?;
                    if sha != table.sha256 {
                        problems.push(format!(
                            "{key}: SHA-256 {sha}, the manifest says {}",
                            table.sha256
                        ));
                    }
                    bytes += object.size;
                }
                if problems.is_empty() {
                    println!(
                        "{label} {folder}: OK ({} objects, {})",
                        manifest.tables.len(),
                        human_bytes(bytes)
                    );
                }
            }
        }
        for p in &problems {
            println!("{label} {folder}: MISMATCH {p}");
        }
        result.folders.push((folder, problems));
    }
    for folder in &result.without_manifest {
        println!("{label} {folder}: no manifest (incomplete, or still being written)");
    }
    Ok(result)
}

async fn sha256(store: &Store, key: &str, size: u64) -> Result<String, Failure> {
    let mut hash = Sha256::new();
    let mut offset = 0;
    while offset < size {
        let len = READ_BYTES.min(size - offset);
        let (chunk, _) = store.get(key, Some((offset, len)), None).await?;
        if chunk.is_empty() {
            return Err(Failure::runtime(anyhow!(
                "{key}: read returned no data at offset {offset}"
            )));
        }
        hash.update(&chunk);
        offset += chunk.len() as u64;
    }
    Ok(hex::encode(hash.finalize()))
}
