//! Flag groups shared by several subcommands (ripgrep's `flags/` idea): which model on which
//! device, and where a PostgreSQL index lives. Defaults come from the library `Default`s, so
//! `--help` and the library agree.

pub mod model;
pub mod postgres;
pub mod shard;

/// A count that must be at least 1 (a batch size, say): clap refuses 0 with the flag's name,
/// where the loaders below would otherwise stop on an assertion.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
