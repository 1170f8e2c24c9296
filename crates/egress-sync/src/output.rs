//! What every write into the output asks first: the lease (a run that lost it writes
//! nothing more), then the hand-off (a day's manifest leaves before the day changes, see
//! [`egress_common::day::handoff`]), and what an upload's start and end mean (its mark as
//! this run's, see [`crate::uploads`]).

use std::sync::Arc;

use async_trait::async_trait;
use egress_common::day::handoff::Withdrawals;
use egress_store::{Guard, StoreError};

use crate::uploads::Marks;

/// The guard of every write into the output.
#[derive(Debug)]
pub struct OutputGuard {
    lease: Arc<dyn Guard>,
    withdrawals: Arc<Withdrawals>,
    marks: Marks,
}

impl OutputGuard {
    /// The guard of a run holding `lease`, withdrawing with `withdrawals`, marking with
    /// `marks`.
    pub fn new(lease: Arc<dyn Guard>, withdrawals: Arc<Withdrawals>, marks: Marks) -> Self {
        OutputGuard {
            lease,
            withdrawals,
            marks,
        }
    }
}

#[async_trait]
impl Guard for OutputGuard {
    async fn before_change(&self, key: &str) -> Result<(), StoreError> {
        self.lease.before_change(key).await?;
        self.withdrawals.before_change(key).await?;
        // The withdrawal may have waited for another writer's: ask the lease again.
        self.lease.before_change(key).await
    }

    async fn before_upload(&self, key: &str) -> Result<(), StoreError> {
        self.lease.before_upload(key).await?;
        self.marks.write(key).await
    }

    async fn upload_ended(&self, key: &str, _id: &str) {
        self.marks.remove(key).await;
    }
}
