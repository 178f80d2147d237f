//! What a session knows of one of its rooms and of its own requests there, and how each
//! frame from the relay changes it, without any network.
//!
//! [`SessionState`] drives [`RoomKeys`] (checking members' keys against the pinned
//! ones), follows the room's sequence numbers and its [`Receipts`], and makes every frame
//! the session sends for the room, remembering it until the relay answers. The request
//! ids come from the stream's one [`RequestIds`], shared by the states of all its rooms.
//! [`ChatSession`] sends the frames it makes and feeds it the frames that come back
//! ([`SessionState::apply`]); the `server_frame` fuzz target feeds it arbitrary ones.
//!
//! [`ChatSession`]: super::ChatSession

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tonic::Code;

use super::ClientError;
use super::contacts::{Contacts, Pin};
use super::private_room::OwnerSigned;
use super::receipts::{ReceiptSummary, Receipts};
use super::room::{KeyHandout, RoomEvent, RoomKeys, RotationPolicy, SharedPrekeys};
use crate::crypto::{
    self, Fingerprint, Identity, PublicEncryptionKey, SafetyNumber, VerifiedIdentity,
};
use crate::proto::{
    ClientFrame, DistributeSenderKey, GetHistory, History, InviteMember, Joined, KickMember,
    LeaveReason, LeaveRoom, PublicIdentity, SendMessage, ServerFrame, client_frame, server_frame,
};
use crate::protocol::{MAX_HISTORY_MESSAGES, now_ms};

/// The request id of the join that opens every stream; later frames count up from it.
pub(super) const JOIN_REQUEST_ID: u64 = 1;

/// The pinned contacts, shared by every room of a session: a key pinned, trusted or
/// verified in one room holds in all of them.
pub type SharedContacts = Arc<Mutex<Contacts>>;

/// The request ids of one stream, shared by the states of all its rooms so that no two
/// frames on it carry the same one.
#[derive(Debug, Clone)]
pub struct RequestIds(Arc<AtomicU64>);

impl Default for RequestIds {
    /// Counting after [`JOIN_REQUEST_ID`], the join that opened the stream.
    fn default() -> Self {
        Self(Arc::new(AtomicU64::new(JOIN_REQUEST_ID)))
    }
}

impl RequestIds {
    /// The next id.
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A new stream: counting starts again from 1.
    pub(super) fn restart(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// Where a client starts counting a room's sequence numbers after a `Joined` that
/// reports `resumed` and the room's `latest` number, given the `after_seq` it asked
/// for; and what to warn about.
pub(super) fn starting_seq(
    resumed: bool,
    after_seq: Option<u64>,
    latest: u64,
) -> (u64, Option<String>) {
    match after_seq {
        Some(after) if resumed && after <= latest => (after, None),
        Some(after) if resumed => (
            latest,
            Some(format!(
                "this client has seen the room up to message number {after}, but the \
                 server's latest is {latest}: the server seems restored from an older \
                 backup; continuing from {latest}"
            )),
        ),
        Some(after) if after > 0 => (
            latest,
            Some(
                "the server no longer counted you as a member, so you joined again: what \
                 was said while you were away is not available"
                    .to_owned(),
            ),
        ),
        _ => (latest, None),
    }
}

/// A message of the room's history, decrypted and authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryMessage {
    /// Its sequence number in the room.
    pub seq: u64,
    pub sender: String,
    pub text: String,
    /// When its sender says it sent it, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
}

/// What happened in the room, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message from another member, signed, decrypted and authenticated.
    Message {
        room: String,
        sender: String,
        text: String,
        sent_at_ms: u64,
        /// Its sequence number in the room.
        seq: u64,
    },
    /// Someone joined (also: someone who joined while we were away).
    MemberJoined { room: String, user: String },
    /// Someone left or was removed; our sender key has been rotated.
    MemberLeft {
        room: String,
        user: String,
        reason: LeaveReason,
    },
    /// The owner of the room removed us from it.
    Removed { room: String },
    /// First sight of a contact: its keys are now pinned.
    Pinned {
        user: String,
        fingerprint: Fingerprint,
    },
    /// The relay presented keys for a contact that are not the pinned ones: nothing is
    /// sent to or accepted from it until the user trusts the new keys.
    KeysChanged {
        room: String,
        user: String,
        pinned: Fingerprint,
        presented: Fingerprint,
        was_verified: bool,
    },
    /// The relay stored one of our messages under `seq`. `request_id` is the one
    /// [`ChatSession::send_text`](super::ChatSession::send_text) returned, or the one
    /// the message got when [`ChatSession::reconnect`](super::ChatSession::reconnect)
    /// sent it again, or when it was sealed again under a fresh key because the relay
    /// refused the distribution of the key it was first sealed under.
    Delivered {
        room: String,
        request_id: u64,
        seq: u64,
    },
    /// A member's receipt moved: our messages up to `delivered_through` reached it, and
    /// it saw them up to `read_through`.
    Receipt {
        room: String,
        user: String,
        delivered_through: u64,
        read_through: u64,
    },
    /// We joined a room in the middle of the session (`ChatSession::join_room`); its
    /// members are in the session now.
    Joined { room: String },
    /// The relay refused to let us join a room in the middle of the session.
    JoinRefused {
        room: String,
        code: Code,
        message: String,
    },
    /// The relay refused one of our messages: it will not be delivered.
    Refused {
        request_id: u64,
        code: Code,
        message: String,
        /// The text of the message.
        text: String,
    },
    /// We left the room.
    Left { room: String },
    /// The relay refused to let us leave the room (its database may be away): we are
    /// still a member, and may try again.
    LeaveRefused {
        room: String,
        code: Code,
        message: String,
    },
    /// The relay has sent everything we missed up to `seq`; what follows is live.
    CaughtUp { room: String, seq: u64 },
    /// The answer to a history request: messages in sequence order, ours included.
    History {
        room: String,
        messages: Vec<HistoryMessage>,
    },
    /// Something the user asked for was done; the text says what.
    Notice(String),
    /// Something was dropped or looks wrong; the text says what.
    Warning(String),
}

/// What an unanswered frame was, to report its answer.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Message(Unacked),
    /// Kept to send again: messages sealed under this key may follow it.
    KeyDistribution(DistributeSenderKey),
    Leave,
    Invite(String),
    Kick(String),
    History,
    /// Not sent again after a reconnect: the next receipt says it all.
    Receipt(SendMessage),
    /// A message sealed under a key whose distribution the relay refused: its members
    /// cannot open it, so its answer is ignored, and it is never sent again. A copy
    /// sealed under a fresh key was sent after it (or it was reported refused).
    Superseded,
}

/// How many distributions of our key in a row the relay may refuse while our messages
/// are in flight under it: each refusal seals those messages again under a fresh key
/// and sends them again; past this, they are reported refused instead.
const MAX_REFUSED_DISTRIBUTIONS: u32 = 3;

/// A message the relay has not acknowledged: its text, to report on it, and its frame,
/// sealed and signed, to send again as it is on a new stream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unacked {
    text: String,
    send: SendMessage,
    /// The members it was sealed for: whose receipts count for it.
    recipients: Vec<String>,
}

/// What a frame from the relay (or the answer to a join) calls for: what the user
/// should see, and whom our sender key is now owed to. Handing the key out (an RSA
/// signature per frame) is left to [`SessionState::distribute`].
#[derive(Debug, Default)]
pub struct Applied {
    pub events: Vec<Event>,
    pub handout: Option<KeyHandout>,
    /// Our messages held until the relay acknowledged the distribution of their key,
    /// now released: to send, in order.
    pub send: Vec<ClientFrame>,
}

/// What a rejoin calls for, beyond what to show: the frames of the dead stream to send
/// again (already under their new request ids, in their original order: a message must
/// not arrive after a newer key of ours), whether to leave again, and our key.
#[derive(Debug)]
pub(super) struct Rejoined {
    pub events: Vec<Event>,
    pub resend: Vec<ClientFrame>,
    pub leave: bool,
}

/// What a session knows of its room and of its own unanswered frames.
pub struct SessionState {
    keys: RoomKeys,
    identity: Arc<Identity>,
    user: String,
    contacts: SharedContacts,
    private_room: bool,
    owner: Option<String>,
    /// In a private room: what its pinned owner signed, which decides who gets our key.
    signed: Option<OwnerSigned>,
    /// The highest sequence number of the room processed.
    last_seq: u64,
    request_ids: RequestIds,
    /// Our frames the relay has not answered, by request id (so in the order sent).
    unanswered: BTreeMap<u64, Pending>,
    /// What a lost stream left unanswered, in the order sent, until the room is joined
    /// again on a new one: its request ids are dead, and may be reused there.
    stale: Vec<Pending>,
    /// Set by `leave` or a kick: membership changes no longer call for key
    /// distributions, which the relay would refuse once we are out.
    leaving: bool,
    /// The relay has sent everything we missed: what comes now is live.
    caught_up: bool,
    receipts: Receipts,
    /// The texts of messages in flight under a key whose distribution the relay
    /// refused, to seal again under a fresh key and send, in order, before anything
    /// else ([`reseal`](Self::reseal)).
    resealing: Vec<String>,
    /// Frames that were held behind a refused distribution and are not sealed (a
    /// leave): they go after the messages sealed again, in the order asked.
    after_reseal: Vec<ClientFrame>,
    /// Distributions of our key refused in a row (reset by one acknowledged).
    refused_distributions: u32,
    /// Our messages (and receipts) sealed while a distribution of ours was unanswered,
    /// not sent yet: a message must not reach the relay before the relay took the key
    /// it is sealed under, or it may be stored for members who never get that key.
    /// Sent once no distribution of ours is unanswered; sealed again under a fresh key
    /// if one is refused.
    held: VecDeque<ClientFrame>,
}

impl SessionState {
    /// `user` in `room`, before the relay answered its join, with a fresh sender key;
    /// members' keys are checked against `contacts`, and frames numbered from
    /// `request_ids`.
    pub fn new(
        room: &str,
        user: &str,
        identity: Arc<Identity>,
        contacts: SharedContacts,
        prekeys: SharedPrekeys,
        rotation: RotationPolicy,
        request_ids: RequestIds,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            keys: RoomKeys::new(room, user, identity.clone(), prekeys, rotation)?,
            identity,
            user: user.to_owned(),
            contacts,
            private_room: false,
            owner: None,
            signed: None,
            last_seq: 0,
            request_ids,
            unanswered: BTreeMap::new(),
            stale: Vec::new(),
            leaving: false,
            caught_up: false,
            receipts: Receipts::default(),
            resealing: Vec::new(),
            after_reseal: Vec::new(),
            refused_distributions: 0,
            held: VecDeque::new(),
        })
    }

    fn contacts(&self) -> std::sync::MutexGuard<'_, Contacts> {
        self.contacts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in the relay's answer to our first join (asked with `after_seq`): the
    /// members, checked against the pinned keys, each owed our key if trusted.
    pub fn joined(
        &mut self,
        joined: &Joined,
        after_seq: Option<u64>,
    ) -> Result<Applied, ClientError> {
        let mut events = self.apply_joined(joined, after_seq)?;
        for member in &joined.members {
            if let Some((identity, trusted)) = self.admit_member(member, &mut events)? {
                self.keys.insert_member(identity, trusted);
            }
        }
        self.admit_former_members(&joined.former_members, &mut events)?;
        Ok(Applied {
            events,
            handout: Some(KeyHandout::Everyone),
            send: Vec::new(),
        })
    }

    /// Takes in the relay's answer to a join on a new stream, after the old one was
    /// lost: catches up from [`last_seq`](Self::last_seq), brings the members up to
    /// date, and sorts out the frames the old stream left unanswered (its request ids
    /// are dead: the frames sent again get new ones).
    pub(super) fn rejoined(&mut self, joined: &Joined) -> Result<Rejoined, ClientError> {
        self.caught_up = false;
        let mut events = self.apply_joined(joined, Some(self.last_seq))?;
        let (resend, leave) = self.carry_unanswered(&mut events);
        self.reconcile_members(joined, &mut events)?;
        Ok(Rejoined {
            events,
            resend,
            leave,
        })
    }

    /// The room.
    pub(super) fn room(&self) -> &str {
        self.keys.room()
    }

    /// The owner of the room if it is private.
    pub(super) fn owner(&self) -> Option<&str> {
        self.private_room.then_some(self.owner.as_deref()).flatten()
    }

    /// The other members, sorted by name.
    pub fn members(&self) -> Vec<String> {
        self.keys.members().map(str::to_owned).collect()
    }

    /// Members whose keys changed and are not trusted.
    pub(super) fn untrusted_members(&self) -> Vec<String> {
        self.keys
            .members()
            .filter(|user| !self.keys.is_trusted(user))
            .map(str::to_owned)
            .collect()
    }

    /// Whether `user` is a member whose keys we use.
    pub fn is_trusted(&self, user: &str) -> bool {
        self.keys.is_trusted(user)
    }

    /// Whether our sender key is replaced on schedule with the next message.
    pub fn rotation_due(&self) -> bool {
        self.keys.rotation_due()
    }

    /// Current members whose prekey we do not know yet: ask the key directory.
    pub fn members_without_prekey(&self) -> Vec<String> {
        self.keys
            .without_prekey()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Records a member's prekey, from a bundle whose identity is the member's (the
    /// pinned one, or the one presented) and whose prekey signature verified.
    pub fn set_prekey(
        &mut self,
        identity: &VerifiedIdentity,
        prekey_id: u64,
        prekey: PublicEncryptionKey,
    ) {
        let matches = self
            .keys
            .member_identity(&identity.user)
            .is_some_and(|member| member.fingerprint == identity.fingerprint);
        if matches {
            self.keys.set_prekey(&identity.user, prekey_id, prekey);
        }
    }

    /// The highest sequence number of the room processed.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// How many of our frames the relay has not answered yet.
    pub(super) fn unanswered(&self) -> usize {
        self.unanswered.len()
    }

    /// The texts of our messages the relay has not acknowledged yet, in the order sent.
    pub(super) fn pending(&self) -> Vec<&str> {
        self.unanswered
            .values()
            .filter_map(|pending| match pending {
                Pending::Message(unacked) => Some(unacked.text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Messages from others still waiting for their sender key.
    pub(super) fn undecryptable(&self) -> usize {
        self.keys.waiting()
    }

    /// Whether we left the room or were removed from it.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Our current sender key as `handout` says, in frames ready to send (remembered
    /// until answered, and sent again after a reconnect). Nothing once we are leaving:
    /// the relay would refuse it.
    pub fn distribute(&mut self, handout: &KeyHandout) -> Result<Vec<ClientFrame>, ClientError> {
        if self.leaving {
            return Ok(Vec::new());
        }
        let frames = self.distribution_frames(self.keys.distribute(handout)?);
        Ok(self.queue(frames))
    }

    /// A fresh sender key for everyone, in frames ready to send: after a rejoin, so that
    /// it reaches whoever joined meanwhile, and not whoever left.
    pub(super) fn rotate(&mut self) -> Result<Vec<ClientFrame>, ClientError> {
        let handout = self.keys.rotate()?;
        self.distribute(&handout)
    }

    /// Seals a text message: its request id, and the frames to send, in order (a
    /// rotation of our key first if it has sealed all it may, then the message, unless
    /// it is held until the relay acknowledged its key's distribution).
    pub(super) fn send_text(&mut self, text: &str) -> Result<(u64, Vec<ClientFrame>), ClientError> {
        let (rotation, send) = self.keys.seal_text(text)?;
        let mut frames = self.distribution_frames(rotation);
        let recipients = self
            .keys
            .members()
            .filter(|member| self.keys.is_trusted(member))
            .map(str::to_owned)
            .collect();
        let unacked = Unacked {
            text: text.to_owned(),
            send: send.clone(),
            recipients,
        };
        let message = self.frame(client_frame::Kind::Send(send), Pending::Message(unacked));
        let request_id = message.request_id;
        frames.push(message);
        Ok((request_id, self.queue(frames)))
    }

    /// Queues our `frames` behind those held, and returns what may be sent now, in
    /// order (see [`release_held`](Self::release_held)).
    fn queue(&mut self, frames: Vec<ClientFrame>) -> Vec<ClientFrame> {
        self.held.extend(frames);
        self.release_held()
    }

    /// The held frames that may be sent now, in order: a distribution of our key always
    /// may, a message (or receipt) only while no distribution of ours is sent and
    /// unanswered. So no message reaches the relay before the relay took the key it is
    /// sealed under for every member (a refused key would leave it stored and
    /// acknowledged, yet unreadable to them), nor after a newer key of ours.
    fn release_held(&mut self) -> Vec<ClientFrame> {
        let mut ready = Vec::new();
        while let Some(front) = self.held.front() {
            let distribution = matches!(front.kind, Some(client_frame::Kind::DistributeKey(_)));
            if !distribution && self.distributing() {
                break;
            }
            ready.extend(self.held.pop_front());
        }
        ready
    }

    /// Whether a distribution of our key was sent and is not answered yet.
    fn distributing(&self) -> bool {
        self.unanswered.iter().any(|(request_id, pending)| {
            matches!(pending, Pending::KeyDistribution(_))
                && !self.held.iter().any(|held| held.request_id == *request_id)
        })
    }

    /// Our receipt for the room, sealed, if one is due at `now` (see [`Receipts`]):
    /// the frames to send, in order. None while catching up or leaving.
    pub(super) fn send_receipt(
        &mut self,
        now: Instant,
    ) -> Result<Option<Vec<ClientFrame>>, ClientError> {
        if !self.caught_up || self.leaving {
            return Ok(None);
        }
        let Some((delivered_through, read_through)) = self.receipts.due(now) else {
            return Ok(None);
        };
        let (rotation, send) = self.keys.seal_receipt(delivered_through, read_through)?;
        let mut frames = self.distribution_frames(rotation);
        frames.push(self.frame(
            client_frame::Kind::Send(send.clone()),
            Pending::Receipt(send),
        ));
        Ok(Some(self.queue(frames)))
    }

    /// Whether [`send_receipt`](Self::send_receipt) would send one at `now`.
    pub(super) fn receipt_due(&self, now: Instant) -> bool {
        self.caught_up && !self.leaving && self.receipts.is_due(now)
    }

    /// The person saw the room's messages up to `seq` (a text from someone else): the
    /// next receipt says so.
    pub fn mark_read(&mut self, seq: u64) {
        self.receipts.read(seq);
    }

    /// What receipts say of our message stored under `seq`.
    pub fn receipt_summary(&self, seq: u64) -> Option<ReceiptSummary> {
        self.receipts.summary(seq)
    }

    /// Our latest acknowledged messages (at most `count`), oldest first: sequence
    /// number, text and what receipts say of it.
    pub fn own_receipts(&self, count: usize) -> Vec<(u64, String, ReceiptSummary)> {
        let mut latest: Vec<_> = self
            .receipts
            .own_messages()
            .rev()
            .take(count)
            .filter_map(|(seq, text)| Some((seq, text.to_owned(), self.receipts.summary(seq)?)))
            .collect();
        latest.reverse();
        latest
    }

    /// Whether the relay has sent everything we missed in the room.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up
    }

    /// Whether `request_id` is one of our unanswered frames in this room.
    pub(super) fn owns(&self, request_id: u64) -> bool {
        self.unanswered.contains_key(&request_id)
    }

    /// The room is dropped from the session (the relay refused to let us back in, or we
    /// are out of it): each message still waiting for the relay is reported refused with
    /// `code` and `message`.
    pub(super) fn abandon(&mut self, code: Code, message: &str) -> Vec<Event> {
        self.held.clear();
        self.resealing.clear();
        self.after_reseal.clear();
        let mut waiting = std::mem::take(&mut self.stale);
        waiting.extend(std::mem::take(&mut self.unanswered).into_values());
        waiting
            .into_iter()
            .filter_map(|pending| match pending {
                Pending::Message(unacked) => Some(Event::Refused {
                    request_id: 0,
                    code,
                    message: format!("{message} (in {})", self.room()),
                    text: unacked.text,
                }),
                _ => None,
            })
            .collect()
    }

    /// The stream was lost: what it left unanswered waits, in order, for the room to be
    /// joined again on a new stream (which numbers its frames afresh).
    pub(super) fn detach(&mut self) {
        // Held messages are unanswered too: a reconnect sends them again in order.
        self.held.clear();
        let unanswered = std::mem::take(&mut self.unanswered);
        self.stale.extend(unanswered.into_values());
    }

    /// The frame asking for the latest `limit` messages (1 to [`MAX_HISTORY_MESSAGES`]).
    pub fn history(&mut self, limit: u32) -> ClientFrame {
        let request = GetHistory {
            room: self.room().to_owned(),
            limit: limit.clamp(1, MAX_HISTORY_MESSAGES),
        };
        self.frame(client_frame::Kind::History(request), Pending::History)
    }

    /// The frame leaving the room for good, with its request id, queued behind our
    /// held messages (a message said before leaving is sent before it): what may be
    /// sent now, in order.
    pub fn leave(&mut self) -> (u64, Vec<ClientFrame>) {
        self.leaving = true;
        let leave = LeaveRoom {
            room: self.room().to_owned(),
        };
        let frame = self.frame(client_frame::Kind::Leave(leave), Pending::Leave);
        (frame.request_id, self.queue(vec![frame]))
    }

    /// The frame letting `invitee` (the keys we checked for it) join this private room,
    /// with our signed invitation.
    /// The keys are checked against those pinned for the invitee (and pinned if new):
    /// an invitation names the keys, so one for keys the relay swapped in would let the
    /// relay in.
    pub fn invite(&mut self, invitee: &VerifiedIdentity) -> Result<ClientFrame, ClientError> {
        if let Pin::Changed { .. } = self.contacts().check(&invitee.user, &invitee.fingerprint)? {
            return Err(ClientError::NotTrusted {
                user: invitee.user.clone(),
            });
        }
        let room = self.room().to_owned();
        let signed =
            crypto::Invitation::sign(&self.identity, &room, &self.user, invitee, now_ms())?;
        let invite = InviteMember {
            room,
            invitation: Some(signed.to_wire()),
        };
        Ok(self.frame(
            client_frame::Kind::Invite(invite),
            Pending::Invite(invitee.user.clone()),
        ))
    }

    /// The frame removing `user` from this private room, with our signed removal.
    pub fn kick(&mut self, user: &str) -> Result<ClientFrame, ClientError> {
        let room = self.room().to_owned();
        let signed = crypto::Removal::sign(&self.identity, &room, &self.user, user, now_ms())?;
        let kick = KickMember {
            room,
            removal: Some(signed.to_wire()),
        };
        Ok(self.frame(
            client_frame::Kind::Kick(kick),
            Pending::Kick(user.to_owned()),
        ))
    }

    /// The frame `request_id` could not be sent: the stream is down. A message, key
    /// distribution or leave is kept, for a reconnect to send again; anything else is
    /// forgotten. Returns whether it was kept.
    pub(super) fn unsent(&mut self, request_id: u64) -> bool {
        let kept = matches!(
            self.unanswered.get(&request_id),
            Some(Pending::Message(_) | Pending::KeyDistribution(_) | Pending::Leave)
        );
        if !kept {
            self.unanswered.remove(&request_id);
        }
        kept
    }

    /// Accepts `identity` as the keys of `user` (the user decided): pins them and, if
    /// `user` is in the room, starts exchanging keys with it.
    pub fn trust(
        &mut self,
        user: &str,
        identity: &VerifiedIdentity,
    ) -> Result<Applied, ClientError> {
        self.contacts().trust(user, &identity.fingerprint)?;
        let mut applied = Applied {
            events: vec![Event::Notice(format!(
                "now trusting the keys of {user} (fingerprint {}); compare the safety number \
                 with /verify {user}",
                identity.fingerprint
            ))],
            handout: None,
            send: Vec::new(),
        };
        if !self.keys.is_trusted(user)
            && let Some((handout, opened)) = self.keys.trust(user)?
        {
            applied.handout = Some(handout);
            applied.events.extend(self.room_events(opened));
        }
        Ok(applied)
    }

    /// The verified identity of a member, current or former.
    pub(super) fn member_identity(&self, user: &str) -> Option<&VerifiedIdentity> {
        self.keys.member_identity(user)
    }

    /// The safety number of this user and `user`: from the keys `user` has in this
    /// room (the ones to check before trusting them, if they changed), or else from the
    /// pinned keys.
    pub(super) fn safety_number(&self, user: &str) -> Result<SafetyNumber, ClientError> {
        match self.keys.member_identity(user) {
            Some(member) => Ok(SafetyNumber::of(
                &self.user,
                &self.identity.fingerprint(),
                user,
                &member.fingerprint,
            )),
            None => safety_number(&self.identity, &self.user, &self.contacts(), user),
        }
    }

    /// Records that the user compared the safety number with `user` and it matched. If
    /// `user` is in the room with keys that are not the pinned ones, the user must trust
    /// them first: the number shown was for those keys.
    pub(super) fn mark_verified(&mut self, user: &str) -> Result<(), ClientError> {
        if self
            .keys
            .member_identity(user)
            .is_some_and(|_| !self.keys.is_trusted(user))
        {
            return Err(ClientError::NotTrusted {
                user: user.to_owned(),
            });
        }
        if self.contacts().mark_verified(user)? {
            Ok(())
        } else {
            Err(ClientError::NotPinned {
                user: user.to_owned(),
            })
        }
    }

    /// Applies one frame from the relay: what the user should see, and whom our key is
    /// owed to. Whatever the frame, it never panics; a message is shown only if its
    /// sender's signature verifies, and only once.
    pub fn apply(&mut self, frame: ServerFrame) -> Result<Applied, ClientError> {
        use server_frame::Kind;

        let room = self.keys.room().to_owned();
        let mut applied = Applied::default();
        let events = &mut applied.events;
        match frame.kind {
            Some(Kind::Ack(ack)) => {
                events.extend(self.on_ack(frame.request_id, ack.seq));
                applied.send = self.release_held();
            }
            Some(Kind::Rejection(rejection)) => {
                let code = Code::from_i32(rejection.code);
                events.extend(self.on_rejection(frame.request_id, code, rejection.message));
            }
            Some(Kind::MemberJoined(joined)) if joined.room == room => {
                if let (Some(signed), Some(invitation)) = (&mut self.signed, &joined.invitation) {
                    signed.learn_invitation(invitation);
                }
                if let Some(member) = joined.member {
                    applied.handout = self.on_member_joined(&member, events)?;
                }
            }
            Some(Kind::MemberLeft(left)) if left.room == room && left.user == self.user => {
                // The relay sends this only when the owner removed us.
                self.leaving = true;
                events.push(Event::Removed { room });
            }
            Some(Kind::MemberLeft(left)) if left.room == room => {
                if let (Some(signed), Some(removal)) = (&mut self.signed, &left.removal) {
                    signed.learn_removal(removal);
                }
                // Someone who never had our key (refused, or unknown): nothing to rotate
                // away from, and a relay cannot make us rotate at will.
                if !self.keys.is_member(&left.user) {
                    return Ok(applied);
                }
                let (handout, warnings) = self.keys.member_left(&left.user)?;
                self.receipts.forget(&left.user);
                applied.handout = Some(handout);
                events.push(Event::MemberLeft {
                    room: room.clone(),
                    user: left.user.clone(),
                    reason: left.reason(),
                });
                events.extend(self.room_events(warnings));
            }
            // One at or below what was processed is not new: the relay sent it again (a
            // catch-up overlapping what we saw), and it was shown then. Number 0 is a
            // relay that does not number its entries: nothing to go by but the replay
            // windows, which still catch a repeat.
            Some(Kind::Message(message))
                if message.room == room && (message.seq == 0 || message.seq > self.last_seq) =>
            {
                self.last_seq = self.last_seq.max(message.seq);
                let opened = self.keys.open(message);
                let text = opened
                    .iter()
                    .any(|event| matches!(event, RoomEvent::Message { .. }));
                self.receipts.received(self.last_seq, text);
                let opened = self.take_receipts(opened);
                events.extend(self.room_events(opened));
            }
            Some(Kind::SenderKey(key)) if key.room == room => {
                // Always taken: a catch-up starts with the keys in force, numbered at or
                // below where it starts.
                self.last_seq = self.last_seq.max(key.seq);
                let opened = self.keys.accept_sender_key(key);
                let text = opened
                    .iter()
                    .any(|event| matches!(event, RoomEvent::Message { .. }));
                self.receipts.received(self.last_seq, text);
                let opened = self.take_receipts(opened);
                events.extend(self.room_events(opened));
            }
            Some(Kind::CaughtUp(caught_up)) if caught_up.room == room => {
                // Informational: the numbers still come from the entries themselves, so
                // a relay sending this early cannot make us skip any.
                let forgotten = self.keys.forget_former_members();
                events.extend(self.room_events(forgotten));
                self.caught_up = true;
                events.push(Event::CaughtUp {
                    room,
                    seq: caught_up.seq,
                });
            }
            // Only as the answer to our request: a history costs an RSA decryption per
            // sender key in it, which a relay must not be able to make us repeat at will.
            Some(Kind::History(history)) if history.room == room => {
                if let Some(Pending::History) = self.unanswered.get(&frame.request_id) {
                    self.unanswered.remove(&frame.request_id);
                    let opened = self.open_history(history)?;
                    events.extend(opened);
                } else {
                    events.push(Event::Warning(format!(
                        "[{room}] ignored a history that answers no request of ours"
                    )));
                }
            }
            // Frames for other rooms, messages already processed, a repeated `Joined`, or
            // kinds newer than this client.
            _ => {}
        }
        Ok(applied)
    }

    fn on_ack(&mut self, request_id: u64, seq: u64) -> Option<Event> {
        let room = self.keys.room().to_owned();
        // Our own entries never move `last_seq`: the relay may ack ours before it
        // delivers an earlier one of someone else's.
        match self.unanswered.remove(&request_id)? {
            Pending::Message(unacked) => {
                if let Some(sealed) = &unacked.send.sealed {
                    self.keys.acknowledged(sealed.key_id, sealed.iteration);
                }
                self.receipts.sent(seq, unacked.recipients, &unacked.text);
                Some(Event::Delivered {
                    room,
                    request_id,
                    seq,
                })
            }
            Pending::Receipt(send) => {
                if let Some(sealed) = &send.sealed {
                    self.keys.acknowledged(sealed.key_id, sealed.iteration);
                }
                None
            }
            Pending::Leave => Some(Event::Left { room }),
            Pending::Invite(user) => Some(Event::Notice(format!(
                "invited {user} to {room}: they can join it now"
            ))),
            Pending::Kick(user) => Some(Event::Notice(format!("removed {user} from {room}"))),
            Pending::KeyDistribution(_) => {
                self.refused_distributions = 0;
                None
            }
            Pending::History | Pending::Superseded => None,
        }
    }

    fn on_rejection(&mut self, request_id: u64, code: Code, message: String) -> Vec<Event> {
        let what = match self.unanswered.remove(&request_id) {
            Some(Pending::Message(unacked)) => {
                return vec![Event::Refused {
                    request_id,
                    code,
                    message,
                    text: unacked.text,
                }];
            }
            Some(Pending::KeyDistribution(distribution)) => {
                return self.on_refused_distribution(&distribution, code, &message);
            }
            Some(Pending::Superseded) => return Vec::new(),
            Some(Pending::Leave) => {
                // Still a member: the room is ours again, to use or to leave again.
                self.leaving = false;
                return vec![Event::LeaveRefused {
                    room: self.keys.room().to_owned(),
                    code,
                    message,
                }];
            }
            Some(Pending::Invite(user)) => format!("to invite {user}"),
            Some(Pending::Kick(user)) => format!("to remove {user}"),
            Some(Pending::History) => "to send the history".to_owned(),
            Some(Pending::Receipt(_)) => "our receipt".to_owned(),
            None => "a frame".to_owned(),
        };
        vec![Event::Warning(format!(
            "the server refused {what}: {}: {message}",
            super::code_name(code)
        ))]
    }

    /// The relay refused a distribution of our key: some members never got it, so a
    /// message sealed under it would be stored (once the relay takes messages again) and
    /// acknowledged, yet unreadable to them. The key is not used again. Our messages
    /// held behind the distribution (never sent), and any in flight under the refused
    /// key (sent again after a reconnect), are superseded: their answers are ignored,
    /// and they are sealed again under a fresh key, distributed first
    /// ([`reseal`](Self::reseal)), in the order sent. Past [`MAX_REFUSED_DISTRIBUTIONS`] refusals in a row they are
    /// reported refused instead, so that a relay refusing every key cannot keep us
    /// busy; the key is still replaced with the next message.
    fn on_refused_distribution(
        &mut self,
        distribution: &DistributeSenderKey,
        code: Code,
        message: &str,
    ) -> Vec<Event> {
        let key_id = distribution
            .header
            .as_ref()
            .map_or(0, |header| header.key_id);
        // Our current key is replaced whichever was refused: its own distribution may
        // be among the held frames dropped below.
        self.keys.refused(self.keys.key_id());
        self.refused_distributions += 1;
        let retry = self.refused_distributions <= MAX_REFUSED_DISTRIBUTIONS;
        let mut refused = Vec::new();
        let mut receipt = false;
        // Held frames were never sent: distributions are dropped, messages are sealed
        // again whatever their key, in order, after those in flight under the refused
        // key (sent before them); what is not sealed (a leave) goes after them.
        let (sealed, unsealed): (Vec<ClientFrame>, Vec<ClientFrame>) =
            std::mem::take(&mut self.held)
                .into_iter()
                .partition(|frame| {
                    matches!(
                        frame.kind,
                        Some(client_frame::Kind::Send(_) | client_frame::Kind::DistributeKey(_))
                    )
                });
        self.after_reseal.extend(unsealed);
        let held: BTreeSet<u64> = sealed.iter().map(|frame| frame.request_id).collect();
        for (request_id, pending) in &mut self.unanswered {
            let under_key = |send: &SendMessage| {
                held.contains(request_id)
                    || send
                        .sealed
                        .as_ref()
                        .is_some_and(|sealed| sealed.key_id == key_id)
            };
            match pending {
                Pending::Message(unacked) if under_key(&unacked.send) => {
                    if retry {
                        self.resealing.push(unacked.text.clone());
                    } else {
                        refused.push(Event::Refused {
                            request_id: *request_id,
                            code,
                            message: format!("our sender key was refused: {message}"),
                            text: unacked.text.clone(),
                        });
                    }
                    *pending = Pending::Superseded;
                }
                Pending::Receipt(send) if under_key(send) => {
                    receipt = true;
                    *pending = Pending::Superseded;
                }
                _ => {}
            }
        }
        if receipt {
            self.receipts.resend();
        }
        // Held ones are dropped for good: nothing waits for their answer.
        self.unanswered
            .retain(|request_id, _| !held.contains(request_id));
        let mut events = vec![Event::Warning(format!(
            "the server refused our sender key: {}: {message}; {}",
            super::code_name(code),
            match self.resealing.len() {
                0 => "a new one goes with the next message".to_owned(),
                count => format!("sending {count} message(s) again under a new one"),
            }
        ))];
        events.extend(refused);
        events
    }

    /// Whether messages a refused distribution left in flight wait to be sealed again,
    /// or frames held behind them to be sent.
    pub(super) fn resealing(&self) -> bool {
        !self.resealing.is_empty() || !self.after_reseal.is_empty()
    }

    /// The messages a refused distribution left in flight ([`Pending::Superseded`]),
    /// sealed again under a fresh key: the frames to send, in order, the new key's
    /// distribution first. To send before any newer message.
    pub(super) fn reseal(&mut self) -> Result<Vec<ClientFrame>, ClientError> {
        let mut frames = Vec::new();
        for text in std::mem::take(&mut self.resealing) {
            frames.extend(self.send_text(&text)?.1);
        }
        let after = std::mem::take(&mut self.after_reseal);
        frames.extend(self.queue(after));
        Ok(frames)
    }

    fn on_member_joined(
        &mut self,
        member: &PublicIdentity,
        events: &mut Vec<Event>,
    ) -> Result<Option<KeyHandout>, ClientError> {
        let room = self.keys.room().to_owned();
        if self.keys.is_member(&member.user) {
            // Accepting it would reset what we know of that member's keys.
            events.push(Event::Warning(format!(
                "[{room}] ignored a second join of a current member: the server is \
                 misbehaving"
            )));
            return Ok(None);
        }
        // A former member we were catching up on becomes a member again here.
        let Some((identity, trusted)) = self.admit_member(member, events)? else {
            return Ok(None);
        };
        let user = identity.user.clone();
        let handout = self.keys.member_joined(identity, trusted);
        events.insert(0, Event::MemberJoined { room, user });
        Ok(handout)
    }

    /// Opens a `History` answer with the identities it brings, checked as members' are.
    fn open_history(&mut self, history: History) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        let mut former = Vec::new();
        for identity in &history.former_members {
            if self.keys.member_identity(&identity.user).is_some() {
                continue;
            }
            if let Some((identity, true)) = self.admit(identity, &mut events)? {
                former.push(identity);
            }
        }
        let mut messages = Vec::new();
        for event in self.keys.open_history(history.entries, &former) {
            match event {
                RoomEvent::Message {
                    seq,
                    sender,
                    text,
                    sent_at_ms,
                } => messages.push(HistoryMessage {
                    seq,
                    sender,
                    text,
                    sent_at_ms,
                }),
                RoomEvent::Receipt { .. } => {}
                RoomEvent::Warning(text) => events.push(Event::Warning(text)),
            }
        }
        events.insert(
            0,
            Event::History {
                room: history.room,
                messages,
            },
        );
        Ok(events)
    }

    /// Takes in the relay's answer to a join: where the numbering starts, and whether
    /// the room is private (and then what its owner signed).
    fn apply_joined(
        &mut self,
        joined: &Joined,
        after_seq: Option<u64>,
    ) -> Result<Vec<Event>, ClientError> {
        self.private_room = joined.private_room;
        self.owner = (!joined.owner.is_empty()).then(|| joined.owner.clone());
        let (start, warning) = starting_seq(joined.resumed, after_seq, joined.last_seq);
        self.last_seq = start;
        let mut events: Vec<Event> = warning
            .map(|text| Event::Warning(format!("[{}] {text}", self.keys.room())))
            .into_iter()
            .collect();
        self.signed = self.owner_signed(joined, &mut events)?;
        Ok(events)
    }

    /// What the owner of a private room signed, checked against the owner pinned the first
    /// time we joined it: a relay cannot make a room public, or give it another owner,
    /// to get keys handed to members of its choosing.
    fn owner_signed(
        &mut self,
        joined: &Joined,
        events: &mut Vec<Event>,
    ) -> Result<Option<OwnerSigned>, ClientError> {
        let room = self.keys.room().to_owned();
        let pinned = self.contacts().room_owner(&room).map(str::to_owned);
        let owner = match pinned {
            None if !joined.private_room => return Ok(None),
            None => {
                if crate::protocol::validate_user(&joined.owner).is_err() {
                    events.push(Event::Warning(format!(
                        "[{room}] the server names no valid owner for this private room: \
                         your key goes to nobody"
                    )));
                    return Ok(Some(OwnerSigned::new(&room, "")));
                }
                self.contacts().pin_room_owner(&room, &joined.owner)?
            }
            Some(pinned) => {
                if !joined.private_room || joined.owner != pinned {
                    events.push(Event::Warning(format!(
                        "[{room}] the server says this room is {}, but it was private and \
                         owned by {pinned} when you first joined it: your key goes only to \
                         members {pinned} invited. (If the room was deleted and made anew, \
                         remove it from private_rooms in contacts.json.)",
                        if joined.private_room {
                            format!("owned by {}", joined.owner)
                        } else {
                            "public".to_owned()
                        }
                    )));
                }
                pinned
            }
        };
        let mut signed = OwnerSigned::new(&room, &owner);
        for invitation in &joined.invitations {
            signed.learn_invitation(invitation);
        }
        for removal in &joined.removals {
            signed.learn_removal(removal);
        }
        if owner == self.user {
            let ours = self.identity.publish(&self.user)?;
            signed.set_owner_keys(VerifiedIdentity::verify(&ours)?);
        } else if let Some(member) = joined
            .members
            .iter()
            .chain(&joined.former_members)
            .find(|member| member.user == owner)
        {
            // The owner's keys count only if they are the ones pinned for it (or seen
            // first now, and pinned as the member is admitted).
            if let Ok(identity) = self.keys.vet(member) {
                let pinned = self.contacts().pinned(&owner);
                if pinned.is_none_or(|(fingerprint, _)| fingerprint == identity.fingerprint) {
                    signed.set_owner_keys(identity);
                }
            }
        }
        Ok(Some(signed))
    }

    /// [`admit`](Self::admit) for a current member: in a private room, only one its owner
    /// invited (and did not remove) is admitted; anyone else is refused with a warning.
    fn admit_member(
        &mut self,
        member: &PublicIdentity,
        events: &mut Vec<Event>,
    ) -> Result<Option<(VerifiedIdentity, bool)>, ClientError> {
        let Some((identity, trusted)) = self.admit(member, events)? else {
            return Ok(None);
        };
        if let Some(signed) = &self.signed
            && let Err(refusal) = signed.admits(&identity)
        {
            events.push(Event::Warning(refusal.explain(
                self.keys.room(),
                signed.owner(),
                &identity.user,
            )));
            return Ok(None);
        }
        Ok(Some((identity, trusted)))
    }

    /// Admits the former members a `Joined` names, for the catch-up that follows.
    fn admit_former_members(
        &mut self,
        former_members: &[PublicIdentity],
        events: &mut Vec<Event>,
    ) -> Result<(), ClientError> {
        for member in former_members {
            if self.keys.is_member(&member.user) {
                continue;
            }
            if let Some((identity, trusted)) = self.admit(member, events)? {
                self.keys.insert_former_member(identity, trusted);
            }
        }
        Ok(())
    }

    /// Brings the members up to date after a reconnect: those who left meanwhile are
    /// forgotten, those who joined are admitted (no key for them yet: a distribution
    /// follows).
    fn reconcile_members(
        &mut self,
        joined: &Joined,
        events: &mut Vec<Event>,
    ) -> Result<(), ClientError> {
        let room = self.keys.room().to_owned();
        let present: BTreeSet<&str> = joined.members.iter().map(|m| m.user.as_str()).collect();
        let gone: Vec<String> = self
            .keys
            .members()
            .filter(|user| !present.contains(user))
            .map(str::to_owned)
            .collect();
        for user in gone {
            let warnings = self.keys.remove_member(&user);
            events.push(Event::MemberLeft {
                room: room.clone(),
                user,
                // Left or removed: a disconnection no longer ends a membership.
                reason: LeaveReason::Unspecified,
            });
            events.extend(self.room_events(warnings));
        }
        for member in &joined.members {
            if self.keys.is_member(&member.user) {
                continue;
            }
            if let Some((identity, trusted)) = self.admit_member(member, events)? {
                let user = identity.user.clone();
                self.keys.insert_member(identity, trusted);
                events.push(Event::MemberJoined {
                    room: room.clone(),
                    user,
                });
            }
        }
        self.admit_former_members(&joined.former_members, events)
    }

    /// Sorts out the frames a dead stream left unanswered: messages and key
    /// distributions get new request ids (kept in order) to be sent again; a leave is
    /// sent again (returned as `true`); the rest is reported as unconfirmed.
    fn carry_unanswered(&mut self, events: &mut Vec<Event>) -> (Vec<ClientFrame>, bool) {
        let mut resend = Vec::new();
        let mut leave = false;
        let mut carried = std::mem::take(&mut self.stale);
        carried.extend(std::mem::take(&mut self.unanswered).into_values());
        for pending in carried {
            let unconfirmed = match pending {
                Pending::Message(unacked) => {
                    let kind = client_frame::Kind::Send(unacked.send.clone());
                    resend.push(self.frame(kind, Pending::Message(unacked)));
                    continue;
                }
                Pending::KeyDistribution(distribution) => {
                    let kind = client_frame::Kind::DistributeKey(distribution.clone());
                    resend.push(self.frame(kind, Pending::KeyDistribution(distribution)));
                    continue;
                }
                Pending::Leave => {
                    leave = true;
                    continue;
                }
                Pending::Receipt(_) => {
                    self.receipts.resend();
                    continue;
                }
                Pending::Superseded => continue,
                Pending::Invite(user) => format!("inviting {user}"),
                Pending::Kick(user) => format!("removing {user}"),
                Pending::History => "the history asked for".to_owned(),
            };
            events.push(Event::Warning(format!(
                "the connection was lost before the server confirmed {unconfirmed}; ask again \
                 if needed"
            )));
        }
        (resend, leave)
    }

    /// Checks a member the relay announced and decides whether to trust its keys:
    /// pinned ones or first sight, yes; different from the pinned ones, no.
    fn admit(
        &mut self,
        member: &PublicIdentity,
        events: &mut Vec<Event>,
    ) -> Result<Option<(VerifiedIdentity, bool)>, ClientError> {
        let identity = match self.keys.vet(member) {
            Ok(identity) => identity,
            Err(warning) => {
                events.extend(self.room_events(vec![warning]));
                return Ok(None);
            }
        };
        let trusted = match self
            .contacts()
            .check(&identity.user, &identity.fingerprint)?
        {
            Pin::FirstUse => {
                events.push(Event::Pinned {
                    user: identity.user.clone(),
                    fingerprint: identity.fingerprint,
                });
                true
            }
            Pin::Known { .. } => true,
            Pin::Changed {
                pinned,
                was_verified,
            } => {
                events.push(Event::KeysChanged {
                    room: self.keys.room().to_owned(),
                    user: identity.user.clone(),
                    pinned,
                    presented: identity.fingerprint,
                    was_verified,
                });
                false
            }
        };
        Ok(Some((identity, trusted)))
    }

    /// Takes the receipts among `opened` in; keeps those that moved something, to show.
    fn take_receipts(&mut self, opened: Vec<RoomEvent>) -> Vec<RoomEvent> {
        opened
            .into_iter()
            .filter(|event| match event {
                // Nobody has received what comes after its own receipt: a larger
                // number is a lie, and would mark our later messages in advance.
                RoomEvent::Receipt {
                    seq,
                    sender,
                    delivered_through,
                    read_through,
                } => {
                    let through = |number: u64| if *seq > 0 { number.min(*seq) } else { number };
                    self.receipts
                        .take(sender, through(*delivered_through), through(*read_through))
                }
                _ => true,
            })
            .collect()
    }

    fn room_events(&self, events: Vec<RoomEvent>) -> Vec<Event> {
        let room = self.keys.room();
        events
            .into_iter()
            .map(|event| match event {
                RoomEvent::Message {
                    seq,
                    sender,
                    text,
                    sent_at_ms,
                } => Event::Message {
                    room: room.to_owned(),
                    sender,
                    text,
                    sent_at_ms,
                    seq,
                },
                RoomEvent::Receipt {
                    sender,
                    delivered_through,
                    read_through,
                    ..
                } => Event::Receipt {
                    room: room.to_owned(),
                    user: sender,
                    delivered_through,
                    read_through,
                },
                RoomEvent::Warning(text) => Event::Warning(text),
            })
            .collect()
    }

    fn distribution_frames(&mut self, distributions: Vec<DistributeSenderKey>) -> Vec<ClientFrame> {
        distributions
            .into_iter()
            .map(|distribution| {
                let kind = client_frame::Kind::DistributeKey(distribution.clone());
                self.frame(kind, Pending::KeyDistribution(distribution))
            })
            .collect()
    }

    /// A frame under the next request id, remembered as `pending` until answered. It is
    /// recorded before it is sent, so that no answer can come before it is known.
    fn frame(&mut self, kind: client_frame::Kind, pending: Pending) -> ClientFrame {
        let request_id = self.request_ids.next();
        self.unanswered.insert(request_id, pending);
        ClientFrame {
            request_id,
            kind: Some(kind),
        }
    }
}

/// The safety number of `me` (holding `identity`) and `user`, from the keys pinned for
/// `user`.
pub fn safety_number(
    identity: &Identity,
    me: &str,
    contacts: &Contacts,
    user: &str,
) -> Result<SafetyNumber, ClientError> {
    let (theirs, _) = contacts
        .pinned(user)
        .ok_or_else(|| ClientError::NotPinned {
            user: user.to_owned(),
        })?;
    Ok(SafetyNumber::of(me, &identity.fingerprint(), user, &theirs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ServerFrame;

    /// alice's state in the lobby, before the relay answered her join.
    fn alice_in_the_lobby() -> SessionState {
        let identity = Arc::new(Identity::generate(2048).unwrap());
        let ring = super::super::prekeys::PrekeyRing::in_memory(2048, now_ms()).unwrap();
        SessionState::new(
            "lobby",
            "alice",
            identity,
            Arc::new(Mutex::new(Contacts::in_memory())),
            Arc::new(std::sync::RwLock::new(ring)),
            RotationPolicy::default(),
            RequestIds::default(),
        )
        .unwrap()
    }

    /// Found by profiling the `server_frame` fuzz target: any `History` frame was opened,
    /// so a relay could make the client unwrap the same sender keys again and again.
    #[test]
    fn only_a_history_we_asked_for_is_opened() {
        let mut state = alice_in_the_lobby();
        let history = |request_id| ServerFrame {
            request_id,
            kind: Some(server_frame::Kind::History(History {
                room: "lobby".to_owned(),
                ..History::default()
            })),
        };
        let applied = state.apply(history(2)).unwrap();
        assert!(
            matches!(&applied.events[..], [Event::Warning(w)] if w.contains("no request")),
            "{:?}",
            applied.events
        );
        let asked = state.history(10).request_id;
        let applied = state.apply(history(asked)).unwrap();
        assert!(
            matches!(&applied.events[..], [Event::History { messages, .. }] if messages.is_empty()),
            "{:?}",
            applied.events
        );
        assert_eq!(state.unanswered(), 0);
        // Answered once: the same answer again is not opened.
        let applied = state.apply(history(asked)).unwrap();
        assert!(matches!(&applied.events[..], [Event::Warning(_)]));
    }

    /// A relay announcing that someone we never gave our key to left cannot make us
    /// rotate (each rotation costs an RSA signature and a wrap per member).
    #[test]
    fn the_departure_of_a_stranger_changes_nothing() {
        let mut state = alice_in_the_lobby();
        let left = ServerFrame {
            request_id: 0,
            kind: Some(server_frame::Kind::MemberLeft(crate::proto::MemberLeft {
                room: "lobby".to_owned(),
                user: "mallory".to_owned(),
                ..Default::default()
            })),
        };
        let applied = state.apply(left).unwrap();
        assert!(applied.events.is_empty(), "{:?}", applied.events);
        assert_eq!(applied.handout, None);
    }

    #[test]
    fn a_first_join_starts_at_the_rooms_latest_number() {
        assert_eq!(starting_seq(false, None, 42), (42, None));
        assert_eq!(starting_seq(false, Some(0), 42), (42, None));
    }

    #[test]
    fn a_resumed_join_starts_where_the_client_was() {
        assert_eq!(starting_seq(true, Some(17), 42), (17, None));
        assert_eq!(starting_seq(true, Some(42), 42), (42, None));
        // Without saved progress: from now on.
        assert_eq!(starting_seq(true, None, 42), (42, None));
    }

    #[test]
    fn a_server_behind_the_client_is_reported_and_followed() {
        let (start, warning) = starting_seq(true, Some(50), 42);
        assert_eq!(start, 42);
        assert!(warning.unwrap().contains("older backup"));
        let (start, warning) = starting_seq(false, Some(50), 3);
        assert_eq!(start, 3);
        assert!(
            warning
                .unwrap()
                .contains("no longer counted you as a member")
        );
    }
}
