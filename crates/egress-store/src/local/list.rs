//! Listing a directory as S3 lists a bucket: every file below it, in UTF-8 byte order of
//! its key, a page at a time; and finding the temporary files a killed run left.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{OLD_TEMP_MARK, TEMP_MARK};
use crate::error::StoreError;
use crate::{ObjectInfo, PendingUpload};

/// One directory being listed: its entries in key order, with what a listing needs.
struct Level {
    rel: String,
    entries: std::vec::IntoIter<Entry>,
}

struct Entry {
    name: String,
    dir: bool,
    size: u64,
    modified: i64,
    modified_nanos: u32,
}

/// A depth-first walk in key order: each directory's entries sorted by name, a directory
/// as `name/`, which puts every key below it exactly where S3's UTF-8 byte order puts it.
pub(super) struct Walker {
    root: PathBuf,
    stack: Vec<Level>,
    start: Option<String>,
}

impl Walker {
    pub(super) fn new(root: PathBuf, under: &str) -> Walker {
        Walker {
            root,
            stack: Vec::new(),
            start: Some(under.to_string()),
        }
    }

    pub(super) fn next_page(&mut self, n: usize) -> Result<Vec<super::ObjectInfo>, StoreError> {
        if let Some(under) = self.start.take() {
            let level = read_level(&self.root, &under)?;
            self.stack.push(level);
        }
        let mut page = Vec::new();
        while page.len() < n {
            let Some(top) = self.stack.last_mut() else {
                break;
            };
            match top.entries.next() {
                None => {
                    self.stack.pop();
                }
                Some(e) if e.dir => {
                    let rel = format!("{}{}/", top.rel, e.name);
                    let level = read_level(&self.root, &rel)?;
                    self.stack.push(level);
                }
                Some(e) => page.push(ObjectInfo {
                    key: format!("{}{}", top.rel, e.name),
                    size: e.size,
                    etag: None,
                    modified: e.modified,
                    modified_nanos: e.modified_nanos,
                }),
            }
        }
        Ok(page)
    }
}

/// The objects and sub-folders directly in the folder `under`, in key order.
pub(super) fn folder(root: &Path, under: &str) -> Result<Vec<crate::Entry>, StoreError> {
    let level = read_level(root, under)?;
    let entries = level.entries.map(|e| match e.dir {
        true => crate::Entry::Folder(format!("{under}{}/", e.name)),
        false => crate::Entry::Object(super::ObjectInfo {
            key: format!("{under}{}", e.name),
            size: e.size,
            etag: None,
            modified: e.modified,
            modified_nanos: e.modified_nanos,
        }),
    });
    Ok(entries.collect())
}

/// The entries of `root/rel` worth listing, sorted. A name that is not UTF-8 cannot be a
/// key and a symlink is not followed (it could lead anywhere): both are logged and skipped.
fn read_level(root: &Path, rel: &str) -> Result<Level, StoreError> {
    let dir = root.join(rel);
    let read = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Level {
                rel: rel.to_string(),
                entries: Vec::new().into_iter(),
            })
        }
        Err(e) => return Err(StoreError::io("listing", &dir, &e)),
    };
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| StoreError::io("listing", &dir, &e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(path = %entry.path().display(), "skipping a file whose name is not valid UTF-8 (it cannot be an object key)");
            continue;
        };
        let meta = entry
            .metadata()
            .map_err(|e| StoreError::io("reading", &entry.path(), &e))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            tracing::warn!(path = %entry.path().display(), "skipping a symbolic link (not followed)");
        } else if kind.is_dir() {
            entries.push(Entry {
                name,
                dir: true,
                size: 0,
                modified: 0,
                modified_nanos: 0,
            });
        } else if kind.is_file() && !is_temp(&name) {
            entries.push(Entry {
                name,
                dir: false,
                size: meta.len(),
                modified: meta.mtime(),
                modified_nanos: meta.mtime_nsec() as u32,
            });
        }
    }
    entries.sort_by(|a, b| sort_name(a).cmp(&sort_name(b)));
    Ok(Level {
        rel: rel.to_string(),
        entries: entries.into_iter(),
    })
}

fn sort_name(e: &Entry) -> std::borrow::Cow<'_, str> {
    if e.dir {
        std::borrow::Cow::Owned(format!("{}/", e.name))
    } else {
        std::borrow::Cow::Borrowed(&e.name)
    }
}

fn is_temp(name: &str) -> bool {
    name.starts_with('.') && (name.contains(TEMP_MARK) || name.contains(OLD_TEMP_MARK))
}

/// Temporary files a killed run left (their final key, the file, its age).
pub(super) fn find_temp_files(root: &Path, under: &str) -> Vec<PendingUpload> {
    let mut out = Vec::new();
    let mut dirs = vec![root.join(under)];
    while let Some(dir) = dirs.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in read.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() && is_temp(&name) {
                let final_name = name[1..]
                    .split(TEMP_MARK)
                    .next()
                    .unwrap_or("")
                    .split(OLD_TEMP_MARK)
                    .next()
                    .unwrap_or("");
                let rel = entry.path().with_file_name(final_name);
                let key = rel
                    .strip_prefix(root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let initiated = entry.metadata().map(|m| m.mtime()).unwrap_or(0);
                out.push(PendingUpload {
                    key,
                    id: entry.path().to_string_lossy().into_owned(),
                    initiated,
                });
            }
        }
    }
    out
}
