//! Every subcommand builds its argument parser (clap checks for conflicting flags only when a
//! command is parsed) and prints help.

use std::process::Command;

#[test]
fn every_subcommand_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["data", "check"],
        &["data", "import", "fashion-mnist"],
        &["train"],
        &["export"],
        &["embed"],
        &["rank"],
        &["eval"],
        &["weights", "inspect"],
        &["models"],
        &["bench", "preprocess"],
        &["bench", "embed"],
        &["bench", "topk"],
    ];
    for cmd in commands {
        let out = Command::new(env!("CARGO_BIN_EXE_visual-search"))
            .args(*cmd)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{cmd:?} --help failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("Usage"), "{cmd:?}: {text}");
    }
}
