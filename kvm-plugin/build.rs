//! The KVM ABI types from the system's <linux/kvm.h> (bindgen, with layout
//! tests): the plugin saves and loads these structs as the kernel fills them.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let header = "/usr/include/linux/kvm.h";
    if !std::path::Path::new(header).exists() {
        panic!("{header} is missing: install Debian's linux-libc-dev (the kernel's user-space headers)");
    }
    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_type("kvm_.*")
        .allowlist_var("KVM_.*")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .expect("bindgen on linux/kvm.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("kvm.rs");
    bindings.write_to_file(out).expect("write bindings");
}
