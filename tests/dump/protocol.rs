//! The day protocol end to end: each class of defect the simulation (tests/sim) reproduced,
//! through the binary against real servers. The simulation proves the protocol over many
//! schedules; these show each fix on PostgreSQL 15 and each store's own semantics.

use std::process::Child;

use egress_testkit::proxy::{LoseReply, Proxy};
use egress_testkit::{text, PgServer, S3Kind, S3Server};

use super::{spawn, sql};

const BUCKET: &str = "protocol";

fn env_for(pg: &PgServer, s3: &[(String, String)], date: &str) -> Vec<(String, String)> {
    let mut env = pg.env();
    env.extend(s3.iter().cloned());
    env.push(("TABLES".into(), "small big".into()));
    env.push(("S3_OUTPUT".into(), format!("s3://{BUCKET}/day")));
    env.push(("DUMP_DATE".into(), date.into()));
    env.push(("COMPRESSION_LEVEL".into(), "1".into()));
    env
}

/// `small`, and `big`: about 8 MiB of gzip at level 1 (two parts of 5 MiB).
async fn tables(pg: &PgServer) {
    sql(
        pg,
        "CREATE TABLE small AS SELECT i AS id FROM generate_series(1, 100) i; \
         CREATE TABLE big AS SELECT i AS id, md5(i::text) || md5((i*3)::text) || md5((i*7)::text) AS pad \
         FROM generate_series(1, 150000) i;",
    )
    .await;
}

/// Index `index` of `count`, started now with `extra` flags.
fn pod(env: &[(String, String)], count: u64, index: u64, extra: &[&str]) -> Child {
    let mut env = env.to_vec();
    env.push(("SHARDS".into(), count.to_string()));
    env.push(("JOB_COMPLETION_INDEX".into(), index.to_string()));
    spawn(&env, extra)
}

/// The day checked against its manifest as `egress-sync --verify input` does: the problems
/// (`None` when it has no manifest).
async fn verify(s3: &S3Server, date: &str) -> Option<Vec<String>> {
    let store = s3.s3().store(BUCKET, "day").await;
    let checked = egress_sync::verify::verify(&store, "input").await.unwrap();
    checked
        .folders
        .into_iter()
        .find(|(f, _)| f == date)
        .map(|(_, problems)| problems)
}

fn finished(child: Child) -> std::process::Output {
    child.wait_with_output().expect("wait")
}

#[tokio::test]
async fn lost_replies_to_the_lease_and_to_a_completion_are_settled_by_reading_back() {
    let pg = PgServer::start();
    tables(&pg).await;
    // s3s-fs: a retried conditional PUT meets 412, a retried completion meets 403.
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket(BUCKET).await;
    let date = "2024-08-01";
    let parts = ["--part-size-mib", "5"];
    for (target, method, settled) in [
        (
            ".egress-lease.json",
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
        let proxy = Proxy::losing_replies(&s3.endpoint, lose);
        let env = env_for(&pg, &s3.s3().via(&proxy.endpoint).env(), date);
        let out = finished(spawn(&env, &parts));
        assert_eq!(out.status.code(), Some(0), "{target}: {}", text(&out));
        assert_eq!(proxy.edited(), 1, "{target}: the reply was lost once");
        assert!(text(&out).contains(settled), "{target}: {}", text(&out));
        assert_eq!(
            verify(&s3, date).await,
            Some(Vec::new()),
            "{target}: the day is whole"
        );
    }
}

#[tokio::test]
async fn two_pods_of_one_index_write_its_objects_once_and_the_day_is_true() {
    let pg = PgServer::start();
    tables(&pg).await;
    for kind in [S3Kind::Moto, S3Kind::S3sFs] {
        let s3 = S3Server::start(kind);
        s3.create_bucket(BUCKET).await;
        let date = "2024-08-02";
        let env = env_for(&pg, &s3.env(), date);
        let flags = ["--part-size-mib", "5", "--shard-wait", "30s"];
        // Index 1 (it dumps `big`, the larger table) runs twice at once, as an Indexed Job
        // may run it: the claim lets one pod write it, the other waits for the day.
        let pods = vec![
            pod(&env, 2, 1, &flags),
            pod(&env, 2, 1, &flags),
            pod(&env, 2, 0, &flags),
        ];
        let outs: Vec<_> = pods.into_iter().map(finished).collect();
        for out in &outs {
            assert_eq!(out.status.code(), Some(0), "{kind:?}: {}", text(out));
        }
        let claimed = outs[..2]
            .iter()
            .filter(|o| text(o).contains("claimed its index"))
            .count();
        let waited = outs[..2]
            .iter()
            .filter(|o| text(o).contains("holds this index for this plan: this one writes nothing"))
            .count();
        assert_eq!(
            (claimed, waited),
            (1, 1),
            "{kind:?}: one pod wrote index 1, the other waited"
        );
        assert_eq!(verify(&s3, date).await, Some(Vec::new()), "{kind:?}");
        let keys = s3.keys(BUCKET, &format!("day/{date}/")).await;
        assert!(
            !keys.iter().any(|k| k.contains(".egress-")),
            "{kind:?}: {keys:?}"
        );
    }
}

#[tokio::test]
async fn a_late_index_0_and_a_late_shard_leave_a_complete_day_alone_and_exit_0() {
    let pg = PgServer::start();
    tables(&pg).await;
    let s3 = S3Server::start(S3Kind::Moto);
    s3.create_bucket(BUCKET).await;
    let date = "2024-08-03";
    let env = env_for(&pg, &s3.env(), date);
    let flags = ["--part-size-mib", "5", "--shard-wait", "4s"];
    let job: Vec<_> = (0..2).map(|i| pod(&env, 2, i, &flags)).collect();
    for out in job.into_iter().map(finished) {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let manifest_key = format!("day/{date}/_manifest.json");
    let manifest = s3.get(BUCKET, &manifest_key).await;
    // A late index 0 (a duplicate, a manual retry): its shards never join, so the complete
    // day is left as it is, and that is a success.
    let late = finished(pod(&env, 2, 0, &flags));
    assert_eq!(late.status.code(), Some(0), "{}", text(&late));
    assert!(
        text(&late).contains("is complete already"),
        "{}",
        text(&late)
    );
    assert!(!text(&late).contains("withdrew"), "{}", text(&late));
    // A pod of index 1 started again after the day was done: no plan to join, the day is
    // complete for its tables: nothing to do, exit 0 (not a failed Job).
    let again = finished(pod(&env, 2, 1, &flags));
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(text(&again).contains("nothing to do"), "{}", text(&again));
    assert_eq!(
        s3.get(BUCKET, &manifest_key).await,
        manifest,
        "the same manifest, untouched"
    );
    assert_eq!(verify(&s3, date).await, Some(Vec::new()));
    // Without a complete day, a lone index 0 still fails, naming the index that is missing.
    let lonely = finished(pod(&env_for(&pg, &s3.env(), "2024-08-04"), 2, 0, &flags));
    assert_eq!(lonely.status.code(), Some(1), "{}", text(&lonely));
    assert!(
        text(&lonely).contains("shard 1 has not joined"),
        "{}",
        text(&lonely)
    );
    assert!(
        text(&lonely).contains("the day was left as it was"),
        "{}",
        text(&lonely)
    );
}
