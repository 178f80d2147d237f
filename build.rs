//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed) and
//! keeps the file descriptor set for gRPC server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["chat/v2/chat.proto"], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("chat_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Ciphertexts and keys are fanned out to many recipients: `Bytes` clones are
        // reference counts, not copies.
        .bytes(".chat.v2")
        // The token is a secret: src/proto.rs gives this message a Debug that hides it.
        .skip_debug([".chat.v2.LoginResponse"])
        // Test doubles and the bench's baseline relay implement only what they need;
        // the rest answers UNIMPLEMENTED.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
