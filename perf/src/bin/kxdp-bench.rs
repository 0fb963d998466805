fn main() {
    eprintln!("kxdp-bench: the harness is not built yet");
    std::process::exit(2);
}
