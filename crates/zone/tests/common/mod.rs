//! The harness shared by the zone integration tests.
// Each test binary compiles this module and uses a part of it: the rest is dead there.
#![allow(dead_code, unreachable_pub)]

#[macro_use]
pub mod softhsm;
