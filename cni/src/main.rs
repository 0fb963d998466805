//! kxdp-cni: run by a container runtime with CNI_COMMAND, CNI_CONTAINERID,
//! CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH in the environment and the
//! network configuration on stdin. Prints the result (ADD, VERSION) or the
//! error JSON on stdout; exits 0 on success, 1 on error. Diagnostics go to
//! stderr.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let stdin = if command == "VERSION" {
        // VERSION's stdin holds only {"cniVersion": ...}: not needed.
        Ok(Vec::new())
    } else {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map(|_| buf)
    };
    let outcome = kxdp_cni::run(&command, stdin, |k| std::env::var(k).ok());
    let mut out = std::io::stdout().lock();
    let written = if outcome.stdout.is_empty() {
        out.flush()
    } else {
        writeln!(out, "{}", outcome.stdout).and_then(|()| out.flush())
    };
    if outcome.ok && written.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
