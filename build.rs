//! Generates the protobuf types of `proto/` with prost (needs `protoc`; `.ci/run` installs it).

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::prost_types")
        .compile_protos(&["proto/radiogate/v1/radiogate.proto"], &["proto"])
}
