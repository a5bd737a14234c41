//! Install include/dmtcp.h next to the tools: <target>/<profile>/include/dmtcp.h,
//! so programs and plugins compile against the header that matches the
//! library they run with (`cc -I target/release/include ...`).
use std::path::PathBuf;

fn main() {
    let header =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../include/dmtcp.h");
    println!("cargo:rerun-if-changed={}", header.display());
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return;
    };
    let dest = profile_dir.join("include");
    if std::fs::create_dir_all(&dest).is_ok() {
        let _ = std::fs::copy(&header, dest.join("dmtcp.h"));
    }
}
