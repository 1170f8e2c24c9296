//! A remote store's clock, as its replies tell it: every S3 reply carries a `Date` header
//! (whole seconds), and the difference to this host's clock when it arrived is kept. The
//! store's time is then this host's plus that difference, so ages of objects (their
//! `Last-Modified`, stamped by the store) are judged on the store's clock, whatever this
//! host's says.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// The store's clock relative to ours.
#[derive(Debug, Default)]
pub(super) struct StoreClock {
    /// Store time minus local time, milliseconds.
    skew_millis: AtomicI64,
    known: AtomicBool,
}

impl StoreClock {
    /// The store's time now, seconds since the epoch (ours until a reply told us better).
    pub(super) fn now(&self) -> i64 {
        let local = chrono::Utc::now().timestamp_millis();
        let skew = match self.known.load(Ordering::Relaxed) {
            true => self.skew_millis.load(Ordering::Relaxed),
            false => 0,
        };
        (local + skew).div_euclid(1000)
    }

    /// A reply said the store's time is `date` (an HTTP date).
    fn observe(&self, date: &str) {
        let Ok(stamp) = chrono::DateTime::parse_from_rfc2822(date) else {
            return;
        };
        // The header has whole seconds: the middle of that second is the best guess.
        let store = stamp.timestamp_millis() + 500;
        let local = chrono::Utc::now().timestamp_millis();
        self.skew_millis.store(store - local, Ordering::Relaxed);
        self.known.store(true, Ordering::Relaxed);
    }
}

/// The SDK interceptor that feeds a [`StoreClock`] from every reply's `Date`.
#[derive(Debug)]
pub(super) struct ClockWatch(pub Arc<StoreClock>);

impl Intercept for ClockWatch {
    fn name(&self) -> &'static str {
        "egress-store-clock"
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(date) = context.response().headers().get("date") {
            self.0.observe(date);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_clock_follows_the_replies_date() {
        let clock = StoreClock::default();
        let ours = chrono::Utc::now().timestamp();
        assert!((clock.now() - ours).abs() <= 1, "ours until told");
        let later = chrono::Utc::now() + chrono::Duration::seconds(600);
        clock.observe(&later.to_rfc2822());
        assert!(
            (clock.now() - (ours + 600)).abs() <= 2,
            "{}",
            clock.now() - ours
        );
        clock.observe("not a date");
        assert!((clock.now() - (ours + 600)).abs() <= 2);
    }
}
