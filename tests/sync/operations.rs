//! What operators see of egress-sync: metrics pushed to a real Pushgateway (a failed run
//! keeps the last success), the metrics file checked by `promtool`, and `--check` of both
//! sides against s3s-fs, moto and Ceph RGW.

use std::collections::BTreeMap;

use egress_testkit::assert_check_ok;
use egress_testkit::fixtures::{self, data, manifest_json, put_many};
use egress_testkit::pushgateway::{assert_last_run, Pushgateway, Sample};
use egress_testkit::{
    assert_exit, assert_stderr_has, assert_stdout_has, text, CephRgw, Endpoint, S3Kind, S3Server,
};

use super::sync;

fn one(samples: &[Sample], name: &str) -> f64 {
    let found: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name}: {samples:?}");
    found[0].value
}

fn actions(samples: &[Sample]) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|s| s.name == "egress_sync_objects")
        .map(|s| (s.labels["action"].clone(), s.value))
        .collect()
}

#[tokio::test]
async fn sync_metrics_count_each_action_and_a_failure_keeps_the_last_success() {
    let input = S3Server::with_bucket(S3Kind::S3sFs, "in-bucket").await;
    let output = S3Server::with_bucket(S3Kind::S3sFs, "out-bucket").await;
    let objects: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("2024-07-01/t{i}.csv.gz"),
                data(i, 1000 + i as usize),
            )
        })
        .collect();
    let bytes: usize = objects.iter().map(|(_, b)| b.len()).sum();
    put_many(&input, "in-bucket", objects.clone()).await;
    let gateway = Pushgateway::start();
    let file = gateway.file("sync.prom");
    let args = gateway.flags(&file);
    let out = sync(&input, "in-bucket", &output, "out-bucket", &args);
    assert_exit(&out, 0);
    let pushed = gateway.samples_shown("egress-sync");
    let expected: BTreeMap<String, f64> = [
        ("copied", 5.0),
        ("deleted", 0.0),
        ("failed", 0.0),
        ("skipped", 0.0),
        ("vanished", 0.0),
        ("unlisted", 0.0),
    ]
    .map(|(a, n)| (a.to_string(), n))
    .into();
    assert_eq!(actions(&pushed), expected);
    assert_eq!(one(&pushed, "egress_sync_bytes_copied"), bytes as f64);
    assert_eq!(one(&pushed, "egress_last_run_exit_code"), 0.0);
    let success = one(&pushed, "egress_last_success_timestamp_seconds");
    egress_testkit::pushgateway::assert_promtool_accepts(&file);

    // The first day gets its manifest (its objects are already copied: skipped), and a
    // second day's manifest lists an object the input lacks: that object fails (exit 1)
    // and is counted; the success timestamp stays.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let names: Vec<(String, Vec<u8>)> = objects
        .iter()
        .map(|(k, b)| (k.trim_start_matches("2024-07-01/").to_string(), b.clone()))
        .collect();
    let listed: Vec<(&str, &[u8])> = names.iter().map(|(k, b)| (k.as_str(), &b[..])).collect();
    input
        .put(
            "in-bucket",
            "2024-07-01/_manifest.json",
            manifest_json("2024-07-01", &listed),
        )
        .await;
    input
        .put(
            "in-bucket",
            "2024-07-02/_manifest.json",
            manifest_json("2024-07-02", &[("gone.csv.gz", b"never written")]),
        )
        .await;
    let mut gated = args.to_vec();
    gated.push("--require-manifest");
    let out = sync(&input, "in-bucket", &output, "out-bucket", &gated);
    assert_exit(&out, 1);
    let after = gateway.samples("egress-sync");
    assert_last_run(&after, one, 1.0, success);
    let expected: BTreeMap<String, f64> = [
        ("copied", 1.0), // the first day's manifest
        ("deleted", 0.0),
        ("failed", 1.0),
        ("skipped", 5.0),
        ("vanished", 0.0),
        ("unlisted", 0.0),
    ]
    .map(|(a, n)| (a.to_string(), n))
    .into();
    assert_eq!(actions(&after), expected, "{}", text(&out));

    // A dry run succeeds and pushes nothing: the failed run's figures stay.
    let mut dry = gated.clone();
    dry.push("--dry-run");
    let out = sync(&input, "in-bucket", &output, "out-bucket", &dry);
    assert_exit(&out, 0);
    assert!(
        gateway.samples("egress-sync") == after,
        "a dry run pushed nothing"
    );
}

#[tokio::test]
async fn check_reads_the_input_and_exercises_the_output_on_each_store() {
    let input = S3Server::with_bucket(S3Kind::Moto, "in-bucket").await;
    put_many(
        &input,
        "in-bucket",
        vec![("a/one.bin".into(), data(1, 4096))],
    )
    .await;
    fixtures::put_multipart(
        &input,
        "in-bucket",
        "a/parts.bin",
        &data(2, 11 << 20),
        5 << 20,
    )
    .await;
    let s3s = S3Server::start(S3Kind::S3sFs);
    let ceph = CephRgw::start();
    let outputs: [(&str, &dyn Endpoint); 2] = [("s3s-fs", &s3s), ("ceph", &ceph)];
    for (name, output) in outputs {
        output.s3().create_bucket("out-bucket").await;
        let out = sync(
            &input,
            "in-bucket",
            output,
            "out-bucket/mirror",
            &["--check"],
        );
        let capabilities = [
            "input credentials and bucket",
            "input list",
            "input ranged GET",
            "input HEAD ?partNumber",
            "output multipart upload",
            "output PUT + GET + DELETE",
        ];
        assert_check_ok(&out, name, &capabilities);
        assert!(
            output.s3().keys("out-bucket", "").await.is_empty(),
            "{name}: nothing left"
        );
    }
    // The input is only read: a check against a missing input bucket fails, exit 2.
    let out = sync(&input, "no-such-bucket", &s3s, "out-bucket", &["--check"]);
    assert_exit(&out, 2);
    assert_stdout_has(&out, "FAIL   input");
    assert_stderr_has(&out, "check failed");
}
