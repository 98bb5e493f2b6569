//! `--help` of every command, snapshotted: the CLI's text is a contract (scripts and people
//! read it), so a change to it must be deliberate. `IMGBUILD_UPDATE_SNAPSHOTS=1 cargo test
//! --test cli_help` rewrites the snapshots after an intended change.

use std::path::PathBuf;
use std::process::Command;

const COMMANDS: &[&[&str]] = &[
    &[],
    &["list"],
    &["show"],
    &["render"],
    &["validate"],
    &["build"],
    &["smoke"],
    &["checksum"],
    &["doctor"],
    &["userdata"],
    &["lima"],
    &["publish"],
    &["diff"],
    &["cache"],
    &["cache", "ls"],
    &["cache", "prune"],
    &["ci"],
    &["ci", "gitlab"],
];

fn snapshot(cmd: &[&str]) -> PathBuf {
    let name = if cmd.is_empty() {
        "imgbuild".to_string()
    } else {
        cmd.join("-")
    };
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots/help")
        .join(format!("{name}.txt"))
}

#[test]
fn help_texts_match_their_snapshots() {
    let update = std::env::var_os("IMGBUILD_UPDATE_SNAPSHOTS").is_some();
    let mut differ = Vec::new();
    for cmd in COMMANDS {
        let o = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .args(*cmd)
            .arg("--help")
            .env("COLUMNS", "100")
            .env_remove("IMGBUILD_IMAGES_DIR")
            .env_remove("IMGBUILD_CACHE_DIR")
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd:?} --help failed");
        let text = String::from_utf8(o.stdout).unwrap();
        let file = snapshot(cmd);
        if update {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if want != text {
            differ.push(format!(
                "{}:\n--- snapshot\n{want}\n+++ now\n{text}",
                file.display()
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "help texts changed (IMGBUILD_UPDATE_SNAPSHOTS=1 to accept):\n{}",
        differ.join("\n")
    );
}
