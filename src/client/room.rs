//! The end-to-end state of one room, without any I/O.
//!
//! It holds the members' public keys, our outbound sender key, and the sender keys
//! the others gave us. It tells its owner what to send (key distributions) when the
//! membership changes, and turns message deliveries into plaintext. A message whose
//! sender key has not arrived yet waits for it: the relay can deliver a member's
//! message to a newcomer before that member has handed the newcomer its key.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::ClientError;
use super::replay::ReplayWindow;
use crate::crypto::{IdentityKey, OutboundSenderKey, PublicEncryptionKey, SenderKey};
use crate::proto::{
    DistributeSenderKey, MessageDelivery, PublicIdentity, SendMessage, SenderKeyDelivery,
    WrappedSenderKey,
};
use crate::protocol::{Envelope, MAX_ENVELOPE_BYTES, MessageKind, validate_user};

/// Messages kept while their sender key is on its way; beyond that the oldest is dropped.
pub const MAX_WAITING_MESSAGES: usize = 1024;

/// Wrapped keys per `DistributeSenderKey` frame: 64 keys of at most 512 bytes stay well
/// under the relay's default 64 KiB frame limit, whatever the room's size.
const MAX_KEYS_PER_DISTRIBUTION: usize = 64;

/// What a delivery produced for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A message, decrypted and authenticated.
    Message {
        sender: String,
        text: String,
        sent_at_ms: u64,
    },
    /// Something was dropped; the text says what and why.
    Warning(String),
}

/// Another member's sender key, and the counters it has opened.
struct InboundKey {
    key: SenderKey,
    seen: ReplayWindow,
}

/// The end-to-end state of one room.
pub struct RoomKeys {
    room: String,
    me: String,
    identity: Arc<IdentityKey>,
    members: BTreeMap<String, PublicEncryptionKey>,
    outbound: OutboundSenderKey,
    /// Each member's current sender key. Only the newest is kept: the relay delivers a
    /// member's frames in the order it sent them, so its messages under an older key all
    /// arrive before its new key does.
    inbound: HashMap<String, InboundKey>,
    waiting: VecDeque<MessageDelivery>,
}

impl RoomKeys {
    /// The state right after joining `room` as `me`, with the other `members` the relay
    /// listed, and a fresh sender key. Members whose key is malformed are left out with
    /// a warning.
    pub fn new(
        room: &str,
        me: &str,
        identity: Arc<IdentityKey>,
        members: Vec<PublicIdentity>,
    ) -> Result<(Self, Vec<RoomEvent>), ClientError> {
        let mut keys = Self {
            room: room.to_owned(),
            me: me.to_owned(),
            identity,
            members: BTreeMap::new(),
            outbound: OutboundSenderKey::generate()?,
            inbound: HashMap::new(),
            waiting: VecDeque::new(),
        };
        let warnings = members
            .into_iter()
            .filter_map(|member| keys.add_member(member).err())
            .collect();
        Ok((keys, warnings))
    }

    /// The room's name.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The other members, sorted by name.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// Messages still waiting for their sender key.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Our current sender key, wrapped for every other member, in as many frames as
    /// the frame size limit needs; none when alone.
    pub fn distribute_to_all(&self) -> Result<Vec<DistributeSenderKey>, ClientError> {
        let recipients: Vec<&String> = self.members.keys().collect();
        recipients
            .chunks(MAX_KEYS_PER_DISTRIBUTION)
            .map(|chunk| self.distribution(chunk))
            .collect()
    }

    /// A member joined: it gets our current sender key.
    pub fn member_joined(
        &mut self,
        member: PublicIdentity,
    ) -> Result<(Vec<DistributeSenderKey>, Vec<RoomEvent>), ClientError> {
        let user = member.user.clone();
        if let Err(warning) = self.add_member(member) {
            return Ok((Vec::new(), vec![warning]));
        }
        Ok((vec![self.distribution(&[&user])?], Vec::new()))
    }

    /// A member left: forget its keys and rotate ours, so it cannot read what we send
    /// next. Returns the new key for the remaining members.
    pub fn member_left(
        &mut self,
        user: &str,
    ) -> Result<(Vec<DistributeSenderKey>, Vec<RoomEvent>), ClientError> {
        self.members.remove(user);
        self.inbound.remove(user);
        let before = self.waiting.len();
        self.waiting.retain(|message| message.sender != user);
        let dropped = before - self.waiting.len();
        let mut events = Vec::new();
        if dropped > 0 {
            events.push(RoomEvent::Warning(format!(
                "dropped {dropped} message(s) from {user} in {}: its sender key never arrived",
                self.room
            )));
        }
        self.outbound = OutboundSenderKey::generate()?;
        Ok((self.distribute_to_all()?, events))
    }

    /// Seals a text message. If our key has sealed all it may, it is rotated first and
    /// the new key's distribution must be sent before the message.
    pub fn seal_text(
        &mut self,
        text: &str,
    ) -> Result<(Vec<DistributeSenderKey>, SendMessage), ClientError> {
        let envelope = zeroize::Zeroizing::new(Envelope::text(&self.me, text).to_json());
        if envelope.len() > MAX_ENVELOPE_BYTES {
            return Err(ClientError::MessageTooLong {
                len: envelope.len(),
                max: MAX_ENVELOPE_BYTES,
            });
        }
        let rotation = if self.outbound.is_exhausted() {
            self.outbound = OutboundSenderKey::generate()?;
            self.distribute_to_all()?
        } else {
            Vec::new()
        };
        let sealed = self.outbound.seal(&self.room, &self.me, &envelope)?;
        let send = SendMessage {
            room: self.room.clone(),
            sealed: Some(sealed),
        };
        Ok((rotation, send))
    }

    /// Takes a sender key another member wrapped for us, then opens the messages that
    /// were waiting for it.
    pub fn accept_sender_key(&mut self, delivery: SenderKeyDelivery) -> Vec<RoomEvent> {
        let sender = delivery.sender;
        if !self.members.contains_key(&sender) {
            return vec![self.warning(format!(
                "ignored a sender key from {sender}, who is not a member"
            ))];
        }
        let key = match SenderKey::unwrap(
            &self.identity,
            &delivery.wrapped_key,
            &self.room,
            &sender,
            &self.me,
            delivery.key_id,
        ) {
            Ok(key) => key,
            Err(error) => {
                return vec![self.warning(format!("rejected the sender key of {sender}: {error}"))];
            }
        };
        let key_id = key.id();
        let replaced = self.inbound.insert(
            sender.clone(),
            InboundKey {
                key,
                seen: ReplayWindow::default(),
            },
        );
        let mut events = Vec::new();
        if replaced.is_some_and(|old| old.key.id() == key_id) {
            events.push(self.warning(format!("ignored a repeated sender key from {sender}")));
            // A repeated key must not reopen the window of the key it repeats.
            return events;
        }

        let (ready, still_waiting): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|message| message.sender == sender);
        self.waiting = still_waiting;
        for message in ready {
            if message.sealed.as_ref().map(|sealed| sealed.key_id) == Some(key_id) {
                events.extend(self.open(message));
            } else {
                events.push(self.warning(format!(
                    "dropped a message from {sender}: its sender key never arrived"
                )));
            }
        }
        events
    }

    /// Opens a message from another member, or keeps it until its key arrives.
    pub fn open(&mut self, delivery: MessageDelivery) -> Vec<RoomEvent> {
        let sender = delivery.sender.as_str();
        let Some(sealed) = delivery.sealed.as_ref() else {
            return vec![self.warning(format!("dropped an empty message from {sender}"))];
        };
        if !self.members.contains_key(sender) {
            return vec![self.warning(format!(
                "dropped a message from {sender}, who is not a member"
            ))];
        }
        let Some(current) = self.inbound.get_mut(sender) else {
            return self.wait_for_key(delivery);
        };
        if current.key.id() != sealed.key_id {
            return vec![self.warning(format!(
                "dropped a message from {sender} under a key that is not its current one \
                 (replayed or stale)"
            ))];
        }
        let opened = current
            .key
            .open(&self.room, sender, sealed)
            .map_err(|error| error.to_string())
            .and_then(|plaintext| {
                Envelope::from_json(&plaintext).map_err(|error| error.to_string())
            });
        // Only an authentic message may move the window, so this comes after opening.
        let fresh = opened.is_ok() && current.seen.accept(sealed.counter);
        match opened {
            Err(error) => vec![self.warning(format!("dropped a message from {sender}: {error}"))],
            Ok(_) if !fresh => vec![self.warning(format!(
                "dropped a repeated message from {sender} (counter {})",
                sealed.counter
            ))],
            Ok(envelope) if envelope.sender != sender => vec![self.warning(format!(
                "dropped a message from {sender} that claims to be from {}",
                envelope.sender
            ))],
            Ok(envelope) if envelope.kind == MessageKind::Unknown => vec![self.warning(format!(
                "{sender} sent a kind of message this version cannot show"
            ))],
            Ok(envelope) => vec![RoomEvent::Message {
                sender: envelope.sender,
                text: envelope.text,
                sent_at_ms: envelope.sent_at_ms,
            }],
        }
    }

    fn wait_for_key(&mut self, delivery: MessageDelivery) -> Vec<RoomEvent> {
        let mut events = Vec::new();
        if self.waiting.len() == MAX_WAITING_MESSAGES
            && let Some(oldest) = self.waiting.pop_front()
        {
            events.push(self.warning(format!(
                "dropped a message from {}: its sender key never arrived",
                oldest.sender
            )));
        }
        self.waiting.push_back(delivery);
        events
    }

    fn add_member(&mut self, member: PublicIdentity) -> Result<(), RoomEvent> {
        // The relay is not trusted to send sane names: they end up in file paths,
        // terminal lines and the bytes keys are bound to.
        if let Err(error) = validate_user(&member.user) {
            return Err(self.warning(format!("ignored a member: {error}")));
        }
        match PublicEncryptionKey::from_der(&member.encryption_public_key) {
            Ok(key) => {
                self.members.insert(member.user, key);
                Ok(())
            }
            Err(error) => Err(self.warning(format!(
                "cannot send to {} in {}: {error}",
                member.user, self.room
            ))),
        }
    }

    fn distribution(&self, recipients: &[&String]) -> Result<DistributeSenderKey, ClientError> {
        let keys = recipients
            .iter()
            .map(|recipient| {
                let public = &self.members[*recipient];
                Ok(WrappedSenderKey {
                    recipient: (*recipient).clone(),
                    wrapped_key: self
                        .outbound
                        .wrap_for(public, &self.room, &self.me, recipient)?,
                })
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(DistributeSenderKey {
            room: self.room.clone(),
            key_id: self.outbound.id(),
            keys,
        })
    }

    fn warning(&self, text: String) -> RoomEvent {
        RoomEvent::Warning(format!("[{}] {text}", self.room))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SealedMessage;
    use std::sync::OnceLock;

    /// Three members' identities, generated once for all these tests.
    fn identities() -> &'static [Arc<IdentityKey>; 3] {
        static IDS: OnceLock<[Arc<IdentityKey>; 3]> = OnceLock::new();
        IDS.get_or_init(|| std::array::from_fn(|_| Arc::new(IdentityKey::generate(2048).unwrap())))
    }

    fn public(name: &str, index: usize) -> PublicIdentity {
        PublicIdentity {
            user: name.to_owned(),
            encryption_public_key: identities()[index].public_key().to_der().to_vec().into(),
        }
    }

    /// `user` (identity `index`) just joined a room where `others` already are.
    fn member(user: &str, index: usize, others: &[(&str, usize)]) -> RoomKeys {
        let members = others.iter().map(|(name, i)| public(name, *i)).collect();
        RoomKeys::new("lobby", user, identities()[index].clone(), members)
            .unwrap()
            .0
    }

    /// What the relay would deliver to `recipient` from a distribution by `sender`.
    fn deliver_key(dist: &DistributeSenderKey, sender: &str, recipient: &str) -> SenderKeyDelivery {
        let wrapped = dist
            .keys
            .iter()
            .find(|key| key.recipient == recipient)
            .unwrap();
        SenderKeyDelivery {
            room: dist.room.clone(),
            sender: sender.to_owned(),
            key_id: dist.key_id,
            wrapped_key: wrapped.wrapped_key.clone(),
        }
    }

    fn deliver_message(send: &SendMessage, sender: &str) -> MessageDelivery {
        MessageDelivery {
            room: send.room.clone(),
            sender: sender.to_owned(),
            sealed: send.sealed.clone(),
        }
    }

    fn text(sender: &str, text: &str) -> RoomEvent {
        RoomEvent::Message {
            sender: sender.to_owned(),
            text: text.to_owned(),
            sent_at_ms: 0,
        }
    }

    fn without_time(events: Vec<RoomEvent>) -> Vec<RoomEvent> {
        events
            .into_iter()
            .map(|event| match event {
                RoomEvent::Message { sender, text, .. } => RoomEvent::Message {
                    sender,
                    text,
                    sent_at_ms: 0,
                },
                other => other,
            })
            .collect()
    }

    fn alice_and_bob() -> (RoomKeys, RoomKeys) {
        let mut alice = member("alice", 0, &[]);
        let mut bob = member("bob", 1, &[("alice", 0)]);
        let (to_bob, _) = alice.member_joined(public("bob", 1)).unwrap();
        bob.accept_sender_key(deliver_key(&to_bob[0], "alice", "bob"));
        let to_alice = bob.distribute_to_all().unwrap();
        alice.accept_sender_key(deliver_key(&to_alice[0], "bob", "alice"));
        (alice, bob)
    }

    #[test]
    fn members_read_each_other() {
        let (mut alice, mut bob) = alice_and_bob();
        let (_, send) = alice.seal_text("hi bob").unwrap();
        assert_eq!(
            without_time(bob.open(deliver_message(&send, "alice"))),
            [text("alice", "hi bob")]
        );
        let (_, send) = bob.seal_text("hi alice").unwrap();
        assert_eq!(
            without_time(alice.open(deliver_message(&send, "bob"))),
            [text("bob", "hi alice")]
        );
    }

    #[test]
    fn a_message_waits_for_its_key() {
        let mut alice = member("alice", 0, &[]);
        let mut carol = member("carol", 2, &[("alice", 0)]);
        // The relay delivers alice's message before alice has heard that carol joined.
        let (_, send) = alice.seal_text("early").unwrap();
        assert!(carol.open(deliver_message(&send, "alice")).is_empty());
        assert_eq!(carol.waiting(), 1);
        let (to_carol, _) = alice.member_joined(public("carol", 2)).unwrap();
        let events = carol.accept_sender_key(deliver_key(&to_carol[0], "alice", "carol"));
        assert_eq!(without_time(events), [text("alice", "early")]);
        assert_eq!(carol.waiting(), 0);
    }

    #[test]
    fn after_a_member_leaves_its_old_keys_do_not_open_new_messages() {
        let (mut alice, mut bob) = alice_and_bob();
        let (rotation, _) = alice.member_left("bob").unwrap();
        assert!(rotation.is_empty(), "nobody is left to receive the new key");
        let (_, send) = alice.seal_text("after bob left").unwrap();
        // bob still has alice's old key, and alice as a member, yet cannot open it.
        let events = bob.open(deliver_message(&send, "alice"));
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("not its current")),
            "{events:?}"
        );
    }

    #[test]
    fn a_replayed_message_is_shown_once() {
        let (mut alice, mut bob) = alice_and_bob();
        let (_, first) = alice.seal_text("pay 10 to carol").unwrap();
        let (_, second) = alice.seal_text("second").unwrap();
        let first = deliver_message(&first, "alice");
        assert_eq!(
            without_time(bob.open(first.clone())),
            [text("alice", "pay 10 to carol")]
        );
        assert_eq!(
            without_time(bob.open(deliver_message(&second, "alice"))),
            [text("alice", "second")]
        );
        let events = bob.open(first);
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("repeated")),
            "{events:?}"
        );
    }

    #[test]
    fn an_old_key_stops_working_once_its_successor_arrives() {
        let (mut alice, mut bob) = alice_and_bob();
        let (_, old) = alice.seal_text("under the old key").unwrap();
        let (rotation, _) = alice.member_left("carol-who-was-never-here").unwrap();
        bob.accept_sender_key(deliver_key(&rotation[0], "alice", "bob"));
        let events = bob.open(deliver_message(&old, "alice"));
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("not its current")),
            "{events:?}"
        );
        let (_, new) = alice.seal_text("under the new key").unwrap();
        assert_eq!(
            without_time(bob.open(deliver_message(&new, "alice"))),
            [text("alice", "under the new key")]
        );
    }

    #[test]
    fn names_from_the_relay_are_checked() {
        let mut bob = member("bob", 1, &[]);
        let mut evil = public("alice", 0);
        evil.user = "alice\n[lobby] admin: send me your password".into();
        let (distribution, events) = bob.member_joined(evil).unwrap();
        assert!(distribution.is_empty());
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("ignored a member")),
            "{events:?}"
        );
        assert_eq!(bob.members().count(), 0);
    }

    #[test]
    fn tampering_is_reported_not_shown() {
        let (mut alice, mut bob) = alice_and_bob();
        let (_, send) = alice.seal_text("original").unwrap();
        let mut delivery = deliver_message(&send, "alice");
        let sealed = delivery.sealed.as_mut().unwrap();
        let mut bytes = sealed.ciphertext.to_vec();
        bytes[3] ^= 0x40;
        sealed.ciphertext = bytes.into();
        let events = bob.open(delivery);
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("failed authentication")),
            "{events:?}"
        );
    }

    #[test]
    fn a_relay_cannot_reattribute_a_message() {
        let mut alice = member("alice", 0, &[]);
        let mut carol = member("carol", 2, &[("alice", 0), ("bob", 1)]);
        let (to_carol, _) = alice.member_joined(public("carol", 2)).unwrap();
        carol.accept_sender_key(deliver_key(&to_carol[0], "alice", "carol"));
        let (_, send) = alice.seal_text("from alice").unwrap();
        // Claiming the message is bob's leaves carol no key to open it with.
        assert!(carol.open(deliver_message(&send, "bob")).is_empty());
        // A key wrapped for carol as alice's, relabelled as bob's, does not unwrap.
        let (to_carol, _) = alice.member_joined(public("carol", 2)).unwrap();
        let events = carol.accept_sender_key(deliver_key(&to_carol[0], "bob", "carol"));
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("rejected")),
            "{events:?}"
        );
    }

    #[test]
    fn a_big_room_gets_our_key_in_frames_under_the_size_limit() {
        let mut others: Vec<(String, usize)> = (0..150).map(|n| (format!("m{n}"), n % 3)).collect();
        others.push(("alice".into(), 0));
        let names: Vec<(&str, usize)> = others.iter().map(|(n, i)| (n.as_str(), *i)).collect();
        let newcomer = member("newcomer", 1, &names);
        let frames = newcomer.distribute_to_all().unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(
            frames.iter().map(|frame| frame.keys.len()).sum::<usize>(),
            151
        );
        for frame in &frames {
            let size = prost::Message::encoded_len(frame);
            assert!(
                size < crate::server::Limits::DEFAULT.max_frame_bytes / 2,
                "{size} bytes"
            );
        }
    }

    #[test]
    fn waiting_messages_are_bounded() {
        // bob knows alice is a member but has not received her key.
        let mut bob = member("bob", 1, &[("alice", 0)]);
        let unknown_key = SealedMessage {
            key_id: 1,
            counter: 0,
            nonce: vec![0; 12].into(),
            ciphertext: vec![0; 32].into(),
        };
        let mut warnings = 0;
        for _ in 0..MAX_WAITING_MESSAGES + 3 {
            warnings += bob
                .open(MessageDelivery {
                    room: "lobby".into(),
                    sender: "alice".into(),
                    sealed: Some(unknown_key.clone()),
                })
                .len();
        }
        assert_eq!(bob.waiting(), MAX_WAITING_MESSAGES);
        assert_eq!(warnings, 3);
    }

    #[test]
    fn too_long_a_message_is_refused_before_sealing() {
        let (mut alice, _) = alice_and_bob();
        // Control characters take 6 bytes each in JSON: the limit is on the envelope.
        assert!(matches!(
            alice.seal_text(&"\u{1}".repeat(MAX_ENVELOPE_BYTES / 5)),
            Err(ClientError::MessageTooLong { .. })
        ));
        assert!(
            alice
                .seal_text(&"x".repeat(MAX_ENVELOPE_BYTES - 100))
                .is_ok()
        );
        assert!(matches!(
            alice.seal_text(&"x".repeat(MAX_ENVELOPE_BYTES)),
            Err(ClientError::MessageTooLong { .. })
        ));
    }
}
