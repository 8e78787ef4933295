//! A private redis-server harness (in progress).
