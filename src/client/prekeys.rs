//! A device's signed prekeys in the home directory, and when they change: what bounds
//! how much a later theft of the home directory can read.
//!
//! `<home>/<user>/prekeys.json` (mode 0600) lists them, newest last:
//! `{"version": 1, "prekeys": [{"id": "<16 hex digits>", "created_at_ms": N,
//! "retired_at_ms": N or null}]}`; each private half is `prekey-<id>.pem` beside it
//! (PKCS#8, mode 0600).
//!
//! - The newest prekey is the current one, published through `KeyExchange`: others wrap
//!   their sender keys under it.
//! - A prekey older than [`PrekeyPolicy::rotate_after_ms`] is replaced by a new one and
//!   retired: it is kept, to unwrap what was wrapped under it while it was current and
//!   is still on its way (a catch-up after time offline, a history).
//! - A retired prekey is erased [`PrekeyPolicy::keep_retired_ms`] after its retirement:
//!   its file is deleted and nothing wrapped under it can be unwrapped any more, by
//!   anyone. So what was sent to this device more than `rotate_after_ms +
//!   keep_retired_ms` ago stays closed to whoever steals the home directory and the
//!   relay's database later: the forward-secrecy window.
//!
//! The window counts while the client runs: it rotates and erases when it starts and
//! while it is connected, so a device left unused keeps the keys it had. Deleting a file
//! does not scrub the disk blocks it used; full-disk encryption covers that
//! (docs/SECURITY.md).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ClientError;
use super::home::{parse_versioned, read_private_file, user_dir, write_private_file};
use crate::crypto::{EncryptionKey, Prekey};

const FILE: &str = "prekeys.json";
const VERSION: u32 = 1;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// When prekeys change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrekeyPolicy {
    /// How long a prekey is the current one.
    pub rotate_after_ms: u64,
    /// How long a retired prekey is kept before it is erased.
    pub keep_retired_ms: u64,
}

impl Default for PrekeyPolicy {
    /// A new prekey every 7 days, each kept 14 days after that: a window of 21 days.
    fn default() -> Self {
        Self {
            rotate_after_ms: 7 * DAY_MS,
            keep_retired_ms: 14 * DAY_MS,
        }
    }
}

impl PrekeyPolicy {
    /// The longest a message sent to this device stays readable with its files.
    pub fn window_ms(&self) -> u64 {
        self.rotate_after_ms.saturating_add(self.keep_retired_ms)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PrekeysFile {
    version: u32,
    prekeys: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// 16 lowercase hex digits.
    id: String,
    created_at_ms: u64,
    retired_at_ms: Option<u64>,
}

/// What [`PrekeyRing::maintain`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintenance {
    /// A new current prekey was made: publish it.
    pub rotated: bool,
    /// How many retired prekeys were erased.
    pub erased: usize,
}

/// A device's prekeys: the current one and those retired but still kept.
pub struct PrekeyRing {
    /// Where the ring is kept; `None` for one in memory only.
    dir: Option<PathBuf>,
    bits: usize,
    policy: PrekeyPolicy,
    /// Oldest first; the last one is current.
    prekeys: Vec<(Entry, Prekey)>,
}

impl PrekeyRing {
    /// Loads `user`'s prekeys from `home`, making a first one of `bits` bits if there is
    /// none (`before_generating` is called first: it takes a few seconds), then
    /// [`maintain`](Self::maintain)s them at `now_ms`.
    pub fn load(
        home: &Path,
        user: &str,
        bits: usize,
        policy: PrekeyPolicy,
        now_ms: u64,
        before_generating: impl FnOnce(),
    ) -> Result<(Self, Maintenance), ClientError> {
        let dir = user_dir(home, user);
        let file = read_file(&dir.join(FILE))?;
        let mut prekeys = Vec::new();
        for entry in file.prekeys {
            let path = dir.join(key_file(&entry.id));
            let unreadable = |reason: String| ClientError::IdentityUnreadable {
                path: path.clone(),
                reason,
            };
            let id = u64::from_str_radix(&entry.id, 16)
                .map_err(|_| unreadable(format!("{:?} is not a prekey id", entry.id)))?;
            let pem = read_private_file(&path)?
                .ok_or_else(|| unreadable("it is listed in prekeys.json but missing".into()))?;
            let key = EncryptionKey::from_pkcs8_pem(&pem)
                .map_err(|error| unreadable(error.to_string()))?;
            prekeys.push((entry.clone(), Prekey::new(id, entry.created_at_ms, key)));
        }
        let mut ring = Self {
            dir: Some(dir),
            bits,
            policy,
            prekeys,
        };
        let mut maintenance = Maintenance::default();
        if ring.prekeys.is_empty() {
            before_generating();
            ring.add(now_ms)?;
            maintenance.rotated = true;
        }
        let later = ring.maintain(now_ms)?;
        maintenance.rotated |= later.rotated;
        maintenance.erased = later.erased;
        Ok((ring, maintenance))
    }

    /// A ring in memory only, for clients that keep nothing (benchmarks, tests): one
    /// fresh prekey of `bits` bits, never rotated unless asked.
    pub fn in_memory(bits: usize, now_ms: u64) -> Result<Self, ClientError> {
        let prekey = Prekey::generate(bits, now_ms)?;
        let entry = Entry {
            id: format!("{:016x}", prekey.id()),
            created_at_ms: now_ms,
            retired_at_ms: None,
        };
        Ok(Self {
            dir: None,
            bits,
            policy: PrekeyPolicy {
                rotate_after_ms: u64::MAX,
                keep_retired_ms: u64::MAX,
            },
            prekeys: vec![(entry, prekey)],
        })
    }

    /// The current prekey: the one to publish.
    pub fn current(&self) -> &Prekey {
        &self
            .prekeys
            .last()
            .expect("a ring always has a current prekey")
            .1
    }

    /// The prekey `id`, current or retired, if it is still kept.
    pub fn get(&self, id: u64) -> Option<&Prekey> {
        self.prekeys
            .iter()
            .map(|(_, prekey)| prekey)
            .find(|prekey| prekey.id() == id)
    }

    /// How many prekeys are kept, the current one included.
    pub fn len(&self) -> usize {
        self.prekeys.len()
    }

    /// Always false: a ring has a current prekey.
    pub fn is_empty(&self) -> bool {
        self.prekeys.is_empty()
    }

    /// At `now_ms`: replaces the current prekey if it is due, and erases the retired
    /// ones kept long enough.
    pub fn maintain(&mut self, now_ms: u64) -> Result<Maintenance, ClientError> {
        let mut maintenance = Maintenance::default();
        let current_since = self.current().created_at_ms();
        if now_ms.saturating_sub(current_since) >= self.policy.rotate_after_ms {
            if let Some((entry, _)) = self.prekeys.last_mut() {
                entry.retired_at_ms = Some(now_ms);
            }
            self.add(now_ms)?;
            maintenance.rotated = true;
        }
        let keep = self.policy.keep_retired_ms;
        // The last is the current one whatever the file says: it is never erased.
        let current = self.prekeys.pop();
        let (expired, mut kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.prekeys)
            .into_iter()
            .partition(|(entry, _)| {
                entry
                    .retired_at_ms
                    .is_some_and(|retired| now_ms.saturating_sub(retired) >= keep)
            });
        kept.extend(current);
        self.prekeys = kept;
        if !expired.is_empty() {
            // The list first: a crash in between leaves a key file nothing lists, which
            // the next erasure removes, never a listed key without its file.
            self.save()?;
            if let Some(dir) = &self.dir {
                for (entry, _) in &expired {
                    remove_key_file(&dir.join(key_file(&entry.id)))?;
                }
            }
            maintenance.erased = expired.len();
        }
        if let Some(dir) = &self.dir {
            remove_unlisted(dir, &self.prekeys)?;
        }
        Ok(maintenance)
    }

    /// Makes a new current prekey, durable before it is used.
    fn add(&mut self, now_ms: u64) -> Result<(), ClientError> {
        let prekey = Prekey::generate(self.bits, now_ms)?;
        let entry = Entry {
            id: format!("{:016x}", prekey.id()),
            created_at_ms: now_ms,
            retired_at_ms: None,
        };
        if let Some(dir) = &self.dir {
            let path = dir.join(key_file(&entry.id));
            write_private_file(&path, prekey.key().to_pkcs8_pem().as_bytes())
                .map_err(|source| ClientError::IdentityUnwritable { path, source })?;
        }
        self.prekeys.push((entry, prekey));
        self.save()
    }

    fn save(&self) -> Result<(), ClientError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = dir.join(FILE);
        let file = PrekeysFile {
            version: VERSION,
            prekeys: self
                .prekeys
                .iter()
                .map(|(entry, _)| entry.clone())
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file).expect("plain data serializes");
        write_private_file(&path, &json)
            .map_err(|source| ClientError::IdentityUnwritable { path, source })
    }
}

fn key_file(id: &str) -> String {
    format!("prekey-{id}.pem")
}

fn read_file(path: &Path) -> Result<PrekeysFile, ClientError> {
    let unreadable = |reason: String| ClientError::IdentityUnreadable {
        path: path.to_owned(),
        reason,
    };
    let Some(text) = read_private_file(path)? else {
        return Ok(PrekeysFile {
            version: VERSION,
            prekeys: Vec::new(),
        });
    };
    parse_versioned(&text, |file: &PrekeysFile| file.version, VERSION).map_err(unreadable)
}

fn remove_key_file(path: &Path) -> Result<(), ClientError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ClientError::IdentityUnwritable {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Deletes prekey files the list does not name (left by a crash during an erasure).
fn remove_unlisted(dir: &Path, kept: &[(Entry, Prekey)]) -> Result<(), ClientError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(id) = name
            .strip_prefix("prekey-")
            .and_then(|rest| rest.strip_suffix(".pem"))
        else {
            continue;
        };
        if !kept.iter().any(|(listed, _)| listed.id == id) {
            remove_key_file(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: PrekeyPolicy = PrekeyPolicy {
        rotate_after_ms: 7 * DAY_MS,
        keep_retired_ms: 14 * DAY_MS,
    };

    fn load(home: &Path, now_ms: u64) -> (PrekeyRing, Maintenance) {
        PrekeyRing::load(home, "alice", 2048, POLICY, now_ms, || {}).unwrap()
    }

    fn key_files(home: &Path) -> usize {
        fs::read_dir(user_dir(home, "alice"))
            .unwrap()
            .filter(|entry| {
                let name = entry.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("prekey-")
            })
            .count()
    }

    #[test]
    fn the_current_prekey_is_never_erased_whatever_the_file_says() {
        let home = tempfile::tempdir().unwrap();
        let (ring, _) = load(home.path(), 0);
        let current = ring.current().id();
        // Another client marked the current prekey retired long ago.
        let path = user_dir(home.path(), "alice").join(FILE);
        let text = fs::read_to_string(&path).unwrap();
        let edited = text.replace("\"retired_at_ms\": null", "\"retired_at_ms\": 0");
        assert_ne!(text, edited);
        write_private_file(&path, edited.as_bytes()).unwrap();
        let (ring, maintenance) = load(home.path(), 6 * DAY_MS);
        assert_eq!(ring.current().id(), current);
        assert_eq!(maintenance.erased, 0);
        assert_eq!(key_files(home.path()), 1);
    }

    #[test]
    fn prekeys_rotate_weekly_and_retired_ones_are_erased_after_two_weeks() {
        let home = tempfile::tempdir().unwrap();
        let (first_ring, made) = load(home.path(), 0);
        assert!(made.rotated, "the first prekey is made");
        let first = first_ring.current().id();

        // Reloaded within the week: the same prekey, nothing made.
        let (ring, maintenance) = load(home.path(), 6 * DAY_MS);
        assert_eq!(ring.current().id(), first);
        assert_eq!(maintenance, Maintenance::default());

        // A week on: a new current prekey; the old one still opens what it was sent.
        let (ring, maintenance) = load(home.path(), 7 * DAY_MS);
        assert!(maintenance.rotated);
        let second = ring.current().id();
        assert_ne!(second, first);
        assert!(ring.get(first).is_some());
        assert_eq!(key_files(home.path()), 2);

        // Two weeks after its retirement the first is erased, file and all. (Loading
        // at 20 days also retires the second, current since day 7.)
        let (mut ring, maintenance) = load(home.path(), 20 * DAY_MS);
        assert!(maintenance.rotated);
        assert!(ring.get(first).is_some(), "kept until 21 days");
        let maintenance = ring.maintain(21 * DAY_MS).unwrap();
        assert!(!maintenance.rotated);
        assert_eq!(maintenance.erased, 1);
        assert!(ring.get(first).is_none());
        assert!(ring.get(second).is_some());
        assert_eq!(key_files(home.path()), 2);
        let (reloaded, _) = load(home.path(), 21 * DAY_MS);
        assert!(reloaded.get(first).is_none());
        assert_eq!(reloaded.len(), 2);
    }

    #[test]
    fn prekey_files_are_private_and_a_stray_one_is_removed() {
        use std::os::unix::fs::PermissionsExt;

        let home = tempfile::tempdir().unwrap();
        let (ring, _) = load(home.path(), 0);
        let dir = user_dir(home.path(), "alice");
        let file = dir.join(key_file(&format!("{:016x}", ring.current().id())));
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(dir.join(FILE)).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // As if a crash came between the list's update and the file's deletion.
        let stray = dir.join("prekey-00000000000000ff.pem");
        write_private_file(&stray, b"not a key").unwrap();
        load(home.path(), 1);
        assert!(!stray.exists());
    }
}
