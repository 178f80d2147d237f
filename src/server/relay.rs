//! The relay's shared context: what every session's frames, every catch-up and every RPC
//! act on. Its own file, so that the frame reader (`session`) and the catch-up
//! (`catch_up`), which starts from it, do not import each other.

use std::sync::Arc;

use super::accounts::Accounts;
use super::hub::Hub;
use super::key_directory::KeyDirectory;
use crate::store::Store;

/// What a session's frames act on.
pub(crate) struct Relay {
    pub hub: Arc<Hub>,
    pub accounts: Arc<Accounts>,
    pub keys: Arc<KeyDirectory>,
    pub store: Arc<dyn Store>,
}
