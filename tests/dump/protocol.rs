//! The day protocol end to end: each class of defect the simulation (tests/sim) reproduced,
//! through the binary against real servers. The simulation proves the protocol over many
//! schedules; these show each fix on PostgreSQL 15 and each store's own semantics.

use std::process::{Child, Output};

use egress_testkit::proxy::{settled_losses, Proxy};
use egress_testkit::{assert_exit, assert_exit_why, assert_text_has, text, PgServer, S3Kind};
use egress_testkit::{S3Endpoint, S3Server};

use super::{pg_and_bucket, shard, spawn, sql, Env};

const BUCKET: &str = "protocol";

/// The environment of a dump of `small` and `big` for `date` through `s3` (its address and
/// credentials), at compression level 1.
fn env_for(pg: &PgServer, s3: &S3Endpoint, date: &str) -> Env {
    let mut env = super::s3_env(pg, s3, "small big", &format!("s3://{BUCKET}/day"), date);
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

/// The day checked against its manifest as `egress-sync --verify input` does: the problems
/// (`None` when it has no manifest).
async fn verify(s3: &S3Server, date: &str) -> Option<Vec<String>> {
    super::verify_day(s3, BUCKET, "day", date).await
}

fn finished(child: Child) -> Output {
    child.wait_with_output().expect("wait")
}

#[tokio::test]
async fn lost_replies_to_the_lease_and_to_a_completion_are_settled_by_reading_back() {
    // s3s-fs: a retried conditional PUT meets 412, a retried completion meets 403.
    let (pg, s3) = pg_and_bucket(S3Kind::S3sFs, BUCKET).await;
    tables(&pg).await;
    let date = "2024-08-01";
    let parts = ["--part-size-mib", "5"];
    for (lose, settled) in settled_losses(".egress-lease.json") {
        let target = lose.target.clone();
        let proxy = Proxy::losing_replies(&s3.endpoint, lose);
        let env = env_for(&pg, &s3.s3().via(&proxy.endpoint), date);
        let out = finished(spawn(&env, &parts));
        assert_exit_why(&out, 0, &target);
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
        let s3 = S3Server::with_bucket(kind, BUCKET).await;
        let date = "2024-08-02";
        let env = env_for(&pg, &s3, date);
        let flags = ["--part-size-mib", "5", "--shard-wait", "30s"];
        // Index 1 (it dumps `big`, the larger table) runs twice at once, as an Indexed Job
        // may run it: the claim lets one pod write it, the other waits for the day.
        let pods = vec![
            shard(&env, 2, 1, &flags),
            shard(&env, 2, 1, &flags),
            shard(&env, 2, 0, &flags),
        ];
        let outs: Vec<_> = pods.into_iter().map(finished).collect();
        for out in &outs {
            assert_exit_why(out, 0, &format!("{kind:?}"));
        }
        let said = |what: &str| outs[..2].iter().filter(|o| text(o).contains(what)).count();
        let waited = said("holds this index for this plan: this one writes nothing");
        assert_eq!(
            (said("claimed its index"), waited),
            (1, 1),
            "{kind:?}: one pod wrote index 1, the other waited"
        );
        assert_eq!(verify(&s3, date).await, Some(Vec::new()), "{kind:?}");
        let keys = s3.keys(BUCKET, &format!("day/{date}/")).await;
        egress_testkit::assert_none(&keys, &format!("{kind:?}"), |k| k.contains(".egress-"));
    }
}

#[tokio::test]
async fn a_late_index_0_and_a_late_shard_leave_a_complete_day_alone_and_exit_0() {
    let (pg, s3) = pg_and_bucket(S3Kind::Moto, BUCKET).await;
    tables(&pg).await;
    let date = "2024-08-03";
    let env = env_for(&pg, &s3, date);
    let flags = ["--part-size-mib", "5", "--shard-wait", "4s"];
    let job: Vec<_> = (0..2).map(|i| shard(&env, 2, i, &flags)).collect();
    for out in job.into_iter().map(finished) {
        assert_exit(&out, 0);
    }
    let manifest_key = format!("day/{date}/_manifest.json");
    let manifest = s3.get(BUCKET, &manifest_key).await;
    // A late index 0 (a duplicate, a manual retry): its shards never join, so the complete
    // day is left as it is, and that is a success.
    let late = finished(shard(&env, 2, 0, &flags));
    assert_exit(&late, 0);
    assert_text_has(&late, "is complete already");
    assert!(!text(&late).contains("withdrew"), "{}", text(&late));
    // A pod of index 1 started again after the day was done: no plan to join, the day is
    // complete for its tables: nothing to do, exit 0 (not a failed Job).
    let again = finished(shard(&env, 2, 1, &flags));
    assert_exit(&again, 0);
    assert_text_has(&again, "nothing to do");
    assert_eq!(
        s3.get(BUCKET, &manifest_key).await,
        manifest,
        "the same manifest, untouched"
    );
    assert_eq!(verify(&s3, date).await, Some(Vec::new()));
    // Without a complete day, a lone index 0 still fails, naming the index that is missing.
    let lonely = finished(shard(&env_for(&pg, &s3, "2024-08-04"), 2, 0, &flags));
    assert_exit(&lonely, 1);
    for said in ["shard 1 has not joined", "the day was left as it was"] {
        assert_text_has(&lonely, said);
    }
}
