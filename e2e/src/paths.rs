//! Where the workspace, the binaries and the lab script are.

use super::*;

/// The workspace root (this crate's parent directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate has a parent")
        .to_path_buf()
}

/// Where the release binaries are: `KXDP_BIN_DIR`, else
/// `$CARGO_TARGET_DIR/release`, else `target/release`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KXDP_BIN_DIR") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => {
            let t = PathBuf::from(t);
            if t.is_absolute() {
                t
            } else {
                repo_root().join(t)
            }
            .join("release")
        }
        None => repo_root().join("target/release"),
    }
}
