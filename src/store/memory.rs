//! A [`Store`] that lasts as long as the process.

use std::sync::{Mutex, PoisonError};

use super::{Store, StoreError};
use crate::proto::PublicIdentity;

/// Registrations kept in memory only: a restart forgets them.
#[derive(Debug, Default)]
pub struct MemoryStore {
    identities: Mutex<Vec<PublicIdentity>>,
}

impl Store for MemoryStore {
    fn identities(&self) -> Result<Vec<PublicIdentity>, StoreError> {
        Ok(self
            .identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }

    fn register(&self, identity: &PublicIdentity) -> Result<(), StoreError> {
        self.identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(identity.clone());
        Ok(())
    }
}
