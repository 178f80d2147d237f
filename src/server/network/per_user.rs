//! How many `chat.v2.ChatService` RPCs one logged-in user may have in progress at once,
//! over all its connections (`--max-requests-per-user`).
//!
//! Each RPC being received holds up to one request of `--max-frame-bytes`. A token is
//! good on any number of connections, so without this bound one login could make the
//! relay buffer a request on every connection it can open. An honest client has its
//! `Chat` stream and, now and then, one `KeyExchange`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::Status;

use super::throttle::Throttled;

/// The RPCs in progress per user.
#[derive(Debug)]
pub(crate) struct UserRequests {
    max_per_user: usize,
    in_progress: Mutex<HashMap<String, usize>>,
}

/// One RPC's place among its user's, given back when the request (and so its
/// extensions, where [`require_token`](crate::server::auth::require_token) puts it) is
/// dropped.
#[derive(Debug)]
pub(crate) struct RequestPlace {
    user: String,
    requests: Arc<UserRequests>,
}

static REFUSED: Throttled = Throttled::new();

impl UserRequests {
    pub(crate) fn new(max_per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_user,
            in_progress: Mutex::default(),
        })
    }

    /// Takes a place for one more RPC of `user`, or refuses it with RESOURCE_EXHAUSTED.
    pub(crate) fn take(self: &Arc<Self>, user: &str) -> Result<Arc<RequestPlace>, Status> {
        let mut in_progress = self.in_progress.lock().expect("user requests lock");
        let count = in_progress.entry(user.to_owned()).or_default();
        if *count >= self.max_per_user {
            REFUSED.warn(|left_out| {
                tracing::warn!(user, left_out, "refused an RPC: too many in progress");
            });
            return Err(Status::resource_exhausted(format!(
                "{} requests of yours are in progress (--max-requests-per-user); wait \
                 for one to finish",
                self.max_per_user
            )));
        }
        *count += 1;
        Ok(Arc::new(RequestPlace {
            user: user.to_owned(),
            requests: self.clone(),
        }))
    }

    /// How many RPCs of `user` are in progress.
    #[cfg(test)]
    fn count(&self, user: &str) -> usize {
        let in_progress = self.in_progress.lock().expect("user requests lock");
        in_progress.get(user).copied().unwrap_or(0)
    }
}

impl Drop for RequestPlace {
    fn drop(&mut self) {
        let mut in_progress = self
            .requests
            .in_progress
            .lock()
            .expect("user requests lock");
        if let Some(count) = in_progress.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                in_progress.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_has_at_most_its_places_and_gets_them_back() {
        let requests = UserRequests::new(2);
        let first = requests.take("alice").unwrap();
        let second = requests.take("alice").unwrap();
        let refused = requests.take("alice").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("--max-requests-per-user"));
        // Others are not counted with alice.
        let _bob = requests.take("bob").unwrap();
        drop(first);
        let _third = requests.take("alice").unwrap();
        drop(second);
        assert_eq!(requests.count("alice"), 1);
        drop(_third);
        assert_eq!(requests.count("alice"), 0);
        assert!(!requests.in_progress.lock().unwrap().contains_key("alice"));
    }
}
