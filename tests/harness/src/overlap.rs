//! Two runs of one program writing one place at once: the first is started through a proxy
//! that holds its uploads, and the second meets it while an upload of the first is pending.
//! The second finds the first's lease and stops (exit 3), or waits for it; either way the
//! first's upload stays pending until the test lets it through, and nobody aborts an upload.

use std::process::{Child, Output};
use std::sync::Arc;
use std::time::Duration;

use crate::fixtures::{gated_proxy, Gate};
use crate::proxy::Proxy;
use crate::{assert_exit, assert_stderr_has, assert_stdout_has, stdout, text};
use crate::{S3Endpoint, S3Server};

/// The first of two overlapping runs: started, with an upload pending and held.
pub struct FirstRun<'a> {
    server: &'a S3Server,
    bucket: &'a str,
    child: Child,
    gate: Arc<Gate>,
    pending: Vec<(String, String)>,
    _proxy: Proxy,
}

/// Start the first run (`start` is given the endpoint that reaches `server` through a
/// gated proxy) and wait until it has an upload pending in `bucket` (the server must list
/// pending uploads: moto).
pub async fn first_run<'a>(
    server: &'a S3Server,
    bucket: &'a str,
    start: impl FnOnce(&S3Endpoint) -> Child,
) -> FirstRun<'a> {
    let (proxy, gate) = gated_proxy(server);
    let mut child = start(&server.s3().via(&proxy.endpoint));
    let pending = server.wait_for_pending_upload(bucket, &mut child).await;
    FirstRun {
        server,
        bucket,
        child,
        gate,
        pending,
        _proxy: proxy,
    }
}

impl FirstRun<'_> {
    /// `second`, run to its end meanwhile, was kept out: exit 3, its stderr saying
    /// `held` (the lease it found). The first's upload is still pending; let through, the
    /// first ends with exit 0, and neither run aborted an upload.
    pub async fn kept_out(self, second: &Output, held: &str) -> Output {
        assert_exit(second, 3);
        assert_stderr_has(second, held);
        self.server
            .assert_still_pending(self.bucket, &self.pending)
            .await;
        let first = self.let_through();
        assert_exit(&first, 0);
        assert_none_aborted(&[&first, second]);
        first
    }

    /// The second run, started by `start` with the endpoint that reaches the server through
    /// a proxy of its own, reads the lease (a request whose target holds `lease`) twice:
    /// it found the lease live and waits. The first's upload is still pending then; let
    /// through, both runs end with exit 0, the second having said it waited, and neither
    /// aborted an upload. Returns the first's output and the second's.
    pub async fn waited_for(
        self,
        lease: &str,
        start: impl FnOnce(&S3Endpoint) -> Child,
    ) -> (Output, Output) {
        let watch = Proxy::start(&self.server.endpoint, None, None);
        let mut second = start(&self.server.s3().via(&watch.endpoint));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while watch.count("GET", lease) < 2 {
            let ended = second.try_wait().unwrap();
            assert!(ended.is_none(), "the second run ended before it waited");
            assert!(
                std::time::Instant::now() < deadline,
                "the second run never looked at the lease twice"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.server
            .assert_still_pending(self.bucket, &self.pending)
            .await;
        let first = self.let_through();
        let second = crate::wait_for_exit(second, Duration::from_secs(180));
        assert_exit(&first, 0);
        assert_exit(&second, 0);
        assert_stdout_has(&second, "waiting for another run's lease");
        assert_none_aborted(&[&first, &second]);
        (first, second)
    }

    /// Let the first run's uploads through, and wait for its end.
    fn let_through(self) -> Output {
        self.gate.set(true);
        self.child.wait_with_output().unwrap()
    }
}

/// Assert that none of `outs` says it aborted an upload.
pub fn assert_none_aborted(outs: &[&Output]) {
    for out in outs {
        assert!(
            !stdout(out).contains("aborted"),
            "no upload was aborted: {}",
            text(out)
        );
    }
}
