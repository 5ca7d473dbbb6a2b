//! Flag groups shared by several subcommands (ripgrep's `flags/` idea): which model on which
//! device, and where a PostgreSQL index lives. Defaults come from the library `Default`s, so
//! `--help` and the library agree.

pub mod model;
pub mod postgres;
pub mod shard;
