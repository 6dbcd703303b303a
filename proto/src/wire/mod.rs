//! Wire formats. Each is a checked view over bytes plus an `emit`; accessors never panic.

mod mac;

pub use mac::{MacAddr, ParseMacError};
