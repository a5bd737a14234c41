//! Link the restorer as a static, non-PIE program with no C runtime, placed
//! at the restorer window every checkpointed process keeps reserved.
fn main() {
    // Keep in sync with dmtcp_sys::RESTORER_BASE (checked by a unit test of
    // the tools crate, which reads the program headers of the built binary).
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--image-base=0x5e0000000000",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
