//! The end-to-end state of one room, without any I/O.
//!
//! It holds the members' verified identities, our outbound sender key, and the sender
//! keys the others gave us. It tells its owner what to send (key distributions) when
//! the membership changes, and turns message deliveries into plaintext. Every sender
//! key and message is checked against its sender's signing key before anything is
//! decrypted. A message whose sender key has not arrived yet waits for it: the relay
//! can deliver a member's message to a newcomer before that member has handed the
//! newcomer its key.
//!
//! A member can be untrusted: the relay presented keys for it that differ from the ones
//! pinned (see [`Contacts`](super::Contacts)). Nothing is wrapped for an untrusted
//! member and nothing from it is opened until [`RoomKeys::trust`] is called.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::ClientError;
use super::replay::ReplayWindow;
use crate::crypto::binding::{message_signed_bytes, sender_key_signed_bytes};
use crate::crypto::{Identity, OutboundSenderKey, SenderKey, VerifiedIdentity};
use crate::proto::{
    DistributeSenderKey, MessageDelivery, PublicIdentity, SealedMessage, SendMessage,
    SenderKeyDelivery, WrappedSenderKey,
};
use crate::protocol::{Envelope, MAX_ENVELOPE_BYTES, MessageKind, validate_user};

/// Messages kept while their sender key is on its way; beyond that the oldest is dropped.
pub const MAX_WAITING_MESSAGES: usize = 1024;

/// Wrapped keys per `DistributeSenderKey` frame: 32 keys and signatures of at most 512
/// bytes each (4096-bit RSA) stay well under the relay's default 64 KiB frame limit,
/// whatever the room's size.
const MAX_KEYS_PER_DISTRIBUTION: usize = 32;

/// Sender key ids remembered per sender, so that an old key is never accepted again.
const REMEMBERED_KEY_IDS: usize = 256;
/// Senders whose key ids are remembered; a relay inventing members cannot grow it further.
const REMEMBERED_SENDERS: usize = 4096;

/// What a delivery produced for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A message, signed by its sender, decrypted and authenticated.
    Message {
        sender: String,
        text: String,
        sent_at_ms: u64,
    },
    /// Something was dropped; the text says what and why.
    Warning(String),
}

/// What a membership change calls for: key distributions to send, and what to show.
pub type KeyUpdate = (Vec<DistributeSenderKey>, Vec<RoomEvent>);

/// Another member of the room, as far as we know it.
struct Member {
    identity: VerifiedIdentity,
    trusted: bool,
    /// Its current sender key, and the counters opened under it.
    key: Option<(SenderKey, ReplayWindow)>,
    /// While untrusted: its latest sender key, signature checked, not yet unwrapped.
    held_key: Option<SenderKeyDelivery>,
}

/// The end-to-end state of one room.
pub struct RoomKeys {
    room: String,
    me: String,
    identity: Arc<Identity>,
    members: BTreeMap<String, Member>,
    /// Key ids accepted from each sender, oldest first. Kept when a member leaves, so
    /// that a relay faking a leave and a join cannot bring an old key back.
    accepted_key_ids: HashMap<String, VecDeque<u64>>,
    outbound: OutboundSenderKey,
    waiting: VecDeque<MessageDelivery>,
}

impl RoomKeys {
    /// The state of `me` in `room`, with a fresh sender key and no other member yet.
    pub fn new(room: &str, me: &str, identity: Arc<Identity>) -> Result<Self, ClientError> {
        Ok(Self {
            room: room.to_owned(),
            me: me.to_owned(),
            identity,
            members: BTreeMap::new(),
            accepted_key_ids: HashMap::new(),
            outbound: OutboundSenderKey::generate()?,
            waiting: VecDeque::new(),
        })
    }

    /// The room's name.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The other members, sorted by name.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// The verified identity of a member.
    pub fn member_identity(&self, user: &str) -> Option<&VerifiedIdentity> {
        self.members.get(user).map(|member| &member.identity)
    }

    /// Whether `user` is a member whose keys we use.
    pub fn is_trusted(&self, user: &str) -> bool {
        self.members.get(user).is_some_and(|member| member.trusted)
    }

    /// Messages still waiting for their sender key.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Checks a member the relay announced: a valid name, and an identity whose
    /// signature verifies. The relay is not trusted to send sane names: they end up in
    /// file paths, terminal lines and the bytes keys are bound to.
    pub fn vet(&self, member: &PublicIdentity) -> Result<VerifiedIdentity, RoomEvent> {
        if let Err(error) = validate_user(&member.user) {
            return Err(self.warning(format!("ignored a member: {error}")));
        }
        if member.user == self.me {
            // Our own name with keys that may not be ours: never wrap our key for it.
            return Err(self.warning(format!(
                "ignored a member the server announced under your own name, {}",
                self.me
            )));
        }
        VerifiedIdentity::verify(member).map_err(|error| {
            self.warning(format!(
                "ignored member {}: its identity is invalid: {error}",
                member.user
            ))
        })
    }

    /// Adds a member without giving it our key (see [`distribute_to_all`](Self::distribute_to_all)).
    pub fn insert_member(&mut self, identity: VerifiedIdentity, trusted: bool) {
        self.members.insert(
            identity.user.clone(),
            Member {
                identity,
                trusted,
                key: None,
                held_key: None,
            },
        );
    }

    /// Our current sender key, wrapped for every trusted member, in as many frames as
    /// the frame size limit needs; none when nobody is.
    pub fn distribute_to_all(&self) -> Result<Vec<DistributeSenderKey>, ClientError> {
        let recipients: Vec<&String> = self
            .members
            .iter()
            .filter(|(_, member)| member.trusted)
            .map(|(user, _)| user)
            .collect();
        recipients
            .chunks(MAX_KEYS_PER_DISTRIBUTION)
            .map(|chunk| self.distribution(chunk))
            .collect()
    }

    /// A member joined: it gets our current sender key if it is trusted.
    pub fn member_joined(
        &mut self,
        identity: VerifiedIdentity,
        trusted: bool,
    ) -> Result<Vec<DistributeSenderKey>, ClientError> {
        let user = identity.user.clone();
        self.insert_member(identity, trusted);
        if trusted {
            Ok(vec![self.distribution(&[&user])?])
        } else {
            Ok(Vec::new())
        }
    }

    /// The user accepted `user`'s keys: the key it sent while it was untrusted is taken,
    /// and ours is rotated for everyone, so that what we sent while it was untrusted
    /// stays out of its reach. `None` if `user` is not a member.
    pub fn trust(&mut self, user: &str) -> Result<Option<KeyUpdate>, ClientError> {
        let Some(member) = self.members.get_mut(user) else {
            return Ok(None);
        };
        member.trusted = true;
        let held = member.held_key.take();
        self.outbound = OutboundSenderKey::generate()?;
        let distribution = self.distribute_to_all()?;
        let events = held
            .map(|delivery| self.accept_sender_key(delivery))
            .unwrap_or_default();
        Ok(Some((distribution, events)))
    }

    /// A member left: forget its keys and rotate ours, so it cannot read what we send
    /// next. Returns the new key for the remaining members.
    pub fn member_left(&mut self, user: &str) -> Result<KeyUpdate, ClientError> {
        self.members.remove(user);
        let before = self.waiting.len();
        self.waiting.retain(|message| message.sender != user);
        let dropped = before - self.waiting.len();
        let mut events = Vec::new();
        if dropped > 0 {
            events.push(self.warning(format!(
                "dropped {dropped} message(s) from {user}: its sender key never arrived"
            )));
        }
        self.outbound = OutboundSenderKey::generate()?;
        Ok((self.distribute_to_all()?, events))
    }

    /// Seals and signs a text message. If our key has sealed all it may, it is rotated
    /// first and the new key's distribution must be sent before the message.
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
        let mut sealed = self.outbound.seal(&self.room, &self.me, &envelope)?;
        sealed.signature = self
            .identity
            .sign(&signed_message(&self.room, &self.me, &sealed))?
            .into();
        let send = SendMessage {
            room: self.room.clone(),
            sealed: Some(sealed),
        };
        Ok((rotation, send))
    }

    /// Takes a sender key another member wrapped and signed for us, then opens the
    /// messages that were waiting for it.
    pub fn accept_sender_key(&mut self, delivery: SenderKeyDelivery) -> Vec<RoomEvent> {
        let sender = delivery.sender.clone();
        let Some(member) = self.members.get_mut(&sender) else {
            return vec![self.warning(format!(
                "ignored a sender key from {sender}, who is not a member"
            ))];
        };
        // Checked before the RSA decryption, so that nobody but the member can make us
        // decrypt anything (RUSTSEC-2023-0071).
        let signed = sender_key_signed_bytes(
            &self.room,
            &sender,
            &self.me,
            delivery.key_id,
            &delivery.wrapped_key,
        );
        if member
            .identity
            .signing
            .verify(&signed, &delivery.signature)
            .is_err()
        {
            return vec![self.warning(format!(
                "rejected a sender key from {sender}: its signature does not verify"
            ))];
        }
        if !member.trusted {
            member.held_key = Some(delivery);
            return vec![self.warning(untrusted(&sender, "held its sender key"))];
        }
        let accepted = self.accepted_key_ids.get(&sender);
        if accepted.is_some_and(|ids| ids.contains(&delivery.key_id)) {
            return vec![self.warning(format!(
                "ignored a sender key from {sender} that was already used (replayed)"
            ))];
        }
        let key = match SenderKey::unwrap(
            self.identity.encryption_key(),
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
        member.key = Some((key, ReplayWindow::default()));
        self.remember_key_id(&sender, delivery.key_id);

        let (ready, still_waiting): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|message| message.sender == sender);
        self.waiting = still_waiting;
        let mut events = Vec::new();
        for message in ready {
            if message.sealed.as_ref().map(|sealed| sealed.key_id) == Some(delivery.key_id) {
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
        let Some(member) = self.members.get_mut(sender) else {
            return vec![self.warning(format!(
                "dropped a message from {sender}, who is not a member"
            ))];
        };
        if !member.trusted {
            return vec![self.warning(untrusted(sender, "dropped a message"))];
        }
        let signed = signed_message(&self.room, sender, sealed);
        if member
            .identity
            .signing
            .verify(&signed, &sealed.signature)
            .is_err()
        {
            return vec![self.warning(format!(
                "dropped a message from {sender}: its signature does not verify"
            ))];
        }
        let Some((key, seen)) = member.key.as_mut() else {
            return self.wait_for_key(delivery);
        };
        if key.id() != sealed.key_id {
            return vec![self.warning(format!(
                "dropped a message from {sender} under a key that is not its current one \
                 (replayed or stale)"
            ))];
        }
        let opened = key
            .open(&self.room, sender, sealed)
            .map_err(|error| error.to_string())
            .and_then(|plaintext| {
                Envelope::from_json(&plaintext).map_err(|error| error.to_string())
            });
        // Only an authentic message may move the window, so this comes after opening.
        let fresh = opened.is_ok() && seen.accept(sealed.counter);
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

    fn remember_key_id(&mut self, sender: &str, key_id: u64) {
        if !self.accepted_key_ids.contains_key(sender)
            && self.accepted_key_ids.len() >= REMEMBERED_SENDERS
        {
            // Only a relay inventing members gets here: forget a departed sender.
            let departed = self
                .accepted_key_ids
                .keys()
                .find(|known| !self.members.contains_key(*known))
                .cloned();
            if let Some(departed) = departed {
                self.accepted_key_ids.remove(&departed);
            }
        }
        let ids = self.accepted_key_ids.entry(sender.to_owned()).or_default();
        if ids.len() == REMEMBERED_KEY_IDS {
            ids.pop_front();
        }
        ids.push_back(key_id);
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

    fn distribution(&self, recipients: &[&String]) -> Result<DistributeSenderKey, ClientError> {
        let key_id = self.outbound.id();
        let keys = recipients
            .iter()
            .map(|recipient| {
                let member = &self.members[*recipient];
                let wrapped_key = self.outbound.wrap_for(
                    &member.identity.encryption,
                    &self.room,
                    &self.me,
                    recipient,
                )?;
                let signed =
                    sender_key_signed_bytes(&self.room, &self.me, recipient, key_id, &wrapped_key);
                Ok(WrappedSenderKey {
                    recipient: (*recipient).clone(),
                    signature: self.identity.sign(&signed)?.into(),
                    wrapped_key,
                })
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(DistributeSenderKey {
            room: self.room.clone(),
            key_id,
            keys,
        })
    }

    fn warning(&self, text: String) -> RoomEvent {
        RoomEvent::Warning(format!("[{}] {text}", self.room))
    }
}

/// What the sender of `sealed` signs.
fn signed_message(room: &str, sender: &str, sealed: &SealedMessage) -> Vec<u8> {
    message_signed_bytes(
        room,
        sender,
        sealed.key_id,
        sealed.counter,
        &sealed.nonce,
        &sealed.ciphertext,
    )
}

fn untrusted(user: &str, what: &str) -> String {
    format!(
        "{what} from {user}: the server presented keys for {user} that differ from the ones \
         you pinned; compare the safety number (/verify {user}) and run /trust {user} if \
         {user} really has new keys"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// Three members' identities, generated once for all these tests.
    fn identities() -> &'static [Arc<Identity>; 3] {
        static IDS: OnceLock<[Arc<Identity>; 3]> = OnceLock::new();
        IDS.get_or_init(|| std::array::from_fn(|_| Arc::new(Identity::generate(2048).unwrap())))
    }

    fn public(name: &str, index: usize) -> PublicIdentity {
        identities()[index].publish(name).unwrap()
    }

    fn verified(name: &str, index: usize) -> VerifiedIdentity {
        VerifiedIdentity::verify(&public(name, index)).unwrap()
    }

    /// `user` (identity `index`) just joined a room where `others` already are.
    fn member(user: &str, index: usize, others: &[(&str, usize)]) -> RoomKeys {
        let mut keys = RoomKeys::new("lobby", user, identities()[index].clone()).unwrap();
        for (name, i) in others {
            keys.insert_member(verified(name, *i), true);
        }
        keys
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
            signature: wrapped.signature.clone(),
            ..Default::default()
        }
    }

    fn deliver_message(send: &SendMessage, sender: &str) -> MessageDelivery {
        MessageDelivery {
            room: send.room.clone(),
            sender: sender.to_owned(),
            sealed: send.sealed.clone(),
            ..Default::default()
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
        let to_bob = alice.member_joined(verified("bob", 1), true).unwrap();
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
        let to_carol = alice.member_joined(verified("carol", 2), true).unwrap();
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
    fn names_and_identities_from_the_relay_are_checked() {
        let bob = member("bob", 1, &[]);
        let mut evil = public("alice", 0);
        evil.user = "alice\n[lobby] admin: send me your password".into();
        assert!(
            matches!(bob.vet(&evil), Err(RoomEvent::Warning(w)) if w.contains("ignored a member"))
        );
        // alice's identity presented as carol's: the self-signature binds the name.
        let mut renamed = public("alice", 0);
        renamed.user = "carol".into();
        assert!(matches!(bob.vet(&renamed), Err(RoomEvent::Warning(w)) if w.contains("invalid")));
        assert_eq!(bob.vet(&public("alice", 0)).unwrap(), verified("alice", 0));
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
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("signature does not verify")),
            "{events:?}"
        );
    }

    #[test]
    fn a_member_cannot_forge_another_members_message() {
        // bob holds alice's sender key, as every member does, so he can make a message
        // that AES-GCM accepts as alice's; only her signature proves it is hers.
        let (mut alice, bob) = alice_and_bob();
        let mut carol = member("carol", 2, &[("alice", 0), ("bob", 1)]);
        let to_carol = alice.member_joined(verified("carol", 2), true).unwrap();
        carol.accept_sender_key(deliver_key(&to_carol[0], "alice", "carol"));
        let (_, genuine) = alice.seal_text("genuine").unwrap();
        let mut forged = genuine.sealed.clone().unwrap();
        forged.counter += 1;
        forged.signature = bob
            .identity
            .sign(&signed_message("lobby", "alice", &forged))
            .unwrap()
            .into();
        let events = carol.open(MessageDelivery {
            room: "lobby".into(),
            sender: "alice".into(),
            sealed: Some(forged),
            ..Default::default()
        });
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("signature does not verify")),
            "{events:?}"
        );
    }

    #[test]
    fn an_untrusted_member_gets_nothing_until_trusted() {
        let mut alice = member("alice", 0, &[]);
        let mut bob = member("bob", 1, &[]);
        assert!(
            alice
                .member_joined(verified("bob", 1), false)
                .unwrap()
                .is_empty()
        );
        assert!(!alice.is_trusted("bob"));
        bob.insert_member(verified("alice", 0), true);
        assert!(alice.distribute_to_all().unwrap().is_empty());

        // bob's key is held (signature checked), his messages dropped.
        let to_alice = bob.distribute_to_all().unwrap();
        let events = alice.accept_sender_key(deliver_key(&to_alice[0], "bob", "alice"));
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("/trust bob")),
            "{events:?}"
        );
        let (_, early) = bob.seal_text("before trust").unwrap();
        let events = alice.open(deliver_message(&early, "bob"));
        assert!(matches!(&events[..], [RoomEvent::Warning(_)]), "{events:?}");

        let (to_bob, events) = alice.trust("bob").unwrap().unwrap();
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(to_bob.len(), 1);
        bob.accept_sender_key(deliver_key(&to_bob[0], "alice", "bob"));
        let (_, later) = bob.seal_text("after trust").unwrap();
        assert_eq!(
            without_time(alice.open(deliver_message(&later, "bob"))),
            [text("bob", "after trust")]
        );
        let (_, reply) = alice.seal_text("welcome back").unwrap();
        assert_eq!(
            without_time(bob.open(deliver_message(&reply, "alice"))),
            [text("alice", "welcome back")]
        );
    }

    #[test]
    fn a_fake_leave_and_join_does_not_bring_an_old_key_back() {
        let (mut alice, mut bob) = alice_and_bob();
        let first = alice.distribute_to_all().unwrap();
        let (_, said) = alice.seal_text("pay 10 to carol").unwrap();
        assert_eq!(
            without_time(bob.open(deliver_message(&said, "alice"))),
            [text("alice", "pay 10 to carol")]
        );
        // The relay tells bob that alice left and came back, then replays.
        bob.member_left("alice").unwrap();
        bob.insert_member(verified("alice", 0), true);
        let events = bob.accept_sender_key(deliver_key(&first[0], "alice", "bob"));
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("already used")),
            "{events:?}"
        );
        assert!(
            !bob.open(deliver_message(&said, "alice"))
                .iter()
                .any(|event| matches!(event, RoomEvent::Message { .. }))
        );
    }

    #[test]
    fn a_member_under_my_own_name_is_refused() {
        let bob = member("bob", 1, &[]);
        assert!(
            matches!(bob.vet(&public("bob", 0)), Err(RoomEvent::Warning(w)) if w.contains("your own name"))
        );
        assert!(matches!(
            bob.vet(&public("bob", 1)),
            Err(RoomEvent::Warning(_))
        ));
    }

    #[test]
    fn an_old_sender_key_is_never_accepted_again() {
        let (mut alice, mut bob) = alice_and_bob();
        let first = alice.distribute_to_all().unwrap();
        let (rotation, _) = alice.member_left("someone").unwrap();
        bob.accept_sender_key(deliver_key(&rotation[0], "alice", "bob"));
        // The relay brings back alice's first key.
        let events = bob.accept_sender_key(deliver_key(&first[0], "alice", "bob"));
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("already used")),
            "{events:?}"
        );
        let (_, send) = alice.seal_text("still readable").unwrap();
        assert_eq!(
            without_time(bob.open(deliver_message(&send, "alice"))),
            [text("alice", "still readable")]
        );
    }

    #[test]
    fn a_relay_cannot_reattribute_a_message() {
        let mut alice = member("alice", 0, &[]);
        let mut carol = member("carol", 2, &[("alice", 0), ("bob", 1)]);
        let to_carol = alice.member_joined(verified("carol", 2), true).unwrap();
        carol.accept_sender_key(deliver_key(&to_carol[0], "alice", "carol"));
        let (_, send) = alice.seal_text("from alice").unwrap();
        // Claiming the message is bob's fails bob's signature.
        let events = carol.open(deliver_message(&send, "bob"));
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("signature")),
            "{events:?}"
        );
        // A key wrapped for carol as alice's, relabelled as bob's, does not unwrap.
        let to_carol = alice.member_joined(verified("carol", 2), true).unwrap();
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
        assert_eq!(frames.len(), 5);
        assert_eq!(
            frames.iter().map(|frame| frame.keys.len()).sum::<usize>(),
            151
        );
        for frame in &frames {
            // These are 2048-bit keys: 4096-bit ones take twice the room.
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
        let mut alice = member("alice", 0, &[("bob", 1)]);
        let (_, send) = alice.seal_text("under a key bob lacks").unwrap();
        let mut warnings = 0;
        for _ in 0..MAX_WAITING_MESSAGES + 3 {
            warnings += bob.open(deliver_message(&send, "alice")).len();
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
