//! The end-to-end state of one room, without any I/O.
//!
//! It holds the members' verified identities and prekeys, our own sender key (a chain
//! that ratchets, [`OwnSenderKey`]), and the sender keys the others gave us
//! ([`PeerSenderKey`]). It tells its owner whom our key is owed to ([`KeyHandout`]) when
//! the membership changes, hands it out when asked (wrapped for each recipient's
//! prekey, signed once), and turns message deliveries into plaintext. Every sender key
//! and message is checked against its sender's signature before anything is decrypted;
//! the cipher itself is [`crate::crypto::group`]. A message whose sender key has not
//! arrived yet waits for it: the relay can deliver a member's message to a newcomer
//! before that member has handed the newcomer its key.
//!
//! A member can be untrusted: the relay presented keys for it that differ from the ones
//! pinned (see [`Contacts`](super::Contacts)). Nothing is handed to an untrusted member
//! and nothing from it is opened until [`RoomKeys::trust`] is called. A member can also
//! lack a prekey (it has published none yet): it gets our key once it has one.
//!
//! Delivery is durable, so two more kinds of sender matter:
//! - former members ([`RoomKeys::insert_former_member`]): users who left while we were
//!   away, whose entries we still catch up on. Their entries are checked and opened,
//!   but nothing is handed to them, and they are forgotten once caught up.
//! - ourselves: every distribution carries a copy of our key wrapped for our own
//!   prekey, which the relay only ever hands back in a `History` answer, so that
//!   [`RoomKeys::open_history`] can show our own messages too.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, PoisonError, RwLock};

use super::ClientError;
use super::prekeys::PrekeyRing;
use crate::crypto::group::distribution::{Recipient, SignedDistribution};
use crate::crypto::group::wire::{delivered_copy, distribute_frame, group_message, sealed_message};
use crate::crypto::group::{MessageContext, OwnSenderKey, PeerSenderKey};
use crate::crypto::{CryptoError, Fingerprint, Identity, PublicEncryptionKey, VerifiedIdentity};
use crate::proto::{
    DistributeSenderKey, HistoryEntry, MessageDelivery, PublicIdentity, SendMessage,
    SenderKeyDelivery, history_entry,
};
use crate::protocol::{
    DEVICE, Envelope, MAX_COPIES_PER_DISTRIBUTION, MAX_ENVELOPE_BYTES, MessageKind, validate_user,
};

/// Messages kept while their sender key is on its way; beyond that the oldest is dropped.
pub const MAX_WAITING_MESSAGES: usize = 1024;

/// Sender key ids remembered per sender, so that an old key is never accepted again.
const REMEMBERED_KEY_IDS: usize = 256;
/// Senders whose key ids are remembered; a relay inventing members cannot grow it further.
const REMEMBERED_SENDERS: usize = 4096;

/// A device's prekeys, shared by its rooms and renewed while the client runs.
pub type SharedPrekeys = Arc<RwLock<PrekeyRing>>;

/// When our sender key is replaced even though nobody left: after this many messages,
/// or this long, whichever comes first.
///
/// Megolm rotates after 100 messages or a week. Our default is 1,000 messages or a week:
/// the chain already erases each message key once used, and the prekey window (not the
/// chain's length) bounds what stolen files read, so the schedule only decides how soon a
/// stolen *current* chain key stops reading new messages; and each rotation costs every
/// recipient an RSA decryption, which at 100 messages dominates a busy room's CPU
/// (docs/BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    pub messages: u32,
    pub age_ms: u64,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            messages: 1_000,
            age_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

/// What a delivery produced for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A message, signed by its sender, decrypted and authenticated.
    Message {
        /// Its sequence number in the room (0 if the relay gave none).
        seq: u64,
        sender: String,
        text: String,
        sent_at_ms: u64,
    },
    /// How far another member has received and read the room (a receipt): never shown
    /// as a message.
    Receipt {
        /// The receipt's own sequence number in the room (0 if the relay gave none).
        seq: u64,
        sender: String,
        delivered_through: u64,
        read_through: u64,
    },
    /// Something was dropped; the text says what and why.
    Warning(String),
}

/// Who is owed our current sender key after a membership change. Deciding it is cheap;
/// [`RoomKeys::distribute`] does the costly part (an RSA wrap per recipient, one RSA
/// signature per frame) when the key is actually sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHandout {
    /// Every trusted member: our key is new.
    Everyone,
    /// A trusted member who just joined.
    Newcomer(String),
}

/// What a membership change calls for: our key to hand out, and what to show.
pub type KeyUpdate = (KeyHandout, Vec<RoomEvent>);

/// Another member of the room, as far as we know it.
struct Member {
    identity: VerifiedIdentity,
    trusted: bool,
    /// No longer a member: known only so that the entries it left behind, which we are
    /// catching up on, can be checked and opened. Nothing is handed to it.
    former: bool,
    /// Its device's current prekey (id, key), checked against its identity.
    prekey: Option<(u64, PublicEncryptionKey)>,
    /// Its current sender key.
    key: Option<PeerSenderKey>,
    /// While untrusted: its latest sender key, signature checked, not yet unwrapped.
    held_key: Option<SenderKeyDelivery>,
}

/// The end-to-end state of one room.
pub struct RoomKeys {
    room: String,
    me: String,
    identity: Arc<Identity>,
    prekeys: SharedPrekeys,
    members: BTreeMap<String, Member>,
    /// Key ids accepted from each sender, oldest first. Kept when a member leaves, so
    /// that a relay faking a leave and a join cannot bring an old key back.
    accepted_key_ids: HashMap<String, VecDeque<u64>>,
    outbound: OwnSenderKey,
    /// When `outbound` was made (Unix milliseconds), for the rotation schedule.
    outbound_made_ms: u64,
    rotation: RotationPolicy,
    /// The relay refused a distribution of `outbound`: some members never got it, so
    /// nothing more is sealed under it (the next message rotates).
    outbound_refused: bool,
    waiting: VecDeque<MessageDelivery>,
}

impl RoomKeys {
    /// The state of `me` in `room`, with a fresh sender key and no other member yet.
    pub fn new(
        room: &str,
        me: &str,
        identity: Arc<Identity>,
        prekeys: SharedPrekeys,
        rotation: RotationPolicy,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            room: room.to_owned(),
            me: me.to_owned(),
            identity,
            prekeys,
            members: BTreeMap::new(),
            accepted_key_ids: HashMap::new(),
            outbound: OwnSenderKey::generate()?,
            outbound_made_ms: crate::protocol::now_ms(),
            rotation,
            outbound_refused: false,
            waiting: VecDeque::new(),
        })
    }

    /// The room's name.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The other members, sorted by name; former members are not listed.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, member)| !member.former)
            .map(|(user, _)| user.as_str())
    }

    /// Whether `user` is a current member (not a former one).
    pub fn is_member(&self, user: &str) -> bool {
        self.members.get(user).is_some_and(|member| !member.former)
    }

    /// The verified identity of a member, current or former.
    pub fn member_identity(&self, user: &str) -> Option<&VerifiedIdentity> {
        self.members.get(user).map(|member| &member.identity)
    }

    /// Whether `user` is a member whose keys we use.
    pub fn is_trusted(&self, user: &str) -> bool {
        self.members.get(user).is_some_and(|member| member.trusted)
    }

    /// Current members that our key cannot reach yet: no prekey of theirs is known.
    pub fn without_prekey(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|(_, member)| !member.former && member.prekey.is_none())
            .map(|(user, _)| user.as_str())
            .collect()
    }

    /// Records `user`'s prekey, checked against its identity by the caller.
    pub fn set_prekey(&mut self, user: &str, prekey_id: u64, prekey: PublicEncryptionKey) {
        if let Some(member) = self.members.get_mut(user) {
            member.prekey = Some((prekey_id, prekey));
        }
    }

    /// Messages still waiting for their sender key.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The id of our current sender key.
    pub fn key_id(&self) -> u64 {
        self.outbound.id()
    }

    /// Checks a member the relay announced: a valid name, and an identity whose
    /// signature verifies. The relay is not trusted to send sane names: they end up in
    /// file paths, terminal lines and the bytes keys are bound to.
    pub fn vet(&self, member: &PublicIdentity) -> Result<VerifiedIdentity, RoomEvent> {
        if let Err(error) = validate_user(&member.user) {
            return Err(self.warning(format!("ignored a member: {error}")));
        }
        if member.user == self.me {
            // Our own name with keys that may not be ours: never hand our key to it.
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

    /// Adds a member without giving it our key (see [`distribute`](Self::distribute)).
    /// A former member of that name becomes a current one.
    pub fn insert_member(&mut self, identity: VerifiedIdentity, trusted: bool) {
        self.insert(identity, trusted, false);
    }

    /// Adds a user who is no longer a member but whose messages and keys are among the
    /// entries being caught up on: they can be checked and opened, but nothing is
    /// handed to it and it is not listed. A current member of that name stays one.
    pub fn insert_former_member(&mut self, identity: VerifiedIdentity, trusted: bool) {
        if !self.is_member(&identity.user) {
            self.insert(identity, trusted, true);
        }
    }

    fn insert(&mut self, identity: VerifiedIdentity, trusted: bool, former: bool) {
        // The prekey a former member of that name had is kept only for the same keys.
        let prekey = self
            .members
            .get(&identity.user)
            .filter(|known| known.identity.fingerprint == identity.fingerprint)
            .and_then(|known| known.prekey.clone());
        self.members.insert(
            identity.user.clone(),
            Member {
                identity,
                trusted,
                former,
                prekey,
                key: None,
                held_key: None,
            },
        );
    }

    /// Drops the former members, once their entries have been caught up on.
    pub fn forget_former_members(&mut self) -> Vec<RoomEvent> {
        let former: Vec<String> = self
            .members
            .iter()
            .filter(|(_, member)| member.former)
            .map(|(user, _)| user.clone())
            .collect();
        former
            .iter()
            .flat_map(|user| self.remove_member(user))
            .collect()
    }

    /// Forgets a member's keys (and the messages of its still waiting for a key),
    /// without rotating ours: for a member that turned out to be gone while we were
    /// away, when a rotation follows anyway. See [`member_left`](Self::member_left).
    pub fn remove_member(&mut self, user: &str) -> Vec<RoomEvent> {
        self.members.remove(user);
        let before = self.waiting.len();
        self.waiting.retain(|message| message.sender != user);
        let dropped = before - self.waiting.len();
        if dropped == 0 {
            return Vec::new();
        }
        vec![self.warning(format!(
            "dropped {dropped} message(s) from {user}: its sender key never arrived"
        ))]
    }

    /// Our current sender key as `handout` says, for each trusted current member with a
    /// prekey (and for ourselves), in as many frames as needed, each signed once.
    pub fn distribute(
        &self,
        handout: &KeyHandout,
    ) -> Result<Vec<DistributeSenderKey>, ClientError> {
        let wanted: Vec<&Member> = match handout {
            KeyHandout::Everyone => self.members.values().collect(),
            KeyHandout::Newcomer(user) => self.members.get(user).into_iter().collect(),
        };
        let ring = self.prekeys.read().unwrap_or_else(PoisonError::into_inner);
        let own = ring.current();
        // Our own copy (for our history) only with the key's first handout: the relay's
        // history keeps the latest copy of a key per recipient, and a newcomer's copy
        // starts later in the chain, past our messages from before.
        let mut recipients = Vec::new();
        if *handout == KeyHandout::Everyone {
            recipients.push(Recipient {
                user: &self.me,
                device: DEVICE,
                prekey_id: own.id(),
                prekey: own.key().public_key(),
            });
        }
        for member in wanted {
            if !member.trusted || member.former {
                continue;
            }
            if let Some((prekey_id, prekey)) = &member.prekey {
                recipients.push(Recipient {
                    user: &member.identity.user,
                    device: DEVICE,
                    prekey_id: *prekey_id,
                    prekey,
                });
            }
        }
        let key = self.outbound.distribution();
        recipients
            .chunks(MAX_COPIES_PER_DISTRIBUTION)
            .map(|chunk| {
                SignedDistribution::seal(&self.identity, &self.room, &self.me, DEVICE, &key, chunk)
                    .map(distribute_frame)
                    .map_err(ClientError::from)
            })
            .collect()
    }

    /// The relay stored our message sealed under `key_id` at `iteration`: newcomers are
    /// handed our key from the next message on.
    pub fn acknowledged(&mut self, key_id: u64, iteration: u32) {
        if key_id == self.outbound.id() {
            self.outbound.acknowledged(iteration);
        }
    }

    /// The relay refused a distribution of our key `key_id`: if it is the current one,
    /// it is not used again (the next message rotates), since a message sealed under it
    /// would be stored for members who cannot open it.
    pub fn refused(&mut self, key_id: u64) {
        if key_id == self.outbound.id() {
            self.outbound_refused = true;
        }
    }

    /// Makes a fresh sender key, owed to every trusted member.
    pub fn rotate(&mut self) -> Result<KeyHandout, ClientError> {
        self.outbound = OwnSenderKey::generate()?;
        self.outbound_made_ms = crate::protocol::now_ms();
        self.outbound_refused = false;
        Ok(KeyHandout::Everyone)
    }

    /// A member joined: it is owed our current sender key if it is trusted.
    pub fn member_joined(
        &mut self,
        identity: VerifiedIdentity,
        trusted: bool,
    ) -> Option<KeyHandout> {
        let user = identity.user.clone();
        self.insert_member(identity, trusted);
        trusted.then_some(KeyHandout::Newcomer(user))
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
        let handout = self.rotate()?;
        let events = held
            .map(|delivery| self.accept_sender_key(delivery))
            .unwrap_or_default();
        Ok(Some((handout, events)))
    }

    /// A member left: forget its keys and rotate ours, so it cannot read what we send
    /// next. The new key is owed to the remaining members.
    pub fn member_left(&mut self, user: &str) -> Result<KeyUpdate, ClientError> {
        let events = self.remove_member(user);
        Ok((self.rotate()?, events))
    }

    /// Whether our sender key is due for replacement (on schedule, or because the relay
    /// refused its distribution): the next message rotates it.
    pub fn rotation_due(&self) -> bool {
        let age = crate::protocol::now_ms().saturating_sub(self.outbound_made_ms);
        self.outbound_refused
            || self.outbound.iteration() >= self.rotation.messages
            || age >= self.rotation.age_ms
    }

    /// Seals and signs a text message. If our key is due for replacement (the rotation
    /// schedule, or a chain at its end), it is rotated first and the new key's
    /// distribution must be sent before the message.
    pub fn seal_text(
        &mut self,
        text: &str,
    ) -> Result<(Vec<DistributeSenderKey>, SendMessage), ClientError> {
        self.seal(&Envelope::text(&self.me, text))
    }

    /// Seals and signs a receipt: we have received the room up to `delivered_through`
    /// and shown it up to `read_through`. Like a text, it may rotate our key first.
    pub fn seal_receipt(
        &mut self,
        delivered_through: u64,
        read_through: u64,
    ) -> Result<(Vec<DistributeSenderKey>, SendMessage), ClientError> {
        self.seal(&Envelope::receipt(
            &self.me,
            delivered_through,
            read_through,
        ))
    }

    fn seal(
        &mut self,
        envelope: &Envelope,
    ) -> Result<(Vec<DistributeSenderKey>, SendMessage), ClientError> {
        let envelope = zeroize::Zeroizing::new(envelope.to_json());
        if envelope.len() > MAX_ENVELOPE_BYTES {
            return Err(ClientError::MessageTooLong {
                len: envelope.len(),
                max: MAX_ENVELOPE_BYTES,
            });
        }
        let rotation = if self.rotation_due() {
            let handout = self.rotate()?;
            self.distribute(&handout)?
        } else {
            Vec::new()
        };
        let message = self
            .outbound
            .seal(context(&self.room, &self.me), &envelope)?;
        let send = SendMessage {
            room: self.room.clone(),
            sealed: Some(sealed_message(message, DEVICE)),
        };
        Ok((rotation, send))
    }

    /// Takes a sender key another member handed us, then opens the messages that were
    /// waiting for it.
    pub fn accept_sender_key(&mut self, delivery: SenderKeyDelivery) -> Vec<RoomEvent> {
        let sender = delivery.sender.clone();
        let Some(member) = self.members.get_mut(&sender) else {
            return vec![self.warning(format!(
                "ignored a sender key from {sender}, who is not a member"
            ))];
        };
        let key_id = delivery.header.as_ref().map_or(0, |header| header.key_id);
        if member.key.as_ref().is_some_and(|key| key.id() == key_id) {
            // A catch-up starts with the keys in force, which we may hold already.
            // Nothing is taken from it, so it needs no check either.
            return Vec::new();
        }
        let copy = match delivered_copy(&delivery).and_then(|copy| {
            copy.verify(&member.identity)?;
            Ok(copy)
        }) {
            Ok(copy) => copy,
            Err(_) => {
                return vec![self.warning(format!(
                    "rejected a sender key from {sender}: its signature does not verify"
                ))];
            }
        };
        if !member.trusted {
            member.held_key = Some(delivery);
            return vec![self.warning(untrusted(&sender, "held its sender key"))];
        }
        let accepted = self.accepted_key_ids.get(&sender);
        if accepted.is_some_and(|ids| ids.contains(&key_id)) {
            return vec![self.warning(format!(
                "ignored a sender key from {sender} that was already used (replayed)"
            ))];
        }
        let opened = {
            let ring = self.prekeys.read().unwrap_or_else(PoisonError::into_inner);
            match ring.get(copy.copy.prekey_id) {
                None => Err(
                    "it is wrapped under a prekey this device no longer has (erased \
                             once the forward-secrecy window passed)"
                        .to_owned(),
                ),
                Some(prekey) => copy
                    .open(&member.identity, &self.me, DEVICE, prekey)
                    .and_then(|key| PeerSenderKey::new(&key))
                    .map_err(|error| error.to_string()),
            }
        };
        let key = match opened {
            Ok(key) => key,
            Err(reason) => {
                return vec![
                    self.warning(format!("rejected the sender key of {sender}: {reason}")),
                ];
            }
        };
        if let Some(member) = self.members.get_mut(&sender) {
            member.key = Some(key);
        }
        self.remember_key_id(&sender, key_id);

        let (ready, still_waiting): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|message| message.sender == sender);
        self.waiting = still_waiting;
        let mut events = Vec::new();
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
        let sender = delivery.sender.clone();
        let Some(sealed) = delivery.sealed.as_ref() else {
            return vec![self.warning(format!("dropped an empty message from {sender}"))];
        };
        let context = context(&self.room, &sender);
        let Some(member) = self.members.get_mut(&sender) else {
            return vec![self.warning(format!(
                "dropped a message from {sender}, who is not a member"
            ))];
        };
        if !member.trusted {
            return vec![self.warning(untrusted(&sender, "dropped a message"))];
        }
        let Some(key) = member.key.as_mut() else {
            return self.wait_for_key(delivery);
        };
        if key.id() != sealed.key_id {
            return vec![self.warning(format!(
                "dropped a message from {sender} under a key that is not its current one \
                 (replayed or stale)"
            ))];
        }
        let opened = group_message(sealed).and_then(|message| key.open(context, &message));
        let shown = match opened {
            Err(error) => Err(format!("dropped a message from {sender}: {}", why(&error))),
            Ok(plaintext) => Envelope::from_json(&plaintext)
                .map_err(|error| format!("dropped a message from {sender}: {error}"))
                .and_then(|envelope| message_event(delivery.seq, &sender, envelope)),
        };
        vec![shown.unwrap_or_else(|reason| self.warning(reason))]
    }

    /// Opens the entries of a `History` answer: messages in sequence order, then at most
    /// one warning summing up what could not be read.
    ///
    /// It works on its own keys, taken from the entries, and leaves the live state alone
    /// (current keys, accepted key ids): history is shown again, not received again.
    /// Each entry is checked against its sender's signature before anything is
    /// unwrapped or decrypted, as live ones are. Senders are ourselves (our own key
    /// copies), the trusted members, and `former_members`: the identities of the
    /// answer's former members, vetted and trusted by the caller. Keys wrapped under
    /// prekeys this device has erased cannot be opened: history reaches back only as
    /// far as the forward-secrecy window.
    pub fn open_history(
        &self,
        entries: Vec<HistoryEntry>,
        former_members: &[VerifiedIdentity],
    ) -> Vec<RoomEvent> {
        let own = self.own_identity();
        let signer = |user: &str| -> Option<&VerifiedIdentity> {
            if user == self.me {
                return Some(&own);
            }
            match self.members.get(user) {
                Some(member) => member.trusted.then_some(&member.identity),
                None => former_members.iter().find(|former| former.user == user),
            }
        };
        let mut keys: HashMap<(String, u64), PeerSenderKey> = HashMap::new();
        let mut seen = HashSet::new();
        let mut messages = Vec::new();
        let (mut unreadable, mut rejected_keys) = (0usize, 0usize);
        for entry in entries {
            match entry.kind {
                Some(history_entry::Kind::SenderKey(delivery)) => {
                    let key_id = delivery.header.as_ref().map_or(0, |header| header.key_id);
                    // A key already taken opens nothing more, and each copy a relay
                    // repeats would cost another RSA decryption.
                    let slot = (delivery.sender.clone(), key_id);
                    if keys.contains_key(&slot) {
                        continue;
                    }
                    // A copy that fails is not kept: a genuine one may follow. Its
                    // signature is checked before any RSA decryption.
                    match self.history_key(&delivery, signer(&delivery.sender)) {
                        Some(key) => {
                            keys.insert(slot, key);
                        }
                        None => rejected_keys += 1,
                    }
                }
                Some(history_entry::Kind::Message(delivery)) => {
                    let Some(sealed) = delivery.sealed.as_ref() else {
                        unreadable += 1;
                        continue;
                    };
                    let id = (delivery.sender.clone(), sealed.key_id, sealed.iteration);
                    let slot = (delivery.sender.clone(), sealed.key_id);
                    let key = keys.get_mut(&slot);
                    let opened = key.and_then(|key| {
                        let message = group_message(sealed).ok()?;
                        let plaintext = key
                            .open(context(&self.room, &delivery.sender), &message)
                            .ok()?;
                        let envelope = Envelope::from_json(&plaintext).ok()?;
                        message_event(delivery.seq, &delivery.sender, envelope).ok()
                    });
                    match opened {
                        // Receipts are not messages to show again.
                        Some(RoomEvent::Receipt { .. }) => {}
                        // A relay repeating an entry does not get it shown twice.
                        Some(message) if seen.insert(id) => messages.push(message),
                        _ => unreadable += 1,
                    }
                }
                None => {}
            }
        }
        messages.sort_by_key(|message| match message {
            RoomEvent::Message { seq, .. } => *seq,
            RoomEvent::Receipt { .. } | RoomEvent::Warning(_) => u64::MAX,
        });
        messages.extend(self.history_summary(unreadable, rejected_keys));
        messages
    }

    /// A sender key from a history answer, checked then unwrapped; `None` if it is not
    /// usable, for whatever reason (counted, not reported one by one).
    fn history_key(
        &self,
        delivery: &SenderKeyDelivery,
        signer: Option<&VerifiedIdentity>,
    ) -> Option<PeerSenderKey> {
        let copy = delivered_copy(delivery).ok()?;
        let signer = signer?;
        copy.verify(signer).ok()?;
        let ring = self.prekeys.read().unwrap_or_else(PoisonError::into_inner);
        let prekey = ring.get(copy.copy.prekey_id)?;
        let key = copy.open(signer, &self.me, DEVICE, prekey).ok()?;
        PeerSenderKey::new(&key).ok()
    }

    fn history_summary(&self, unreadable: usize, rejected_keys: usize) -> Option<RoomEvent> {
        let mut parts = Vec::new();
        if unreadable > 0 {
            parts.push(format!(
                "{unreadable} older message(s) could not be verified or decrypted"
            ));
        }
        if rejected_keys > 0 {
            parts.push(format!(
                "{rejected_keys} sender key(s) could not be used (bad signature, unknown \
                 sender, not for you, or wrapped under a prekey erased since)"
            ));
        }
        (!parts.is_empty()).then(|| self.warning(format!("history: {}", parts.join("; "))))
    }

    /// Our own identity as others see it, to check our own entries in a history.
    fn own_identity(&self) -> VerifiedIdentity {
        let signing = self.identity.signing_key().public_key();
        let encryption = self.identity.encryption_key().public_key();
        VerifiedIdentity {
            user: self.me.clone(),
            signing: signing.clone(),
            encryption: encryption.clone(),
            fingerprint: Fingerprint::of(signing, encryption),
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

    fn warning(&self, text: String) -> RoomEvent {
        RoomEvent::Warning(format!("[{}] {text}", self.room))
    }
}

/// Where a message of `sender` in `room` is bound.
fn context<'a>(room: &'a str, sender: &'a str) -> MessageContext<'a> {
    MessageContext {
        room,
        sender,
        device: DEVICE,
    }
}

/// Why a message could not be opened, for the user.
fn why(error: &CryptoError) -> String {
    match error {
        CryptoError::BadSignature => "its signature does not verify".to_owned(),
        CryptoError::AlreadyOpened => {
            "it was shown before, or is older than the key it names (repeated)".to_owned()
        }
        other => other.to_string(),
    }
}

/// What an opened envelope shows, or why it is dropped.
fn message_event(seq: u64, sender: &str, envelope: Envelope) -> Result<RoomEvent, String> {
    if envelope.sender != sender {
        return Err(format!(
            "dropped a message from {sender} that claims to be from {}",
            envelope.sender
        ));
    }
    match envelope.kind {
        MessageKind::Unknown => {
            return Err(format!(
                "{sender} sent a kind of message this version cannot show"
            ));
        }
        MessageKind::Receipt => {
            return Ok(RoomEvent::Receipt {
                seq,
                sender: envelope.sender,
                delivered_through: envelope.delivered_through.unwrap_or(0),
                read_through: envelope.read_through.unwrap_or(0),
            });
        }
        MessageKind::Text => {}
    }
    Ok(RoomEvent::Message {
        seq,
        sender: envelope.sender,
        text: envelope.text,
        sent_at_ms: envelope.sent_at_ms,
    })
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

    /// The three members' prekeys, in memory.
    fn rings() -> &'static [SharedPrekeys; 3] {
        static RINGS: OnceLock<[SharedPrekeys; 3]> = OnceLock::new();
        RINGS.get_or_init(|| {
            std::array::from_fn(|_| {
                let ring = PrekeyRing::in_memory(2048, crate::protocol::now_ms()).unwrap();
                Arc::new(RwLock::new(ring))
            })
        })
    }

    /// Records the prekey of `name` (identity `index`) in `keys`, as the key directory
    /// would present it.
    fn learn_prekey(keys: &mut RoomKeys, name: &str, index: usize) {
        let ring = rings()[index].read().unwrap();
        let current = ring.current();
        keys.set_prekey(name, current.id(), current.key().public_key().clone());
    }

    /// `user` (identity `index`) just joined a room where `others` already are.
    fn member(user: &str, index: usize, others: &[(&str, usize)]) -> RoomKeys {
        let mut keys = RoomKeys::new(
            "lobby",
            user,
            identities()[index].clone(),
            rings()[index].clone(),
            RotationPolicy::default(),
        )
        .unwrap();
        for (name, i) in others {
            keys.insert_member(verified(name, *i), true);
            learn_prekey(&mut keys, name, *i);
        }
        keys
    }

    /// `identity` joined `keys`' room, trusted: the distributions it is owed.
    fn newcomer(keys: &mut RoomKeys, identity: VerifiedIdentity) -> Vec<DistributeSenderKey> {
        let name = identity.user.clone();
        let index = identities()
            .iter()
            .position(|known| known.fingerprint() == identity.fingerprint)
            .unwrap();
        let handout = keys.member_joined(identity, true).unwrap();
        learn_prekey(keys, &name, index);
        keys.distribute(&handout).unwrap()
    }

    /// `user` left `keys`' room: the distributions of the new key.
    fn left(keys: &mut RoomKeys, user: &str) -> Vec<DistributeSenderKey> {
        let (handout, _) = keys.member_left(user).unwrap();
        keys.distribute(&handout).unwrap()
    }

    /// What the relay would deliver to `recipient` from a distribution by `sender`.
    fn deliver_key(dist: &DistributeSenderKey, sender: &str, recipient: &str) -> SenderKeyDelivery {
        let frame = crate::proto::ClientFrame {
            request_id: 1,
            kind: Some(crate::proto::client_frame::Kind::DistributeKey(
                dist.clone(),
            )),
        };
        let Ok(crate::server::frame::ValidFrame::DistributeKey { keys, .. }) =
            crate::server::frame::check(frame)
        else {
            panic!("the relay would refuse this distribution");
        };
        let stored = keys
            .into_iter()
            .find(|key| key.recipient == recipient)
            .unwrap();
        crate::store::copy::delivery(
            &dist.room,
            sender.to_owned(),
            0,
            &stored.wrapped_key,
            stored.signature,
        )
        .unwrap()
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
            seq: 0,
            sender: sender.to_owned(),
            text: text.to_owned(),
            sent_at_ms: 0,
        }
    }

    fn without_time(events: Vec<RoomEvent>) -> Vec<RoomEvent> {
        events
            .into_iter()
            .map(|event| match event {
                RoomEvent::Message {
                    seq, sender, text, ..
                } => RoomEvent::Message {
                    seq,
                    sender,
                    text,
                    sent_at_ms: 0,
                },
                other => other,
            })
            .collect()
    }

    /// Who the distributions wrap a key for, in order.
    fn recipients(distributions: &[DistributeSenderKey]) -> Vec<&str> {
        distributions
            .iter()
            .flat_map(|distribution| &distribution.copies)
            .map(|copy| copy.recipient.as_str())
            .collect()
    }

    fn alice_and_bob() -> (RoomKeys, RoomKeys) {
        let mut alice = member("alice", 0, &[]);
        let mut bob = member("bob", 1, &[("alice", 0)]);
        let to_bob = newcomer(&mut alice, verified("bob", 1));
        bob.accept_sender_key(deliver_key(&to_bob[0], "alice", "bob"));
        let to_alice = bob.distribute(&KeyHandout::Everyone).unwrap();
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
        let to_carol = newcomer(&mut alice, verified("carol", 2));
        let events = carol.accept_sender_key(deliver_key(&to_carol[0], "alice", "carol"));
        assert_eq!(without_time(events), [text("alice", "early")]);
        assert_eq!(carol.waiting(), 0);
    }

    #[test]
    fn after_a_member_leaves_its_old_keys_do_not_open_new_messages() {
        let (mut alice, mut bob) = alice_and_bob();
        let rotation = left(&mut alice, "bob");
        assert_eq!(
            recipients(&rotation),
            ["alice"],
            "only our own copy is left"
        );
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
        let rotation = left(&mut alice, "carol-who-was-never-here");
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
        // bob holds alice's chain, as every member does, so he can make a message that
        // AES-GCM accepts as alice's; only the signature by her sender key's Ed25519 key,
        // which never leaves her, proves it is hers.
        let (mut alice, bob) = alice_and_bob();
        let mut carol = member("carol", 2, &[("alice", 0), ("bob", 1)]);
        let to_carol = newcomer(&mut alice, verified("carol", 2));
        carol.accept_sender_key(deliver_key(&to_carol[0], "alice", "carol"));
        let (_, genuine) = alice.seal_text("genuine").unwrap();
        let mut forged = genuine.sealed.clone().unwrap();
        forged.iteration += 1;
        let _ = &bob;
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
        assert_eq!(alice.member_joined(verified("bob", 1), false), None);
        learn_prekey(&mut alice, "bob", 1);
        assert!(!alice.is_trusted("bob"));
        bob.insert_member(verified("alice", 0), true);
        learn_prekey(&mut bob, "alice", 0);
        assert_eq!(
            recipients(&alice.distribute(&KeyHandout::Everyone).unwrap()),
            ["alice"]
        );

        // bob's key is held (signature checked), his messages dropped.
        let to_alice = bob.distribute(&KeyHandout::Everyone).unwrap();
        let events = alice.accept_sender_key(deliver_key(&to_alice[0], "bob", "alice"));
        assert!(
            matches!(&events[..], [RoomEvent::Warning(w)] if w.contains("/trust bob")),
            "{events:?}"
        );
        let (_, early) = bob.seal_text("before trust").unwrap();
        let events = alice.open(deliver_message(&early, "bob"));
        assert!(matches!(&events[..], [RoomEvent::Warning(_)]), "{events:?}");

        let (handout, events) = alice.trust("bob").unwrap().unwrap();
        assert_eq!(handout, KeyHandout::Everyone);
        let to_bob = alice.distribute(&handout).unwrap();
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
        let first = alice.distribute(&KeyHandout::Everyone).unwrap();
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
        let first = alice.distribute(&KeyHandout::Everyone).unwrap();
        let rotation = left(&mut alice, "someone");
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
        let to_carol = newcomer(&mut alice, verified("carol", 2));
        carol.accept_sender_key(deliver_key(&to_carol[0], "alice", "carol"));
        let (_, send) = alice.seal_text("from alice").unwrap();
        // Claimed as bob's, it waits for a key of bob's with its key id, which only
        // alice's is: nothing is shown as bob's.
        let events = carol.open(deliver_message(&send, "bob"));
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(carol.waiting(), 1);
        // A key wrapped for carol as alice's, relabelled as bob's, does not unwrap.
        let to_carol = newcomer(&mut alice, verified("carol", 2));
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
        let frames = newcomer.distribute(&KeyHandout::Everyone).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(
            frames.iter().map(|frame| frame.copies.len()).sum::<usize>(),
            152,
            "every member and our own copy"
        );
        assert_eq!(frames[0].copies[0].recipient, "newcomer");
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

    fn key_entry(delivery: SenderKeyDelivery, seq: u64) -> HistoryEntry {
        HistoryEntry {
            kind: Some(history_entry::Kind::SenderKey(SenderKeyDelivery {
                seq,
                ..delivery
            })),
        }
    }

    fn message_entry(delivery: MessageDelivery, seq: u64) -> HistoryEntry {
        HistoryEntry {
            kind: Some(history_entry::Kind::Message(MessageDelivery {
                seq,
                ..delivery
            })),
        }
    }

    fn with_seq(seq: u64, sender: &str, body: &str) -> RoomEvent {
        match text(sender, body) {
            RoomEvent::Message {
                sender,
                text,
                sent_at_ms,
                ..
            } => RoomEvent::Message {
                seq,
                sender,
                text,
                sent_at_ms,
            },
            other => other,
        }
    }

    #[test]
    fn the_current_key_delivered_again_is_ignored_silently() {
        let (mut alice, mut bob) = alice_and_bob();
        let (_, first) = alice.seal_text("before the catch-up").unwrap();
        let first = deliver_message(&first, "alice");
        assert_eq!(bob.open(first.clone()).len(), 1);
        // A catch-up starts with the key in force: bob holds it already.
        let again = alice.distribute(&KeyHandout::Everyone).unwrap();
        assert!(
            bob.accept_sender_key(deliver_key(&again[0], "alice", "bob"))
                .is_empty()
        );
        // Nothing was reset: the window still knows what was shown.
        assert!(matches!(&bob.open(first)[..], [RoomEvent::Warning(w)] if w.contains("repeated")));
        let (_, next) = alice.seal_text("after").unwrap();
        assert_eq!(
            without_time(bob.open(deliver_message(&next, "alice"))),
            [text("alice", "after")]
        );
    }

    #[test]
    fn a_first_handout_carries_our_own_copy_and_a_newcomer_s_does_not() {
        let (mut alice, _) = alice_and_bob();
        alice.insert_member(verified("carol", 2), true);
        learn_prekey(&mut alice, "carol", 2);
        let frames = alice.distribute(&KeyHandout::Everyone).unwrap();
        assert_eq!(recipients(&frames), ["alice", "bob", "carol"]);
        let own = delivered_copy(&deliver_key(&frames[0], "alice", "alice")).unwrap();
        // Signed like the others, with our own identity, for our own prekey.
        assert!(own.verify(&alice.own_identity()).is_ok());
        let ring = rings()[0].read().unwrap();
        assert!(
            own.open(&alice.own_identity(), "alice", DEVICE, ring.current())
                .is_ok()
        );
        // Our copy from the chain's start stays the latest of this key for our history.
        let joined = newcomer(&mut alice, verified("dave", 1));
        assert_eq!(recipients(&joined), ["dave"]);
    }

    #[test]
    fn former_members_are_read_but_get_nothing_and_are_not_listed() {
        let mut alice = member("alice", 0, &[("bob", 1)]);
        alice.insert_former_member(verified("carol", 2), true);
        // A current member stays current.
        alice.insert_former_member(verified("bob", 1), true);
        assert_eq!(alice.members().collect::<Vec<_>>(), ["bob"]);
        assert!(!alice.is_member("carol"));
        assert_eq!(
            recipients(&alice.distribute(&KeyHandout::Everyone).unwrap()),
            ["alice", "bob"]
        );
        assert_eq!(
            recipients(
                &alice
                    .distribute(&KeyHandout::Newcomer("carol".into()))
                    .unwrap()
            ),
            Vec::<String>::new()
        );

        // carol's entries from before she left still open.
        let mut carol = member("carol", 2, &[("alice", 0)]);
        let to_alice = carol.distribute(&KeyHandout::Everyone).unwrap();
        assert!(
            alice
                .accept_sender_key(deliver_key(&to_alice[0], "carol", "alice"))
                .is_empty()
        );
        let (_, said) = carol.seal_text("said before leaving").unwrap();
        assert_eq!(
            without_time(alice.open(deliver_message(&said, "carol"))),
            [text("carol", "said before leaving")]
        );

        // Caught up: carol is forgotten.
        assert!(alice.forget_former_members().is_empty());
        let (_, later) = carol.seal_text("later").unwrap();
        assert!(matches!(
            &alice.open(deliver_message(&later, "carol"))[..],
            [RoomEvent::Warning(w)] if w.contains("not a member")
        ));
        assert!(alice.member_identity("bob").is_some());
    }

    #[test]
    fn a_former_member_who_joins_again_is_a_member() {
        let mut alice = member("alice", 0, &[]);
        alice.insert_former_member(verified("carol", 2), true);
        let to_carol = newcomer(&mut alice, verified("carol", 2));
        assert_eq!(recipients(&to_carol), ["carol"]);
        assert!(alice.is_member("carol"));
        assert!(alice.forget_former_members().is_empty());
        assert_eq!(alice.members().collect::<Vec<_>>(), ["carol"]);
    }

    /// alice's view of a history: her own message, bob's, and carol's, who has left.
    #[test]
    fn history_shows_our_own_messages_and_former_members_without_touching_live_state() {
        let (mut alice, mut bob) = alice_and_bob();
        let mut carol = member("carol", 2, &[("alice", 0)]);
        let own_key = alice.distribute(&KeyHandout::Everyone).unwrap();
        let bob_key = bob.distribute(&KeyHandout::Everyone).unwrap();
        let carol_key = carol.distribute(&KeyHandout::Everyone).unwrap();
        let (_, mine) = alice.seal_text("my own words").unwrap();
        let (_, bobs) = bob.seal_text("bob speaks").unwrap();
        let (_, carols) = carol.seal_text("carol, now gone").unwrap();
        let bobs = deliver_message(&bobs, "bob");
        let entries = vec![
            key_entry(deliver_key(&own_key[0], "alice", "alice"), 3),
            key_entry(deliver_key(&bob_key[0], "bob", "alice"), 4),
            key_entry(deliver_key(&carol_key[0], "carol", "alice"), 5),
            message_entry(deliver_message(&mine, "alice"), 6),
            message_entry(bobs.clone(), 7),
            message_entry(deliver_message(&carols, "carol"), 9),
        ];
        let shown = alice.open_history(entries, &[verified("carol", 2)]);
        assert_eq!(
            without_time(shown),
            [
                with_seq(6, "alice", "my own words"),
                with_seq(7, "bob", "bob speaks"),
                with_seq(9, "carol", "carol, now gone"),
            ]
        );
        // The live state is as it was: bob's message is still new to the live path.
        assert_eq!(
            without_time(alice.open(bobs.clone())),
            [text("bob", "bob speaks")]
        );
        assert!(!alice.is_member("carol") && alice.member_identity("carol").is_none());
        // Without carol's identity, her message cannot be checked: one summary.
        let entries = vec![
            key_entry(deliver_key(&carol_key[0], "carol", "alice"), 5),
            message_entry(deliver_message(&carols, "carol"), 9),
        ];
        let shown = alice.open_history(entries, &[]);
        assert!(
            matches!(&shown[..], [RoomEvent::Warning(w)] if w.contains("1 older message")),
            "{shown:?}"
        );
    }

    #[test]
    fn history_checks_signatures_before_unwrapping_or_decrypting() {
        let (alice, mut bob) = alice_and_bob();
        // Two keys of bob's: the second properly wrapped for alice, but presented with
        // the signature of the first. Unwrapping it would work; it must not be tried.
        let first = bob.distribute(&KeyHandout::Everyone).unwrap();
        let rotation = bob.rotate().unwrap();
        let second = bob.distribute(&rotation).unwrap();
        let mut forged = deliver_key(&second[0], "bob", "alice");
        forged.signature = deliver_key(&first[0], "bob", "alice").signature;
        let (_, under_second) = bob.seal_text("under the forged key").unwrap();
        // A key claiming to be our own copy, but made and signed by bob.
        let mut not_mine = deliver_key(&second[0], "bob", "alice");
        not_mine.sender = "alice".into();
        // A tampered message under a good key.
        let (_, tampered) = bob.seal_text("tampered").unwrap();
        let mut tampered = deliver_message(&tampered, "bob");
        let sealed = tampered.sealed.as_mut().unwrap();
        let mut bytes = sealed.ciphertext.to_vec();
        bytes[0] ^= 1;
        sealed.ciphertext = bytes.into();
        let (_, fine) = bob.seal_text("fine").unwrap();

        let entries = vec![
            key_entry(forged, 10),
            key_entry(not_mine, 11),
            key_entry(deliver_key(&second[0], "bob", "alice"), 12),
            message_entry(deliver_message(&under_second, "bob"), 13),
            message_entry(tampered, 14),
            message_entry(deliver_message(&fine, "bob"), 15),
            // The relay repeats an entry: shown once.
            message_entry(deliver_message(&fine, "bob"), 16),
        ];
        let shown = without_time(alice.open_history(entries, &[]));
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert_eq!(shown[0], with_seq(13, "bob", "under the forged key"));
        assert_eq!(shown[1], with_seq(15, "bob", "fine"));
        assert!(
            matches!(&shown[2], RoomEvent::Warning(w)
                if w.contains("2 older message(s)") && w.contains("2 sender key(s)")),
            "{shown:?}"
        );

        // Without the genuine copy, the forged one opens nothing.
        let mut forged = deliver_key(&second[0], "bob", "alice");
        forged.signature = deliver_key(&first[0], "bob", "alice").signature;
        let shown = alice.open_history(
            vec![
                key_entry(forged, 10),
                message_entry(deliver_message(&under_second, "bob"), 13),
            ],
            &[],
        );
        assert!(
            matches!(&shown[..], [RoomEvent::Warning(w)] if w.contains("1 older message")),
            "{shown:?}"
        );
    }

    /// Found by profiling the `server_frame` fuzz target: a relay repeating a key entry of
    /// a history made the client check and unwrap it again each time, an RSA decryption
    /// per copy.
    #[test]
    fn a_history_takes_each_key_once() {
        let (alice, mut bob) = alice_and_bob();
        let key = deliver_key(
            &bob.distribute(&KeyHandout::Everyone).unwrap()[0],
            "bob",
            "alice",
        );
        let mut copy = key.clone();
        copy.signature = flip_first_bit(&copy.signature);
        let (_, sent) = bob.seal_text("once").unwrap();
        let entries = vec![
            key_entry(key.clone(), 1),
            key_entry(key, 2),
            // Not even looked at: it would be counted as rejected.
            key_entry(copy, 3),
            message_entry(deliver_message(&sent, "bob"), 4),
        ];
        let shown = without_time(alice.open_history(entries, &[]));
        assert_eq!(shown, [with_seq(4, "bob", "once")]);
    }

    fn flip_first_bit(bytes: &bytes::Bytes) -> bytes::Bytes {
        let mut flipped = bytes.to_vec();
        flipped[0] ^= 1;
        flipped.into()
    }
}
