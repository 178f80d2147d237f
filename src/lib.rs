//! An end-to-end encrypted chat over gRPC.
//!
//! - [`proto`]: the generated types of the public contract, `proto/chat/v1/chat.proto`.
//! - [`protocol`]: rules both sides share: names, limits, the JSON envelope.
//! - [`crypto`]: identity keys, sender keys, and what they are bound to.
//! - [`server`]: the relay, which only ever handles ciphertext.
//! - [`client`]: connecting, joining a room, sealing and opening messages.
//! - [`bench`]: the load `chat-bench` runs, and the baseline relay it compares against.

pub mod bench;
pub mod client;
pub mod crypto;
mod pem;
pub mod proto;
pub mod protocol;
pub mod server;
pub mod store;
