//! The committed C header must be exactly what the pinned cbindgen generates from src/ffi.rs,
//! src/ffi_fit.rs, src/ffi_components.rs and src/ffi_calibrate.rs.
//! Run with GAUSSSKIP_BLESS=1 to rewrite it after an intended ABI change.

use std::path::Path;

#[test]
fn committed_header_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi.rs"))
        .with_src(root.join("src/ffi_fit.rs"))
        .with_src(root.join("src/ffi_components.rs"))
        .with_src(root.join("src/ffi_calibrate.rs"))
        .generate()
        .expect("cbindgen failed on the src/ffi*.rs files")
        .write(&mut generated);
    let path = root.join("include/gaussskip.h");
    if std::env::var_os("GAUSSSKIP_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/gaussskip.h");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/gaussskip.h is stale: regenerate it with `GAUSSSKIP_BLESS=1 cargo test --release --test header` and commit it"
    );
}
