//! Listing a bucket prefix a page at a time (ListObjectsV2), lazily, in key order: every
//! object below it, or (with the `/` delimiter) one folder's objects and sub-folders.

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::list_objects_v2::{ListObjectsV2Error, ListObjectsV2Output};
use aws_sdk_s3::types::EncodingType;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use futures::StreamExt;

use super::clean_etag;
use super::error::{from_sdk, unreadable_xml, S3Context, Target};
use super::page_xml::{DamagedPage, FastListing, UnreadablePage};
use crate::error::{ErrorKind, StoreError};
use crate::{Entry, EntryStream, ObjectInfo, PageStream};

/// Keys in a listing asked with `encoding-type=url` come back URL-encoded (spaces as `+`,
/// as botocore and minio-go decode them): keys with characters XML cannot carry (U+0001)
/// would otherwise break the whole listing.
fn decode_key(key: &str) -> String {
    let plus_as_space = key.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
}

/// True when `T` (the fast reader's verdict on a page) is among the causes of `err`.
fn caused_by<T: std::error::Error + 'static, E: std::error::Error + 'static>(
    err: &SdkError<E, HttpResponse>,
) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if e.is::<T>() {
            return true;
        }
        cause = e.source();
    }
    false
}

struct ListState {
    token: Option<String>,
    done: bool,
}

/// What a listing needs, owned, so its pages can be fetched lazily.
pub(super) struct ListCtx {
    pub(super) client: aws_sdk_s3::Client,
    pub(super) bucket: String,
    pub(super) root: String,
    pub(super) list_prefix: String,
    pub(super) what: String,
    pub(super) endpoint: String,
    pub(super) hint: &'static str,
    /// List one level: sub-folders come back as [`Entry::Folder`].
    pub(super) delimiter: bool,
}

impl ListCtx {
    /// One page, keys listed raw. A 2xx page that cannot be read (damaged in transit, or
    /// refused by the SDK) is asked once more as it was; if that one holds a character XML
    /// cannot carry (a key with U+0001), it is asked with `encoding-type=url` and its keys
    /// decoded, as minio-go does. Asking for encoding only then keeps us safe from servers
    /// that echo `EncodingType` without encoding (s3s-fs 0.14 does: measured), whose keys
    /// decoding would rename (`a+b` as `a b`).
    async fn page(
        &self,
        token: Option<String>,
    ) -> Result<(Vec<Entry>, Option<String>), StoreError> {
        let mut page = self.request(token.clone(), false).await;
        if page
            .as_ref()
            .is_err_and(|e| unreadable_xml(e) || caused_by::<DamagedPage, _>(e))
        {
            page = self.request(token.clone(), false).await;
            if page.as_ref().is_err_and(caused_by::<UnreadablePage, _>) {
                page = self.request(token, true).await;
            }
        }
        let page = page.map_err(|e| {
            let ctx = S3Context {
                bucket: &self.bucket,
                endpoint: &self.endpoint,
                credentials_hint: self.hint,
            };
            from_sdk(&e, &self.what, Target::Bucket, ctx)
        })?;
        self.objects(page)
    }

    /// A listed key relative to the root, if it is below the prefix the listing asked for.
    fn relative<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.starts_with(&self.list_prefix)
            .then(|| key.strip_prefix(&self.root))
            .flatten()
    }

    /// An error for a page that cannot be what the store meant: nothing is decided from it.
    fn broken(&self, what_is_wrong: &str) -> StoreError {
        StoreError::new(
            ErrorKind::Other,
            format!(
                "{}: {what_is_wrong}; nothing was decided from this listing: check that {} is an S3 server, and any proxy in front of it",
                self.what, self.endpoint
            ),
        )
    }

    async fn request(
        &self,
        token: Option<String>,
        encode: bool,
    ) -> Result<ListObjectsV2Output, SdkError<ListObjectsV2Error, HttpResponse>> {
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.list_prefix)
            .max_keys(1000)
            .set_delimiter(self.delimiter.then(|| "/".to_string()))
            .set_continuation_token(token)
            .set_encoding_type(encode.then_some(EncodingType::Url))
            .customize()
            .interceptor(FastListing)
            .send()
            .await
    }

    /// The page's objects and folders, merged in key order (S3 returns them apart, each
    /// sorted), keys relative to the root. Whatever would silently shorten the listing is
    /// an error: a count (`KeyCount`, objects and folders, where the store sends it) that
    /// the page does not hold, a keyless object or one outside the prefix asked for, a page
    /// said to go on without a token to go on from.
    fn objects(
        &self,
        page: ListObjectsV2Output,
    ) -> Result<(Vec<Entry>, Option<String>), StoreError> {
        let encoded = page.encoding_type() == Some(&EncodingType::Url);
        let decode = |raw: &str| match encoded {
            true => decode_key(raw),
            false => raw.to_string(),
        };
        let listed = page.contents().len() + page.common_prefixes().len();
        if let Some(count) = page
            .key_count()
            .filter(|&c| usize::try_from(c) != Ok(listed))
        {
            return Err(self.broken(&format!(
                "the page says it holds {count} keys but lists {listed}"
            )));
        }
        let mut objects = Vec::with_capacity(page.contents().len());
        for o in page.contents() {
            let full = o.key().filter(|k| !k.is_empty()).map(decode);
            let Some(key) = full.as_deref().and_then(|k| self.relative(k)) else {
                return Err(self.broken(&format!(
                    "the store listed an object without a key, or outside {} ({:?})",
                    self.list_prefix,
                    o.key()
                )));
            };
            // Zero-byte "folder" markers have no file behind them.
            if key.is_empty() || (key.ends_with('/') && o.size().unwrap_or(0) == 0) {
                continue;
            }
            objects.push(Entry::Object(ObjectInfo {
                key: key.to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: clean_etag(o.e_tag()),
                modified: o.last_modified().map(|t| t.secs()).unwrap_or(0),
                modified_nanos: o.last_modified().map(|t| t.subsec_nanos()).unwrap_or(0),
            }));
        }
        let mut entries = objects;
        for p in page.common_prefixes() {
            // A folder is longer than the prefix asked for (or it would be listed again).
            let full = p
                .prefix()
                .map(decode)
                .filter(|k| k.len() > self.list_prefix.len());
            let Some(folder) = full.as_deref().and_then(|k| self.relative(k)) else {
                return Err(self.broken(&format!(
                    "the store listed a folder without a name, or outside {} ({:?})",
                    self.list_prefix,
                    p.prefix()
                )));
            };
            entries.push(Entry::Folder(folder.to_string()));
        }
        if !page.common_prefixes().is_empty() {
            entries.sort_by(|a, b| a.key().as_bytes().cmp(b.key().as_bytes()));
        }
        let next = match page.is_truncated().unwrap_or(false) {
            true => match page.next_continuation_token() {
                Some(token) if !token.is_empty() => Some(token.to_string()),
                _ => {
                    return Err(self.broken(
                        "the store says the listing goes on but sent no continuation token",
                    ))
                }
            },
            false => None,
        };
        Ok((entries, next))
    }
}

/// The objects of the listing `ctx` describes (no delimiter), fetched as they are read.
pub(super) fn pages(this: ListCtx) -> PageStream {
    entries(this)
        .map(|page| {
            page.map(|entries| {
                let objects = entries.into_iter().filter_map(|e| match e {
                    Entry::Object(o) => Some(o),
                    Entry::Folder(_) => None,
                });
                objects.collect()
            })
        })
        .boxed()
}

/// The pages of the listing `ctx` describes, fetched as they are read.
pub(super) fn entries(this: ListCtx) -> EntryStream {
    let state = ListState {
        token: None,
        done: false,
    };
    futures::stream::unfold((this, state), |(this, state)| async move {
        if state.done {
            return None;
        }
        let result = this.page(state.token).await;
        match result {
            Ok((objects, next)) => {
                let state = ListState {
                    done: next.is_none(),
                    token: next,
                };
                Some((Ok(objects), (this, state)))
            }
            Err(e) => Some((
                Err(e),
                (
                    this,
                    ListState {
                        token: None,
                        done: true,
                    },
                ),
            )),
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ListCtx {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .build();
        ListCtx {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: "b".into(),
            root: "day/".into(),
            list_prefix: "day/".into(),
            what: "listing s3://b/day/".into(),
            endpoint: "http://127.0.0.1:1".into(),
            hint: "the keys",
            delimiter: false,
        }
    }

    fn object(key: Option<&str>) -> aws_sdk_s3::types::Object {
        aws_sdk_s3::types::Object::builder()
            .set_key(key.map(str::to_string))
            .size(3)
            .build()
    }

    #[test]
    fn a_page_that_would_shorten_the_listing_is_an_error() {
        let page = |objects: Vec<_>, truncated, token: Option<&str>| {
            ListObjectsV2Output::builder()
                .set_contents(Some(objects))
                .is_truncated(truncated)
                .set_next_continuation_token(token.map(str::to_string))
                .build()
        };
        let (entries, next) = ctx()
            .objects(page(vec![object(Some("day/a"))], true, Some("t")))
            .unwrap();
        assert_eq!((entries.len(), next.as_deref()), (1, Some("t")));
        let (_, next) = ctx()
            .objects(page(vec![object(Some("day/a"))], false, None))
            .unwrap();
        assert_eq!(next, None);
        let counted = ListObjectsV2Output::builder()
            .contents(object(Some("day/a")))
            .key_count(1)
            .build();
        assert_eq!(ctx().objects(counted).unwrap().0.len(), 1);
        let miscounted = ListObjectsV2Output::builder()
            .contents(object(Some("day/a")))
            .key_count(2)
            .build();
        let nameless_folder = ListObjectsV2Output::builder()
            .common_prefixes(aws_sdk_s3::types::CommonPrefix::builder().build())
            .build();
        let the_prefix_itself = ListObjectsV2Output::builder()
            .common_prefixes(
                aws_sdk_s3::types::CommonPrefix::builder()
                    .prefix("day/")
                    .build(),
            )
            .build();
        let broken = [
            page(vec![object(Some("day/a")), object(None)], false, None),
            page(vec![object(Some("day/a")), object(Some(""))], false, None),
            page(vec![object(Some("other/a"))], false, None),
            page(vec![object(Some("day/a"))], true, None),
            page(vec![object(Some("day/a"))], true, Some("")),
            miscounted,
            nameless_folder,
            the_prefix_itself,
        ];
        for p in broken {
            let err = ctx().objects(p).expect_err("a shortened listing");
            assert!(err.to_string().contains("nothing was decided"), "{err}");
        }
    }

    #[test]
    fn listing_keys_are_url_decoded() {
        assert_eq!(decode_key("with+space%2Bplus%01"), "with space+plus\u{1}");
        assert_eq!(decode_key("%C5%BC%C3%B3%C5%82%C4%87"), "żółć");
    }
}
