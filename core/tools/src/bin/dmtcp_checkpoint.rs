//! The pre-2.0 name of dmtcp_launch, kept for old scripts (warns).
fn main() {
    std::process::exit(dmtcp::launch::main(
        std::env::args().collect(),
        "dmtcp_checkpoint",
    ));
}
