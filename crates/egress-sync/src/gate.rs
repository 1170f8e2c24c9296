//! `--require-manifest`: which date folders are complete (their `_manifest.json` exists at
//! the source) and what each object must measure. Pure: no I/O.

use std::collections::{BTreeSet, HashMap};

use egress_common::manifest::{Manifest, FILE_NAME};

use crate::object::ObjectInfo;

/// The folder of a key (`2024-01-01` for `2024-01-01/t.csv.gz`, empty at the top).
pub fn folder(key: &str) -> &str {
    key.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("")
}

/// The manifest key of a folder.
pub fn manifest_key(folder: &str) -> String {
    if folder.is_empty() {
        FILE_NAME.to_string()
    } else {
        format!("{folder}/{FILE_NAME}")
    }
}

/// True for a manifest key.
pub fn is_manifest(key: &str) -> bool {
    key == FILE_NAME || key.ends_with(&format!("/{FILE_NAME}"))
}

/// The source objects split by completeness.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Gated {
    /// Objects in folders that have a manifest (the manifests included).
    pub complete: Vec<ObjectInfo>,
    /// Folders with objects but no manifest, sorted.
    pub incomplete: Vec<String>,
}

/// Keep only objects whose folder holds a manifest.
pub fn split(source: Vec<ObjectInfo>) -> Gated {
    let with_manifest: BTreeSet<String> = source
        .iter()
        .filter(|o| is_manifest(&o.key))
        .map(|o| folder(&o.key).to_string())
        .collect();
    let mut gated = Gated::default();
    let mut incomplete = BTreeSet::new();
    for object in source {
        if with_manifest.contains(folder(&object.key)) {
            gated.complete.push(object);
        } else {
            incomplete.insert(folder(&object.key).to_string());
        }
    }
    gated.incomplete = incomplete.into_iter().collect();
    gated
}

/// What one object must be, according to its folder's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// The expectations a folder's manifest sets, keyed by object key; an error names files the
/// manifest lists but the source lacks.
pub fn expectations(
    folder: &str,
    manifest: &Manifest,
    source_keys: &BTreeSet<&str>,
) -> Result<HashMap<String, Expected>, String> {
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    for table in &manifest.tables {
        let key = if folder.is_empty() {
            table.file.clone()
        } else {
            format!("{folder}/{}", table.file)
        };
        if !source_keys.contains(key.as_str()) {
            missing.push(key.clone());
        }
        out.insert(
            key,
            Expected {
                size: table.compressed_bytes,
                sha256: table.sha256.clone(),
            },
        );
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "the manifest lists objects the input does not have: {}",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size: 1,
            etag: "e".into(),
            modified: 0,
        }
    }

    #[test]
    fn only_folders_with_a_manifest_pass() {
        let gated = split(vec![
            obj("2024-01-01/_manifest.json"),
            obj("2024-01-01/a.csv.gz"),
            obj("2024-01-02/a.csv.gz"),
            obj("top.txt"),
        ]);
        let keys: Vec<&str> = gated.complete.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["2024-01-01/_manifest.json", "2024-01-01/a.csv.gz"]);
        assert_eq!(gated.incomplete, ["", "2024-01-02"]);
    }

    #[test]
    fn manifest_keys() {
        assert_eq!(manifest_key("d"), "d/_manifest.json");
        assert_eq!(manifest_key(""), "_manifest.json");
        assert!(is_manifest("x/_manifest.json"));
        assert!(!is_manifest("x/a_manifest.json"));
        assert_eq!(folder("a/b/c"), "a/b");
    }
}
