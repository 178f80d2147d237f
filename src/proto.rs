//! The generated gRPC types of `proto/chat/v2/chat.proto`, the public contract.

#![allow(missing_docs)]

pub use chat::v2::*;

#[allow(clippy::all, clippy::pedantic)]
mod chat {
    pub mod v2 {
        tonic::include_proto!("chat.v2");
    }
}

/// The encoded `FileDescriptorSet` of the proto, served through gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));

/// Everything but the session token, which must never reach a log.
impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("session_token", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("registered", &self.registered)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_login_response_never_prints_its_token() {
        let response = super::LoginResponse {
            session_token: "secret-token".into(),
            expires_at_ms: 1,
            registered: true,
        };
        let printed = format!("{response:?}");
        assert!(!printed.contains("secret-token"), "{printed}");
        assert!(printed.contains("registered: true"), "{printed}");
    }
}
