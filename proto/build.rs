//! Generates the gRPC code for riteraft.proto. protox parses the .proto in Rust, so no `protoc`
//! is needed on the machine. The server stubs are compiled only with the `server` feature: a
//! client has no use for them. The encoded descriptors go out too, for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "riteraft.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    // What server reflection serves (see `FILE_DESCRIPTOR_SET`).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("riteraft_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .server_mod_attribute("riteraft.v1", "#[cfg(feature = \"server\")]")
        .compile_fds(descriptors)?;
    Ok(())
}
