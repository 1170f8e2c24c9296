//! Listing a store with several requests in flight, still in key order.
//!
//! One listing stream is one request at a time: 10 million keys are 10,000 round trips in
//! a row. The key space splits cleanly at folders, because every key below a folder sorts
//! between the folder's prefix and the next entry beside it. So the walk first looks at the
//! top levels with `/`-delimited listings (a few requests) until it has enough folders to
//! keep `width` listings busy, then lists those folders whole, each in its own task, up to
//! `width` of them ahead of the reader, and hands their pages on in order.
//!
//! Memory stays flat in the number of objects: each task buffers at most [`AHEAD`] pages,
//! the discovery holds at most two pages per folder it looks into (it looks into fewer than
//! `width` per level, [`LEVELS`] levels deep), and a folder too large to look into whole is
//! read page by page.

use std::collections::VecDeque;
use std::future::Future;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::{Entry, EntryStream, ObjectInfo, PageStream, Store, StoreError};

/// Pages a folder's listing task may hold before the reader takes them.
const AHEAD: usize = 2;

/// How deep discovery looks for folders (the root is level 1): enough for
/// `<date>/<table>` and for `year=/month=/day=` layouts.
const LEVELS: usize = 3;

/// Every object under `under`, in key order, as [`crate::ObjectStore::list`] gives them, with
/// up to `width` listing requests in flight. `width` 1 is the store's own single listing.
pub fn list_parallel(store: Store, under: &str, width: usize) -> PageStream {
    if width <= 1 {
        return store.list(under);
    }
    let walk = Walk {
        store,
        width,
        start: Some(under.to_string()),
        units: VecDeque::new(),
        running: VecDeque::new(),
    };
    futures::stream::unfold(Some(walk), |walk| async move {
        let mut walk = walk?;
        match walk.next_page().await {
            Ok(Some(page)) => Some((Ok(page), Some(walk))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// A stretch of the key space, in the order the walk hands them on.
enum Unit {
    /// Objects already listed.
    Objects(Vec<ObjectInfo>),
    /// A folder to list whole.
    Folder(String),
    /// A folder too large to look into whole: its one-level listing, read as the walk goes
    /// (its sub-folders become [`Unit::Folder`]s).
    Level {
        pages: VecDeque<Vec<Entry>>,
        rest: EntryStream,
    },
}

/// A unit ready to be read: levels are opened up first.
enum Start {
    Objects(Vec<ObjectInfo>),
    Folder(String),
}

/// A unit being read: objects in hand, or a folder's listing task.
enum Running {
    Objects(Vec<ObjectInfo>),
    Listing {
        pages: mpsc::Receiver<Result<Vec<ObjectInfo>, StoreError>>,
        _task: AbortOnDrop,
    },
}

/// Stops a listing task nobody reads any more (the walk failed or was dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Walk {
    store: Store,
    width: usize,
    start: Option<String>,
    units: VecDeque<Unit>,
    running: VecDeque<Running>,
}

impl Walk {
    /// The next page of objects in key order; `None` at the end.
    async fn next_page(&mut self) -> Result<Option<Vec<ObjectInfo>>, StoreError> {
        if let Some(under) = self.start.take() {
            self.units = discover(&self.store, under, self.width).await?;
        }
        loop {
            self.start_units().await?;
            match self.running.front_mut() {
                None => return Ok(None),
                Some(Running::Objects(objects)) => {
                    let page = std::mem::take(objects);
                    self.running.pop_front();
                    if !page.is_empty() {
                        return Ok(Some(page));
                    }
                }
                Some(Running::Listing { pages, .. }) => match pages.recv().await {
                    Some(page) => return page.map(Some),
                    None => {
                        self.running.pop_front();
                    }
                },
            }
        }
    }

    /// Start units in order until `width` are being read.
    async fn start_units(&mut self) -> Result<(), StoreError> {
        while self.running.len() < self.width {
            let Some(unit) = self.next_unit().await? else {
                return Ok(());
            };
            let running = match unit {
                Start::Objects(objects) => Running::Objects(objects),
                Start::Folder(folder) => self.spawn_listing(folder),
            };
            self.running.push_back(running);
        }
        Ok(())
    }

    /// The next unit to start: levels are opened up into their objects and folders.
    async fn next_unit(&mut self) -> Result<Option<Start>, StoreError> {
        loop {
            match self.units.pop_front() {
                None => return Ok(None),
                Some(Unit::Objects(objects)) => return Ok(Some(Start::Objects(objects))),
                Some(Unit::Folder(folder)) => return Ok(Some(Start::Folder(folder))),
                Some(Unit::Level {
                    mut pages,
                    mut rest,
                }) => {
                    let page = match pages.pop_front() {
                        Some(page) => Some(page),
                        None => rest.next().await.transpose()?,
                    };
                    let Some(page) = page else { continue };
                    self.units.push_front(Unit::Level { pages, rest });
                    for unit in units_of(page).into_iter().rev() {
                        self.units.push_front(unit);
                    }
                }
            }
        }
    }

    fn spawn_listing(&self, folder: String) -> Running {
        let (tx, rx) = mpsc::channel(AHEAD);
        let mut pages = self.store.list(&folder);
        let task = crate::task::spawn(async move {
            while let Some(page) = pages.next().await {
                let failed = page.is_err();
                if tx.send(page).await.is_err() || failed {
                    return;
                }
            }
        });
        Running::Listing {
            pages: rx,
            _task: AbortOnDrop(task),
        }
    }
}

/// The units that cover `under`: its top levels looked into, one level at a time, while
/// fewer than `width` folders are known.
async fn discover(
    store: &Store,
    under: String,
    width: usize,
) -> Result<VecDeque<Unit>, StoreError> {
    let mut units = VecDeque::from([Unit::Folder(under)]);
    for _ in 0..LEVELS {
        let folders = units
            .iter()
            .filter(|u| matches!(u, Unit::Folder(_)))
            .count();
        if folders == 0 || folders >= width {
            break;
        }
        let opened = units.into_iter().map(|unit| async move {
            match unit {
                Unit::Folder(folder) => open_folder(store, &folder).await,
                other => Ok(vec![other]),
            }
        });
        let opened = futures::future::try_join_all(opened).await?;
        units = opened.into_iter().flatten().collect();
    }
    Ok(units)
}

/// A folder's entries when its one-level listing is one page; otherwise the listing
/// itself, to be read as the walk goes.
async fn open_folder(store: &Store, folder: &str) -> Result<Vec<Unit>, StoreError> {
    let mut rest = store.list_folder(folder);
    let first = rest.next().await.transpose()?.unwrap_or_default();
    match rest.next().await.transpose()? {
        None => Ok(units_of(first)),
        Some(second) => Ok(vec![Unit::Level {
            pages: VecDeque::from([first, second]),
            rest,
        }]),
    }
}

/// A page of entries as units: runs of objects, and folders.
fn units_of(page: Vec<Entry>) -> Vec<Unit> {
    let mut units = Vec::new();
    for entry in page {
        match (entry, units.last_mut()) {
            (Entry::Object(o), Some(Unit::Objects(objects))) => objects.push(o),
            (Entry::Object(o), _) => units.push(Unit::Objects(vec![o])),
            (Entry::Folder(f), _) => units.push(Unit::Folder(f)),
        }
    }
    units
}

/// A folder's entries, read in one go by `entries`, handed on in pages of `page`.
pub(crate) fn in_pages(
    entries: impl Future<Output = Result<Vec<Entry>, StoreError>> + Send + 'static,
    page: usize,
) -> EntryStream {
    futures::stream::once(entries)
        .flat_map(move |entries| {
            let mut pages: Vec<Result<Vec<Entry>, StoreError>> = Vec::new();
            match entries {
                Ok(entries) => {
                    let mut entries = entries.into_iter().peekable();
                    while entries.peek().is_some() {
                        pages.push(Ok(entries.by_ref().take(page.max(1)).collect()));
                    }
                }
                Err(e) => pages.push(Err(e)),
            }
            futures::stream::iter(pages)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Body, MemoryStore, PutOptions};

    async fn store_with(keys: &[String], page: usize) -> Store {
        let store: Store = Arc::new(MemoryStore::with_page(page));
        for key in keys {
            let body = Body::from_bytes(key.as_bytes().to_vec());
            store.put(key, body, &PutOptions::default()).await.unwrap();
        }
        store
    }

    async fn listed(pages: PageStream) -> Vec<String> {
        let pages: Vec<_> = pages.collect().await;
        let pages = pages.into_iter().collect::<Result<Vec<_>, _>>().unwrap();
        pages.into_iter().flatten().map(|o| o.key).collect()
    }

    /// Keys that sort around folders: `a-` and `a.` before `a/`, `a0` after, an empty
    /// segment, deep trees, a folder of many pages, objects at the root.
    fn tricky_keys() -> Vec<String> {
        let mut keys: Vec<String> = [
            "a", "a-b", "a.csv", "a/x", "a/y/z", "a/y/z2", "a0", "b//c", "b/c", "é/1", "z",
        ]
        .iter()
        .map(|k| k.to_string())
        .collect();
        keys.extend((0..57).map(|i| format!("big/{i:03}")));
        keys.extend((0..40).map(|i| format!("y=1/m={}/d={}/t", i % 4, i)));
        keys
    }

    #[tokio::test]
    async fn every_width_lists_what_one_stream_lists_in_the_same_order() {
        let keys = tricky_keys();
        for page in [1, 3, 1000] {
            let store = store_with(&keys, page).await;
            let one = listed(store.list("")).await;
            assert_eq!(one.len(), keys.len());
            for width in [1, 2, 3, 8, 64] {
                for under in ["", "a/", "y=1/", "big/", "none/"] {
                    let want: Vec<&String> = one.iter().filter(|k| k.starts_with(under)).collect();
                    let got = listed(list_parallel(store.clone(), under, width)).await;
                    let got: Vec<&String> = got.iter().collect();
                    assert_eq!(got, want, "page {page}, width {width}, under '{under}'");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_folder_lists_its_objects_and_sub_folders_once_each() {
        let store = store_with(&tricky_keys(), 1000).await;
        let page: Vec<_> = store.list_folder("").collect().await;
        let entries: Vec<String> = page
            .into_iter()
            .flat_map(|p| p.unwrap())
            .map(|e| match e {
                Entry::Object(o) => o.key,
                Entry::Folder(f) => format!("{f}*"),
            })
            .collect();
        let want = [
            "a", "a-b", "a.csv", "a/*", "a0", "b/*", "big/*", "y=1/*", "z", "é/*",
        ];
        assert_eq!(entries, want);
    }
}
