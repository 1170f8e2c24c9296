//! A mirror shared by several processes (`--shares`, the pods of an Indexed Job): each
//! mirrors a disjoint, stable set of day folders; together they equal the unshared
//! mirror, key for key and ETag for ETag, into Ceph RGW, `--remove` included.

use std::collections::HashMap;
use std::process::Stdio;

use egress_testkit::fixtures::{data, etags, manifest_json, put_many, put_multipart, MIB};
use egress_testkit::{
    assert_exit, assert_exit_why, assert_stderr_has, stdout, text, CephRgw, S3Kind, S3Server,
};

use super::{command, sync};

const SRC: &str = "shares-source";
const DST: &str = "shares-mirror";

/// Twelve days of three objects and a manifest each (one with a multipart object).
async fn seed(input: &S3Server) {
    let mut objects = Vec::new();
    for d in 1..=12u64 {
        let date = format!("2024-03-{d:02}");
        let a = data(d, 3000 + d as usize);
        let b = data(100 + d, 500);
        objects.push((format!("{date}/a.csv.gz"), a.clone()));
        objects.push((format!("{date}/b.csv.gz"), b.clone()));
        let manifest = manifest_json(&date, &[("a.csv.gz", &a), ("b.csv.gz", &b)]);
        objects.push((format!("{date}/_manifest.json"), manifest));
    }
    objects.push(("README.txt".to_string(), b"top-level".to_vec()));
    put_many(input, SRC, objects).await;
    put_multipart(
        input,
        SRC,
        "2024-03-05/large.bin",
        &data(9, 11 * MIB + 3),
        5 * MIB,
    )
    .await;
}

/// Every object of the mirror at `prefix` with its ETag, leases left out.
async fn mirrored(ceph: &CephRgw, prefix: &str) -> HashMap<String, String> {
    let mut all = etags(ceph, DST, prefix).await;
    all.retain(|k, _| !egress_common::day::lease::is_coordination(k));
    all
}

/// The keys a run says it copied into the mirror at `mirror` (its `... -> \`output/...\``
/// lines), with the count its closing line gives.
fn copied(out: &std::process::Output, mirror: &str) -> (Vec<String>, String) {
    let keys = keys_after(out, &format!("-> `output/{DST}/{mirror}/"));
    let closing = stdout(out).lines().last().unwrap_or("").to_string();
    let count = closing
        .split_whitespace()
        .find(|f| f.starts_with("copied="))
        .unwrap_or("")
        .to_string();
    (keys, count)
}

/// The keys a run says it deleted from the mirror at `mirror` (`--remove`).
fn deleted(out: &std::process::Output, mirror: &str) -> Vec<String> {
    keys_after(out, &format!("deleted `output/{DST}/{mirror}/"))
}

/// The keys that follow `marker` up to the closing backquote, line by line.
fn keys_after(out: &std::process::Output, marker: &str) -> Vec<String> {
    stdout(out)
        .lines()
        .filter_map(|l| l.split_once(marker))
        .filter_map(|(_, rest)| rest.split_once('`'))
        .map(|(key, _)| key.to_string())
        .collect()
}

/// What one share did: the keys it copied and those it deleted.
struct Share {
    copied: Vec<String>,
    deleted: Vec<String>,
}

/// The three shares run at once; what each did.
fn shared_run(input: &S3Server, ceph: &CephRgw, args: &[&str]) -> Vec<Share> {
    let children: Vec<_> = (0..3)
        .map(|i| {
            command(input, SRC, ceph, &format!("{DST}/shared"), args)
                .env("SHARES", "3")
                .env("JOB_COMPLETION_INDEX", i.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut shares = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_exit_why(&out, 0, &format!("index {i}"));
        let (keys, count) = copied(&out, "shared");
        assert_eq!(
            count,
            format!("copied={}", keys.len()),
            "index {i} counts what it says it copied: {}",
            text(&out)
        );
        let deleted = deleted(&out, "shared");
        shares.push(Share {
            copied: keys,
            deleted,
        });
    }
    shares
}

/// Each share copied only its own days, every share some, and together exactly what the
/// whole mirror copied: no index did another's work, none was left out.
fn assert_shared_out(shares: &[Share], whole: &std::process::Output) {
    let (all, _) = copied(whole, "whole");
    let day = |key: &str| key.split('/').next().unwrap_or("").to_string();
    let mut owner: HashMap<String, usize> = HashMap::new();
    let copies: Vec<&Vec<String>> = shares.iter().map(|s| &s.copied).collect();
    for (i, keys) in copies.iter().enumerate() {
        assert!(!keys.is_empty(), "index {i} copied nothing: {copies:?}");
        for key in keys.iter() {
            let first = *owner.entry(day(key)).or_insert(i);
            assert_eq!(
                first,
                i,
                "day {} copied by index {first} and index {i}: {copies:?}",
                day(key)
            );
        }
    }
    let mut together: Vec<&String> = copies.iter().copied().flatten().collect();
    let mut expected: Vec<&String> = all.iter().collect();
    together.sort();
    expected.sort();
    assert!(
        together.windows(2).all(|w| w[0] != w[1]),
        "a key copied twice: {together:?}"
    );
    assert_eq!(
        together, expected,
        "the shares together are the whole mirror"
    );
}

#[tokio::test]
async fn three_shares_of_a_mirror_equal_the_whole_one_in_ceph() {
    let input = S3Server::start(S3Kind::S3sFs);
    let ceph = CephRgw::start();
    input.create_bucket(SRC).await;
    ceph.create_bucket(DST).await;
    seed(&input).await;
    let gated = ["--require-manifest"];

    let whole = sync(&input, SRC, &ceph, &format!("{DST}/whole"), &gated);
    assert_exit(&whole, 0);
    let shares = shared_run(&input, &ceph, &gated);
    assert_shared_out(&shares, &whole);
    let (a, b) = (
        mirrored(&ceph, "whole/").await,
        mirrored(&ceph, "shared/").await,
    );
    // Gated: the top-level README and the object no manifest lists stay out.
    assert_eq!(a.len(), 12 * 3, "{a:?}");
    assert_eq!(
        a, b,
        "the shares together equal the whole mirror, ETag for ETag"
    );

    // A second pass copies nothing, in the shares as in the whole mirror (this input lists
    // no ETags: the manifests' copies record their versions as its listing names them);
    // with --remove each share deletes only in its own days, and the result is again the
    // whole mirror's.
    let whole = sync(&input, SRC, &ceph, &format!("{DST}/whole"), &gated);
    assert_exit(&whole, 0);
    assert_eq!(copied(&whole, "whole"), (Vec::new(), "copied=0".into()));
    for (i, share) in shared_run(&input, &ceph, &gated).iter().enumerate() {
        assert!(
            share.copied.is_empty(),
            "index {i} copied {:?}",
            share.copied
        );
    }
    let client = input.client();
    for key in [
        "2024-03-02/a.csv.gz",
        "2024-03-02/b.csv.gz",
        "2024-03-02/_manifest.json",
    ] {
        client
            .delete_object()
            .bucket(SRC)
            .key(key)
            .send()
            .await
            .unwrap();
    }
    let remove = ["--require-manifest", "--remove", "--max-delete", "10"];
    let whole = sync(&input, SRC, &ceph, &format!("{DST}/whole"), &remove);
    assert_exit(&whole, 0);
    let removed = shared_run(&input, &ceph, &remove);
    // The removed day's objects went from the share that copied that day, and only there.
    let mut gone = deleted(&whole, "whole");
    gone.sort();
    assert_eq!(gone.len(), 3, "{}", text(&whole));
    let owner = shares
        .iter()
        .position(|s| s.copied.iter().any(|k| k.starts_with("2024-03-02/")))
        .expect("a share copied 2024-03-02");
    for (i, share) in removed.iter().enumerate() {
        let mut deleted = share.deleted.clone();
        deleted.sort();
        let expected = if i == owner { gone.clone() } else { Vec::new() };
        assert_eq!(
            deleted, expected,
            "index {i} deleted (2024-03-02 is index {owner}'s)"
        );
    }
    let (a, b) = (
        mirrored(&ceph, "whole/").await,
        mirrored(&ceph, "shared/").await,
    );
    assert_eq!(a.len(), 11 * 3);
    assert_eq!(a, b);

    // While a share of two holds its lease (a live process's), a whole-mirror run and a
    // share of three would overlap it: both refused with exit 3, naming it.
    let holder = egress_common::day::lease::Holder {
        run_id: "r-two".into(),
        program: "egress-sync".into(),
        host: egress_store::task::host(),
        pid: std::process::id(),
        since: 0,
        expires: 0,
        ttl_seconds: Some(600),
    };
    let key = format!(
        "shared/{}",
        egress_common::day::lease::mirror_key(egress_common::cli::Slice { index: 0, count: 2 })
    );
    put_many(
        &ceph,
        DST,
        vec![(key, serde_json::to_vec(&holder).unwrap())],
    )
    .await;
    for (shares, index) in [("1", "0"), ("3", "1")] {
        let out = command(&input, SRC, &ceph, &format!("{DST}/shared"), &[])
            .env("SHARES", shares)
            .env("JOB_COMPLETION_INDEX", index)
            .output()
            .unwrap();
        assert_exit(&out, 3);
        assert_stderr_has(&out, ".egress-sync-lease.shard-0-of-2.json");
    }
    let out = command(&input, SRC, &ceph, &format!("{DST}/shared"), &[])
        .env("SHARES", "3")
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert_stderr_has(&out, "--shares 3 needs this process's index");
}
