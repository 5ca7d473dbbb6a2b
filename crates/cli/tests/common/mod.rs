//! Helpers shared by the CLI's end-to-end tests: running the built binary.

use std::process::Command;

/// The `visual-search` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_visual-search"))
}

/// Runs it and returns stdout + stderr, failing the test (with that text) on a non-zero exit.
pub fn run_ok(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}\n{text}");
    text
}
