//! A real Ceph RGW starts and serves S3 to the SDK client the tests use.

use egress_testkit::CephRgw;

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
