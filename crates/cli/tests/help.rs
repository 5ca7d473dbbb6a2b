//! Every subcommand builds its argument parser (clap checks for conflicting flags only when a
//! command is parsed) and prints help. The subcommands are discovered from the help itself, so
//! a new one is covered without touching this test.

use std::process::Command;

fn help(path: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_visual-search"))
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{path:?} --help failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Usage"), "{path:?}: {text}");
    text
}

/// The subcommand names listed under `Commands:`.
fn subcommands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|name| name != "help")
        .collect()
}

#[test]
fn every_subcommand_has_help() {
    let mut pending: Vec<Vec<String>> = vec![vec![]];
    let mut seen = Vec::new();
    while let Some(path) = pending.pop() {
        let text = help(&path);
        for sub in subcommands(&text) {
            let mut next = path.clone();
            next.push(sub);
            pending.push(next);
        }
        seen.push(path.join(" "));
    }
    for expected in [
        "bench rank",
        "bench embed",
        "export",
        "index build",
        "mine features",
        "serve",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "`{expected}` was not reached; saw {seen:?}"
        );
    }
    assert!(
        seen.len() > 25,
        "only {} commands found: {seen:?}",
        seen.len()
    );
}

/// A command whose reader went away (`visual-search models | head -0`) ends quietly by
/// SIGPIPE, as C tools do, instead of panicking with "failed printing to stdout".
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_visual-search"))
        .arg("models")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // 13: SIGPIPE on Linux.
    assert_eq!(out.status.signal(), Some(13), "{:?}", out.status);
}
