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
    /// `--max-frame-bytes`: the largest client frame, on `Chat` as in `SendFrame`.
    pub max_frame_bytes: usize,
}

impl Relay {
    /// Refuses a client frame over `--max-frame-bytes`.
    pub(crate) fn check_frame_size(
        &self,
        frame: &crate::proto::ClientFrame,
    ) -> Result<(), tonic::Status> {
        use prost::Message;

        let len = frame.encoded_len();
        if len > self.max_frame_bytes {
            return Err(tonic::Status::resource_exhausted(format!(
                "frame too large: {len} bytes, over the limit of {} (--max-frame-bytes); \
                 send smaller messages",
                self.max_frame_bytes
            )));
        }
        Ok(())
    }
}
