//! Task layer (in progress).
