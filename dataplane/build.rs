//! Compiles the XDP program (bpf/kxdp.bpf.c) with clang; the object is
//! embedded in the binary and loaded with libbpf-rs.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/kxdp.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("kxdp.bpf.o");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-c", src])
        .arg(format!("-I{multiarch}"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {clang} to build the XDP program ({e}); install clang and libbpf-dev (scripts/deps.sh)")
        });
    assert!(status.success(), "clang failed to compile {src}");
}
