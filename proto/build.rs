fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .compile_protos(&["kxdp/dataplane.proto", "kxdp/control.proto"], &["."])?;
    Ok(())
}
