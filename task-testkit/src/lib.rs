//! Test tools for thread stores and the task layer built on them.
//!
//! - [`conformance`]: the backend conformance suite, one `pub async fn` per
//!   behaviour, stamped into one `#[tokio::test]` per case by
//!   [`conformance_tests!`].
//! - [`FlakyStore`]: a `ThreadStore` wrapper that injects faults from a plan,
//!   deterministically given a seed.
//! - [`broken`]: the suite's self-test by mutation: broken stores, each
//!   with one subtle defect, that the suite must catch, and a faithful
//!   pass-through that must pass it.
//! - [`proxy`]: [`FaultProxy`], a loopback TCP proxy in front of any
//!   server, with scripted faults on the wire (latency, bandwidth, blackhole,
//!   resets, cuts, dropped replies), seeded like `FlakyStore`.
//! - [`redis_server`]: a private `redis-server` on a free loopback port, that
//!   tests can kill and restart.
//! - [`redis_cluster`]: a private Redis Cluster of them: failover, slot moves.
//! - [`postgres_server`]: a private PostgreSQL cluster (`initdb`, `postgres`)
//!   on a free loopback port, that tests can stop hard, restart and inspect.

pub mod broken;
pub mod conformance;
mod flaky;
pub mod postgres_server;
pub mod proxy;
pub mod redis_cluster;
pub mod redis_server;
mod watchdog;

pub use flaky::*;
pub use proxy::FaultProxy;
