//! Generates the verbs ABI types from the system's <infiniband/verbs.h>
//! (libibverbs-dev), so every struct the library hands to programs has the
//! header's exact layout, and links the library as `libibverbs.so.1` with
//! rdma-core's symbol version nodes (the versions themselves are attached
//! with `.symver` in src/exports.rs).

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=libibverbs.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libibverbs.so.1");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        manifest.join("libibverbs.map").display()
    );
    let header = "/usr/include/infiniband/verbs.h";
    if !std::path::Path::new(header).exists() {
        panic!("{header} is missing: install Debian's libibverbs-dev (the verbs ABI headers)");
    }
    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_type("ibv_.*|verbs_.*|_ibv_.*|_compat_ibv_.*")
        .allowlist_var("IBV_.*|__VERBS_ABI_IS_EXTENDED")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .expect("bindgen on verbs.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("verbs.rs");
    bindings.write_to_file(out).expect("write bindings");
}
