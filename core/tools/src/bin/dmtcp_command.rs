fn main() {
    std::process::exit(dmtcp::command::main(std::env::args().collect()));
}
