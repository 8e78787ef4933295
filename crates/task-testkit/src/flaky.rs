//! FlakyStore (in progress).
