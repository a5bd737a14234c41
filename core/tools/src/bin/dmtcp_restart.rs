fn main() {
    std::process::exit(dmtcp::restart::main(std::env::args().collect()));
}
