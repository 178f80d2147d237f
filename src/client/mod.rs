//! The client side: everything a chat program needs to talk through the relay.
//!
//! - [`connect`]: the channel to the relay, plaintext or TLS; [`Relays`], the relays of
//!   one deployment a client fails over between.
//! - [`home`]: the identity key files in the client's home directory (PKCS#8, 0600).
//! - [`Contacts`]: contacts' pinned fingerprints (trust on first use).
//! - [`login`]: challenge-response login, and the clients that carry the token.
//! - [`RoomKeys`]: the end-to-end state of one room — members' identities, our sender
//!   key, theirs — turning frames into plaintext and back, signatures checked first.
//!   No I/O.
//! - [`SessionState`]: what a session knows of one room and of its own requests there,
//!   and how each frame from the relay changes it: it drives `RoomKeys` (deciding whom
//!   our key is owed to as members come and go), checks members' keys against the
//!   pinned ones, follows the room's sequence numbers and receipts. No network.
//! - [`receipts`](ReceiptSummary): how far each member says it has got in a room, and
//!   when our own receipt is due. No network.
//! - [`ChatSession`]: a connection to the relay, joined to one or more rooms on its one
//!   stream: it routes each frame to its room's `SessionState`, sends what that
//!   decides, and sends unacknowledged messages again after a reconnect.
//! - [`progress`]: the last sequence number seen per server and room, saved in the
//!   home directory, so that a restarted client catches up on exactly what it missed.
//!
//! The `chat-client` binary, the tests and the benchmarks all use these types.

mod connect;
mod contacts;
pub mod home;
mod login;
pub mod prekeys;
mod private_room;
pub mod progress;
mod receipts;
mod room;
mod session;
mod state;

pub use connect::{Relays, connect, is_plaintext_beyond_loopback};
pub use contacts::{Contacts, Pin};
pub use login::{
    AuthorizedClient, BearerToken, Credentials, VerifiedBundle, fetch_identity, key_exchange,
    login, login_with_token,
};
pub use receipts::{RECEIPT_INTERVAL, ReceiptSummary};
pub use room::{
    KeyHandout, MAX_WAITING_MESSAGES, RoomEvent, RoomKeys, RotationPolicy, SharedPrekeys,
};
pub use session::{ChatSession, open_stream};
pub use state::{
    Applied, Event, HistoryMessage, RequestIds, SessionState, SharedContacts, safety_number,
};

use std::path::PathBuf;

use crate::crypto::CryptoError;

/// Why the client could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot use CA certificate {path}: {reason}")]
    CaCertUnusable { path: PathBuf, reason: String },
    #[error("cannot connect to {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the server closed the connection without answering ({reason}): it may be full, or \
         serve TLS, and then you must use an https:// URL"
    )]
    ClosedAtOnce { reason: String },
    #[error("the server refused: {}: {}", code_name(.0.code()), .0.message())]
    Refused(tonic::Status),
    #[error("the server ended the session: {}: {}", code_name(.0.code()), .0.message())]
    Ended(tonic::Status),
    #[error("the connection to the server was closed")]
    Disconnected,
    #[error("the server did not answer {what} within {seconds} s")]
    NoAnswer { what: String, seconds: u64 },
    #[error("cannot read identity key {path}: {reason}")]
    IdentityUnreadable { path: PathBuf, reason: String },
    #[error("cannot write identity key {path}: {source}")]
    IdentityUnwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The relay refused to register the name: it is taken, or the keys are another
    /// user's.
    #[error("cannot log in as {user:?}: {reason}")]
    NameTaken { user: String, reason: String },
    #[error("the server sent an invalid identity for {user}: {reason}")]
    BadIdentity { user: String, reason: String },
    #[error(
        "no keys are pinned for {user} yet: chat with {user} first, or run `chat-client trust {user}`"
    )]
    NotPinned { user: String },
    #[error("the keys {user} has now are not the pinned ones: /trust {user} first, then verify")]
    NotTrusted { user: String },
    #[error("cannot read pinned contacts {path}: {reason}")]
    ContactsUnreadable { path: PathBuf, reason: String },
    #[error("cannot save pinned contacts {path}: {source}")]
    ContactsUnwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot read saved progress {path}: {reason}; fix it, or move it away to start from \
         the latest messages"
    )]
    ProgressUnreadable { path: PathBuf, reason: String },
    #[error("cannot save progress {path}: {source}")]
    ProgressUnwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("you are not in room {room} in this session: /join {room} first")]
    NotInRoom { room: String },
    #[error("you are already in room {room} in this session")]
    AlreadyInRoom { room: String },
    #[error("you are in no room in this session")]
    NoRoom,
    #[error("the message is {len} bytes long; the limit is {max} bytes")]
    MessageTooLong { len: usize, max: usize },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl ClientError {
    /// Whether the relay could not be reached, or dropped us without a reason of ours
    /// (a transport error, UNAVAILABLE): another relay of the deployment may serve us
    /// where this one cannot. A refusal, or a limit of ours, would be the same there.
    pub fn relay_down(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::ClosedAtOnce { .. }
            | Self::Disconnected
            | Self::NoAnswer { .. } => true,
            Self::Refused(status) | Self::Ended(status) => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            ),
            _ => false,
        }
    }
}

/// The canonical name of a gRPC status code, as in `ALREADY_EXISTS`.
pub fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (index, letter) in format!("{code:?}").chars().enumerate() {
        if letter.is_ascii_uppercase() && index > 0 {
            name.push('_');
        }
        name.push(letter.to_ascii_uppercase());
    }
    name
}

/// The full text of an error and its sources, on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_relay_that_is_gone_is_a_reason_to_try_another() {
        let ended = |code| ClientError::Ended(tonic::Status::new(code, "bye"));
        assert!(ClientError::Disconnected.relay_down());
        assert!(ended(tonic::Code::Unavailable).relay_down());
        assert!(ended(tonic::Code::Unknown).relay_down());
        assert!(
            ClientError::Unreachable {
                url: "http://127.0.0.1:1".into(),
                reason: "refused".into()
            }
            .relay_down()
        );
        // Another session of ours, or a refusal: every relay of the deployment says the same.
        assert!(!ended(tonic::Code::Aborted).relay_down());
        assert!(!ended(tonic::Code::PermissionDenied).relay_down());
        assert!(!ClientError::Refused(tonic::Status::unauthenticated("no")).relay_down());
        assert!(!ClientError::NoRoom.relay_down());
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(code_name(tonic::Code::AlreadyExists), "ALREADY_EXISTS");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
    }
}
