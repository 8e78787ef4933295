//! Test tools (in progress).
