//! egress-sync at the edges, through the binary against real servers: an input object
//! deleted between the listing and its copy, the output bucket deleted mid-run, a manifest
//! listing an object the input lacks, hostile and odd keys, an output that cannot be
//! written, an endpoint that is not an S3 server, odd local file names.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use egress_testkit::assert_exit_why;
use egress_testkit::assert_none;
use egress_testkit::fixtures::{self, contents, data, manifest_json, put_many, MIB};
use egress_testkit::overlap::first_run;
use egress_testkit::process;
use egress_testkit::proxy::{Hook, Proxy};
use egress_testkit::{assert_exit, assert_stderr_has, assert_stdout_has};
use egress_testkit::{
    last_line, stderr, stdout, text, CephRgw, Endpoint, S3Endpoint, S3Kind, S3Server,
};

use super::{command, src_and_dst, sync, sync_ok};

/// An input whose `victim` object is deleted just before its copy reads it.
async fn vanishing_input(input: &S3Endpoint, bucket: &'static str, victim: &'static str) -> Proxy {
    let client = input.client();
    let hook: Hook = Arc::new(move |seen| {
        let client = client.clone();
        let hit = seen.method == "GET"
            && seen.target.contains(victim)
            && !seen.target.contains("list-type");
        Box::pin(async move {
            if hit {
                let _ = client
                    .delete_object()
                    .bucket(bucket)
                    .key(victim)
                    .send()
                    .await;
            }
        })
    });
    Proxy::start(&input.endpoint, Some(hook), None)
}

async fn a_vanished_object_is_counted_not_failed(input: &dyn Endpoint, output: &dyn Endpoint) {
    let objects: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("d29/obj{i:05}.txt"), data(i, 300)))
        .collect();
    put_many(input, "vsrc", objects).await;
    let proxy = vanishing_input(&input.s3(), "vsrc", "d29/obj00007.txt").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    let out = sync(
        &input.s3().via(&proxy.endpoint),
        "vsrc",
        output,
        "vdst",
        &["--termination-log", log.to_str().unwrap()],
    );
    assert_exit_why(&out, 0, "a vanished object is not a failure");
    let printed = stdout(&out);
    assert_eq!(
        printed
            .matches("vanished: it was deleted after the listing")
            .count(),
        1,
        "logged once: {printed}"
    );
    assert!(
        last_line(&out).contains("copied=11") && last_line(&out).contains("vanished=1"),
        "{}",
        text(&out)
    );
    let summary = std::fs::read_to_string(&log).unwrap();
    assert!(summary.contains("1 vanished"), "{summary}");
    assert_eq!(contents(output, "vdst", "").await.len(), 11);
}

#[tokio::test]
async fn an_input_object_deleted_after_the_listing_is_vanished_on_s3s_fs_and_ceph() {
    let s3s = S3Server::with_bucket(S3Kind::S3sFs, "vsrc").await;
    let ceph = CephRgw::with_bucket("vdst").await;
    a_vanished_object_is_counted_not_failed(&s3s, &ceph).await;
    // And with Ceph as the input.
    let out2 = S3Server::with_bucket(S3Kind::S3sFs, "vdst").await;
    ceph.create_bucket("vsrc").await;
    a_vanished_object_is_counted_not_failed(&ceph, &out2).await;
}

#[tokio::test]
async fn the_output_bucket_deleted_mid_run_stops_the_run_with_one_line() {
    let input = S3Server::with_bucket(S3Kind::S3sFs, "src").await;
    let output = S3Server::with_bucket(S3Kind::Moto, "gone").await;
    let objects: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("k{i:04}"), data(i, 200)))
        .collect();
    put_many(&input, "src", objects).await;
    // Before the tenth PUT is forwarded, the bucket is emptied and deleted.
    let client = output.client();
    let puts = Arc::new(AtomicUsize::new(0));
    let hook: Hook = Arc::new(move |seen| {
        let n = if seen.method == "PUT" {
            puts.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            0
        };
        let client = client.clone();
        Box::pin(async move {
            if n == 10 {
                let listed = client
                    .list_objects_v2()
                    .bucket("gone")
                    .send()
                    .await
                    .expect("list");
                for o in listed.contents() {
                    let key = o.key().unwrap_or("");
                    client
                        .delete_object()
                        .bucket("gone")
                        .key(key)
                        .send()
                        .await
                        .expect("delete");
                }
                client
                    .delete_bucket()
                    .bucket("gone")
                    .send()
                    .await
                    .expect("delete the bucket");
            }
        })
    });
    let proxy = Proxy::start(&output.endpoint, Some(hook), None);
    let out = sync(
        &input,
        "src",
        &output.s3().via(&proxy.endpoint),
        "gone",
        &["--jobs", "1"],
    );
    assert_exit_why(&out, 2, "a missing bucket is a configuration error");
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("bucket 'gone' does not exist"), "{err}");
    let puts = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert!(
        puts < 20,
        "the run stopped instead of trying every object: {puts} PUTs"
    );
}

#[tokio::test]
async fn a_manifest_listing_an_object_the_input_lacks_fails_naming_it() {
    let (input, output) = src_and_dst(S3Kind::S3sFs, S3Kind::S3sFs).await;
    let (a, b) = (data(1, 900), data(2, 800));
    put_many(
        &input,
        "src",
        vec![
            ("2024-02-02/a.csv.gz".into(), a.clone()),
            (
                "2024-02-02/_manifest.json".into(),
                manifest_json("2024-02-02", &[("a.csv.gz", &a), ("b.csv.gz", &b)]),
            ),
        ],
    )
    .await;
    let out = sync(&input, "src", &output, "dst", &["--require-manifest"]);
    assert_exit(&out, 1);
    assert_stderr_has(
        &out,
        "the manifest lists objects the input does not have: 2024-02-02/b.csv.gz",
    );
    let keys = output.keys("dst", "").await;
    assert_none(&keys, "no manifest for an incomplete day", |k| {
        k.ends_with("_manifest.json")
    });
}

#[tokio::test]
async fn hostile_keys_never_leave_a_local_output_and_control_characters_list() {
    let input = S3Server::with_bucket(S3Kind::Moto, "src").await;
    let hostile = ["p/../x", "p/a/../../y", "p//lead", "p/./dot"];
    let mut objects: Vec<(String, Vec<u8>)> = hostile
        .iter()
        .map(|k| (k.to_string(), b"evil".to_vec()))
        .collect();
    objects.push(("p/ctl\u{1}key.txt".into(), b"control".to_vec()));
    objects.push(("p/fine.txt".into(), b"fine".to_vec()));
    put_many(&input, "src", objects).await;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("mirror");
    let out = egress_testkit::run(
        command(&input, "src/p", &input, "unused", &[])
            .env("OUTPUT_URL", "")
            .env("OUTPUT_PATH", &out_dir),
    );
    assert_exit(&out, 1);
    let err = stderr(&out);
    for key in ["../x", "a/../../y", "/lead", "./dot"] {
        assert!(
            err.contains(&format!("key '{key}' cannot be written"))
                || stdout(&out).contains(&format!("key '{key}' cannot be written")),
            "{key} named: {}",
            text(&out)
        );
    }
    let mut written: Vec<String> = walk(dir.path());
    written.sort();
    assert_eq!(
        written,
        ["mirror/ctl\u{1}key.txt", "mirror/fine.txt"],
        "nothing outside the output, the rest copied"
    );
}

fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[tokio::test]
async fn an_output_that_cannot_be_written_is_one_line_and_exit_2() {
    let input = S3Server::with_bucket(S3Kind::S3sFs, "src").await;
    let objects: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("2024-01-01/k{i:03}"), data(i, 100)))
        .collect();
    put_many(&input, "src", objects).await;
    let dir = tempfile::tempdir().unwrap();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let blocked = dir.path().join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("2024-01-01"), b"a file where a folder must go").unwrap();
    // The whole output unusable stops the run at its first attempts (exit 2); a file where
    // one day's folder must go fails that day's keys one by one (exit 1), as keys a local
    // folder cannot hold together do.
    for (name, path, needle, exit, most_failures) in [
        (
            "the output is a file",
            &a_file,
            a_file.display().to_string(),
            2,
            64,
        ),
        (
            "a folder of the output is a file",
            &blocked,
            format!("'2024-01-01' under {} is a file", blocked.display()),
            1,
            200,
        ),
    ] {
        let out = egress_testkit::run(
            command(&input, "src", &input, "x", &[])
                .env("OUTPUT_URL", "")
                .env("OUTPUT_PATH", path),
        );
        assert_exit_why(&out, exit, name);
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
        assert!(err.contains(&needle), "{name}: names the path: {err}");
        let failures = stdout(&out).matches("copy failed").count();
        assert!(
            failures <= most_failures,
            "{name}: at most {most_failures} failed copies, not {failures}"
        );
    }
}

#[tokio::test]
async fn an_endpoint_that_is_not_s3_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("html-page"),
        b"<html><body>Welcome</body></html>",
    )
    .unwrap();
    let port = egress_testkit::free_port();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    egress_testkit::process::wait_for_port(
        port,
        std::time::Duration::from_secs(10),
        "http.server",
        &dir.path().join("none"),
    );
    let web = S3Endpoint {
        endpoint: format!("http://127.0.0.1:{port}"),
        access_key: "AK".into(),
        secret_key: "SK".into(),
    };
    let output = S3Server::with_bucket(S3Kind::S3sFs, "dst").await;
    for (name, bucket) in [
        ("a 404 page", "no-such-dir"),
        ("an HTML 200", "html-bucket"),
    ] {
        let out = sync(&web, bucket, &output, "dst", &[]);
        assert_exit_why(&out, 2, name);
        let err = stderr(&out);
        assert!(
            err.contains("does not answer like an S3 server"),
            "{name}: {err}"
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn odd_local_names_are_reported_and_symlinks_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    std::fs::write(input.join("sub/ok.txt"), b"ok").unwrap();
    let bad = std::ffi::OsStr::from_bytes(b"bad\xffname.txt");
    std::fs::write(input.join(bad), b"x").unwrap();
    let secret = dir.path().join("outside.txt");
    std::fs::write(&secret, b"not for the mirror").unwrap();
    std::os::unix::fs::symlink(&secret, input.join("link.txt")).unwrap();
    let output = dir.path().join("out");
    let out = egress_testkit::run(&mut super::local_command(&input, &output, &[]));
    assert_exit(&out, 0);
    for said in [
        "not valid UTF-8",
        "bad\u{FFFD}name.txt",
        "symbolic link",
        "link.txt",
    ] {
        assert_stdout_has(&out, said);
    }
    assert_eq!(walk(&output), ["sub/ok.txt"]);
}

/// A local copy killed (SIGKILL) mid-run leaves only whole objects: every name in the
/// output holds exactly its input's bytes (temporary files aside: never listed, and left
/// alone by the next run, which cannot tell whose they are); the re-run completes the copy.
/// The kill lands while the process provably has objects mid-write (a staged file open,
/// its object not yet named), and those objects are then nowhere in the output.
#[tokio::test]
async fn a_local_copy_killed_mid_run_leaves_no_partial_object() {
    killed_mid_run_then_rerun("machine").await;
}

/// The same with `--durability process`: nothing is flushed before a name appears, and a
/// killed run still leaves no partial object.
#[tokio::test]
async fn a_local_copy_without_flushes_killed_mid_run_leaves_no_partial_object() {
    killed_mid_run_then_rerun("process").await;
}

/// An object the process was writing when it was stopped: its name, the bytes its staged
/// file held, and how the file was staged.
#[derive(Debug)]
struct InFlight {
    name: String,
    staged_bytes: u64,
    whole_bytes: u64,
    how: &'static str,
}

/// The input objects `pid` (stopped) is writing into `output`: a file open under a
/// temporary name (`.<name>.egress-tmp-<random>`, a multipart copy) or unnamed
/// (`O_TMPFILE`: `/proc` shows `<dir>/#<inode> (deleted)`, and its first bytes tell which
/// input it holds), whose object has no name in the output yet.
fn in_flight_writes(pid: u32, input: &Path, output: &Path) -> Vec<InFlight> {
    let mut found = Vec::new();
    for (fd, target) in process::open_files(pid) {
        let Ok(rel) = target.strip_prefix(output) else {
            continue;
        };
        let (Some(dir), Some(file)) = (rel.parent(), rel.file_name()) else {
            continue;
        };
        let file = file.to_string_lossy();
        let staged = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
        let (name, how) = if let Some(temp) = file.strip_prefix('.') {
            match temp.split_once(".egress-tmp-") {
                Some((name, random)) if !random.ends_with(" (deleted)") => {
                    (dir.join(name), "under a temporary name")
                }
                _ => continue,
            }
        } else if file.starts_with('#') && file.ends_with(" (deleted)") {
            match input_starting_with(&input.join(dir), &staged) {
                Some(name) => (dir.join(name), "unnamed"),
                None => continue,
            }
        } else {
            continue;
        };
        let (Ok(whole), Ok(held)) = (
            std::fs::metadata(input.join(&name)),
            std::fs::metadata(&staged),
        ) else {
            continue;
        };
        let name = name.to_string_lossy().into_owned();
        // One object's parts are written through descriptors of their own.
        if output.join(&name).exists() || found.iter().any(|w: &InFlight| w.name == name) {
            continue;
        }
        found.push(InFlight {
            name,
            staged_bytes: held.len(),
            whole_bytes: whole.len(),
            how,
        });
    }
    found
}

/// The one file in `dir` whose bytes start as `staged`'s do (test data differs from the
/// first bytes on); `None` for an empty staged file or a staged file of no input (the lease).
fn input_starting_with(dir: &Path, staged: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(staged)
        .ok()?
        .take(4096)
        .read_to_end(&mut head)
        .ok()?;
    if head.is_empty() {
        return None;
    }
    let mut matches = std::fs::read_dir(dir).ok()?.flatten().filter(|e| {
        let mut start = Vec::new();
        std::fs::File::open(e.path())
            .and_then(|f| f.take(head.len() as u64).read_to_end(&mut start))
            .is_ok()
            && start == head
    });
    let found = matches.next()?;
    matches
        .next()
        .is_none()
        .then(|| found.file_name().to_string_lossy().into_owned())
}

async fn killed_mid_run_then_rerun(durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    for i in 0..4000 {
        let file = input.join(format!("d{:02}/obj{i:05}.bin", i % 40));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, data(i as u64, (512 + (i * 37) % 4096) as usize)).unwrap();
    }
    // Large objects among the small ones, copied in 5 MiB parts into a temporary file
    // that takes a while to fill: writes in flight whenever the copy is looked at.
    for i in 0..8u64 {
        let folder = input.join(format!("d{:02}", 5 * i + 2));
        std::fs::write(folder.join("big.bin"), data(1000 + i, 24 * MIB)).unwrap();
    }
    let objects = walk(&input).len();
    let copy = || {
        let flags = ["--part-size-mib", "5", "--memory-budget-mib", "16"];
        let mut cmd = super::local_command(&input, &output, &flags);
        cmd.args(["--durability", durability]);
        cmd
    };
    let mut child = copy()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Look at the copy, stopped, until it is mid-run (some objects whole) with an object
    // partly written: then kill it as it stands.
    let started = std::time::Instant::now();
    let in_flight = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no partly written object seen while the copy ran"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy ended before it was killed"
        );
        if output.exists() && walk(&output).len() >= 100 {
            process::pause(pid);
            let writing = in_flight_writes(pid, &input, &output);
            // Some of its bytes written, not all: a partial object, on disk, unnamed.
            if writing
                .iter()
                .any(|w| (1..w.whole_bytes).contains(&w.staged_bytes))
            {
                break writing;
            }
            process::signal(pid, libc::SIGCONT);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let partial: Vec<&InFlight> = in_flight
        .iter()
        .filter(|w| w.staged_bytes < w.whole_bytes)
        .collect();
    println!(
        "killed while writing {} objects, partly: {partial:?}",
        in_flight.len()
    );
    for w in &in_flight {
        assert!(
            !output.join(&w.name).exists(),
            "{} was being written ({} of {} bytes, {}) when the copy was killed, yet it has a name",
            w.name,
            w.staged_bytes,
            w.whole_bytes,
            w.how
        );
    }
    let (mut whole, mut temporary) = (0, 0);
    for name in walk(&output) {
        if name.contains(".egress-tmp-") || name.starts_with(".egress") {
            temporary += 1;
            continue;
        }
        let copied = std::fs::read(output.join(&name)).unwrap();
        assert!(
            copied == std::fs::read(input.join(&name)).unwrap(),
            "{name} is partial"
        );
        whole += 1;
    }
    assert!(
        (100..objects).contains(&whole),
        "killed mid-run: {whole} objects, {temporary} temporary"
    );
    let out = egress_testkit::run(&mut copy());
    assert_exit(&out, 0);
    let mut copied = walk(&output);
    copied.retain(|n| !n.starts_with(".egress") && !n.contains(".egress-tmp-"));
    assert_eq!(copied.len(), objects, "every object once");
    for name in copied {
        assert!(
            std::fs::read(output.join(&name)).unwrap() == std::fs::read(input.join(&name)).unwrap(),
            "{name}"
        );
    }
}

/// Two syncs into one output at once: the second finds the first's lease (and stops, or
/// waits for it) and never aborts the first's uploads. The second starts only once the
/// first has an upload pending at the output, held at a proxy until the second has stopped
/// (or is seen waiting): the upload is still pending then.
#[tokio::test]
async fn two_overlapping_syncs_never_abort_each_others_uploads() {
    let (input, output) = src_and_dst(S3Kind::S3sFs, S3Kind::Moto).await;
    let seed_big = |folder: &'static str, seed: u64| {
        let input = &input;
        async move {
            for i in 0..3u64 {
                let body = data(seed + i, 12 * MIB);
                let key = format!("{folder}/{i}.bin");
                fixtures::put_multipart(input, "src", &key, &body, 6 * MIB).await;
            }
        }
    };
    seed_big("big", 0).await;
    let args = ["--jobs", "2"];
    // A sync into `via` (the output, through a proxy) with `args`, started, its output piped.
    let start = |via: &S3Endpoint, args: &[&str]| {
        command(&input, "src", via, "dst", args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The second run finds the first one's lease: exit 3, nothing touched.
    let first = first_run(&output, "dst", |via| start(via, &args)).await;
    let second = sync(&input, "src", &output, "dst", &args);
    let held = "another run holds the lease on s3://dst/.egress-sync-lease.json";
    first.kept_out(&second, held).await;
    // Waiting instead: both succeed, one after the other. The second reads the lease
    // through a proxy of its own: two reads of it mean it found the lease live and waits.
    seed_big("late", 10).await;
    put_many(&input, "src", vec![("late.txt".into(), b"late".to_vec())]).await;
    let expected = contents(&input, "src", "").await;
    let first = first_run(&output, "dst", |via| start(via, &args)).await;
    let waiting = ["--jobs", "2", "--wait-for-lease", "2m"];
    first
        .waited_for(".egress-sync-lease.json", |via| start(via, &waiting))
        .await;
    let mirror = contents(&output, "dst", "").await;
    assert_eq!(
        mirror.len(),
        expected.len(),
        "exactly the input's keys, no lease left: {:?}",
        mirror.keys().collect::<Vec<_>>()
    );
    for (key, body) in &expected {
        assert!(mirror.get(key) == Some(body), "{key}");
    }
    assert!(output.pending_uploads("dst").await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Handing days over: the output shows a day complete (its manifest beside exactly what it
// lists) or visibly not (no manifest), whatever happens.

const DAY: &str = "2024-08-01";

/// A day as a store holds it: its manifest (if any) and its objects.
type Day = (Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// The day at `server`/`bucket`.
async fn day_at(server: &S3Server, bucket: &str) -> Day {
    let mut manifest = None;
    let mut objects = Vec::new();
    for key in server.keys(bucket, &format!("{DAY}/")).await {
        let body = server.get(bucket, &key).await;
        if key.ends_with("_manifest.json") {
            manifest = Some(body);
        } else {
            objects.push((key, body));
        }
    }
    (manifest, objects)
}

/// Write a version of the day at the input as egress-dump does: manifest out first, then
/// the objects, then the manifest; returns the manifest's bytes.
async fn dump_day(input: &S3Server, a: &[u8], b: &[u8]) -> Vec<u8> {
    let manifest = manifest_json(DAY, &[("a.csv.gz", a), ("b.csv.gz", b)]);
    input.delete("src", &format!("{DAY}/_manifest.json")).await;
    fixtures::put_multipart(input, "src", &format!("{DAY}/a.csv.gz"), a, 5 * 1024 * 1024).await;
    input
        .put("src", &format!("{DAY}/b.csv.gz"), b.to_vec())
        .await;
    input
        .put("src", &format!("{DAY}/_manifest.json"), manifest.clone())
        .await;
    manifest
}

/// Which requests a [`holding_proxy`] holds.
type Held = fn(&egress_testkit::proxy::Seen) -> bool;

/// A proxy in front of `server` that holds, for good, every request `hold` matches.
fn holding_proxy(server: &S3Server, hold: Held) -> Proxy {
    let hook: Hook = Arc::new(move |seen| {
        let held = hold(seen);
        Box::pin(async move {
            if held {
                std::future::pending::<()>().await;
            }
        })
    });
    Proxy::start(&server.endpoint, Some(hook), None)
}

#[tokio::test]
async fn a_redumped_day_is_handed_over_whole_whenever_the_mirror_stops() {
    let (input, output) = src_and_dst(S3Kind::Moto, S3Kind::Moto).await;
    let gated = ["--require-manifest"];
    let (a1, b1) = (data(1, 6 * 1024 * 1024), data(2, 3000));
    let m1 = dump_day(&input, &a1, &b1).await;
    sync_ok(&input, &output, &gated);
    assert_eq!(day_at(&output, "dst").await.0, Some(m1.clone()));

    // A re-dump that stopped halfway at the input (manifest gone, one object new): the
    // mirror leaves the output's complete day as it is.
    let (a2, b2) = (data(3, 7 * 1024 * 1024), data(4, 3500));
    input.delete("src", &format!("{DAY}/_manifest.json")).await;
    input
        .put("src", &format!("{DAY}/b.csv.gz"), b2.clone())
        .await;
    let before = day_at(&output, "dst").await;
    sync_ok(&input, &output, &gated);
    assert!(
        day_at(&output, "dst").await == before,
        "the old day stays whole"
    );
    let m2 = dump_day(&input, &a2, &b2).await;

    // The mirror stopped at each step of the hand-off: before the old manifest leaves,
    // with the day half copied, before the new manifest is written.
    let steps: [(&str, Held); 3] = [
        ("withdraw", |s| {
            s.method == "DELETE" && s.target.contains("_manifest.json")
        }),
        ("copy", |s| {
            s.method == "POST" && s.target.contains("a.csv.gz") && s.target.contains("uploadId=")
        }),
        ("publish", |s| {
            s.method == "PUT" && s.target.contains("_manifest.json")
        }),
    ];
    for (step, hold) in steps {
        let proxy = holding_proxy(&output, hold);
        let via = output.s3().via(&proxy.endpoint);
        let mut child = command(&input, "src", &via, "dst", &gated)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        proxy.wait_for(step, hold);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let whole_or_withdrawn = |(manifest, objects): Day| {
            let old = vec![
                (format!("{DAY}/a.csv.gz"), a1.clone()),
                (format!("{DAY}/b.csv.gz"), b1.clone()),
            ];
            manifest.is_none() || (manifest.as_deref() == Some(&m1[..]) && objects == old)
        };
        let stopped = day_at(&output, "dst").await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            whole_or_withdrawn(stopped),
            "{step}, while stopped: a manifest beside other objects"
        );
        let killed = day_at(&output, "dst").await;
        assert!(
            whole_or_withdrawn(killed),
            "{step}, after the kill: a manifest beside other objects"
        );
        let requests = proxy.requests();
        // Withdrawn: deleted, or found absent (HEAD) because an earlier step withdrew it.
        let withdrawn = requests.iter().position(|r| {
            matches!(r.method.as_str(), "DELETE" | "HEAD") && r.target.contains("_manifest.json")
        });
        // (A streamed PUT may start earlier: its last bytes wait for the withdrawal. A
        // CompleteMultipartUpload has no body to hold back: it is sent only after.)
        let first_commit = requests
            .iter()
            .position(|r| r.method == "POST" && r.target.contains("uploadId="));
        if let Some(commit) = first_commit {
            assert!(
                withdrawn.is_some_and(|w| w < commit),
                "{step}: the manifest left before the first object changed: {requests:?}"
            );
        }
    }
    sync_ok(&input, &output, &gated);
    let (manifest, objects) = day_at(&output, "dst").await;
    assert_eq!(manifest, Some(m2), "the new day's manifest");
    assert!(
        objects
            == vec![
                (format!("{DAY}/a.csv.gz"), a2),
                (format!("{DAY}/b.csv.gz"), b2)
            ],
        "its objects"
    );
    assert!(output.pending_uploads("dst").await.is_empty());
    let keys = output.keys("dst", "").await;
    assert_none(&keys, "no lease or mark left", |k| k.starts_with(".egress"));
}

#[tokio::test]
async fn the_manifest_written_is_the_version_its_objects_were_checked_against() {
    let (input, output) = src_and_dst(S3Kind::Moto, S3Kind::Moto).await;
    let (a, b) = (data(5, 4000), data(6, 5000));
    dump_day(&input, &a, &b).await;
    // The day is dumped again while the mirror copies it: its manifest changes under it.
    let client = input.client();
    let a_now = a.clone();
    let hook: Hook = Arc::new(move |seen| {
        let (client, hit, a) = (
            client.clone(),
            seen.method == "GET" && seen.target.contains("b.csv.gz"),
            a_now.clone(),
        );
        Box::pin(async move {
            if hit {
                // As egress-dump does: the manifest out, the object rewritten, a new manifest.
                let again = manifest_json(DAY, &[("a.csv.gz", &a), ("b.csv.gz", b"bytes")]);
                let key = format!("{DAY}/_manifest.json");
                let _ = client.delete_object().bucket("src").key(&key).send().await;
                let object = client
                    .put_object()
                    .bucket("src")
                    .key(format!("{DAY}/b.csv.gz"));
                let _ = object.body(b"bytes".to_vec().into()).send().await;
                let _ = client
                    .put_object()
                    .bucket("src")
                    .key(&key)
                    .body(again.into())
                    .send()
                    .await;
            }
        })
    });
    let proxy = Proxy::start(&input.endpoint, Some(hook), None);
    let via = input.s3().via(&proxy.endpoint);
    let out = sync(&via, "src", &output, "dst", &["--require-manifest"]);
    assert_exit(&out, 0);
    assert_stdout_has(&out, &format!("day `input/src/{DAY}` left without its manifest at the output: the input's manifest changed during this run"));
    assert!(last_line(&out).contains("held=1"), "{}", last_line(&out));
    // b was read after the re-dump began: it no longer matches the manifest read first;
    // not a failure of this run, as the day is being written again.
    assert!(last_line(&out).contains("failed=0"), "{}", last_line(&out));
    let (manifest, objects) = day_at(&output, "dst").await;
    assert_eq!(manifest, None, "no manifest vouches for what was copied");
    assert_eq!(objects.len(), 1, "only a was copied: {objects:?}");
    // The next run hands the new day over whole.
    sync_ok(&input, &output, &["--require-manifest"]);
    let (manifest, objects) = day_at(&output, "dst").await;
    assert_eq!(
        manifest,
        Some(manifest_json(
            DAY,
            &[("a.csv.gz", &a), ("b.csv.gz", b"bytes")]
        ))
    );
    assert_eq!(objects.len(), 2);
}

#[tokio::test]
async fn a_gated_dry_run_writes_nothing() {
    let (input, output) = src_and_dst(S3Kind::Moto, S3Kind::Moto).await;
    dump_day(&input, &data(14, 4000), &data(15, 6 * 1024 * 1024)).await;
    let out = sync_ok(&input, &output, &["--require-manifest", "--dry-run"]);
    assert_stdout_has(&out, "the day's manifest, last");
    assert!(output.keys("dst", "").await.is_empty(), "nothing written");
}

#[tokio::test]
async fn objects_a_day_does_not_list_stay_out_of_it_and_verify_names_them() {
    let (input, output) = src_and_dst(S3Kind::Moto, S3Kind::S3sFs).await;
    let (a, b) = (data(7, 4000), data(8, 5000));
    dump_day(&input, &a, &b).await;
    input
        .put("src", &format!("{DAY}/dropped_table.csv.gz"), data(9, 100))
        .await;
    let out = sync_ok(&input, &output, &["--require-manifest"]);
    assert_stdout_has(&out, &format!("`input/src/{DAY}/dropped_table.csv.gz` is not listed in its day's manifest: not copied into the day"));
    assert!(
        last_line(&out).contains("unlisted=1"),
        "{}",
        last_line(&out)
    );
    let keys = output.keys("dst", "").await;
    assert!(
        !keys.iter().any(|k| k.contains("dropped_table")),
        "{keys:?}"
    );
    // Put there by someone else: --verify names it, the listed objects still check out.
    output
        .put("dst", &format!("{DAY}/stray.csv"), b"x".to_vec())
        .await;
    let out = sync_ok(&input, &output, &["--verify"]);
    assert_stdout_has(
        &out,
        &format!("output {DAY}: UNLISTED {DAY}/stray.csv (not in the manifest)"),
    );
    assert_stdout_has(&out, "1 more object(s) not in the manifest");
}

#[tokio::test]
async fn filters_and_expiry_never_turn_a_day_into_a_failure() {
    let (input, output) = src_and_dst(S3Kind::Moto, S3Kind::Moto).await;
    let (a, b) = (data(10, 4000), data(11, 5000));
    dump_day(&input, &a, &b).await;
    let gated = |extra: &[&'static str]| {
        let mut args = vec!["--require-manifest"];
        args.extend_from_slice(extra);
        args
    };
    // A table excluded: its day is copied without its manifest, with a warning, every run.
    for _ in 0..2 {
        let out = sync_ok(&input, &output, &gated(&["--exclude", "*/b.csv.gz"]));
        assert!(
            stdout(&out).contains("WARN")
                && stdout(&out).contains(
                    "--include/--exclude leave out 1 object it lists (2024-08-01/b.csv.gz)"
                ),
            "{}",
            text(&out)
        );
        assert_eq!(day_at(&output, "dst").await.0, None);
    }
    // Manifests left out by --include: the objects, and a warning that the day has none;
    // a day whose manifest is unusable is a warning too (and a failure when its manifest's
    // turn comes, once the filter lets it in).
    input
        .put("src", "2024-08-02/_manifest.json", b"{".to_vec())
        .await;
    input.put("src", "2024-08-02/x.csv.gz", b"x".to_vec()).await;
    let out = sync_ok(&input, &output, &gated(&["--include", "*.csv.gz"]));
    assert_stdout_has(&out, "its _manifest.json is outside --include/--exclude");
    assert_stdout_has(
        &out,
        "WARN folder `input/src/2024-08-02` has an unusable _manifest.json",
    );
    assert_eq!(day_at(&output, "dst").await.0, None);
    // Mirrored whole, then the lifecycle rule expires one of its objects at the input.
    sync_ok(&input, &output, &gated(&["--include", "2024-08-01/*"]));
    assert!(day_at(&output, "dst").await.0.is_some());
    input.delete("src", &format!("{DAY}/a.csv.gz")).await;
    for _ in 0..2 {
        // --remove leaves an object the day's manifest still lists.
        let out = sync_ok(
            &input,
            &output,
            &gated(&["--include", "2024-08-01/*", "--remove", "--max-delete", "5"]),
        );
        assert!(
            stdout(&out).contains(
                "was mirrored already; the input has since lost 1 of its objects (expired?)"
            ),
            "{}",
            text(&out)
        );
        let (manifest, objects) = day_at(&output, "dst").await;
        assert!(
            manifest.is_some() && objects.len() == 2,
            "the day stays whole at the output"
        );
    }
}

#[tokio::test]
async fn uploads_the_sync_did_not_start_are_left_alone() {
    let (input, output) = src_and_dst(S3Kind::S3sFs, S3Kind::Moto).await;
    input.put("src", "loose/x.bin", data(12, 1000)).await;
    let theirs = output
        .s3()
        .start_upload("dst", "another-app/export.bin")
        .await;
    let out = sync_ok(&input, &output, &[]);
    assert_stdout_has(&out, "left 1 unfinished upload(s) under the output alone: no egress-sync run marked them as its own");
    assert_stdout_has(&out, "another-app/export.bin");
    assert_eq!(
        output.pending_uploads("dst").await,
        ["another-app/export.bin"],
        "upload {theirs} is still there"
    );
}

#[tokio::test]
async fn an_unreadable_mirror_lease_is_one_line() {
    let (input, output) = src_and_dst(S3Kind::S3sFs, S3Kind::Moto).await;
    input.put("src", "loose/x.bin", data(13, 100)).await;
    output
        .put(
            "dst",
            ".egress-sync-lease.json",
            b"{\"version\": 2}".to_vec(),
        )
        .await;
    let started = std::time::Instant::now();
    let out = sync(&input, "src", &output, "dst", &["--lease-ttl", "4s"]);
    assert_exit(&out, 3);
    let line = stderr(&out);
    assert!(
        line.contains("a lease object this version cannot read"),
        "{line}"
    );
    assert_eq!(line.trim().lines().count(), 1, "{line}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let args = ["--lease-ttl", "4s", "--wait-for-lease", "30s"];
    let out = sync_ok(&input, &output, &args);
    assert_stdout_has(&out, "took over the lease of a run that is gone");
    assert_eq!(output.get("dst", "loose/x.bin").await, data(13, 100));
}

/// Leases on each store: renewed (If-Match), kept from a second run, taken over (If-Match)
/// once a dead run's lapses, released. Ceph RGW 16 refuses a quoted ETag in If-Match on
/// PUT (measured), so a renewal there is what this checks above all.
#[tokio::test]
async fn leases_renew_keep_out_and_lapse_on_ceph_moto_and_s3s_fs() {
    use egress_common::day::lease::{self, Busy, Holder, Options};
    let ceph = CephRgw::start();
    let moto = S3Server::start(S3Kind::Moto);
    let s3s = S3Server::start(S3Kind::S3sFs);
    let stores = [
        ("ceph", ceph.s3()),
        ("moto", moto.s3()),
        ("s3s-fs", s3s.s3()),
    ];
    let options = Options {
        wait: std::time::Duration::ZERO,
        ttl: std::time::Duration::from_secs(3),
    };
    for (name, endpoint) in stores {
        endpoint.create_bucket("leases").await;
        let store = endpoint.store("leases", "").await;
        let key = "d/.egress-lease.json";
        let first = lease::acquire(&store, key, "egress-dump", options)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        first
            .check()
            .await
            .unwrap_or_else(|e| panic!("{name}: renewed: {e}"));
        let second = lease::acquire(&store, key, "egress-dump", options).await;
        let busy = second
            .err()
            .unwrap_or_else(|| panic!("{name}: a second run is kept out"));
        assert!(busy.downcast_ref::<Busy>().is_some(), "{name}: {busy}");
        first.release().await;
        assert!(
            endpoint.keys("leases", "d/").await.is_empty(),
            "{name}: released"
        );
        // A run on another host that stopped renewing: its lease lapses, then is taken over.
        let dead = Holder {
            run_id: "dead".into(),
            program: "egress-dump".into(),
            host: "another-pod".into(),
            pid: 1,
            since: 0,
            expires: 0,
            ttl_seconds: Some(3),
        };
        endpoint
            .put(
                "leases",
                "e/.egress-lease.json",
                serde_json::to_vec(&dead).unwrap(),
            )
            .await;
        let early = lease::acquire(&store, "e/.egress-lease.json", "egress-dump", options).await;
        assert!(early.is_err(), "{name}: live until it lapses");
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        let took = lease::acquire(&store, "e/.egress-lease.json", "egress-dump", options)
            .await
            .unwrap_or_else(|e| panic!("{name}: taken over: {e}"));
        took.check().await.unwrap();
        took.release().await;
        assert!(
            endpoint.keys("leases", "").await.is_empty(),
            "{name}: nothing left"
        );
    }
}
