//! The client's home directory: each user's identity and pinned contacts.
//!
//! `<home>/<user>/` (mode 0700) holds `signing.pem` and `encryption.pem`, the two RSA
//! private keys as PKCS#8 PEM (mode 0600), and `contacts.json`, the contacts' pinned
//! fingerprints. Keys are made once and reused; a key file that others can read is
//! refused, as ssh does. A home from before identities had two keys (one
//! `identity.pem`) is migrated: that key becomes the encryption key and a signing key
//! is added.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::ClientError;
use crate::crypto::{EncryptionKey, Identity, SigningKey};

/// The default home: `$XDG_DATA_HOME/e2ee-chat` or `~/.local/share/e2ee-chat`.
pub fn default_home() -> PathBuf {
    dirs::data_local_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("e2ee-chat")
}

/// The directory of `user` under `home`.
pub fn user_dir(home: &Path, user: &str) -> PathBuf {
    home.join(user)
}

/// Where `user`'s pinned contacts are kept.
pub fn contacts_path(home: &Path, user: &str) -> PathBuf {
    user_dir(home, user).join("contacts.json")
}

const SIGNING_FILE: &str = "signing.pem";
const ENCRYPTION_FILE: &str = "encryption.pem";
/// The single key of a home made before identities had two.
const OLD_IDENTITY_FILE: &str = "identity.pem";

/// Whether `home` holds an identity of `user` (possibly one still to migrate).
pub fn has_identity(home: &Path, user: &str) -> bool {
    let dir = user_dir(home, user);
    [SIGNING_FILE, ENCRYPTION_FILE, OLD_IDENTITY_FILE]
        .iter()
        .any(|file| dir.join(file).exists())
}

/// What [`load_or_create_identity`] did besides loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    Loaded,
    Created,
    /// An old single-key home was upgraded: its key is now the encryption key.
    Migrated,
}

/// Loads `user`'s identity from `home`, migrating an old home, or makes a new one of
/// `bits` bits. `before_generating` is called before a slow key generation.
pub fn load_or_create_identity(
    home: &Path,
    user: &str,
    bits: usize,
    before_generating: impl FnOnce(&Path),
) -> Result<(Identity, Provenance), ClientError> {
    let dir = user_dir(home, user);
    let signing_path = dir.join(SIGNING_FILE);
    let encryption_path = dir.join(ENCRYPTION_FILE);
    let old_path = dir.join(OLD_IDENTITY_FILE);
    let signing = read_private_file(&signing_path)?;
    let encryption = read_private_file(&encryption_path)?;
    match (signing, encryption) {
        (Some(signing), Some(encryption)) => {
            let signing = SigningKey::from_pkcs8_pem(&signing)
                .map_err(|error| bad_key(&signing_path, &error))?;
            let encryption = EncryptionKey::from_pkcs8_pem(&encryption)
                .map_err(|error| bad_key(&encryption_path, &error))?;
            Ok((Identity::new(signing, encryption), Provenance::Loaded))
        }
        (None, None) => match read_private_file(&old_path)? {
            Some(old) => {
                let encryption = EncryptionKey::from_pkcs8_pem(&old)
                    .map_err(|error| bad_key(&old_path, &error))?;
                before_generating(&signing_path);
                let signing = SigningKey::generate(encryption.bits())?;
                write_private_pem(&signing_path, &signing.to_pkcs8_pem())?;
                fs::rename(&old_path, &encryption_path).map_err(|source| {
                    ClientError::IdentityUnwritable {
                        path: encryption_path.clone(),
                        source,
                    }
                })?;
                Ok((Identity::new(signing, encryption), Provenance::Migrated))
            }
            None => {
                before_generating(&dir);
                let identity = Identity::generate(bits)?;
                write_private_pem(&signing_path, &identity.signing_key().to_pkcs8_pem())?;
                write_private_pem(&encryption_path, &identity.encryption_key().to_pkcs8_pem())?;
                Ok((identity, Provenance::Created))
            }
        },
        (Some(_), None) | (None, Some(_)) => {
            let (found, missing) = if signing_path.exists() {
                (&signing_path, &encryption_path)
            } else {
                (&encryption_path, &signing_path)
            };
            Err(ClientError::IdentityUnreadable {
                path: missing.clone(),
                reason: format!(
                    "it is missing but {} exists; restore it from a backup, or move {} away \
                     to make a new identity (under a new user name: the server keeps the old \
                     keys bound to this one)",
                    found.display(),
                    dir.display()
                ),
            })
        }
    }
}

fn bad_key(path: &Path, error: &crate::crypto::CryptoError) -> ClientError {
    ClientError::IdentityUnreadable {
        path: path.to_owned(),
        reason: format!("{error}; move it away to make a new identity"),
    }
}

/// Reads a private file, or `None` if there is none; refuses one others can access.
pub(crate) fn read_private_file(path: &Path) -> Result<Option<Zeroizing<String>>, ClientError> {
    let unreadable = |reason: String| ClientError::IdentityUnreadable {
        path: path.to_owned(),
        reason,
    };
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(unreadable(error.to_string())),
    };
    let mode = metadata.permissions().mode() & 0o777;
    if metadata.is_file() && mode & 0o077 != 0 {
        return Err(unreadable(format!(
            "it is accessible by other users (mode {mode:o}); run: chmod 600 {}",
            path.display()
        )));
    }
    fs::read_to_string(path)
        .map(|text| Some(Zeroizing::new(text)))
        .map_err(|error| unreadable(error.to_string()))
}

/// One of the JSON files of a home, parsed, if its `version` (read by `version_of`) is
/// `supported`; otherwise why not, for the caller's error.
pub(crate) fn parse_versioned<T: serde::de::DeserializeOwned>(
    text: &str,
    version_of: impl Fn(&T) -> u32,
    supported: u32,
) -> Result<T, String> {
    let file: T = serde_json::from_str(text).map_err(|error| error.to_string())?;
    let version = version_of(&file);
    if version != supported {
        return Err(format!(
            "version {version} is not the supported {supported}"
        ));
    }
    Ok(file)
}

/// Writes `contents` to `path` with mode 0600 in a directory of mode 0700, through a
/// temporary file, so a crash never leaves half a file.
pub(crate) fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), std::io::Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // A name of its own: two processes of one user (the CLI and `chat-client trust`,
    // or the Python client on the same home) must not write into each other's file.
    let mut temporary = path.as_os_str().to_owned();
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|error| std::io::Error::other(error.to_string()))?;
    temporary.push(format!(".{:016x}.tmp", u64::from_be_bytes(suffix)));
    let temporary = PathBuf::from(temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(contents).and_then(|()| file.sync_all())?;
    fs::rename(&temporary, path)
}

fn write_private_pem(path: &Path, pem: &str) -> Result<(), ClientError> {
    write_private_file(path, pem.as_bytes()).map_err(|source| ClientError::IdentityUnwritable {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn no_progress(_: &Path) {}

    #[test]
    fn creates_private_key_files_and_reads_them_back() {
        let home = tempfile::tempdir().unwrap();
        let (created, how) =
            load_or_create_identity(home.path(), "alice", 2048, no_progress).unwrap();
        assert_eq!(how, Provenance::Created);
        let dir = user_dir(home.path(), "alice");
        assert_eq!(mode(&dir.join(SIGNING_FILE)), 0o600);
        assert_eq!(mode(&dir.join(ENCRYPTION_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let (loaded, how) =
            load_or_create_identity(home.path(), "alice", 2048, no_progress).unwrap();
        assert_eq!(how, Provenance::Loaded);
        assert_eq!(loaded.fingerprint(), created.fingerprint());
    }

    #[test]
    fn migrates_a_single_key_home() {
        let home = tempfile::tempdir().unwrap();
        let old = EncryptionKey::generate(2048).unwrap();
        let dir = user_dir(home.path(), "carol");
        write_private_pem(&dir.join(OLD_IDENTITY_FILE), &old.to_pkcs8_pem()).unwrap();
        let (identity, how) =
            load_or_create_identity(home.path(), "carol", 3072, no_progress).unwrap();
        assert_eq!(how, Provenance::Migrated);
        assert_eq!(identity.encryption_key().public_key(), old.public_key());
        assert!(!dir.join(OLD_IDENTITY_FILE).exists());
        assert_eq!(mode(&dir.join(SIGNING_FILE)), 0o600);
        let (again, how) =
            load_or_create_identity(home.path(), "carol", 3072, no_progress).unwrap();
        assert_eq!(how, Provenance::Loaded);
        assert_eq!(again.fingerprint(), identity.fingerprint());
    }

    #[test]
    fn refuses_a_key_others_can_read_a_corrupt_key_and_half_an_identity() {
        let home = tempfile::tempdir().unwrap();
        load_or_create_identity(home.path(), "bob", 2048, no_progress).unwrap();
        let dir = user_dir(home.path(), "bob");
        let signing = dir.join(SIGNING_FILE);
        fs::set_permissions(&signing, fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create_identity(home.path(), "bob", 2048, no_progress)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("chmod 600"), "{error}");

        fs::write(&signing, "garbage").unwrap();
        fs::set_permissions(&signing, fs::Permissions::from_mode(0o600)).unwrap();
        let error = load_or_create_identity(home.path(), "bob", 2048, no_progress)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("not a PKCS#8 PEM RSA key"), "{error}");

        fs::remove_file(dir.join(ENCRYPTION_FILE)).unwrap();
        let error = load_or_create_identity(home.path(), "bob", 2048, no_progress)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("encryption.pem") && error.contains("missing"),
            "{error}"
        );
    }
}
