//! Compiles our wire definitions in `proto/` without a system `protoc`:
//! `protox` parses them into a file descriptor set, `tonic-prost-build`
//! generates the messages and both client and server stubs from it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/cairnpb/peer.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Services we have not built yet answer Unimplemented, as a gRPC
        // server without them would.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
