//! Trust on first use: the fingerprint of each contact's keys, pinned the first time
//! the client sees them, in `<home>/<user>/contacts.json` (mode 0600).
//!
//! Keys that differ from the pinned ones are refused until the user accepts them, so a
//! relay cannot quietly swap a contact's keys for its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ClientError;
use super::home::write_private_file;
use crate::crypto::Fingerprint;

/// What the pinned keys say about keys the relay presented for a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// First sight: now pinned.
    FirstUse,
    /// The pinned keys.
    Known { verified: bool },
    /// Not the pinned keys: refuse them until the user accepts the change.
    Changed {
        pinned: Fingerprint,
        was_verified: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct ContactsFile {
    version: u32,
    contacts: BTreeMap<String, Contact>,
    /// The owner pinned for each private room, the first time we joined it: only members
    /// that owner invited get our keys there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    private_rooms: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Contact {
    /// 64 lowercase hex digits.
    fingerprint: String,
    /// Whether the user compared the safety number and confirmed it.
    verified: bool,
}

const VERSION: u32 = 1;

/// A user's pinned contacts, saved after every change (or only in memory).
#[derive(Debug)]
pub struct Contacts {
    path: Option<PathBuf>,
    file: ContactsFile,
}

/// Reads the contacts file at `path`; an empty one if there is none.
fn read(path: &Path) -> Result<ContactsFile, ClientError> {
    let unreadable = |reason: String| ClientError::ContactsUnreadable {
        path: path.to_owned(),
        reason,
    };
    let text = match super::home::read_private_file(path) {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(ContactsFile::empty()),
        Err(ClientError::IdentityUnreadable { reason, .. }) => return Err(unreadable(reason)),
        Err(other) => return Err(other),
    };
    super::home::parse_versioned(&text, |file: &ContactsFile| file.version, VERSION).map_err(
        |reason| {
            unreadable(format!(
                "{reason}; fix it or move it away to forget all pins"
            ))
        },
    )
}

impl ContactsFile {
    fn empty() -> Self {
        Self {
            version: VERSION,
            contacts: BTreeMap::new(),
            private_rooms: BTreeMap::new(),
        }
    }
}

impl Contacts {
    /// The contacts saved at `path`; none yet if the file does not exist.
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        Ok(Self {
            path: Some(path.to_owned()),
            file: read(path)?,
        })
    }

    /// Contacts that are never saved (benchmarks, tests).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            file: ContactsFile::empty(),
        }
    }

    /// Compares `fingerprint` with what is pinned for `user`, pinning it on first use.
    pub fn check(&mut self, user: &str, fingerprint: &Fingerprint) -> Result<Pin, ClientError> {
        match self.pinned(user) {
            None => {
                self.set(user, fingerprint, false)?;
                Ok(Pin::FirstUse)
            }
            Some((pinned, verified)) if pinned == *fingerprint => Ok(Pin::Known { verified }),
            Some((pinned, was_verified)) => Ok(Pin::Changed {
                pinned,
                was_verified,
            }),
        }
    }

    /// The pinned fingerprint of `user`, and whether it was verified.
    pub fn pinned(&self, user: &str) -> Option<(Fingerprint, bool)> {
        let contact = self.file.contacts.get(user)?;
        Some((
            Fingerprint::from_hex(&contact.fingerprint)?,
            contact.verified,
        ))
    }

    /// Accepts `fingerprint` as `user`'s keys from now on, unverified.
    pub fn trust(&mut self, user: &str, fingerprint: &Fingerprint) -> Result<(), ClientError> {
        self.set(user, fingerprint, false)
    }

    /// Marks the pinned keys of `user` as verified; false if none are pinned.
    pub fn mark_verified(&mut self, user: &str) -> Result<bool, ClientError> {
        match self.pinned(user) {
            Some((fingerprint, _)) => self.set(user, &fingerprint, true).map(|()| true),
            None => Ok(false),
        }
    }

    /// The owner pinned for the private `room`, if we ever joined it as private.
    pub fn room_owner(&self, room: &str) -> Option<&str> {
        self.file.private_rooms.get(room).map(String::as_str)
    }

    /// Pins `owner` as the owner of the private `room`, unless one is pinned already;
    /// returns the owner pinned.
    pub fn pin_room_owner(&mut self, room: &str, owner: &str) -> Result<String, ClientError> {
        if let Some(path) = &self.path {
            self.file = read(path)?;
        }
        if let Some(pinned) = self.file.private_rooms.get(room) {
            return Ok(pinned.clone());
        }
        self.file
            .private_rooms
            .insert(room.to_owned(), owner.to_owned());
        self.save()?;
        Ok(owner.to_owned())
    }

    fn set(
        &mut self,
        user: &str,
        fingerprint: &Fingerprint,
        verified: bool,
    ) -> Result<(), ClientError> {
        // Another process (`chat-client trust`, a second chat) may have changed the file
        // since it was read: change only this contact in what is saved now.
        if let Some(path) = &self.path {
            self.file = read(path)?;
        }
        self.file.contacts.insert(
            user.to_owned(),
            Contact {
                fingerprint: fingerprint.to_hex(),
                verified,
            },
        );
        self.save()
    }

    fn save(&self) -> Result<(), ClientError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(&self.file).map_err(|error| {
            ClientError::ContactsUnwritable {
                path: path.clone(),
                source: std::io::Error::other(error),
            }
        })?;
        write_private_file(path, &json).map_err(|source| ClientError::ContactsUnwritable {
            path: path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Identity;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pins_on_first_use_and_catches_a_change_until_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice").join("contacts.json");
        let bob = Identity::generate(2048).unwrap().fingerprint();
        let impostor = Identity::generate(2048).unwrap().fingerprint();

        let mut contacts = Contacts::open(&path).unwrap();
        assert_eq!(contacts.check("bob", &bob).unwrap(), Pin::FirstUse);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(contacts.mark_verified("bob").unwrap());
        assert!(!contacts.mark_verified("nobody").unwrap());

        // Another process, later: the pins were saved.
        let mut contacts = Contacts::open(&path).unwrap();
        assert_eq!(
            contacts.check("bob", &bob).unwrap(),
            Pin::Known { verified: true }
        );
        assert_eq!(
            contacts.check("bob", &impostor).unwrap(),
            Pin::Changed {
                pinned: bob,
                was_verified: true
            }
        );
        // Checking a changed key does not pin it.
        assert!(matches!(
            contacts.check("bob", &impostor).unwrap(),
            Pin::Changed { .. }
        ));
        contacts.trust("bob", &impostor).unwrap();
        let mut contacts = Contacts::open(&path).unwrap();
        assert_eq!(
            contacts.check("bob", &impostor).unwrap(),
            Pin::Known { verified: false }
        );
    }

    #[test]
    fn two_processes_pinning_at_once_keep_both_pins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contacts.json");
        let fingerprint = Identity::generate(2048).unwrap().fingerprint();
        let mut chat = Contacts::open(&path).unwrap();
        let mut command = Contacts::open(&path).unwrap();
        command.trust("bob", &fingerprint).unwrap();
        chat.check("carol", &fingerprint).unwrap();
        let reread = Contacts::open(&path).unwrap();
        assert!(reread.pinned("bob").is_some());
        assert!(reread.pinned("carol").is_some());
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contacts.json");
        write_private_file(&path, b"{not json").unwrap();
        let error = Contacts::open(&path).unwrap_err().to_string();
        assert!(error.contains("contacts.json"), "{error}");
        assert!(error.contains("move it away"), "{error}");
    }
}
