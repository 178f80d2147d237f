//! Sessions: opening and closing `Chat` streams, queuing frames for them, and ending
//! the ones whose client broke the rules, stopped reading, or must go (shutdown).

use tonic::Status;

use super::*;

/// How long a client whose session the relay ended has to take the status that says
/// so, before its connection is closed.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

impl Hub {
    /// Opens the session of the logged-in user `identity.user`, closing any other it has.
    pub(crate) fn open_session(
        &self,
        identity: PublicIdentity,
        connection: Option<ConnectionHandle>,
    ) -> Result<(SessionId, Outbound), HubError> {
        let user = identity.user.as_str();
        let mut state = self.lock();
        if state.shutting_down {
            return Err(HubError::ShuttingDown);
        }
        if state.reclaiming.contains(user) {
            return Err(HubError::Reclaiming);
        }
        if let Some(&previous) = state.online.get(user) {
            // The newer one wins: the older is most likely a connection that died without
            // the relay noticing yet, and its user should not wait for it to time out.
            state.remove_session(previous, Some(HubError::Replaced.into()));
        }
        if state.sessions.len() >= self.limits.max_sessions {
            return Err(HubError::Full {
                max: self.limits.max_sessions,
            });
        }
        state.next_session_id += 1;
        let id = state.next_session_id;
        let opened_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
            });
        let (frames, close, stream) =
            outbound(self.limits.outbound_queue, self.limits.outbound_queue_bytes);
        state.sessions.insert(
            id,
            Session {
                user: user.to_owned(),
                opened_us,
                identity: identity.clone(),
                frames,
                close: Some(close),
                rooms: HashMap::new(),
                reader: None,
                connection,
            },
        );
        state.online.insert(user.to_owned(), id);
        state.seen_lately.insert(user.to_owned());
        tracing::info!(user, session = id, "session opened");
        if let Some(peers) = self.peers.get() {
            let _ = peers.send((user.to_owned(), opened_us));
        }
        self.note_seen(&mut state, user.to_owned());
        Ok((id, stream))
    }

    /// Announces every session opened from now on to `peers`, the relays sharing the
    /// database, which end their own session of the same user.
    pub(crate) fn announce_sessions_to(&self, peers: UnboundedSender<(String, u64)>) {
        let _ = self.peers.set(peers);
    }

    /// Announces every open session again (the relays sharing the database may have
    /// missed the announcements while their link was down).
    pub(crate) fn announce_sessions_again(&self) {
        let Some(peers) = self.peers.get() else {
            return;
        };
        let state = self.lock();
        for session in state.sessions.values() {
            let _ = peers.send((session.user.clone(), session.opened_us));
        }
    }

    /// Remembers the task reading the session's frames, to stop it if the session is
    /// closed by the server.
    pub(crate) fn set_reader(&self, id: SessionId, reader: AbortHandle) {
        match self.lock().sessions.get_mut(&id) {
            Some(session) => session.reader = Some(reader),
            None => reader.abort(),
        }
    }

    /// Whether the session is still open.
    pub(crate) fn is_open(&self, id: SessionId) -> bool {
        self.lock().sessions.contains_key(&id)
    }

    /// The user of an open session.
    pub(crate) fn user(&self, id: SessionId) -> Result<String, HubError> {
        Ok(self.lock().session(id)?.user.clone())
    }

    /// Queues an answer for the session itself (a rejection of one of its frames).
    pub(crate) fn reply(&self, id: SessionId, request_id: u64, kind: Kind) {
        self.operate(|state| state.deliver(id, request_id, kind));
    }

    /// The client ended its session. Its user stays a member of its rooms.
    pub(crate) fn close_session(&self, id: SessionId) {
        self.operate(|state| state.remove_session(id, None));
    }

    /// The server ends a session, sending `status` to the client.
    pub(crate) fn end_session(&self, id: SessionId, status: Status) {
        self.operate(|state| state.remove_session(id, Some(status)));
    }

    /// Ends the sessions whose client has taken nothing from its queue for the stall
    /// timeout: it reads nothing, or grants no HTTP/2 window.
    pub(crate) fn end_stalled(&self) {
        self.operate(|state| {
            let timeout = state.stall_timeout;
            let stalled: Vec<SessionId> = state
                .sessions
                .iter()
                .filter(|(_, session)| session.frames.stalled_for().is_some_and(|t| t >= timeout))
                .map(|(&id, _)| id)
                .collect();
            for id in stalled {
                let stalled = HubError::Stalled {
                    secs: timeout.as_secs(),
                };
                state.remove_session(id, Some(stalled.into()));
            }
        });
    }

    /// Refuses new sessions and ends every open one with UNAVAILABLE, so that the
    /// server's graceful shutdown does not wait for clients that would never leave.
    pub(crate) fn shutdown(&self) {
        self.operate(|state| {
            state.shutting_down = true;
            let ids: Vec<SessionId> = state.sessions.keys().copied().collect();
            for id in ids {
                state.remove_session(id, Some(HubError::ShutDown.into()));
            }
        });
    }
}

impl State {
    pub(super) fn session(&self, id: SessionId) -> Result<&Session, HubError> {
        self.sessions.get(&id).ok_or(HubError::SessionClosed)
    }

    /// Queues a frame for one session without waiting; a full queue marks it for
    /// disconnection.
    pub(super) fn deliver(&mut self, id: SessionId, request_id: u64, kind: Kind) {
        self.push(
            id,
            ServerFrame {
                request_id,
                kind: Some(kind),
            },
        );
    }

    pub(super) fn push(&mut self, id: SessionId, frame: ServerFrame) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        if let Err(Refusal::Full) = session.frames.push(frame)
            && !self.overflowed.contains(&id)
        {
            self.overflowed.push(id);
        }
        // A closed queue means tonic dropped the stream: the reader task is ending and
        // will close the session itself.
    }

    pub(super) fn remove_session(&mut self, id: SessionId, status: Option<Status>) {
        let Some(mut session) = self.sessions.remove(&id) else {
            return;
        };
        if self.online.get(&session.user) == Some(&id) {
            self.online.remove(&session.user);
        }
        self.departed.push(session.user.clone());
        self.seen_lately.insert(session.user.clone());
        if let Some(status) = status {
            tracing::info!(user = session.user, code = ?status.code(), "session ended by the server");
            if let Some(close) = session.close.take() {
                let _ = close.send(status);
            }
            if let Some(reader) = session.reader {
                reader.abort();
            }
            // A client that grants no HTTP/2 window never gets the status: its stream
            // would hold its queue for as long as its connection lives.
            if let (Some(connection), Some(runtime)) = (session.connection, &self.runtime) {
                let frames = session.frames;
                runtime.spawn(async move {
                    tokio::time::sleep(CLOSING_GRACE).await;
                    if !frames.is_closed() {
                        tracing::info!(
                            peer = %connection.peer_ip(),
                            "closed the connection of a client that took no status"
                        );
                        connection.close();
                    }
                });
            }
        } else {
            tracing::info!(user = session.user, "session closed");
        }
    }

    pub(super) fn evict_overflowed(&mut self) {
        while let Some(id) = self.overflowed.pop() {
            self.remove_session(id, Some(HubError::Overflowed.into()));
        }
    }
}
