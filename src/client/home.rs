//! The client's home directory: where each user's identity key lives.
//!
//! `<home>/<user>/identity.pem` holds the RSA private key as PKCS#8 PEM, mode 0600,
//! in a directory of mode 0700. It is made once and reused; a key file that others
//! can read is refused, as ssh does.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ClientError;
use crate::crypto::IdentityKey;

/// The default home: `$XDG_DATA_HOME/e2ee-chat` or `~/.local/share/e2ee-chat`.
pub fn default_home() -> PathBuf {
    dirs::data_local_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("e2ee-chat")
}

/// Where `user`'s identity key is kept under `home`.
pub fn identity_path(home: &Path, user: &str) -> PathBuf {
    home.join(user).join("identity.pem")
}

/// Reads the identity key at `path`, or `None` if there is none yet.
pub fn load_identity(path: &Path) -> Result<Option<IdentityKey>, ClientError> {
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
    let pem = zeroize::Zeroizing::new(
        fs::read_to_string(path).map_err(|error| unreadable(error.to_string()))?,
    );
    IdentityKey::from_pkcs8_pem(&pem)
        .map(Some)
        .map_err(|error| unreadable(format!("{error}; move it away to make a new identity")))
}

/// Generates a `bits`-bit identity and stores it at `path` (mode 0600, written to a
/// temporary file first so a crash never leaves half a key).
pub fn create_identity(path: &Path, bits: usize) -> Result<IdentityKey, ClientError> {
    let identity = IdentityKey::generate(bits)?;
    let unwritable = |source| ClientError::IdentityUnwritable {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(unwritable)?;
    let temporary = path.with_extension("pem.tmp");
    let _ = fs::remove_file(&temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(unwritable)?;
    file.write_all(identity.to_pkcs8_pem().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(unwritable)?;
    fs::rename(&temporary, path).map_err(unwritable)?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_private_key_file_and_reads_it_back() {
        let home = tempfile::tempdir().unwrap();
        let path = identity_path(home.path(), "alice");
        assert!(load_identity(&path).unwrap().is_none());
        let created = create_identity(&path, 2048).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let loaded = load_identity(&path).unwrap().unwrap();
        assert_eq!(loaded.public_key(), created.public_key());
    }

    #[test]
    fn refuses_a_key_others_can_read_and_a_corrupt_key() {
        let home = tempfile::tempdir().unwrap();
        let path = identity_path(home.path(), "bob");
        create_identity(&path, 2048).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_identity(&path).err().unwrap().to_string();
        assert!(error.contains("chmod 600"), "{error}");

        fs::write(&path, "garbage").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let error = load_identity(&path).err().unwrap().to_string();
        assert!(error.contains("not a PKCS#8 PEM RSA key"), "{error}");
    }
}
