//! How far the client has read each room: the highest sequence number it processed, per
//! server and room, in `<home>/<user>/progress.json` (mode 0600).
//!
//! A restarted client joins with it as `after_seq` and the relay sends exactly what it
//! missed: nothing shown twice, nothing lost. The file is rewritten whole through a
//! temporary file, so a crash leaves either the old or the new version, and every save
//! reads it again first, so that the entries of other rooms (perhaps written meanwhile
//! by another client process) are kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ClientError;
use super::home::{parse_versioned, read_private_file, user_dir, write_private_file};

const FILE: &str = "progress.json";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct ProgressFile {
    version: u32,
    /// Server URL, then room, then the last sequence number processed there.
    servers: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Where `user`'s progress is kept under `home`.
pub fn progress_path(home: &Path, user: &str) -> PathBuf {
    user_dir(home, user).join(FILE)
}

/// The last sequence number saved for `room` on `server`, if any.
pub fn last_seq(path: &Path, server: &str, room: &str) -> Result<Option<u64>, ClientError> {
    let file = read(path)?;
    Ok(file
        .servers
        .get(server_key(server))
        .and_then(|rooms| rooms.get(room))
        .copied())
}

/// Saves `seq` as the last sequence number processed in `room` on `server`.
pub fn save_last_seq(path: &Path, server: &str, room: &str, seq: u64) -> Result<(), ClientError> {
    update(path, |servers| {
        servers
            .entry(server_key(server).to_owned())
            .or_default()
            .insert(room.to_owned(), seq);
    })
}

/// Forgets `room` on `server`: the user left it, and joining it again is a new start.
pub fn forget_room(path: &Path, server: &str, room: &str) -> Result<(), ClientError> {
    update(path, |servers| {
        if let Some(rooms) = servers.get_mut(server_key(server)) {
            rooms.remove(room);
            if rooms.is_empty() {
                servers.remove(server_key(server));
            }
        }
    })
}

/// The same server however its URL is written at the end.
fn server_key(server: &str) -> &str {
    server.trim_end_matches('/')
}

/// Reads the file, applies `change` and writes it back.
fn update(
    path: &Path,
    change: impl FnOnce(&mut BTreeMap<String, BTreeMap<String, u64>>),
) -> Result<(), ClientError> {
    let mut file = read(path)?;
    change(&mut file.servers);
    let unwritable = |source| ClientError::ProgressUnwritable {
        path: path.to_owned(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(&file).map_err(|error| unwritable(error.into()))?;
    json.push(b'\n');
    write_private_file(path, &json).map_err(unwritable)
}

/// The file at `path`; an empty one if there is none.
fn read(path: &Path) -> Result<ProgressFile, ClientError> {
    let unreadable = |reason: String| ClientError::ProgressUnreadable {
        path: path.to_owned(),
        reason,
    };
    let text = match read_private_file(path) {
        Ok(Some(text)) => text,
        Ok(None) => {
            return Ok(ProgressFile {
                version: VERSION,
                servers: BTreeMap::new(),
            });
        }
        Err(ClientError::IdentityUnreadable { reason, .. }) => return Err(unreadable(reason)),
        Err(other) => return Err(other),
    };
    parse_versioned(&text, |file: &ProgressFile| file.version, VERSION).map_err(unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SERVER: &str = "https://chat.example:5555";

    #[test]
    fn saved_progress_reads_back_and_is_private() {
        let home = tempfile::tempdir().unwrap();
        let path = progress_path(home.path(), "alice");
        assert_eq!(last_seq(&path, SERVER, "lobby").unwrap(), None);
        save_last_seq(&path, SERVER, "lobby", 41).unwrap();
        save_last_seq(&path, SERVER, "lobby", 42).unwrap();
        assert_eq!(last_seq(&path, SERVER, "lobby").unwrap(), Some(42));
        assert_eq!(
            last_seq(&path, &format!("{SERVER}/"), "lobby").unwrap(),
            Some(42),
            "a trailing slash names the same server"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn other_rooms_and_servers_are_kept() {
        let home = tempfile::tempdir().unwrap();
        let path = progress_path(home.path(), "alice");
        save_last_seq(&path, SERVER, "lobby", 7).unwrap();
        save_last_seq(&path, SERVER, "ops", 3).unwrap();
        save_last_seq(&path, "http://127.0.0.1:5555", "lobby", 99).unwrap();
        save_last_seq(&path, SERVER, "lobby", 8).unwrap();
        assert_eq!(last_seq(&path, SERVER, "ops").unwrap(), Some(3));
        assert_eq!(
            last_seq(&path, "http://127.0.0.1:5555", "lobby").unwrap(),
            Some(99)
        );
        forget_room(&path, SERVER, "lobby").unwrap();
        assert_eq!(last_seq(&path, SERVER, "lobby").unwrap(), None);
        assert_eq!(last_seq(&path, SERVER, "ops").unwrap(), Some(3));
    }

    #[test]
    fn a_corrupt_file_is_one_clear_line_naming_it() {
        let home = tempfile::tempdir().unwrap();
        let path = progress_path(home.path(), "alice");
        save_last_seq(&path, SERVER, "lobby", 7).unwrap();
        std::fs::write(
            &path,
            "{\"version\": 1, \"servers\": {\"x\": {\"lobby\": -1}}}",
        )
        .unwrap();
        for error in [
            last_seq(&path, SERVER, "lobby").unwrap_err(),
            save_last_seq(&path, SERVER, "lobby", 8).unwrap_err(),
        ] {
            let text = error.to_string();
            assert!(matches!(error, ClientError::ProgressUnreadable { .. }));
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
        // Nothing was overwritten.
        assert!(std::fs::read_to_string(&path).unwrap().contains("-1"));
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let path = progress_path(home.path(), "alice");
        save_last_seq(&path, SERVER, "lobby", 7).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = last_seq(&path, SERVER, "lobby").unwrap_err().to_string();
        assert!(text.contains("chmod 600"), "{text}");
    }
}
