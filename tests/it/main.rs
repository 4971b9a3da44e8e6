//! The integration tests: one binary, a module per capability.

mod common;
mod kafka;
mod offline;
mod parity;
mod preprocess_parity;
mod prometheus;
