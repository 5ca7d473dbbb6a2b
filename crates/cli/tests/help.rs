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
