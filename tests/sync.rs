//! End-to-end tests of egress-sync.
