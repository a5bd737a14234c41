fn main() {
    std::process::exit(dmtcp::coordinator_main(std::env::args().collect()));
}
