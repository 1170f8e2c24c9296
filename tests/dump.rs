//! End-to-end tests of the egress-dump binary against real PostgreSQL and S3 servers.
