//! The manager's clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::model::now_ms;

/// Wall-clock milliseconds that follow tokio's clock: the system time at
/// start plus the monotonic time since. Immune to wall-clock jumps, and it
/// moves with `tokio::time::advance` in tests, so lease expiry can be tested
/// with paused time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall_at_start_ms: u64,
    start: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            wall_at_start_ms: now_ms(),
            start: Instant::now(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.wall_at_start_ms
            .saturating_add(duration_ms(self.start.elapsed()))
    }
}

/// Whole milliseconds of a duration, saturating.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
