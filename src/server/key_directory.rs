//! The key directory behind `KeyExchange`: each device's current signed prekey, checked
//! against its owner's registered identity before it is kept, and the key bundles
//! (identity, device, prekey) that clients fetch to hand their sender keys out.
//!
//! The relay checks a prekey's signature only so that it never hands out garbage;
//! clients check it again against the identity they pinned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tonic::Status;

use super::ServerError;
use super::accounts::Accounts;
use crate::crypto::{self, VerifiedIdentity};
use crate::proto::{KeyBundle, PublicIdentity, SignedPrekey};
use crate::protocol::DEVICE;
use crate::store::Store;

pub(crate) struct KeyDirectory {
    /// User → its device's current signed prekey (one device per user for now).
    prekeys: Mutex<HashMap<String, SignedPrekey>>,
    store: Arc<dyn Store>,
    /// Other relays keep prekeys in the same store (`--nats`): it is read for each
    /// bundle.
    shared_store: AtomicBool,
}

impl KeyDirectory {
    /// The directory of the prekeys in `store`.
    pub(crate) fn new(store: Arc<dyn Store>) -> Result<Self, ServerError> {
        let prekeys = store.prekeys()?.into_iter().collect();
        Ok(Self {
            prekeys: Mutex::new(prekeys),
            store,
            shared_store: AtomicBool::new(false),
        })
    }

    /// Keeps `prekey` as `user`'s current one, once its signature by `user`'s registered
    /// identity verifies; durable before it is handed out.
    pub(crate) fn publish(
        &self,
        accounts: &Accounts,
        user: &str,
        prekey: SignedPrekey,
    ) -> Result<(), Status> {
        if prekey.device != DEVICE {
            return Err(Status::invalid_argument(format!(
                "publish.device is {}; every user has one device for now, device {DEVICE}",
                prekey.device
            )));
        }
        let owner = accounts
            .identity(user)
            .and_then(|published| VerifiedIdentity::verify(&published).ok())
            .ok_or_else(|| Status::unauthenticated("the token's user is not registered"))?;
        let signed = crypto::SignedPrekey {
            user: user.to_owned(),
            device: prekey.device,
            id: prekey.prekey_id,
            created_at_ms: prekey.created_at_ms,
            public_key: prekey.public_key.to_vec(),
            signature: prekey.signature.to_vec(),
        };
        let key = signed.verify(&owner).map_err(|error| {
            Status::invalid_argument(format!(
                "publish: the prekey cannot be taken ({error}); sign a 2048- to 4096-bit RSA \
                 prekey with your identity's signing key"
            ))
        })?;
        // Keys wrapped under the long-term key would stay readable for as long as the
        // identity lives: a prekey must be a key of its own.
        if key == owner.encryption {
            return Err(Status::invalid_argument(
                "publish: the prekey is your identity's encryption key; make a key of its own",
            ));
        }
        if self.lock().get(user) == Some(&prekey) {
            return Ok(());
        }
        self.store.save_prekey(user, &prekey).map_err(|error| {
            tracing::error!(user, %error, "could not store a prekey");
            Status::unavailable("the server could not store your prekey; try again later")
        })?;
        tracing::info!(user, prekey_id = prekey.prekey_id, "prekey published");
        self.lock().insert(user.to_owned(), prekey);
        Ok(())
    }

    /// The bundle of the user whose registered identity is `identity`.
    pub(crate) fn bundle(&self, identity: PublicIdentity) -> KeyBundle {
        let mut prekey = self.lock().get(&identity.user).cloned();
        if self.shared_store.load(Ordering::Relaxed) {
            match self.store.prekey(&identity.user) {
                Ok(stored) => prekey = stored,
                Err(error) => tracing::warn!(user = identity.user, %error, "cannot read a prekey"),
            }
        }
        KeyBundle {
            identity: Some(identity),
            device: DEVICE,
            prekey,
        }
    }

    /// From now on, other relays keep prekeys in the same store.
    pub(crate) fn share_the_store(&self) {
        self.shared_store.store(true, Ordering::Relaxed);
    }

    /// Forgets the prekeys of a user whose identity was reclaimed.
    pub(crate) fn forget(&self, user: &str) {
        self.lock().remove(user);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, SignedPrekey>> {
        self.prekeys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
