//! egress-sync as a pure mirror into a real Ceph RGW: the output holds exactly the input's
//! keys, copies keep the source's ETag wherever its part boundaries can be learned, a no-op
//! run costs only the listings, bytes damaged in flight never become visible, and a damaged
//! listing page is never read as a short one.

use std::collections::HashMap;

use egress_testkit::fixtures::{
    contents, data, etags, manifest_json, manifest_with_parts, put_many, put_parts, MIB,
};
use egress_testkit::proxy::{Corrupt, EditReply, Proxy};
use egress_testkit::{
    assert_exit, assert_exit_why, assert_last_line_has, assert_stderr_has, assert_stdout_has,
    last_line, stderr, stdout, text, CephRgw, Endpoint, S3Kind, S3Server,
};

use super::{src_and_dst, sync, sync_ok};
use egress_testkit::peak_rss_mib;

/// Odd part sizes: 5 MiB + 7 MiB + 1 byte.
const ODD_PARTS: [usize; 3] = [5 * MIB, 7 * MIB, 1];

/// Objects in the forms that matter, returned as key -> bytes: small single-part ones with
/// odd keys; a multipart object of odd part sizes in a folder whose manifest records them
/// (`with_manifest`, as egress-dump writes it) or not; a multipart object of equal parts.
async fn seed(
    source: &dyn Endpoint,
    bucket: &str,
    with_manifest: bool,
) -> HashMap<String, Vec<u8>> {
    let mut objects: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("2024-06-01/t{i:02}.csv.gz"),
                data(i, 1000 + i as usize * 31),
            )
        })
        .collect();
    for (i, key) in ["odd/with space.txt", "odd/plus+sign.txt", "odd/żółć.txt"]
        .iter()
        .enumerate()
    {
        objects.push((key.to_string(), data(100 + i as u64, 77)));
    }
    put_many(source, bucket, objects.clone()).await;
    let odd = data(7, ODD_PARTS.iter().sum());
    put_parts(source, bucket, "2024-06-01/big.csv.gz", &odd, &ODD_PARTS).await;
    let equal = data(8, 10 * MIB + 1);
    put_parts(
        source,
        bucket,
        "loose/equal.bin",
        &equal,
        &[5 * MIB, 5 * MIB, 1],
    )
    .await;
    objects.push(("2024-06-01/big.csv.gz".into(), odd.clone()));
    objects.push(("loose/equal.bin".into(), equal));
    if with_manifest {
        let parts = Some(ODD_PARTS.iter().map(|&p| p as u64).collect());
        let manifest = manifest_with_parts("2024-06-01", &[("big.csv.gz", &odd, parts)]);
        put_many(
            source,
            bucket,
            vec![("2024-06-01/_manifest.json".into(), manifest.clone())],
        )
        .await;
        objects.push(("2024-06-01/_manifest.json".into(), manifest));
    }
    objects.into_iter().collect()
}

/// Mirror `source`/src into a Ceph bucket through a counting proxy; check the output is
/// exactly the input with the input's ETags; re-run and check it wrote and asked nothing
/// per object; change one object in place and check only it is copied.
async fn mirror_keeps_the_source_form(
    source: &dyn Endpoint,
    ceph: &CephRgw,
    out_bucket: &str,
    with_manifest: bool,
) {
    ceph.create_bucket(out_bucket).await;
    let expected = seed(source, "src", with_manifest).await;
    let proxy = Proxy::start(&ceph.endpoint, None, None);
    let output = ceph.s3().via(&proxy.endpoint);
    let out = sync(source, "src", &output, out_bucket, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        ceph.log_tail()
    );
    let mirror = contents(ceph, out_bucket, "").await;
    assert_eq!(
        mirror.len(),
        expected.len(),
        "exactly the input's keys: {:?}",
        mirror.keys().collect::<Vec<_>>()
    );
    assert!(mirror == expected, "byte-identical");
    let (src_etags, dst_etags) = (
        etags(source, "src", "").await,
        etags(ceph, out_bucket, "").await,
    );
    for key in [
        "2024-06-01/big.csv.gz",
        "loose/equal.bin",
        "2024-06-01/t00.csv.gz",
    ] {
        assert_eq!(
            dst_etags[key], src_etags[key],
            "{key}: the copy carries the source's ETag"
        );
        println!(
            "{key}: input ETag {}, output ETag {}",
            src_etags[key], dst_etags[key]
        );
    }
    assert!(
        src_etags["2024-06-01/big.csv.gz"].ends_with("-3"),
        "{src_etags:?}"
    );

    proxy.clear();
    let out = sync(source, "src", &output, out_bucket, &[]);
    assert_exit(&out, 0);
    assert_last_line_has(&out, "copied=0");
    // The run's own lease (outside the mirrored keys) is taken and released; nothing else
    // but the listings is asked or written.
    let (lease, mirrored): (Vec<_>, Vec<_>) = proxy
        .requests()
        .into_iter()
        .partition(|r| r.target.contains(".egress-sync-lease.json"));
    let per_object: Vec<_> = mirrored.into_iter().filter(|r| r.method != "GET").collect();
    assert!(
        per_object.is_empty(),
        "a no-op run only lists: {per_object:?}"
    );
    let lease_writes: Vec<&str> = lease
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| r.method.as_str())
        .collect();
    // Taken by a conditional PUT, confirmed by repeating it (refused where the store
    // honours conditions), released by a DELETE.
    assert_eq!(lease_writes, ["PUT", "PUT", "DELETE"], "{lease:?}");

    let key = "2024-06-01/t03.csv.gz";
    let mut changed = expected[key].clone();
    changed[10] ^= 0xff;
    put_many(source, "src", vec![(key.into(), changed.clone())]).await;
    let out = sync(source, "src", &output, out_bucket, &[]);
    assert_exit(&out, 0);
    // The changed object, and its day's manifest (when it has one): withdrawn before the
    // object is replaced, written again last.
    let copied = if with_manifest {
        "copied=2 "
    } else {
        "copied=1 "
    };
    assert!(
        last_line(&out).contains(copied),
        "a same-size change is copied: {}",
        text(&out)
    );
    assert_eq!(ceph.get(out_bucket, key).await, changed);
}

#[tokio::test]
async fn ceph_to_ceph_and_moto_to_ceph_keep_etags_and_a_noop_run_only_lists() {
    let ceph = CephRgw::with_bucket("src").await;
    // Ceph RGW 16 ignores ?partNumber: the manifest tells the odd part sizes, equal parts
    // are guessed (and confirmed by the composite ETag).
    mirror_keeps_the_source_form(&ceph, &ceph, "dst", true).await;
    // moto answers ?partNumber, so the odd part sizes are learned without a manifest.
    let moto = S3Server::with_bucket(S3Kind::Moto, "src").await;
    mirror_keeps_the_source_form(&moto, &ceph, "from-moto", false).await;
}

#[tokio::test]
async fn a_byte_damaged_in_flight_is_refused_before_it_is_visible_and_the_retry_succeeds() {
    let input = S3Server::with_bucket(S3Kind::S3sFs, "src").await;
    let ceph = CephRgw::with_bucket("dst").await;
    let single = data(1, 3 * MIB);
    let multi = data(2, 10 * MIB + 1);
    put_many(&input, "src", vec![("single.bin".into(), single.clone())]).await;
    put_parts(&input, "src", "multi.bin", &multi, &[5 * MIB, 5 * MIB, 1]).await;
    // A single PUT carries Content-MD5 (the store refuses it); a streamed part does not
    // (its ETag gives it away).
    for (key, body) in [("single.bin", &single), ("multi.bin", &multi)] {
        let damage = Corrupt {
            method: "PUT".into(),
            min_len: MIB as u64,
            offset: 4321,
        };
        let proxy = Proxy::start(&ceph.endpoint, None, Some(damage));
        let out = sync(
            &input,
            "src",
            &ceph.s3().via(&proxy.endpoint),
            "dst",
            &["--include", key],
        );
        assert_exit_why(&out, 0, key);
        assert!(proxy.corrupted(), "{key}: a byte was flipped");
        let printed = stdout(&out);
        assert!(
            printed.contains("retrying"),
            "{key}: the damaged copy failed first: {printed}"
        );
        let completions = proxy
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.target.contains("uploadId"))
            .count();
        assert!(
            completions <= 1,
            "{key}: only the good upload was completed"
        );
        assert_eq!(
            &ceph.get("dst", key).await,
            body,
            "{key}: the retry copied it intact"
        );
    }
    assert!(
        ceph.pending_uploads("dst").await.is_empty(),
        "the damaged upload was aborted"
    );
}

/// Two s3s-fs servers: the input's bucket `src` holding `count` objects of `len` bytes
/// (object `i` named `key(i)`, its bytes `data(i, len)`), the output's `dst` empty.
async fn s3s_fs_pair(count: u64, len: usize, key: impl Fn(u64) -> String) -> (S3Server, S3Server) {
    let (input, output) = src_and_dst(S3Kind::S3sFs, S3Kind::S3sFs).await;
    let objects = (0..count).map(|i| (key(i), data(i, len))).collect();
    put_many(&input, "src", objects).await;
    (input, output)
}

/// The SDK reads a listing page leniently: a tag its tokenizer cannot follow ends the
/// document there, and the page comes back with the objects before it (measured on
/// aws-sdk-s3 1.x: `<Kez>k05</Key>` left 5 of a page's 20 objects, and no `IsTruncated`).
/// With `--remove`, the 15 unlisted objects would have been deleted from the output.
#[tokio::test]
async fn a_damaged_listing_page_is_read_again_or_stops_the_run_and_deletes_nothing() {
    let (input, output) = s3s_fs_pair(20, 100, |i| format!("k{i:02}")).await;
    sync_ok(&input, &output, &[]);
    let remove = ["--remove", "--max-delete", "100"];
    // A run with --remove whose listing pages are damaged `times` times.
    let damaged = |times| {
        let damage = EditReply {
            target: "list-type=2".into(),
            find: b"<Key>k05".to_vec(),
            replace: b"<Kez>k05".to_vec(),
            times,
        };
        let proxy = Proxy::editing_replies(&input.endpoint, damage);
        let out = sync(
            &input.s3().via(&proxy.endpoint),
            "src",
            &output,
            "dst",
            &remove,
        );
        (proxy, out)
    };

    // Damaged every time: the run stops with one line, and deletes nothing.
    let (proxy, out) = damaged(usize::MAX);
    assert!(proxy.edited() >= 1, "a page was damaged");
    assert_exit(&out, 1);
    let said = stderr(&out);
    assert!(
        said.lines().count() == 1
            && said.contains("listing s3://src/")
            && said.contains("not one whole XML document"),
        "{}",
        text(&out)
    );
    assert_eq!(output.keys("dst", "k").await.len(), 20, "nothing deleted");

    // Damaged once: the page is asked again, and the run completes without deleting.
    let (proxy, out) = damaged(1);
    assert_eq!(proxy.edited(), 1, "one page was damaged");
    assert!(
        proxy
            .requests()
            .iter()
            .all(|r| !r.target.contains("encoding-type")),
        "asked again as it was: s3s-fs echoes encoding-type=url without encoding"
    );
    assert_exit(&out, 0);
    assert_last_line_has(&out, "deleted=0");
    assert_eq!(output.keys("dst", "k").await.len(), 20, "nothing deleted");
}

#[tokio::test]
async fn an_earlier_versions_records_file_is_removed_and_nothing_is_copied_again() {
    let (input, output) = s3s_fs_pair(30, 500, |i| format!("d/{i}.bin")).await;
    let legacy = data(99, 12 * MIB);
    put_parts(&input, "src", "d/legacy.bin", &legacy, &[6 * MIB, 6 * MIB]).await;
    sync_ok(&input, &output, &[]);
    // What an earlier version left: its records file, and a copy in its own part layout
    // (another ETag) whose metadata records the source, under the names it used.
    let listed = input
        .client()
        .head_object()
        .bucket("src")
        .key("d/legacy.bin")
        .send()
        .await
        .unwrap();
    let modified = listed.last_modified().unwrap().secs();
    let identity = format!("size{}-mtime{modified}", legacy.len());
    output
        .client()
        .put_object()
        .bucket("dst")
        .key("d/legacy.bin")
        .metadata("egress-source-etag", &identity)
        .metadata("egress-source-size", legacy.len().to_string())
        .metadata("egress-source-mtime", modified.to_string())
        .body(legacy.clone().into())
        .send()
        .await
        .unwrap();
    output
        .put(
            "dst",
            ".egress-sync-state.json",
            br#"{"version":1,"source":"x","records":{}}"#.to_vec(),
        )
        .await;
    let out = sync_ok(&input, &output, &[]);
    assert!(
        last_line(&out).contains("copied=0"),
        "nothing copied again: {}",
        text(&out)
    );
    assert_stdout_has(&out, "removed `.egress-sync-state.json`");
    let keys = output.keys("dst", "").await;
    assert!(
        !keys.iter().any(|k| k.contains("egress-sync-state")),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 31, "exactly the input's keys");
}

/// The memory contract over many days: each day's manifest is read when the march
/// reaches it and its day handed over at the end of the run; the manifests' bytes are not
/// kept meanwhile (730 days of 96 KB manifests took 88.6 MiB, found by an adversarial run).
#[tokio::test]
async fn memory_stays_bounded_whatever_the_days_and_their_manifests() {
    const LIMIT_MIB: f64 = 64.0;
    const DAYS: u32 = 730;
    const TABLES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    // 50 columns of 20 tables: a manifest of ~96 KB, as a typed day of wide tables has.
    let columns: Vec<serde_json::Value> = (0..50)
        .map(|c| serde_json::json!({"name": format!("column_with_a_reasonably_long_name_{c:05}"), "type": "character varying(255)"}))
        .collect();
    let mut manifest_bytes = 0;
    for day in 0..DAYS {
        let date = format!(
            "{}-{:02}-{:02}",
            2020 + day / 336,
            day / 28 % 12 + 1,
            day % 28 + 1
        );
        std::fs::create_dir_all(src.join(&date)).unwrap();
        let files: Vec<(String, Vec<u8>)> = (0..TABLES)
            .map(|t| {
                (
                    format!("table_{t:04}.csv.gz"),
                    format!("{date},{t}\n").into_bytes(),
                )
            })
            .collect();
        for (name, body) in &files {
            std::fs::write(src.join(&date).join(name), body).unwrap();
        }
        let listed: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&manifest_json(&date, &listed)).unwrap();
        for table in manifest["tables"].as_array_mut().unwrap() {
            table["columns"] = serde_json::Value::Array(columns.clone());
        }
        let bytes = serde_json::to_vec(&manifest).unwrap();
        manifest_bytes = bytes.len();
        std::fs::write(src.join(&date).join("_manifest.json"), bytes).unwrap();
    }
    assert!(manifest_bytes > 90_000, "{manifest_bytes} bytes a manifest");
    let mut cmd = egress_testkit::clean_command(env!("CARGO_BIN_EXE_egress-sync"));
    cmd.env("INPUT_PATH", &src)
        .env("OUTPUT_PATH", &dst)
        .arg("--require-manifest");
    let out = egress_testkit::run(&mut cmd);
    assert_exit_why(&out, 0, "730 days");
    let copied = format!("copied={} ", DAYS as usize * (TABLES + 1));
    assert!(last_line(&out).contains(&copied), "{}", last_line(&out));
    let rss = peak_rss_mib(&out);
    println!("{DAYS} days of {manifest_bytes}-byte manifests: peak RSS {rss} MiB");
    assert!(rss < LIMIT_MIB, "{DAYS} days took {rss} MiB");
}

/// The README's memory contract: peak RSS stays under 64 MiB whatever the number of
/// objects (the listings are walked a page at a time) and whatever their sizes (at most
/// `--memory-budget-mib` of data in flight), at `--jobs 256`.
#[tokio::test]
async fn memory_stays_bounded_whatever_the_objects_and_the_jobs() {
    const LIMIT_MIB: f64 = 64.0;
    // Enough keys, long enough, that a listing held whole would break the bound: 151,200
    // keys of 316 bytes. Each listed object is its key (316 B; 336 with the allocator's
    // header and rounding) and its ObjectInfo (72 B): ~408 B, so one side's listing is
    // ~62 MB (59 MiB), and the two a no-op run walks ~123 MB (118 MiB). On top of the
    // process's own ~25 MiB, holding even the input's listing alone would pass 64 MiB.
    // Days of many table folders of 270 objects, as a mirror of dumps has them.
    const DAYS: usize = 7;
    const TABLES: usize = 80;
    const PER_TABLE: usize = 270;
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let body = data(5, 16);
    let (mut keys, mut longest) = (0, 0);
    for day in 1..=DAYS {
        for table in 0..TABLES {
            let folder = format!("2024-01-{day:02}/table-{table:02}-{}", "t".repeat(100));
            std::fs::create_dir_all(src.join(&folder)).unwrap();
            for _ in 0..PER_TABLE {
                let name = format!("obj-{keys:06}-{}.bin", "n".repeat(180));
                std::fs::write(src.join(&folder).join(&name), &body).unwrap();
                longest = longest.max(folder.len() + 1 + name.len());
                keys += 1;
            }
        }
    }
    assert_eq!((keys, longest), (151_200, 316), "the keys counted above");
    for run in ["cold", "no-op"] {
        let mut cmd = egress_testkit::clean_command(env!("CARGO_BIN_EXE_egress-sync"));
        cmd.env("INPUT_PATH", &src)
            .env("OUTPUT_PATH", &dst)
            .args(["--jobs", "256"]);
        let out = egress_testkit::run(&mut cmd);
        assert_exit_why(&out, 0, run);
        let counted = match run {
            "cold" => format!("copied={keys} "),
            _ => format!("copied=0 skipped={keys} "),
        };
        assert!(
            last_line(&out).contains(&counted),
            "{run}: {}",
            last_line(&out)
        );
        let rss = peak_rss_mib(&out);
        println!("{run} run over {keys} keys of 316 bytes: peak RSS {rss} MiB");
        assert!(rss < LIMIT_MIB, "{run}: {keys} objects took {rss} MiB");
    }

    let (input, output) = src_and_dst(S3Kind::S3sFs, S3Kind::S3sFs).await;
    for i in 0..6u64 {
        let big = data(i, 48 * MIB);
        put_parts(
            &input,
            "src",
            &format!("big/{i}.bin"),
            &big,
            &[16 * MIB, 16 * MIB, 16 * MIB],
        )
        .await;
    }
    put_many(
        &input,
        "src",
        vec![("single.bin".into(), data(9, 40 * MIB))],
    )
    .await;
    let out = sync_ok(&input, &output, &["--jobs", "256"]);
    let rss = peak_rss_mib(&out);
    assert!(
        rss < LIMIT_MIB,
        "328 MiB in large objects took {rss} MiB: {}",
        text(&out)
    );
}

/// An object written in one PUT and checked against its day's manifest is streamed like
/// any other: it is never held whole, whatever its size against the memory budget.
#[tokio::test]
async fn a_checked_single_part_object_is_streamed_not_held() {
    let (input, output) = src_and_dst(S3Kind::S3sFs, S3Kind::S3sFs).await;
    let big = data(21, 96 * MIB);
    let manifest = egress_testkit::fixtures::manifest_json("2024-02-01", &[("one.csv.gz", &big)]);
    put_many(
        &input,
        "src",
        vec![
            ("2024-02-01/one.csv.gz".into(), big.clone()),
            ("2024-02-01/_manifest.json".into(), manifest),
        ],
    )
    .await;
    let args = ["--require-manifest", "--memory-budget-mib", "16"];
    let out = sync_ok(&input, &output, &args);
    assert_stdout_has(&out, "verified=\"size+md5+manifest-sha256\"");
    let rss = peak_rss_mib(&out);
    println!("a 96 MiB single-part object checked against its manifest: peak RSS {rss} MiB");
    assert!(rss < 64.0, "96 MiB in one object took {rss} MiB");
    assert!(output.get("dst", "2024-02-01/one.csv.gz").await == big);
    // The same object damaged at the input: its PUT fails before it is visible.
    let mut damaged = big.clone();
    damaged[50 * MIB] ^= 1;
    input.put("src", "2024-02-01/one.csv.gz", damaged).await;
    output.delete("dst", "2024-02-01/one.csv.gz").await;
    output.delete("dst", "2024-02-01/_manifest.json").await;
    let out = sync(&input, "src", &output, "dst", &args);
    assert_exit(&out, 1);
    assert_stderr_has(&out, "does not match its manifest");
    assert!(
        output.keys("dst", "2024-02-01/").await.is_empty(),
        "nothing of the day is visible"
    );
}
