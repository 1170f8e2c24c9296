//! The harness's own parts work: a real Ceph RGW starts and serves S3 to the SDK client the
//! tests use, and the fault-injecting proxy forwards requests intact, records them, and
//! flips a byte when asked.

use egress_testkit::proxy::{Corrupt, Proxy};
use egress_testkit::{CephRgw, S3Kind, S3Server};

#[tokio::test]
async fn rgw_put_get_roundtrip() {
    let rgw = CephRgw::start();
    rgw.create_bucket("smoke").await;
    let body: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    rgw.client()
        .put_object()
        .bucket("smoke")
        .key("dir/object.bin")
        .body(body.clone().into())
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "put: {}\n{}",
                aws_sdk_s3::error::DisplayErrorContext(e),
                rgw.log_tail()
            )
        });
    assert_eq!(
        rgw.keys("smoke", "dir/").await,
        vec!["dir/object.bin".to_string()]
    );
    assert_eq!(rgw.get("smoke", "dir/object.bin").await, body);
    assert!(rgw.pending_uploads("smoke").await.is_empty());
}

#[tokio::test]
async fn forwards_records_and_damages_on_request() {
    let server = S3Server::start(S3Kind::S3sFs);
    server.create_bucket("bkt").await;
    let proxy = Proxy::start(&server.endpoint, None, None);
    let via = server.s3().via(&proxy.endpoint);
    via.put("bkt", "k", vec![7u8; 100_000]).await;
    assert_eq!(via.get("bkt", "k").await, vec![7u8; 100_000]);
    assert_eq!(via.keys("bkt", "").await, ["k"]);
    let methods: Vec<String> = proxy.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["PUT", "GET", "GET"]);

    let damage = Corrupt {
        method: "PUT".into(),
        min_len: 1000,
        offset: 10,
    };
    let proxy = Proxy::start(&server.endpoint, None, Some(damage));
    let via = server.s3().via(&proxy.endpoint);
    via.put("bkt", "k2", vec![0u8; 5000]).await;
    assert!(proxy.corrupted());
    // The server refused the damaged body (its SHA-256 is signed); the SDK sent it again.
    let puts = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(puts, 2, "{:?}", proxy.requests());
    assert_eq!(server.get("bkt", "k2").await, vec![0u8; 5000]);
}
