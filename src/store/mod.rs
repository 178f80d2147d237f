//! What the relay keeps across restarts, behind one narrow interface: [`Store`].
//!
//! Today that is the registered identities, so that a restart does not free a name for
//! other keys. [`SqliteStore`] keeps them in an embedded SQLite database under the data
//! directory; [`MemoryStore`] keeps them for the life of the process (tests, benchmarks).
//! Nothing outside this module knows which one it is talking to. Only public keys and
//! metadata are stored, never a plaintext or a private key.

mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

use crate::proto::PublicIdentity;

/// Why the store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error(
        "the database needs schema version {found}, newer than this server knows ({known}); run a newer chat-server"
    )]
    TooNew { found: i64, known: i64 },
    #[error("the database failed: {0}")]
    Database(String),
    #[error("the stored identity of {user:?} is unreadable: {reason}")]
    Corrupt { user: String, reason: String },
}

/// The relay's durable state.
pub trait Store: Send + Sync {
    /// Every registered identity.
    fn identities(&self) -> Result<Vec<PublicIdentity>, StoreError>;

    /// Records the first registration of `identity.user`; returns once it is durable.
    /// Registering a name twice is an error: the caller checks first.
    fn register(&self, identity: &PublicIdentity) -> Result<(), StoreError>;
}
