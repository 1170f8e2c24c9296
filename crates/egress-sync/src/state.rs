//! The copy records kept beside the mirrored objects, so that a re-run decides from the
//! two listings alone (no HEAD per object). Each record pairs the source object's ETag
//! with the ETag its copy got; a destination object changed by anyone else no longer
//! matches and is re-examined. The same record is also stored in each copied object's
//! user metadata, from which it is rebuilt when this file is missing.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use egress_common::Failure;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::object::Record;
use crate::store::{ObjectMeta, Store, STATE_KEY};

const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// Which input these records describe; records for another input are ignored.
    source: String,
    records: BTreeMap<String, Record>,
}

/// Load the records for `source_id`; a missing, foreign or unreadable file yields none.
pub async fn load(dest: &Store, source_id: &str) -> Result<HashMap<String, Record>, Failure> {
    let Some(bytes) = dest.read_optional(STATE_KEY).await? else {
        return Ok(HashMap::new());
    };
    match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(state) if state.version == VERSION && state.source == source_id => {
            Ok(state.records.into_iter().collect())
        }
        Ok(_) => {
            tracing::info!(
                "copy records belong to another input or version; deciding from metadata"
            );
            Ok(HashMap::new())
        }
        Err(e) => {
            tracing::warn!(error = %e, "copy records unreadable; deciding from metadata");
            Ok(HashMap::new())
        }
    }
}

/// Save `records` for `source_id`.
pub async fn save(
    dest: &Store,
    source_id: &str,
    records: HashMap<String, Record>,
) -> Result<(), Failure> {
    let state = StateFile {
        version: VERSION,
        source: source_id.to_string(),
        records: records.into_iter().collect(),
    };
    let body = serde_json::to_vec(&state)
        .map_err(|e| Failure::runtime(anyhow::anyhow!("encoding copy records: {e}")))?;
    let md5 = Md5::digest(&body);
    let meta = ObjectMeta {
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    dest.put(STATE_KEY, Bytes::from(body), &meta, &md5).await?;
    Ok(())
}
