//! Test tools for thread stores and the task layer built on them.
//!
//! - [`conformance`]: the backend conformance suite, one `pub async fn` per
//!   behaviour, stamped into one `#[tokio::test]` per case by
//!   [`conformance_tests!`].
//! - [`FlakyStore`]: a `ThreadStore` wrapper that injects faults from a plan,
//!   deterministically given a seed.
//! - [`broken`]: deliberately broken stores, to show that the suite catches
//!   what it claims to.
//! - [`redis_server`]: a private `redis-server` on a free loopback port, that
//!   tests can kill and restart.
//! - [`postgres_server`]: a private PostgreSQL cluster (`initdb`, `postgres`)
//!   on a free loopback port, that tests can stop hard, restart and inspect.

pub mod broken;
pub mod conformance;
mod flaky;
pub mod postgres_server;
pub mod redis_server;
mod watchdog;

pub use flaky::*;
