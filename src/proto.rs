//! The generated gRPC types of `proto/chat/v1/chat.proto`, the public contract.

#![allow(missing_docs)]

pub use chat::v1::*;

#[allow(clippy::all, clippy::pedantic)]
mod chat {
    pub mod v1 {
        tonic::include_proto!("chat.v1");
    }
}

/// The encoded `FileDescriptorSet` of the proto, served through gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));
