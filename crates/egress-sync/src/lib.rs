//! egress-sync: mirror objects between S3-compatible stores.
