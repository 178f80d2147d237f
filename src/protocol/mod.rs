//! Rules of the wire protocol shared by the client and the server: what a valid user or
//! room name is, the size limits both sides enforce, the JSON envelope that is
//! encrypted inside every message, and how the protocol's times are shown.

mod envelope;
mod names;
mod time;

pub use envelope::{Envelope, EnvelopeError, MessageKind};
pub use names::{MAX_USER_LEN, NameError, validate_room, validate_user};
pub use time::{now_ms, utc_time};

/// The request metadata that carries the session token, as `Bearer <token>`.
pub const AUTHORIZATION_METADATA_KEY: &str = "authorization";

/// The length of a login challenge, in bytes.
pub const CHALLENGE_LEN: usize = 32;

/// The length of an AES-GCM nonce, in bytes.
pub const NONCE_LEN: usize = 12;

/// The device of every user, for now: messages, bundles and copies name it so that
/// several devices per user can come without another breaking change.
pub const DEVICE: u32 = 1;

/// The most users one `KeyExchange` may name.
pub const MAX_BUNDLE_USERS: usize = 256;

/// The most copies one key distribution frame may carry, one per recipient device: 96
/// copies wrapped under 4096-bit prekeys stay under the relay's default 64 KiB frame
/// limit. A client hands its key to a larger room in several frames, each signed once.
pub const MAX_COPIES_PER_DISTRIBUTION: usize = 96;

/// The length of the AES-GCM tag that ends every ciphertext.
pub const TAG_LEN: usize = 16;

/// The smallest RSA-OAEP ciphertext: the size of a 2048-bit modulus.
pub const MIN_WRAPPED_KEY_LEN: usize = 256;

/// The largest RSA-OAEP ciphertext: the size of a 4096-bit modulus.
pub const MAX_WRAPPED_KEY_LEN: usize = 512;

/// The smallest RSA-PSS signature: the size of a 2048-bit modulus.
pub const MIN_SIGNATURE_LEN: usize = 256;

/// The largest RSA-PSS signature: the size of a 4096-bit modulus.
pub const MAX_SIGNATURE_LEN: usize = 512;

/// The largest JSON envelope a client seals, in bytes: about 32 000 characters of
/// ordinary text. Sealed and framed, it stays well under the relay's default 64 KiB
/// frame limit, so a message that a client accepts is never refused by the relay.
pub const MAX_ENVELOPE_BYTES: usize = 32 * 1024;

/// The most messages one `GetHistory` may ask for.
pub const MAX_HISTORY_MESSAGES: u32 = 100;
