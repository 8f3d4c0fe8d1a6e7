//! Records the git commit the binary is built from (for `run.json`). Works from a fresh clone,
//! from a worktree, and without git or a `.git` at all (a source tarball): then the commit is
//! `$RUNNER_GIT_COMMIT` if set at build time, else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=RUNNER_GIT_COMMIT");
    let commit = match std::env::var("RUNNER_GIT_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => match git(&["rev-parse", "HEAD"]) {
            Some(head) => {
                // Rebuild when HEAD moves (commit, checkout) or the index changes (dirty flag).
                for p in ["logs/HEAD", "HEAD", "index"] {
                    if let Some(path) =
                        git(&["rev-parse", "--path-format=absolute", "--git-path", p])
                        && std::path::Path::new(&path).exists()
                    {
                        println!("cargo:rerun-if-changed={path}");
                    }
                }
                // ... and when any source changes, so that the dirty flag is never stale.
                let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
                for p in ["crates", "Cargo.toml", "Cargo.lock", "kernels"] {
                    if root.join(p).exists() {
                        println!("cargo:rerun-if-changed={}", root.join(p).display());
                    }
                }
                let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                if dirty { format!("{head}-dirty") } else { head }
            }
            None => "unknown".to_string(),
        },
    };
    println!("cargo:rustc-env=RUNNER_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=RUNNER_BUILD_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    println!(
        "cargo:rustc-env=RUNNER_BUILD_PROFILE={}",
        std::env::var("PROFILE").unwrap_or_default()
    );
}
