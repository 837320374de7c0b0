//! Support for the `continuo` binary that the library has no use for.

pub mod outputs;
