//! The integration tests: one binary, a module per capability.

mod common;
mod explain;
mod kafka;
mod offline;
mod parity;
mod preprocess_parity;
mod prometheus;
