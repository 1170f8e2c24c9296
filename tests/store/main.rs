//! The store contract: the same cases on every store the programs write through, each
//! store's known differences stated once as data ([`Differences`], as measured against each
//! server; docs/operations.md tabulates them), never as special cases in
//! the cases themselves. Real servers (s3s-fs, moto, Ceph RGW 16), a local directory, and
//! the in-memory store that unit tests stand on.

use std::sync::Arc;

use egress_common::preflight::{self, Status, Use};
use egress_store::{
    list_parallel, Attributes, Body, CompletedPart, Condition, Entry, ErrorKind, GetOptions,
    LocalStore, MemoryStore, PartData, PartSlot, PutOptions, Store,
};
use egress_testkit::{CephRgw, Endpoint, S3Kind, S3Server};
use futures::StreamExt;
use md5::{Digest, Md5};

const MIB: usize = 1024 * 1024;

/// How a store differs from AWS S3 where the contract can tell.
#[derive(Debug, Clone, Copy)]
struct Differences {
    /// HEAD and GET return an ETag (a local directory has none).
    etags: bool,
    /// `HEAD ?partNumber=N` answers for the part (AWS, moto; Ceph RGW 16 and s3s-fs answer
    /// for the whole object).
    part_numbers: bool,
    /// Unfinished uploads can be listed (not s3s-fs 0.14).
    pending_uploads: bool,
    /// User metadata (`x-amz-meta-*`) is kept (not by a local directory).
    user_metadata: bool,
    /// `If-Match` on DELETE is honoured (Ceph RGW 16 and s3s-fs delete anyway: measured).
    conditional_delete: bool,
}

/// A store under test, and what it is known to do differently.
struct Fixture {
    name: &'static str,
    store: Store,
    differs: Differences,
}

const AS_S3: Differences = Differences {
    etags: true,
    part_numbers: true,
    pending_uploads: true,
    user_metadata: true,
    conditional_delete: true,
};

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

async fn put(f: &Fixture, key: &str, body: &[u8]) -> Option<String> {
    let options = PutOptions::default();
    let done = f
        .store
        .put(key, Body::from_bytes(body.to_vec()), &options)
        .await;
    done.unwrap_or_else(|e| panic!("{}: put {key}: {e}", f.name))
        .etag
}

async fn read(f: &Fixture, key: &str) -> Vec<u8> {
    let got = f.store.get(key, GetOptions::default()).await;
    let got = got.unwrap_or_else(|e| panic!("{}: get {key}: {e}", f.name));
    got.body.collect().await.unwrap().to_vec()
}

async fn keys(f: &Fixture, under: &str) -> (Vec<String>, usize) {
    let mut pages = f.store.list(under);
    let (mut keys, mut count) = (Vec::new(), 0);
    while let Some(page) = pages.next().await {
        let page = page.unwrap_or_else(|e| panic!("{}: list {under}: {e}", f.name));
        count += 1;
        keys.extend(page.into_iter().map(|o| o.key));
    }
    (keys, count)
}

/// Keys come back in UTF-8 byte order, a page of at most 1,000 at a time, all of them.
async fn listing_order_and_pages(f: &Fixture) {
    let names: Vec<String> = (0..1001).map(|i| format!("pages/{i:05}")).collect();
    futures::stream::iter(names.iter())
        .for_each_concurrent(32, |k| async move {
            put(f, k, b"x").await;
        })
        .await;
    let (listed, pages) = keys(f, "pages/").await;
    assert_eq!(listed, names, "{}: every key, in order", f.name);
    assert!(pages >= 2, "{}: 1,001 keys in {pages} page(s)", f.name);
}

/// Keys S3 allows that a naive client breaks: spaces, '+', non-ASCII, '%', '~', deep.
async fn odd_keys(f: &Fixture) {
    let odd = [
        "odd/a b.csv",
        "odd/a+b.csv",
        "odd/é/ü.csv",
        "odd/x%41",
        "odd/~t",
        "odd/A/Z",
        "odd/a/b/c/d",
    ];
    for (i, key) in odd.iter().enumerate() {
        put(f, key, &data(10 + i, i as u8)).await;
    }
    for (i, key) in odd.iter().enumerate() {
        assert_eq!(
            read(f, key).await,
            data(10 + i, i as u8),
            "{}: {key}",
            f.name
        );
    }
    let mut sorted: Vec<String> = odd.iter().map(|k| k.to_string()).collect();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(keys(f, "odd/").await.0, sorted, "{}: byte order", f.name);
}

/// A folder lists its objects and sub-folders, each once, in key order (keys beside a
/// folder that sort before and after its `/`); a walk of the whole store with several
/// listings in flight gives exactly the one-stream listing, including a folder of many pages.
async fn folder_listings(f: &Fixture) {
    let tree = [
        "tree/a-b",
        "tree/a.csv",
        "tree/a/x",
        "tree/a/y/z",
        "tree/a0",
        "tree/é/1",
        "tree/z",
    ];
    for key in tree {
        put(f, key, b"t").await;
    }
    let mut entries = Vec::new();
    let mut pages = f.store.list_folder("tree/");
    while let Some(page) = pages.next().await {
        let page = page.unwrap_or_else(|e| panic!("{}: list folder: {e}", f.name));
        entries.extend(page.into_iter().map(|e| match e {
            Entry::Object(o) => o.key,
            Entry::Folder(d) => format!("{d}*"),
        }));
    }
    let want = [
        "tree/a-b",
        "tree/a.csv",
        "tree/a/*",
        "tree/a0",
        "tree/z",
        "tree/é/*",
    ];
    assert_eq!(entries, want, "{}: one level, in byte order", f.name);
    let (one, _) = keys(f, "").await;
    assert!(
        one.len() > 1000,
        "{}: the pages/ folder is listed in pages",
        f.name
    );
    for width in [2, 16] {
        let mut walked = Vec::new();
        let mut pages = list_parallel(f.store.clone(), "", width);
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| panic!("{}: walk: {e}", f.name));
            walked.extend(page.into_iter().map(|o| o.key));
        }
        assert_eq!(walked, one, "{}: {width} listings at once", f.name);
    }
}

/// A range reads exactly its bytes, and says where it starts and how large the object is.
async fn ranged_reads(f: &Fixture) {
    let body = data(1000, 7);
    put(f, "range/obj", &body).await;
    let options = GetOptions {
        range: Some((100, 10)),
        ..Default::default()
    };
    let got = f.store.get("range/obj", options).await.unwrap();
    assert_eq!((got.offset, got.meta.size), (100, 1000), "{}", f.name);
    assert_eq!(
        got.body.collect().await.unwrap(),
        body[100..110],
        "{}",
        f.name
    );
}

/// Headers and user metadata travel with the object (where the store keeps them).
async fn metadata(f: &Fixture) {
    let mut attributes = Attributes {
        content_type: Some("application/gzip".into()),
        ..Default::default()
    };
    attributes
        .metadata
        .insert("egress-source-etag".into(), "abc-2".into());
    let options = PutOptions {
        attributes,
        ..Default::default()
    };
    f.store
        .put("meta/obj", Body::from_bytes(b"m".to_vec()), &options)
        .await
        .unwrap();
    let meta = f.store.head("meta/obj").await.unwrap();
    assert_eq!(meta.size, 1, "{}", f.name);
    if f.differs.user_metadata {
        let kept = meta.attributes.metadata.get("egress-source-etag");
        assert_eq!(kept.map(String::as_str), Some("abc-2"), "{}", f.name);
        assert_eq!(
            meta.attributes.content_type.as_deref(),
            Some("application/gzip")
        );
    }
}

/// Conditional writes: create only if absent, replace only the version read; a delete
/// conditional on the ETag where the store honours it.
async fn conditional_writes(f: &Fixture) {
    let first = put(f, "cond/lease", b"one").await;
    let refused = |e: egress_store::StoreError| e.kind() == ErrorKind::PreconditionFailed;
    let absent = PutOptions {
        condition: Condition::IfAbsent,
        ..Default::default()
    };
    let again = f
        .store
        .put("cond/lease", Body::from_bytes(b"two".to_vec()), &absent)
        .await;
    assert!(again.is_err_and(refused), "{}: If-None-Match", f.name);
    let etag = first.expect("a put answers its ETag");
    let stale = PutOptions {
        condition: Condition::IfMatch("0".repeat(32)),
        ..Default::default()
    };
    let wrong = f
        .store
        .put("cond/lease", Body::from_bytes(b"two".to_vec()), &stale)
        .await;
    assert!(
        wrong.is_err_and(refused),
        "{}: If-Match, another version",
        f.name
    );
    let current = PutOptions {
        condition: Condition::IfMatch(etag),
        ..Default::default()
    };
    let renewed = f
        .store
        .put("cond/lease", Body::from_bytes(b"two".to_vec()), &current)
        .await;
    let renewed = renewed.unwrap_or_else(|e| panic!("{}: If-Match, this version: {e}", f.name));
    assert_eq!(read(f, "cond/lease").await, b"two", "{}", f.name);
    let deleted = f.store.delete_if_match("cond/lease", &"0".repeat(32)).await;
    let kept = f.store.head("cond/lease").await.is_ok();
    assert_eq!(
        kept, f.differs.conditional_delete,
        "{}: If-Match on DELETE ({deleted:?})",
        f.name
    );
    if kept {
        let etag = renewed.etag.expect("an ETag");
        f.store.delete_if_match("cond/lease", &etag).await.unwrap();
        assert!(f.store.head("cond/lease").await.is_err(), "{}", f.name);
    }
}

/// Parts of odd sizes make one object with S3's composite ETag; a part can be asked for by
/// number where the store honours it.
async fn multipart(f: &Fixture) {
    let parts = [data(5 * MIB, 1), data(7 * MIB, 2), data(1, 3)];
    let upload = started(f, "mp/obj").await;
    let mut done = Vec::new();
    let mut offset = 0;
    for (i, part) in parts.iter().enumerate() {
        let slot = PartSlot {
            number: i as u32 + 1,
            offset,
        };
        let md5: [u8; 16] = Md5::digest(part).into();
        let etag = f
            .store
            .upload_part(
                &upload,
                PartData {
                    slot,
                    body: Body::from_bytes(part.clone()),
                    content_md5: Some(md5),
                },
            )
            .await
            .unwrap();
        done.push(CompletedPart {
            number: slot.number,
            etag,
        });
        offset += part.len() as u64;
    }
    let result = f.store.complete(upload, &done, offset).await.unwrap();
    let md5s: Vec<[u8; 16]> = parts.iter().map(|p| Md5::digest(p).into()).collect();
    let composite = egress_store::multipart_etag(&md5s);
    if f.differs.etags {
        assert_eq!(
            result.etag.as_deref(),
            Some(composite.as_str()),
            "{}",
            f.name
        );
        let head = f.store.head("mp/obj").await.unwrap();
        assert_eq!(head.etag.as_deref(), Some(composite.as_str()), "{}", f.name);
    }
    assert_eq!(read(f, "mp/obj").await, parts.concat(), "{}", f.name);
    let second = f.store.part_size("mp/obj", 2).await.unwrap();
    let expected = f.differs.part_numbers.then_some(7 * MIB as u64);
    assert_eq!(second, expected, "{}: ?partNumber", f.name);
}

/// A multipart upload of `key` started on `f`'s store.
async fn started(f: &Fixture, key: &str) -> egress_store::Upload {
    f.store
        .create_multipart(key, &PutOptions::default())
        .await
        .unwrap()
}

/// An aborted upload leaves nothing: no object, no pending upload.
async fn aborts(f: &Fixture) {
    let upload = started(f, "abort/obj").await;
    let slot = PartSlot {
        number: 1,
        offset: 0,
    };
    f.store
        .upload_part(
            &upload,
            PartData {
                slot,
                body: Body::from_bytes(data(MIB, 4)),
                content_md5: None,
            },
        )
        .await
        .unwrap();
    f.store.abort(upload).await;
    assert!(f.store.head("abort/obj").await.is_err(), "{}", f.name);
    if f.differs.pending_uploads {
        assert!(
            f.store.pending_uploads("abort/").await.unwrap().is_empty(),
            "{}",
            f.name
        );
    }
}

/// Unfinished uploads are listed, and one found that way can be aborted; where the store
/// cannot list them it says so.
async fn pending_uploads(f: &Fixture) {
    let upload = started(f, "pending/obj").await;
    let found = f.store.pending_uploads("pending/").await;
    if !f.differs.pending_uploads {
        assert_eq!(
            found.err().map(|e| e.kind()),
            Some(ErrorKind::Unsupported),
            "{}",
            f.name
        );
        f.store.abort(upload).await;
        return;
    }
    let found = found.unwrap();
    assert_eq!(found.len(), 1, "{}: {found:?}", f.name);
    assert_eq!(found[0].key, "pending/obj", "{}", f.name);
    f.store.abort_pending(&found[0]).await.unwrap();
    assert!(
        f.store
            .pending_uploads("pending/")
            .await
            .unwrap()
            .is_empty(),
        "{}",
        f.name
    );
    drop(upload);
}

/// A deleted object is gone for HEAD and GET (NotFound, as a vanished input object), and
/// deleting what is not there is fine.
async fn vanished(f: &Fixture) {
    put(f, "gone/obj", b"here").await;
    f.store.delete("gone/obj").await.unwrap();
    let head = f.store.head("gone/obj").await.err().map(|e| e.kind());
    assert_eq!(head, Some(ErrorKind::NotFound), "{}", f.name);
    let get = f
        .store
        .get("gone/obj", GetOptions::default())
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(get, Some(ErrorKind::NotFound), "{}", f.name);
    f.store.delete("gone/obj").await.unwrap();
}

/// What `--check` reports of the store is what the store does.
async fn capabilities(f: &Fixture) {
    let findings = preflight::check_store(&*f.store, "output", Use::Write).await;
    let status = |capability: &str| {
        findings
            .iter()
            .find(|x| x.capability == capability)
            .map(|x| x.status)
    };
    assert!(
        !findings.iter().any(|x| x.status == Status::Fail),
        "{}: {findings:?}",
        f.name
    );
    let expect = |honoured: bool| if honoured { Status::Ok } else { Status::Absent };
    assert_eq!(
        status("HEAD ?partNumber"),
        Some(expect(f.differs.part_numbers)),
        "{}",
        f.name
    );
    assert_eq!(
        status("ListMultipartUploads"),
        Some(expect(f.differs.pending_uploads)),
        "{}",
        f.name
    );
}

/// Every case, in order, on `store` (named `name`), which `differs` from S3 where it says.
async fn contract(name: &'static str, store: Store, differs: Differences) {
    let f = Fixture {
        name,
        store,
        differs,
    };
    macro_rules! cases {
        ($($case:ident),*) => {{
            let mut ran = 0;
            $( $case(&f).await; ran += 1; println!("{}: {} ok", f.name, stringify!($case)); )*
            ran
        }};
    }
    let ran = cases!(
        listing_order_and_pages,
        odd_keys,
        folder_listings,
        ranged_reads,
        metadata,
        conditional_writes,
        multipart,
        aborts,
        pending_uploads,
        vanished,
        capabilities
    );
    println!("{}: {ran} contract cases passed", f.name);
}

/// [`contract`] on the bucket `contract` of `server`, under `prefix`.
async fn contract_on(
    server: &dyn Endpoint,
    prefix: &str,
    name: &'static str,
    differs: Differences,
) {
    let store = server.s3().store("contract", prefix).await;
    contract(name, store, differs).await;
}

#[tokio::test]
async fn the_contract_holds_in_memory() {
    let store: Store = Arc::new(MemoryStore::new());
    contract("memory", store, AS_S3).await;
}

#[tokio::test]
async fn the_contract_holds_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store: Store = Arc::new(LocalStore::new(dir.path()));
    let differs = Differences {
        etags: false,
        part_numbers: false,
        user_metadata: false,
        ..AS_S3
    };
    contract("local", store, differs).await;
}

#[tokio::test]
async fn the_contract_holds_on_moto() {
    let server = S3Server::with_bucket(S3Kind::Moto, "contract").await;
    contract_on(&server, "under/a prefix", "moto", AS_S3).await;
}

#[tokio::test]
async fn the_contract_holds_on_s3s_fs() {
    let server = S3Server::with_bucket(S3Kind::S3sFs, "contract").await;
    let differs = Differences {
        part_numbers: false,
        pending_uploads: false,
        conditional_delete: false,
        ..AS_S3
    };
    contract_on(&server, "under", "s3s-fs", differs).await;
}

#[tokio::test]
async fn the_contract_holds_on_ceph_rgw() {
    let ceph = CephRgw::with_bucket("contract").await;
    let differs = Differences {
        part_numbers: false,
        conditional_delete: false,
        ..AS_S3
    };
    contract_on(&ceph, "under", "ceph", differs).await;
}
