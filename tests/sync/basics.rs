//! End-to-end tests of the `egress-sync` binary between real S3-compatible servers, each a
//! separate process with its own credentials.

use std::collections::HashMap;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use egress_testkit::fixtures::{
    contents, data, manifest_json, put_many, put_multipart, upload_id, MIB,
};
use egress_testkit::proxy::{Hook, Proxy};
use egress_testkit::{
    assert_cases_keep_secrets, assert_exit, assert_last_line_has, assert_stderr_has,
    assert_stdout_has, last_line, stderr, stdout, text, CephRgw, Endpoint, S3Kind, S3Server,
};

use super::{command as sync_command, sync};

const SRC: &str = "source-bucket";
const DST: &str = "mirror-bucket";

/// An input server of kind `input` holding an empty `SRC`, and an output server of kind
/// `output` holding an empty `DST`.
async fn source_and_mirror(input: S3Kind, output: S3Kind) -> (S3Server, S3Server) {
    let input = S3Server::with_bucket(input, SRC).await;
    (input, S3Server::with_bucket(output, DST).await)
}

/// [`sync`] of `input`'s `SRC` into `output`'s `DST`, with `args`.
fn mirror(input: &S3Server, output: &S3Server, args: &[&str]) -> Output {
    sync(input, SRC, output, DST, args)
}

/// Four multipart objects `<prefix>/<i>.bin` of `size` bytes in the source bucket; returns
/// key -> bytes.
async fn seed_large(
    input: &S3Server,
    prefix: &str,
    seed: u64,
    size: usize,
    part: usize,
) -> HashMap<String, Vec<u8>> {
    let mut expected = HashMap::new();
    for i in 0..4u64 {
        let body = data(seed + i, size);
        let key = format!("{prefix}/{i}.bin");
        put_multipart(input, SRC, &key, &body, part).await;
        expected.insert(key, body);
    }
    expected
}

const ODD_KEYS: &[&str] = &[
    "odd/with space.csv.gz",
    "odd/unicode-żółć-日本.csv",
    "odd/plus+sign.csv",
    "odd/percent%20literal.csv",
    "odd/amp&ersand.csv",
    "odd/double//slash.csv",
];

/// `key` in the source bucket: gzip JSON with its content type and encoding, and the user
/// metadata `meta` (name, value).
async fn put_typed(input: &S3Server, key: &str, meta: (&str, &str)) {
    let request = input.client().put_object().bucket(SRC).key(key);
    let typed = request
        .content_type("application/json")
        .content_encoding("gzip");
    let body = b"{}".to_vec().into();
    typed
        .metadata(meta.0, meta.1)
        .body(body)
        .send()
        .await
        .unwrap();
}

/// The user metadata of `bucket`/`key` at `server`, which must be gzip JSON as
/// [`put_typed`] puts it.
async fn typed_metadata(server: &dyn Endpoint, bucket: &str, key: &str) -> HashMap<String, String> {
    let request = server.s3().client().head_object().bucket(bucket).key(key);
    let head = request.send().await.unwrap();
    assert_eq!(head.content_type(), Some("application/json"));
    assert_eq!(head.content_encoding(), Some("gzip"));
    head.metadata().cloned().unwrap_or_default()
}

#[tokio::test]
async fn mirrors_pages_of_small_and_large_objects_then_copies_only_changes() {
    let (input, output) = source_and_mirror(S3Kind::S3sFs, S3Kind::S3sFs).await;

    // More than one listing page of small objects, odd keys, and large objects.
    let mut objects: Vec<(String, Vec<u8>)> = (0..1050)
        .map(|i| {
            (
                format!("data/2024-01-{:02}/obj-{i:04}.csv.gz", i % 28 + 1),
                data(i, 200 + (i as usize * 37) % 3000),
            )
        })
        .collect();
    objects.extend(
        ODD_KEYS
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("data/{k}"), data(5000 + i as u64, 100))),
    );
    put_many(&input, SRC, objects).await;
    let big_multipart = data(9001, 17 * MIB + 12345);
    put_multipart(
        &input,
        SRC,
        "data/big/multipart.bin",
        &big_multipart,
        5 * MIB,
    )
    .await;
    input
        .put(SRC, "data/big/single-put.bin", data(9002, 12 * MIB + 1))
        .await;
    put_typed(
        &input,
        "data/meta/with-metadata.json.gz",
        ("Owner", "team-a"),
    )
    .await;

    let (in_path, out_path) = (format!("{SRC}/data"), format!("{DST}/mirror"));
    let out = sync(&input, &in_path, &output, &out_path, &[]);
    assert_exit(&out, 0);
    assert_stdout_has(
        &out,
        &format!("`input/{SRC}/data/big/multipart.bin` -> `output/{DST}/mirror/big/multipart.bin`"),
    );
    let last = last_line(&out);
    assert!(
        last.contains("Total: ") && last.contains("Transferred: ") && last.contains("Speed: "),
        "{last}"
    );
    assert!(last.contains("copied=1059"), "{last}");

    let source = contents(&input, SRC, "data/").await;
    let mirror = contents(&output, DST, "mirror/").await;
    assert_eq!(source.len(), 1059);
    assert_eq!(
        source.keys().collect::<std::collections::BTreeSet<_>>(),
        mirror.keys().collect()
    );
    for (key, bytes) in &source {
        assert!(mirror[key] == *bytes, "{key} differs");
    }
    let meta = typed_metadata(&output, DST, "mirror/meta/with-metadata.json.gz").await;
    let owner = meta
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("owner"))
        .map(|(_, v)| v.as_str());
    assert_eq!(owner, Some("team-a"), "{meta:?}");

    // Nothing changed: nothing is copied.
    let out = sync(&input, &in_path, &output, &out_path, &[]);
    assert_exit(&out, 0);
    let last = last_line(&out);
    assert!(
        last.contains("copied=0") && last.contains("Transferred: 0 B"),
        "{last}"
    );
    assert!(last.contains("skipped=1059"), "{last}");

    // One object rewritten with the same size: only it is copied.
    let key = "data/2024-01-05/obj-0004.csv.gz";
    let old = &source[key.strip_prefix("data/").unwrap()];
    let mut changed = old.clone();
    changed[0] ^= 0xff;
    input.put(SRC, key, changed.clone()).await;
    let out = sync(&input, &in_path, &output, &out_path, &[]);
    assert_exit(&out, 0);
    let last = last_line(&out);
    assert!(last.contains("copied=1 "), "{last}");
    assert!(stdout(&out).contains("obj-0004.csv.gz"));
    assert_eq!(
        output.get(DST, "mirror/2024-01-05/obj-0004.csv.gz").await,
        changed
    );
}

#[tokio::test]
async fn a_copy_overwritten_at_the_output_with_as_many_other_bytes_is_copied_again() {
    // Another tool rewrote the copy: no record, same size, newer. Its MD5 ETag differs
    // from the input's, which proves other bytes (it was kept, found by an adversarial run).
    let (input, output) = source_and_mirror(S3Kind::Moto, S3Kind::Moto).await;
    let original = data(1, 4000);
    input
        .put(SRC, "2024-01-01/t.csv.gz", original.clone())
        .await;
    assert_exit(&mirror(&input, &output, &[]), 0);
    let mut other = original.clone();
    other[10] ^= 0xff;
    output.put(DST, "2024-01-01/t.csv.gz", other).await;
    let plan = mirror(&input, &output, &["--dry-run"]);
    assert_exit(&plan, 0);
    assert_stdout_has(&plan, "copy (changed: same size, but its MD5 differs)");
    let out = mirror(&input, &output, &[]);
    assert_exit(&out, 0);
    let last = last_line(&out);
    assert!(last.contains("copied=1 "), "{last}");
    assert!(output.get(DST, "2024-01-01/t.csv.gz").await == original);
}

#[tokio::test]
async fn dry_run_changes_nothing_and_remove_is_guarded() {
    let (input, output) = source_and_mirror(S3Kind::S3sFs, S3Kind::S3sFs).await;
    input.create_bucket("empty-bucket").await;
    put_many(
        &input,
        SRC,
        (0..20).map(|i| (format!("k{i:02}"), data(i, 64))).collect(),
    )
    .await;

    let out = mirror(&input, &output, &["--dry-run"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("copy (new) `input/source-bucket/k00` -> `output/mirror-bucket/k00`")
    );
    assert!(
        output.keys(DST, "").await.is_empty(),
        "dry run wrote nothing"
    );

    assert_exit(&mirror(&input, &output, &[]), 0);
    // Extra objects at the destination: 3 of 23 is over the default 10% limit.
    let extra = (0..3).map(|i| (format!("extra{i}"), vec![1u8; 10]));
    put_many(&output, DST, extra.collect()).await;
    let out = mirror(&input, &output, &["--remove"]);
    assert_exit(&out, 2);
    assert_stderr_has(&out, "--max-delete 3");
    assert_exit(
        &mirror(&input, &output, &["--remove", "--max-delete", "2"]),
        2,
    );
    assert_eq!(output.keys(DST, "extra").await.len(), 3, "nothing deleted");
    // An empty source never deletes, whatever the limit.
    let everything = ["--remove", "--max-delete", "1000"];
    let out = sync(&input, "empty-bucket", &output, DST, &everything);
    assert_exit(&out, 2);
    assert_stderr_has(&out, "input listing is empty");
    assert_eq!(
        output.keys(DST, "").await.len(),
        23,
        "20 mirrored + 3 extra, and nothing of our own"
    );
    let out = mirror(&input, &output, &["--remove", "--max-delete", "3"]);
    assert_exit(&out, 0);
    assert!(output.keys(DST, "extra").await.is_empty());
    assert_last_line_has(&out, "deleted=3");
}

/// How a case of a bad configuration changes the command.
enum Tweak<'a> {
    /// Set a variable.
    Set(&'a str, String),
    /// Remove a variable.
    Unset(&'a str),
    /// Add arguments.
    Args(&'a [&'a str]),
}

#[tokio::test]
async fn bad_configuration_fails_cleanly() {
    let (input, output) = source_and_mirror(S3Kind::S3sFs, S3Kind::S3sFs).await;
    input.put(SRC, "a", b"x".to_vec()).await;

    let sentinel = "WRONG-secret-sentinel-4h8d";
    let closed = format!("http://127.0.0.1:{}", egress_testkit::free_port());
    let set = |name, value: &str| Tweak::Set(name, value.to_string());
    let cases = [
        (
            "wrong input secret",
            set("INPUT_SECRET_ACCESS_KEY", sentinel),
            2,
            "INPUT_ACCESS_KEY_ID",
        ),
        (
            "wrong output secret",
            set("OUTPUT_SECRET_ACCESS_KEY", sentinel),
            2,
            "OUTPUT_ACCESS_KEY_ID",
        ),
        (
            "missing bucket",
            set("OUTPUT_PATH", "no-such-bucket/x"),
            2,
            "does not exist",
        ),
        (
            "unreachable endpoint",
            set("INPUT_URL", &closed),
            1,
            "unreachable",
        ),
        (
            "malformed url",
            set("OUTPUT_URL", "rgw.example:8080"),
            2,
            "OUTPUT_URL",
        ),
        (
            "empty path",
            set("INPUT_PATH", ""),
            2,
            "INPUT_PATH is empty",
        ),
        (
            "half credentials",
            Tweak::Unset("OUTPUT_SECRET_ACCESS_KEY"),
            2,
            "OUTPUT_SECRET_ACCESS_KEY",
        ),
        (
            "unknown flag",
            Tweak::Args(&["--frobnicate"]),
            2,
            "--frobnicate",
        ),
        (
            "bad glob",
            Tweak::Args(&["--include", "[abc"]),
            2,
            "not a valid glob",
        ),
        (
            "unreadable CA bundle",
            set("AWS_CA_BUNDLE", "/nonexistent/ca.pem"),
            2,
            "cannot read AWS_CA_BUNDLE",
        ),
    ];
    for (name, tweak, code, needle) in cases {
        let mut cmd = sync_command(&input, SRC, &output, DST, &[]);
        match tweak {
            Tweak::Set(key, value) => cmd.env(key, value),
            Tweak::Unset(key) => cmd.env_remove(key),
            Tweak::Args(args) => cmd.args(args),
        };
        let out = cmd.output().expect("run");
        let all = text(&out);
        assert_eq!(out.status.code(), Some(code), "{name}: {all}");
        assert!(
            stderr(&out).contains(needle),
            "{name}: expected '{needle}': {all}"
        );
        for secret in [
            sentinel,
            input.secret_key.as_str(),
            output.secret_key.as_str(),
        ] {
            assert!(!all.contains(secret), "{name}: secret leaked: {all}");
        }
        assert!(
            output.keys(DST, "").await.is_empty(),
            "{name}: nothing written"
        );
    }
}

#[tokio::test]
async fn killed_mid_transfer_then_rerun_ends_identical_with_no_pending_upload() {
    let (input, output) = source_and_mirror(S3Kind::S3sFs, S3Kind::Moto).await;
    let expected = seed_large(&input, "large", 100, 24 * MIB, 8 * MIB).await;
    let mut child = sync_command(&input, SRC, &output, DST, &["--jobs", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn egress-sync");
    // Kill it once uploads are under way.
    output.wait_for_pending_upload(DST, &mut child).await;
    child.kill().expect("kill");
    child.wait().unwrap();

    let out = mirror(&input, &output, &["--jobs", "2"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("aborted an upload left by egress-sync run"),
        "the killed run's uploads are known as its own: {}",
        text(&out)
    );
    let mirrored = contents(&output, DST, "").await;
    assert_eq!(mirrored.len(), expected.len());
    for (key, body) in &expected {
        assert!(
            mirrored.get(key) == Some(body),
            "{key} differs after the re-run"
        );
    }
    assert!(
        output.pending_uploads(DST).await.is_empty(),
        "no multipart upload left pending"
    );
}

// ---------------------------------------------------------------------------------------
// --require-manifest and --verify.

/// The manifest of the source's `data/<day>`, listing `files` (name and bytes).
async fn put_manifest(input: &S3Server, day: &str, files: &[(&str, &[u8])]) {
    let key = format!("data/{day}/_manifest.json");
    input.put(SRC, &key, manifest_json(day, files)).await;
}

fn copied_keys(out: &Output) -> Vec<String> {
    stdout(out)
        .lines()
        .filter_map(|l| l.split("-> `output/").nth(1))
        .map(|rest| rest.split('`').next().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn require_manifest_copies_complete_days_manifest_last_and_catches_corruption() {
    // moto lists ETags, so a same-size rewrite within the same second is still seen.
    let (input, output) = source_and_mirror(S3Kind::Moto, S3Kind::S3sFs).await;
    let (a, b, c) = (data(1, 5000), data(2, 7000), data(3, 9000));
    input.put(SRC, "data/2024-01-01/a.csv.gz", a.clone()).await;
    input.put(SRC, "data/2024-01-01/b.csv.gz", b.clone()).await;
    put_manifest(&input, "2024-01-01", &[("a.csv.gz", &a), ("b.csv.gz", &b)]).await;
    input.put(SRC, "data/2024-01-02/c.csv.gz", c.clone()).await;
    let args = ["--require-manifest", "--jobs", "4"];
    let in_path = format!("{SRC}/data");

    let out = sync(&input, &in_path, &output, DST, &args);
    assert_exit(&out, 0);
    assert_stdout_has(&out, "2024-01-02` has no _manifest.json; skipped");
    let copied = copied_keys(&out);
    assert_eq!(copied.len(), 3, "{copied:?}");
    assert_eq!(
        copied.last().unwrap(),
        &format!("{DST}/2024-01-01/_manifest.json"),
        "manifest last: {copied:?}"
    );
    assert_eq!(
        output.keys(DST, "2024").await,
        [
            "2024-01-01/_manifest.json",
            "2024-01-01/a.csv.gz",
            "2024-01-01/b.csv.gz"
        ]
    );

    // The day's manifest appears: the next run copies it, the manifest last.
    put_manifest(&input, "2024-01-02", &[("c.csv.gz", &c)]).await;
    let out = sync(&input, &in_path, &output, DST, &args);
    assert_exit(&out, 0);
    assert_eq!(
        copied_keys(&out),
        [
            format!("{DST}/2024-01-02/c.csv.gz"),
            format!("{DST}/2024-01-02/_manifest.json")
        ]
    );

    // Bytes changed after the manifest was written: detected, reported, not copied.
    let mut bad = b.clone();
    bad[100] ^= 1;
    input.put(SRC, "data/2024-01-01/b.csv.gz", bad).await;
    let d = data(4, 3000);
    let mut d_bad = d.clone();
    d_bad[0] ^= 1;
    input.put(SRC, "data/2024-01-03/d.csv.gz", d_bad).await;
    put_manifest(&input, "2024-01-03", &[("d.csv.gz", &d)]).await;
    let out = sync(&input, &in_path, &output, DST, &args);
    assert_exit(&out, 1);
    let stderr = stderr(&out);
    for object in ["2024-01-01/b.csv.gz", "2024-01-03/d.csv.gz"] {
        let refused = format!("{object} does not match its manifest");
        assert!(stderr.contains(&refused), "{stderr}");
    }
    assert_eq!(
        output.get(DST, "2024-01-01/b.csv.gz").await,
        b,
        "the good copy was not replaced"
    );
    let keys = output.keys(DST, "2024-01-03").await;
    assert!(
        keys.is_empty(),
        "neither the bad object nor its manifest reached the output: {keys:?}"
    );

    // --verify: the output matches its manifests; the input does not.
    let out = sync(&input, &in_path, &output, DST, &["--verify"]);
    assert_exit(&out, 0);
    assert_stdout_has(&out, "output 2024-01-01: OK (2 objects");
    let out = sync(&input, &in_path, &output, DST, &["--verify", "input"]);
    assert_exit(&out, 1);
    let printed = stdout(&out);
    assert!(
        printed.contains("input 2024-01-01: MISMATCH 2024-01-01/b.csv.gz: SHA-256"),
        "{printed}"
    );
    assert!(printed.contains("input 2024-01-02: OK"), "{printed}");
    // Damage at the output is found too.
    output.put(DST, "2024-01-02/c.csv.gz", vec![0u8; 10]).await;
    let out = sync(&input, &in_path, &output, DST, &["--verify"]);
    assert_exit(&out, 1);
    assert!(stdout(&out).contains("output 2024-01-02: MISMATCH 2024-01-02/c.csv.gz: 10 bytes"));
}

// ---------------------------------------------------------------------------------------
// Ceph RGW 16 (Debian 12's), the store our users mirror into.

#[tokio::test]
async fn ceph_rgw_as_destination_and_as_source() {
    let input = S3Server::with_bucket(S3Kind::S3sFs, SRC).await;
    let ceph = CephRgw::with_bucket(DST).await;
    let mut objects: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("2024-02-01/t{i}.csv.gz"),
                data(i, 1000 + i as usize),
            )
        })
        .collect();
    objects.extend(
        ODD_KEYS
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), data(500 + i as u64, 64))),
    );
    put_many(&input, SRC, objects).await;
    let large = data(77, 13 * MIB + 5);
    put_multipart(&input, SRC, "2024-02-01/large.bin", &large, 5 * MIB).await;
    put_typed(&input, "2024-02-01/typed.json.gz", ("team", "data-hub")).await;

    // Into Ceph.
    let out = sync(&input, SRC, &ceph, &format!("{DST}/mirror"), &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}\n{}", ceph.log_tail());
    assert_last_line_has(&out, "failed=0");
    // Every copy was checked against the bytes Ceph stored: Content-MD5 on single PUTs,
    // each part's MD5 and the composite ETag on multipart ones (never size alone).
    let copies: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| l.contains("-> `output/"))
        .map(str::to_string)
        .collect();
    assert_eq!(copies.len(), 48, "{}", text(&out));
    for line in &copies {
        assert!(
            line.contains("verified=\"size+md5\"")
                || line.contains("verified=\"size+multipart-etag\""),
            "verified by its digest: {line}"
        );
    }
    assert!(
        copies
            .iter()
            .any(|l| l.contains("large.bin") && l.contains("verified=\"size+multipart-etag\"")),
        "the multipart copy's composite ETag matched the source's: {copies:?}"
    );
    let source = contents(&input, SRC, "").await;
    let mirrored = contents(&ceph, DST, "mirror/").await;
    assert_eq!(source.len(), 48);
    assert!(source == mirrored, "Ceph holds exactly the source's bytes");
    let meta = typed_metadata(&ceph, DST, "mirror/2024-02-01/typed.json.gz").await;
    assert!(meta
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("team") && v == "data-hub"));
    assert!(ceph.pending_uploads(DST).await.is_empty());
    let out = sync(&input, SRC, &ceph, &format!("{DST}/mirror"), &[]);
    assert_exit(&out, 0);
    assert_last_line_has(&out, "copied=0");

    // Out of Ceph (its listings carry ETags; multipart ones in Ceph's own form).
    let back = S3Server::with_bucket(S3Kind::S3sFs, "back").await;
    let out = sync(&ceph, &format!("{DST}/mirror"), &back, "back", &[]);
    assert_exit(&out, 0);
    assert!(contents(&back, "back", "").await == source);
    let out = sync(&ceph, &format!("{DST}/mirror"), &back, "back", &[]);
    assert_last_line_has(&out, "copied=0");
}

// ---------------------------------------------------------------------------------------
// Faults and secrets.

/// The output's server goes down while parts are on their way and comes back: retries
/// carry the run through. The proxy holds the first parts until the server is down, so
/// they provably meet it down and fail; the server is started again once the copy has
/// given that upload up (its abort is on its way), and the copy is retried as a new upload.
#[tokio::test]
async fn destination_restarted_mid_sync_then_rerun_is_identical() {
    let (input, mut output) = source_and_mirror(S3Kind::S3sFs, S3Kind::S3sFs).await;
    let expected = seed_large(&input, "big", 300, 20 * MIB, 5 * MIB).await;
    let holding = Arc::new(AtomicBool::new(true));
    let held = holding.clone();
    let hook: Hook = Arc::new(move |seen| {
        let (held, part) = (held.clone(), seen.is_upload_part());
        Box::pin(async move {
            while part && held.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });
    let proxy = Proxy::start(&output.endpoint, Some(hook), None);
    let via = output.s3().via(&proxy.endpoint);
    let child = sync_command(&input, SRC, &via, DST, &["--jobs", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn egress-sync");
    let part = proxy.wait_for("UploadPart", |r| r.is_upload_part());
    output.kill();
    holding.store(false, Ordering::SeqCst);
    let upload = upload_id(&part.target);
    let abort = proxy.wait_for("the abort of the failed part's upload", |r| {
        r.method == "DELETE" && upload_id(&r.target) == upload
    });
    output.restart();
    let out = egress_testkit::wait_for_exit(child, Duration::from_secs(300));
    assert_exit(&out, 0);
    // The object was copied again, as a new upload after the failed one's abort.
    let key = part.target.split('?').next().unwrap_or("");
    let seen = proxy.requests();
    let after_abort = seen.iter().skip_while(|r| **r != abort);
    let again = after_abort
        .filter(|r| r.method == "POST" && r.target.split('?').next() == Some(key))
        .count();
    assert!(again > 0, "{key} was never uploaded again: {seen:?}");
    let object = key.trim_start_matches(&format!("/{DST}/"));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.contains("copy failed; retrying") && l.contains(&format!("key={object}"))),
        "the run says it retried {object}: {}",
        text(&out)
    );
    assert!(
        contents(&output, DST, "").await == expected,
        "identical after the restart"
    );
    let out = mirror(&input, &output, &["--jobs", "2"]);
    assert_exit(&out, 0);
    assert_last_line_has(&out, "copied=0");
}

#[tokio::test]
async fn sigterm_mid_sync_aborts_uploads_and_exits_143() {
    let (input, output) = source_and_mirror(S3Kind::S3sFs, S3Kind::Moto).await;
    let expected = seed_large(&input, "big", 400, 24 * MIB, 8 * MIB).await;
    let mut child = sync_command(&input, SRC, &output, DST, &["--jobs", "2", "-v"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn egress-sync");
    output.wait_for_pending_upload(DST, &mut child).await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    assert_exit(&out, 143);
    assert_stderr_has(&out, "stopped by SIGTERM");
    let pending = output.pending_uploads(DST).await;
    assert!(
        pending.is_empty(),
        "in-flight uploads aborted, yet pending: {pending:?}\n{}",
        text(&out)
    );
    // (The marks of the aborted uploads stay: the next run removes a dead run's marks.)
    let objects = contents(&output, DST, "").await;
    let mirrored = objects
        .into_iter()
        .filter(|(key, _)| !egress_common::day::lease::is_coordination(key));
    for (key, body) in mirrored {
        assert!(
            expected.get(&key) == Some(&body),
            "{key}: no truncated object"
        );
    }
    assert_exit(&mirror(&input, &output, &["--jobs", "2"]), 0);
    assert!(contents(&output, DST, "").await == expected);
}

#[tokio::test]
async fn sync_secrets_never_appear_in_any_output() {
    const IN_SECRET: &str = "SENTINEL-input-secret-7hq2z";
    const OUT_SECRET: &str = "SENTINEL-output-secret-p0x4w";
    let input = S3Server::start_with_secret(S3Kind::S3sFs, Some(IN_SECRET));
    let output = S3Server::start_with_secret(S3Kind::S3sFs, Some(OUT_SECRET));
    input.create_bucket(SRC).await;
    output.create_bucket(DST).await;
    input.put(SRC, "2024-01-01/a.csv.gz", data(1, 1000)).await;
    let manifest = manifest_json("2024-01-01", &[("a.csv.gz", &data(1, 1000))]);
    input.put(SRC, "2024-01-01/_manifest.json", manifest).await;
    // Each run: its name, extra environment, arguments, the exit code it must end with and
    // a line it must print (so a case that silently did something else fails).
    type Run<'a> = (&'a str, Vec<(&'a str, String)>, Vec<&'a str>, i32, &'a str);
    let runs: Vec<Run> = vec![
        ("success", vec![], vec![], 0, "Total:"),
        (
            "json trace",
            vec![],
            vec!["--log-format", "json", "-vv"],
            0,
            "\"copied\":0",
        ),
        ("dry run", vec![], vec!["--dry-run", "-v"], 0, "Dry run:"),
        (
            "require manifest",
            vec![],
            vec!["--require-manifest", "-v"],
            0,
            "Total:",
        ),
        (
            "verify",
            vec![],
            vec!["--verify", "-v"],
            0,
            "Verified 1 folder",
        ),
        (
            "wrong input secret",
            vec![("INPUT_SECRET_ACCESS_KEY", format!("{IN_SECRET}x"))],
            vec!["-vv"],
            2,
            "rejected the credentials",
        ),
        (
            "wrong output secret",
            vec![("OUTPUT_SECRET_ACCESS_KEY", format!("{OUT_SECRET}x"))],
            vec!["-v", "--log-format", "json"],
            2,
            "rejected the credentials",
        ),
        (
            "missing bucket",
            vec![("OUTPUT_PATH", "nope".to_string())],
            vec!["-v"],
            2,
            "bucket 'nope' does not exist",
        ),
        (
            "unreachable",
            vec![(
                "INPUT_URL",
                format!("http://127.0.0.1:{}", egress_testkit::free_port()),
            )],
            vec!["-v"],
            1,
            "unreachable",
        ),
        ("help", vec![], vec!["--help"], 0, "Usage:"),
        (
            "help with a pushgateway password",
            vec![(
                "PUSHGATEWAY_URL",
                "http://m:SENTINEL-gw/9?z@127.0.0.1:1".to_string(),
            )],
            vec!["--help"],
            0,
            "PUSHGATEWAY_URL",
        ),
    ];
    let cases = runs
        .into_iter()
        .map(|(name, env, args, code, marker)| (name, code, marker, (env, args)));
    assert_cases_keep_secrets(
        "egress-sync",
        &[IN_SECRET, OUT_SECRET],
        cases,
        |_, (env, args), log| {
            let mut cmd = sync_command(&input, SRC, &output, DST, &args);
            cmd.env("TERMINATION_LOG", log).envs(env);
            cmd.output().expect("run")
        },
    );
}
