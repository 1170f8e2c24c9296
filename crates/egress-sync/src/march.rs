//! Walking the two listings side by side, as rclone's "march" does: both stores list keys
//! in UTF-8 byte order, so one pass over each, a page at a time, pairs every key with its
//! counterpart. Memory holds a page per side, whatever the number of objects.

use std::collections::VecDeque;

use egress_store::{ErrorKind, ObjectInfo, PageStream, StoreError};
use futures::StreamExt;

use crate::sides::{Filter, OLD_RECORDS_KEY};

/// One side's listing: filtered, and checked to be in order (a store that lists out of
/// order would make the march pair keys wrongly, and `--remove` delete the wrong objects).
pub struct Listing {
    pages: futures::stream::Fuse<PageStream>,
    page: VecDeque<ObjectInfo>,
    filter: Filter,
    last: Option<String>,
    label: &'static str,
    /// Whether the output holds an earlier version's records file.
    pub saw_old_records: bool,
    /// Objects listed (after filtering).
    pub count: u64,
    /// Objects the filter accepts in any share of a shared mirror (`--shares`).
    pub in_any_share: u64,
}

impl Listing {
    /// The listing `pages` of the side called `label`, keeping what `filter` accepts.
    pub fn new(pages: PageStream, filter: Filter, label: &'static str) -> Listing {
        Listing {
            pages: pages.fuse(),
            page: VecDeque::new(),
            filter,
            last: None,
            label,
            saw_old_records: false,
            count: 0,
            in_any_share: 0,
        }
    }

    /// The next object, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<ObjectInfo>, StoreError> {
        loop {
            if let Some(object) = self.page.pop_front() {
                if let Some(last) = &self.last {
                    if object.key.as_str() <= last.as_str() {
                        return Err(StoreError::new(
                            ErrorKind::Other,
                            format!(
                                "the {} store listed '{}' after '{last}': it does not list keys in UTF-8 byte order, so the two sides cannot be compared safely",
                                self.label, object.key
                            ),
                        ));
                    }
                }
                self.last = Some(object.key.clone());
                if object.key == OLD_RECORDS_KEY {
                    self.saw_old_records = true;
                }
                // Each key matched against the globs once: counted for the whole input,
                // then kept if it is in this share.
                if !self.filter.accepts_in_any_share(&object.key) {
                    continue;
                }
                self.in_any_share += 1;
                if !self.filter.in_this_share(&object.key) {
                    continue;
                }
                self.count += 1;
                return Ok(Some(object));
            }
            match self.pages.next().await {
                Some(page) => self.page.extend(page?),
                None => return Ok(None),
            }
        }
    }
}

/// A key and what each side holds under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pair {
    /// Only the input has it.
    SourceOnly(ObjectInfo),
    /// Only the output has it.
    DestOnly(ObjectInfo),
    /// Both have it.
    Both(ObjectInfo, ObjectInfo),
}

/// Merges two listings into [`Pair`]s in key order.
pub struct March {
    source: Listing,
    dest: Listing,
    next_source: Option<ObjectInfo>,
    next_dest: Option<ObjectInfo>,
    started: bool,
}

impl March {
    /// March over `source` and `dest`.
    pub fn new(source: Listing, dest: Listing) -> March {
        March {
            source,
            dest,
            next_source: None,
            next_dest: None,
            started: false,
        }
    }

    /// The next pair, or `None` when both listings are done.
    pub async fn next(&mut self) -> Result<Option<Pair>, StoreError> {
        if !self.started {
            self.started = true;
            let (s, d) = tokio::join!(self.source.next(), self.dest.next());
            self.next_source = s?;
            self.next_dest = d?;
        }
        let pair = match (self.next_source.take(), self.next_dest.take()) {
            (None, None) => return Ok(None),
            (Some(s), None) => Pair::SourceOnly(s),
            (None, Some(d)) => Pair::DestOnly(d),
            (Some(s), Some(d)) => match s.key.as_bytes().cmp(d.key.as_bytes()) {
                std::cmp::Ordering::Less => {
                    self.next_dest = Some(d);
                    Pair::SourceOnly(s)
                }
                std::cmp::Ordering::Greater => {
                    self.next_source = Some(s);
                    Pair::DestOnly(d)
                }
                std::cmp::Ordering::Equal => Pair::Both(s, d),
            },
        };
        if self.next_source.is_none() {
            self.next_source = self.source.next().await?;
        }
        if self.next_dest.is_none() {
            self.next_dest = self.dest.next().await?;
        }
        Ok(Some(pair))
    }

    /// Objects listed so far at the input and the output (after filtering).
    pub fn counts(&self) -> (u64, u64) {
        (self.source.count, self.dest.count)
    }

    /// Input objects the filter accepts in any share (all of them when not shared).
    pub fn input_in_any_share(&self) -> u64 {
        self.source.in_any_share
    }

    /// Whether the output holds an earlier version's records file.
    pub fn saw_old_records(&self) -> bool {
        self.dest.saw_old_records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size: 1,
            etag: None,
            modified: 0,
            modified_nanos: 0,
        }
    }

    fn listing(pages: Vec<Vec<&str>>) -> Listing {
        let pages: Vec<Result<Vec<ObjectInfo>, StoreError>> = pages
            .into_iter()
            .map(|p| Ok(p.into_iter().map(obj).collect()))
            .collect();
        Listing::new(
            futures::stream::iter(pages).boxed(),
            Filter::default(),
            "test",
        )
    }

    async fn pairs(mut march: March) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        while let Some(pair) = march.next().await? {
            out.push(match pair {
                Pair::SourceOnly(s) => format!("+{}", s.key),
                Pair::DestOnly(d) => format!("-{}", d.key),
                Pair::Both(s, _) => format!("={}", s.key),
            });
        }
        Ok(out)
    }

    #[tokio::test]
    async fn pairs_keys_across_pages_in_byte_order() {
        let source = listing(vec![vec!["a", "b/x"], vec![], vec!["c", "é"]]);
        let dest = listing(vec![
            vec!["a-", "b/x"],
            vec!["d", OLD_RECORDS_KEY.trim_start_matches('.')],
        ]);
        let got = pairs(March::new(source, dest)).await.unwrap();
        assert_eq!(
            got,
            [
                "+a",
                "-a-",
                "=b/x",
                "+c",
                "-d",
                "-egress-sync-state.json",
                "+é"
            ]
        );
    }

    #[tokio::test]
    async fn an_unsorted_listing_stops_the_march() {
        let source = listing(vec![vec!["b", "a"]]);
        let err = pairs(March::new(source, listing(vec![])))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("UTF-8 byte order"), "{err}");
    }

    #[tokio::test]
    async fn the_old_records_file_is_noticed_and_never_paired() {
        let dest = listing(vec![vec![OLD_RECORDS_KEY, "k"]]);
        let mut march = March::new(listing(vec![vec!["k"]]), dest);
        assert_eq!(
            march.next().await.unwrap(),
            Some(Pair::Both(obj("k"), obj("k")))
        );
        assert_eq!(march.next().await.unwrap(), None);
        assert!(march.saw_old_records());
        assert_eq!(march.counts(), (1, 1));
    }
}
