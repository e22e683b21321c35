//! Runs every seed in `fuzz/corpus/<target>/` through the same invariant checks as the fuzz
//! target of that name (`tower_ccr::fuzzing`), so that `cargo test --all-features` exercises
//! the fuzz corpus on the stable toolchain. `fuzz/run.sh` runs the fuzzers themselves.
#![cfg(feature = "fuzzing")]

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};

use tower_ccr::fuzzing;

/// The seeds of a target, in name order.
fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn run_corpus(target: &str, check: fn(&[u8])) {
    let files = seeds(target);
    assert!(files.len() >= 4, "fuzz/corpus/{target} has too few seeds");
    for file in files {
        let data = std::fs::read(&file).expect("a readable seed");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            eprintln!("seed {} broke an invariant", file.display());
            resume_unwind(panic);
        }
    }
}

#[test]
fn marker_seeds_keep_the_invariants() {
    run_corpus("marker", fuzzing::marker);
}

#[test]
fn request_seeds_keep_the_invariants() {
    run_corpus("request", fuzzing::request);
}

#[test]
fn sse_seeds_keep_the_invariants() {
    run_corpus("sse", fuzzing::sse);
}

#[test]
fn response_seeds_keep_the_invariants() {
    run_corpus("response", fuzzing::response);
}
