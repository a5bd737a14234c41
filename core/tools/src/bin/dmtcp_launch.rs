fn main() {
    std::process::exit(dmtcp::launch::main(
        std::env::args().collect(),
        "dmtcp_launch",
    ));
}
