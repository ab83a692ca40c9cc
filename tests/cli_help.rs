//! The command line explains itself: every option of every command has a description, and
//! the completions and man pages generated from it cover every command.

use std::process::Command;

fn adsproc(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_adsproc")).args(args).output().unwrap();
    assert!(o.status.success(), "adsproc {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn every_option_of_every_command_has_a_description() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {}", arg.get_long().map(|l| format!("--{l}")).unwrap_or_else(|| id.to_string())));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(format!("{path} {} (the command)", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&adsproc::cli::command(), "adsproc", &mut missing);
    assert!(missing.is_empty(), "without a description: {missing:#?}");
}

#[test]
fn completions_and_man_pages_cover_every_command() {
    let bash = adsproc(&["completions", "bash"]);
    let man_dir = tempfile::tempdir().unwrap();
    adsproc(&["man", "--out", man_dir.path().to_str().unwrap()]);
    for sub in adsproc::cli::command().get_subcommands() {
        let name = sub.get_name();
        assert!(bash.contains(&format!("adsproc__{name}")) || bash.contains(&format!("adsproc,{name}")), "bash completion of {name}");
        let page = std::fs::read_to_string(man_dir.path().join(format!("adsproc-{name}.1"))).unwrap_or_else(|e| panic!("adsproc-{name}.1: {e}"));
        assert!(page.contains(".TH"), "adsproc-{name}.1 is a man page");
    }
    let page = adsproc(&["man"]);
    assert!(page.contains(".TH adsproc") && page.contains("backfill"), "{page}");
    assert!(adsproc(&["completions", "zsh"]).contains("#compdef adsproc"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_adsproc"))
        .args(["--log-format", "json", "gen", "--out", tmp.path().join("a").to_str().unwrap(), "--events", "1000", "--hours", "1", "--ads", "10"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let stderr = String::from_utf8(o.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "gen logs its progress");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{l}");
    }
}
