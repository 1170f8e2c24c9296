//! The day protocol end to end on the mirror: each class of defect the simulation
//! (tests/sim) reproduced, through the binary against real servers. A manifest is published
//! only for objects this run copied (checked as they streamed) or read back and checked:
//! skipped objects included.

use egress_testkit::fixtures::{self, data, manifest_json};
use egress_testkit::proxy::{LoseReply, Proxy};
use egress_testkit::{peak_rss_mib, text, S3Kind, S3Server};

use super::{command, sync};

const DAY: &str = "2024-09-01";
const GATED: [&str; 1] = ["--require-manifest"];

fn manifest_key() -> String {
    format!("{DAY}/_manifest.json")
}

/// A day of two objects at the input, and its manifest (returned).
async fn day(input: &S3Server, a: &[u8], b: &[u8]) -> Vec<u8> {
    let manifest = manifest_json(DAY, &[("a.csv.gz", a), ("b.csv.gz", b)]);
    input
        .put("src", &format!("{DAY}/a.csv.gz"), a.to_vec())
        .await;
    input
        .put("src", &format!("{DAY}/b.csv.gz"), b.to_vec())
        .await;
    input.put("src", &manifest_key(), manifest.clone()).await;
    manifest
}

async fn servers() -> (S3Server, S3Server) {
    let (input, output) = (S3Server::start(S3Kind::Moto), S3Server::start(S3Kind::Moto));
    input.create_bucket("src").await;
    output.create_bucket("dst").await;
    (input, output)
}

#[tokio::test]
async fn an_object_the_output_had_is_read_back_before_a_manifest_vouches_for_it() {
    let (input, output) = servers().await;
    let (a, b1, b2) = (data(1, 3000), data(2, 2000), data(3, 2500));
    let first = day(&input, &a, &b1).await;
    let out = sync(&input, "src", &output, "dst", &GATED);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The day is dumped again: `a` the same bytes, `b` new. Meanwhile another tool puts
    // other bytes of `a`'s size at the output (as a day dumped twice within one second
    // looks to a local output: same size, same time): the listings show it as unchanged,
    // so the mirror skips it, and must read it back before publishing.
    let mut other = a.clone();
    other[100] ^= 0xff;
    output.put("dst", &format!("{DAY}/a.csv.gz"), other).await;
    let second = day(&input, &a, &b2).await;
    assert_ne!(first, second);
    // Read back, it is not the manifest's: the input's `a` is (read to be sure), so it is
    // copied again, and the day published with the object its manifest lists.
    let out = sync(&input, "src", &output, "dst", &GATED);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("a.csv.gz` looked unchanged but is not its day's manifest's"),
        "{}",
        text(&out)
    );
    assert_eq!(output.get("dst", &format!("{DAY}/a.csv.gz")).await, a);
    assert_eq!(output.get("dst", &manifest_key()).await, second);
    let out = sync(&input, "src", &output, "dst", &["--verify", "output"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test]
async fn a_manifest_whose_hash_is_wrong_for_skipped_objects_is_not_published() {
    let (input, output) = servers().await;
    let (a, b) = (data(4, 3000), data(5, 2000));
    let good = day(&input, &a, &b).await;
    let out = sync(&input, "src", &output, "dst", &GATED);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A manifest whose SHA-256 for `a` is wrong: every object is unchanged (skipped), so
    // only reading them back can tell.
    let mut value: serde_json::Value = serde_json::from_slice(&good).unwrap();
    value["tables"][0]["sha256"] = serde_json::json!("0".repeat(64));
    value["run_finished"] = serde_json::json!("2024-09-01T01:00:00.000Z");
    input
        .put(
            "src",
            &manifest_key(),
            serde_json::to_vec_pretty(&value).unwrap(),
        )
        .await;
    let out = sync(&input, "src", &output, "dst", &GATED);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("a.csv.gz does not match its manifest"),
        "{}",
        text(&out)
    );
    // Nothing of the day changed at the output: its manifest there stays, and it is true.
    assert_eq!(output.get("dst", &manifest_key()).await, good);
    let verify = sync(&input, "src", &output, "dst", &["--verify", "output"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
}

#[tokio::test]
async fn a_manifest_listing_an_object_twice_or_too_large_is_refused_in_one_line() {
    let (input, output) = servers().await;
    let (a, b) = (data(6, 3000), data(7, 2000));
    let good = day(&input, &a, &b).await;
    let mut value: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let first = value["tables"][0].clone();
    value["tables"].as_array_mut().unwrap().push(first);
    input
        .put("src", &manifest_key(), serde_json::to_vec(&value).unwrap())
        .await;
    let out = sync(&input, "src", &output, "dst", &GATED);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("it lists 'a.csv.gz' more than once"),
        "{}",
        text(&out)
    );
    assert!(output
        .keys("dst", "")
        .await
        .iter()
        .all(|k| !k.ends_with("_manifest.json")));
    // A manifest of 90 MB (whatever it holds) is refused unread: the run stays small.
    let mut huge = b"{\"pad\": \"".to_vec();
    huge.resize(90 << 20, b'x');
    huge.extend_from_slice(b"\"}");
    input.put("src", &manifest_key(), huge).await;
    let out = sync(&input, "src", &output, "dst", &GATED);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("more than the 16 MiB a manifest may have"),
        "{}",
        text(&out)
    );
    assert!(
        peak_rss_mib(&out) < 64.0,
        "peak {} MiB: {}",
        peak_rss_mib(&out),
        text(&out)
    );
}

#[tokio::test]
async fn lost_replies_to_the_mirrors_lease_and_to_a_completion_are_settled() {
    // s3s-fs at the output: a retried conditional PUT meets 412, a retried completion 403.
    let input = S3Server::start(S3Kind::Moto);
    let output = S3Server::start(S3Kind::S3sFs);
    input.create_bucket("src").await;
    output.create_bucket("dst").await;
    let (a, b) = (data(8, 11 << 20), data(9, 2000));
    let manifest = day(&input, &a, &b).await;
    // `a` in parts at the input: its copy is a multipart upload with the same parts.
    fixtures::put_multipart(&input, "src", &format!("{DAY}/a.csv.gz"), &a, 5 << 20).await;
    for (target, method, settled) in [
        (
            ".egress-sync-lease.json",
            "PUT",
            "the lease read back is this run's",
        ),
        (
            "uploadId=",
            "POST",
            "the object in the store is the one written",
        ),
    ] {
        let lose = LoseReply {
            method: method.into(),
            target: target.into(),
            times: 1,
        };
        let proxy = Proxy::losing_replies(&output.endpoint, lose);
        output.delete("dst", &format!("{DAY}/a.csv.gz")).await;
        let out = sync(
            &input,
            "src",
            &output.s3().via(&proxy.endpoint),
            "dst",
            &GATED,
        );
        assert_eq!(out.status.code(), Some(0), "{target}: {}", text(&out));
        assert_eq!(proxy.edited(), 1, "{target}: one reply lost");
        assert!(text(&out).contains(settled), "{target}: {}", text(&out));
        assert_eq!(output.get("dst", &manifest_key()).await, manifest);
        assert_eq!(output.get("dst", &format!("{DAY}/a.csv.gz")).await, a);
    }
}

#[tokio::test]
async fn keys_a_local_folder_cannot_hold_together_fail_one_by_one() {
    // S3 holds `d/a` beside `d/a/b`, and `d/m/`; a directory cannot. Each such key fails
    // on its own (exit 1, named), and every other key is still mirrored, one at a time.
    let input = S3Server::start(S3Kind::Moto);
    input.create_bucket("src").await;
    for key in ["d/a", "d/a/b", "d/m", "d/m/", "d/z", "e/last"] {
        input.put("src", key, key.as_bytes().to_vec()).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("mirror");
    let mut cmd = command(&input, "src", &input, "unused", &["--jobs", "1"]);
    cmd.env("OUTPUT_URL", "").env("OUTPUT_PATH", &out_path);
    let out = egress_testkit::run(&mut cmd);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("d/a/b"), "{}", text(&out));
    assert!(text(&out).contains("d/m/"), "{}", text(&out));
    for key in ["d/a", "d/m", "d/z", "e/last"] {
        let copied = std::fs::read(out_path.join(key)).unwrap_or_default();
        assert_eq!(copied, key.as_bytes(), "{key} was mirrored");
    }
}
