//! The shared library's ABI identity: a SONAME, and exactly the functions of
//! include/gaussskip.h as its dynamic exports (nothing from Rust's runtime or the
//! dependencies). Inspected with `readelf -d` and `nm -D --defined-only` on the cdylib this
//! `cargo test` run built (target/<profile>/deps/libgaussskip.so, next to the test binary).
//!
//! The SONAME and the version script (src/exports.map) come from linker arguments in build.rs:
//!   cargo:rustc-cdylib-link-arg=-Wl,-soname,libgaussskip.so.1
//!   cargo:rustc-cdylib-link-arg=-Wl,--version-script=<crate>/src/exports.map

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The SONAME: changes only with an incompatible ABI change.
const SONAME: &str = "libgaussskip.so.1";

fn tool(name: &str, args: &[&str], lib: &Path) -> String {
    let out = Command::new(name)
        .args(args)
        .arg(lib)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} ({e}); install binutils"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Function names declared in the committed header (comments removed first).
fn header_functions() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/gaussskip.h");
    let text = std::fs::read_to_string(&path).expect("read include/gaussskip.h");
    let mut code = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("/*") {
        code.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    code.push_str(rest);
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = BTreeSet::new();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while let Some(off) = code[i..].find("gs_") {
        let start = i + off;
        let mut end = start;
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        let at_word_start = start == 0 || !ident(bytes[start - 1]);
        if at_word_start && code[end..].trim_start().starts_with('(') {
            names.insert(code[start..end].to_string());
        }
        i = end.max(start + 3);
    }
    names
}

#[test]
fn shared_library_has_a_soname() {
    let lib = common::built_library();
    let dynamic = tool("readelf", &["-d"], &lib);
    let found = dynamic
        .lines()
        .find(|l| l.contains("(SONAME)"))
        .and_then(|l| Some(l[l.find('[')? + 1..l.rfind(']')?].to_string()));
    assert_eq!(
        found.as_deref(),
        Some(SONAME),
        "{} has SONAME {found:?}, expected {SONAME:?}. build.rs must pass \
         `cargo:rustc-cdylib-link-arg=-Wl,-soname,{SONAME}`",
        lib.display()
    );
}

#[test]
fn shared_library_exports_exactly_the_header_functions() {
    let lib = common::built_library();
    let listing = tool("nm", &["-D", "--defined-only"], &lib);
    let mut exported = BTreeSet::new();
    let mut offending = Vec::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, name) = match fields.as_slice() {
            [_, kind, name] => (*kind, *name),
            [kind, name] => (*kind, *name),
            _ => continue,
        };
        // A symbol version suffix (name@@VER) is not part of the name.
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with("gs_") && kind == "T" {
            exported.insert(name.to_string());
        } else {
            offending.push(format!("{kind} {name}"));
        }
    }
    assert!(
        offending.is_empty(),
        "{} exports {} symbol(s) outside the C ABI (only gs_* functions may be exported; \
         build.rs should link with -Wl,--version-script=src/exports.map, and no dependency may \
         export #[no_mangle] items):\n  {}",
        lib.display(),
        offending.len(),
        offending.join("\n  ")
    );
    let declared = header_functions();
    assert!(
        declared.len() >= 20,
        "found only {} functions in include/gaussskip.h: {declared:?}",
        declared.len()
    );
    let missing: Vec<_> = declared.difference(&exported).collect();
    let undeclared: Vec<_> = exported.difference(&declared).collect();
    assert!(
        missing.is_empty() && undeclared.is_empty(),
        "exports and header differ: declared but not exported {missing:?}; exported but not \
         declared {undeclared:?}"
    );
}
