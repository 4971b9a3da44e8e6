//! The integration tests: one binary, a module per capability.

mod common;
mod offline;
