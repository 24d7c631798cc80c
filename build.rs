//! Build script: records the commit the binary is built from (`BUILT_FROM_COMMIT`), so that
//! `--version` and benchmark reports say which code they come from: 12 hex digits, with
//! `-dirty` when the code (`src/`, the manifest, the lock file, this script) differed from
//! that commit at build time. Outside a git checkout, or without git, it is `unknown`.
//!
//! The variable's name must not start with `WRONGBOOK_`: cargo also sets it in the environment
//! of the tests it runs, and the processes they start would take it for a configuration
//! override (SPEC §10) and refuse an unknown key.

use std::path::Path;
use std::process::Command;

/// What the binary is built from; a change to any of it can make a build dirty.
const CODE: [&str; 4] = ["src", "Cargo.toml", "Cargo.lock", "build.rs"];

fn main() {
    let git = Path::new(".git");
    // A commit moves the branch's ref, a checkout moves HEAD, a `git gc` packs the refs. Only
    // paths that exist are watched: a missing one would rerun this script on every build.
    let mut watched: Vec<_> = CODE
        .iter()
        .map(|path| Path::new(path).to_path_buf())
        .collect();
    watched.extend([git.join("HEAD"), git.join("packed-refs")]);
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            watched.push(git.join(branch));
        }
    }
    for path in watched.iter().filter(|path| path.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let commit = git_output(&["rev-parse", "--short=12", "HEAD"])
        .filter(|hash| !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()));
    let status = [
        &["status", "--porcelain", "--untracked-files=no", "--"][..],
        &CODE,
    ]
    .concat();
    let dirty = git_output(&status).is_some_and(|changes| !changes.is_empty());
    let commit = match (commit, dirty) {
        (Some(commit), false) => commit,
        (Some(commit), true) => format!("{commit}-dirty"),
        (None, _) => "unknown".into(),
    };
    println!("cargo:rustc-env=BUILT_FROM_COMMIT={commit}");
}

/// What `git ARGS` prints, trimmed, when it succeeds.
fn git_output(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
