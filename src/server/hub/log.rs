//! A room's log: messages and sender key distributions, numbered and handed to the
//! store's writer; members get them once committed (`committed`).

use super::*;

impl Hub {
    /// Stores a sealed message for the other members of `room`; they get it, and the
    /// sender its acknowledgement, once it is committed.
    pub(crate) fn send(
        &self,
        id: SessionId,
        request_id: u64,
        room: &str,
        sealed: SealedMessage,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), HubError> {
        self.operate(|state| {
            let sender = state.attached_member(id, room)?;
            state.writable()?;
            // The store numbers it, and trims the room, once it knows whether this is a
            // resend.
            let changes = vec![Change::AppendMessage {
                room: room.to_owned(),
                seq: 0,
                sender: sender.clone(),
                sealed: sealed.clone(),
            }];
            let effect = Effect::Message {
                session: id,
                request_id,
                room: room.to_owned(),
                sender,
                sealed,
            };
            self.submit(state, changes, effect, Some(permit))
        })
    }

    /// Stores the wrapped keys meant for members of `room` (and the sender's own copy);
    /// each recipient gets its own, and the sender its acknowledgement, once committed.
    pub(crate) fn distribute(
        &self,
        id: SessionId,
        request_id: u64,
        room: &str,
        key_id: u64,
        keys: Vec<WrappedKey>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), HubError> {
        self.operate(|state| {
            let sender = state.attached_member(id, room)?;
            state.writable()?;
            let room_state = state.rooms.get_mut(room).expect("a member's room exists");
            let keys: Vec<WrappedKey> = keys
                .into_iter()
                .filter(|key| room_state.is_active_member(&key.recipient))
                .collect();
            if keys.is_empty() {
                state.deliver(id, request_id, Kind::Ack(Ack::default()));
                return Ok(());
            }
            let changes = vec![Change::AppendSenderKeys {
                room: room.to_owned(),
                seq: 0,
                sender: sender.clone(),
                key_id,
                keys: keys.clone(),
            }];
            let effect = Effect::SenderKeys {
                session: id,
                request_id,
                room: room.to_owned(),
                sender,
                keys,
            };
            self.submit(state, changes, effect, Some(permit))
        })
    }
}
