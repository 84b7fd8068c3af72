//! Helpers shared by integration tests (each test file includes this with `mod common;`).

use std::path::PathBuf;

/// The cdylib built by this `cargo test` run: target/<profile>/deps/libgaussskip.so, next to
/// the test binary.
pub fn built_library() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let lib = exe
        .parent()
        .expect("test binary folder")
        .join("libgaussskip.so");
    assert!(
        lib.is_file(),
        "{} is missing: `cargo test` should build the cdylib there (crate-type includes \
         \"cdylib\" in Cargo.toml). Build it with `cargo build --release --lib` and check \
         Cargo.toml's [lib] crate-type.",
        lib.display()
    );
    lib
}
