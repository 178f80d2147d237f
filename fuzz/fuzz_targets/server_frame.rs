//! What the relay sends a client (protocol v2): sequences of `chat.v2.ServerFrame`s
//! applied to a client's state of one room (`client::SessionState::apply`, the step
//! `ChatSession::handle` runs every frame through, with `RoomKeys`, the group cipher and
//! a private room's owner-signed membership under it).
//!
//! A relay cannot sign for anyone, so frames are built from a cast made once at start-up
//! with the project's own code: members with valid identities (and a second "bob" with
//! other keys, an impostor), the sender keys they handed out (one distribution for all
//! the room, signed once, and each recipient's copy with its Merkle path, as the relay's
//! frame checks store it), the messages they sealed under them, and the invitations and
//! removals owners signed (alice's, bob's, ours, and the impostor's in alice's and bob's
//! names); each taken as it is or tampered with. Raw bytes decoded as a frame cover the
//! rest. The keys are new in every process, so an input replays with other key bytes but
//! the same roles.
//!
//! The input is read a byte at a time ([`Start::read`], [`Step::read`]), so that the
//! seeds in `corpus/server_frame/seed-*` could be written by hand: a conversation, a
//! message before its key, an impostor the user comes to trust, a history, requests and
//! their answers, a private room, a raw frame.
//!
//! What must hold, whatever the frames: no panic; a message is shown only if it is one
//! the cast really sealed and signed, from the member who did, and at most once (and at
//! most once within one history); our key is owed, and handed out, only to trusted
//! members, and to nobody once we leave; in a private room, nobody becomes a member
//! (so nobody can be owed our key) unless the owner the client pinned invited exactly
//! those keys, in an invitation the relay passed on, and no removal passed on since
//! voids it; the sequence number processed never goes back.

#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use e2ee_chat::client::prekeys::PrekeyRing;
use e2ee_chat::client::{
    Contacts, Event, KeyHandout, RequestIds, RoomKeys, RotationPolicy, SessionState, SharedPrekeys,
};
use e2ee_chat::crypto::{self, Identity, PublicEncryptionKey, VerifiedIdentity};
use e2ee_chat::proto::{
    Ack, CaughtUp, ClientFrame, DistributeSenderKey, History, HistoryEntry, Invitation, Joined,
    MemberJoined, MemberLeft, MessageDelivery, PublicIdentity, Rejection, Removal,
    SenderKeyDelivery, ServerFrame, client_frame, history_entry, server_frame,
};
use e2ee_chat::protocol::now_ms;
use e2ee_chat::server::frame::{ValidFrame, check};
use e2ee_chat::store::copy;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const ROOM: &str = "lobby";
const ME: &str = "me";
/// The cast by index: alice, bob, carol, the impostor (another "bob"), then us.
const NAMES: [&str; 5] = ["alice", "bob", "carol", "bob", ME];
const IMPOSTOR: usize = 3;
const US: usize = 4;
/// Sender keys each member of the cast makes, and messages sealed under each.
const KEYS_PER_SENDER: usize = 2;
const MESSAGES_PER_KEY: usize = 3;
/// When the cast's invitations and removals were made: each invitee is invited, can be
/// removed, and invited again.
const INVITED_MS: u64 = 1_000;
const REMOVED_MS: u64 = 2_000;
const INVITED_AGAIN_MS: u64 = 3_000;

/// Everything signed that frames are built from, made once: RSA is slow.
struct Cast {
    /// The identities of the cast, by index (`NAMES`), and as verified.
    identities: Vec<Arc<Identity>>,
    published: Vec<PublicIdentity>,
    verified: Vec<VerifiedIdentity>,
    /// Our prekeys, which our copies of the others' keys are wrapped under.
    prekeys: SharedPrekeys,
    /// The prekey the key directory presents for the others (they share one).
    peer_prekey: (u64, PublicEncryptionKey),
    /// Sender keys, sender by sender (`KEYS_PER_SENDER` each, ours last).
    keys: Vec<SentKey>,
    /// Messages sealed under those keys (`MESSAGES_PER_KEY` per key), unnumbered.
    messages: Vec<MessageDelivery>,
    /// (sender, text) of every message the cast sealed: nothing else may be shown.
    genuine: HashSet<(String, String)>,
    invitations: Vec<SignedInvitation>,
    removals: Vec<SignedRemoval>,
}

/// One sender key as the relay delivers it.
struct SentKey {
    /// Our copy, handed out before the key's first message.
    ours: SenderKeyDelivery,
    /// Our copy handed out again once the key's first message was acknowledged: from
    /// iteration 1 on, under the same key id.
    later: SenderKeyDelivery,
    /// Another recipient's copy of the first distribution: genuine, but not ours.
    theirs: SenderKeyDelivery,
}

/// An invitation of the cast: who really signed it, and whose keys it names (indexes of
/// the cast).
struct SignedInvitation {
    wire: Invitation,
    signer: usize,
    invitee: usize,
}

/// A removal of the cast, and who really signed it.
struct SignedRemoval {
    wire: Removal,
    signer: usize,
}

static CAST: LazyLock<Cast> = LazyLock::new(|| {
    let generate = || Arc::new(Identity::generate(2048).expect("an RSA key pair"));
    let ring = || {
        let ring = PrekeyRing::in_memory(2048, now_ms()).expect("a prekey");
        Arc::new(RwLock::new(ring))
    };
    let identities: Vec<Arc<Identity>> = NAMES.iter().map(|_| generate()).collect();
    let published: Vec<PublicIdentity> = identities
        .iter()
        .zip(NAMES)
        .map(|(identity, name)| identity.publish(name).unwrap())
        .collect();
    let verified = published
        .iter()
        .map(|public| VerifiedIdentity::verify(public).unwrap())
        .collect();
    let (prekeys, peer_prekeys) = (ring(), ring());
    let peer_prekey = current(&peer_prekeys);
    let mut cast = Cast {
        identities,
        published,
        verified,
        prekeys,
        peer_prekey,
        keys: Vec::new(),
        messages: Vec::new(),
        genuine: HashSet::new(),
        invitations: Vec::new(),
        removals: Vec::new(),
    };
    for sender in 0..NAMES.len() {
        let ring = if sender == US {
            cast.prekeys.clone()
        } else {
            peer_prekeys.clone()
        };
        cast.seal(sender, ring);
    }
    // Invitations: alice's, bob's and ours as owners; the impostor's in the names of
    // alice (a forgery, whoever is pinned) and of bob (genuine if the client pinned the
    // impostor as bob).
    let invitations: [(usize, &str, &[usize], &[u64]); 5] = [
        (
            0,
            "alice",
            &[1, 2, IMPOSTOR],
            &[INVITED_MS, INVITED_AGAIN_MS],
        ),
        (1, "bob", &[0, 2], &[INVITED_MS]),
        (
            US,
            ME,
            &[0, 1, 2, IMPOSTOR],
            &[INVITED_MS, INVITED_AGAIN_MS],
        ),
        (IMPOSTOR, "alice", &[1, IMPOSTOR], &[INVITED_MS]),
        (IMPOSTOR, "bob", &[0, 2], &[INVITED_MS]),
    ];
    for (signer, owner, invitees, times) in invitations {
        for &invitee in invitees {
            for &time in times {
                let signed = crypto::Invitation::sign(
                    &cast.identities[signer],
                    ROOM,
                    owner,
                    &cast.verified[invitee],
                    time,
                )
                .unwrap();
                cast.invitations.push(SignedInvitation {
                    wire: signed.to_wire(),
                    signer,
                    invitee,
                });
            }
        }
    }
    let removals: [(usize, &str, &[&str]); 5] = [
        (0, "alice", &["bob", "carol"]),
        (1, "bob", &["alice", "carol"]),
        (US, ME, &["alice", "bob", "carol"]),
        (IMPOSTOR, "alice", &["bob"]),
        (IMPOSTOR, "bob", &["carol"]),
    ];
    for (signer, owner, members) in removals {
        for &member in members {
            let signed =
                crypto::Removal::sign(&cast.identities[signer], ROOM, owner, member, REMOVED_MS)
                    .unwrap();
            cast.removals.push(SignedRemoval {
                wire: signed.to_wire(),
                signer,
            });
        }
    }
    cast
});

impl Cast {
    /// The keys of the `sender`th of the cast, handed out to the rest of the cast but the
    /// impostor (and, for the impostor, but bob), and messages under each, their texts
    /// telling the identity apart from another of the same name.
    fn seal(&mut self, sender: usize, ring: SharedPrekeys) {
        let name = NAMES[sender];
        let mut keys = RoomKeys::new(
            ROOM,
            name,
            self.identities[sender].clone(),
            ring,
            RotationPolicy::default(),
        )
        .unwrap();
        for member in 0..NAMES.len() {
            if member == sender || member == IMPOSTOR || NAMES[member] == name {
                continue;
            }
            keys.insert_member(self.verified[member].clone(), true);
            let (id, prekey) = self.prekey_of(member);
            keys.set_prekey(NAMES[member], id, prekey);
        }
        // Another recipient than us: the sender itself, or alice for our own keys.
        let other = if sender == US { "alice" } else { name };
        for key in 0..KEYS_PER_SENDER {
            if key > 0 {
                keys.rotate().unwrap();
            }
            let first = keys.distribute(&KeyHandout::Everyone).unwrap();
            assert_eq!(first.len(), 1);
            let ours = deliver(&first[0], name, ME);
            let theirs = deliver(&first[0], name, other);
            let mut key_id = 0;
            for counter in 0..MESSAGES_PER_KEY {
                let text = format!("{name} (identity {sender}): message {counter} under key {key}");
                let (rotation, send) = keys.seal_text(&text).unwrap();
                assert!(rotation.is_empty());
                let sealed = send.sealed.unwrap();
                key_id = sealed.key_id;
                self.messages.push(MessageDelivery {
                    room: ROOM.to_owned(),
                    sender: name.to_owned(),
                    sealed: Some(sealed),
                    seq: 0,
                });
                self.genuine.insert((name.to_owned(), text));
            }
            keys.acknowledged(key_id, 0);
            // A copy for us from later in the chain, as a newcomer gets it; our own
            // keys have none (a client's copy for itself goes only with the first
            // handout), so there the first one stands in.
            let later = if sender == US {
                ours.clone()
            } else {
                let again = keys
                    .distribute(&KeyHandout::Newcomer(ME.to_owned()))
                    .unwrap();
                let later = deliver(&again[0], name, ME);
                assert_eq!(later.header.as_ref().unwrap().iteration, 1);
                later
            };
            self.keys.push(SentKey {
                ours,
                later,
                theirs,
            });
        }
    }

    /// The prekey the key directory presents for the `member`th of the cast.
    fn prekey_of(&self, member: usize) -> (u64, PublicEncryptionKey) {
        if member == US {
            current(&self.prekeys)
        } else {
            self.peer_prekey.clone()
        }
    }
}

/// The current prekey of `ring`, as the key directory presents it.
fn current(ring: &SharedPrekeys) -> (u64, PublicEncryptionKey) {
    let ring = ring.read().unwrap();
    let prekey = ring.current();
    (prekey.id(), prekey.key().public_key().clone())
}

/// What the relay delivers to `recipient` of `sender`'s distribution: its copy, as the
/// relay's own frame checks store it.
fn deliver(distribution: &DistributeSenderKey, sender: &str, recipient: &str) -> SenderKeyDelivery {
    let frame = ClientFrame {
        request_id: 1,
        kind: Some(client_frame::Kind::DistributeKey(distribution.clone())),
    };
    let Ok(ValidFrame::DistributeKey { keys, .. }) = check(frame) else {
        panic!("the relay would refuse this distribution");
    };
    let stored = keys
        .into_iter()
        .find(|key| key.recipient == recipient)
        .expect("a copy for the recipient");
    copy::delivery(
        &distribution.room,
        sender.to_owned(),
        0,
        &stored.wrapped_key,
        stored.signature,
    )
    .expect("a stored copy decodes")
}

/// Who a frame names.
#[derive(Debug, Clone)]
enum Who {
    Alice,
    Bob,
    Carol,
    /// "bob", with keys that are not bob's.
    Impostor,
    Me,
    Named(String),
}

impl Who {
    fn read(input: &mut Input) -> Self {
        match input.byte() % 6 {
            0 => Self::Alice,
            1 => Self::Bob,
            2 => Self::Carol,
            3 => Self::Impostor,
            4 => Self::Me,
            _ => Self::Named(input.string()),
        }
    }

    /// Its index in the cast, if it is one of it.
    fn index(&self) -> Option<usize> {
        match self {
            Self::Alice => Some(0),
            Self::Bob => Some(1),
            Self::Carol => Some(2),
            Self::Impostor => Some(IMPOSTOR),
            Self::Me => Some(US),
            Self::Named(_) => None,
        }
    }

    fn name(&self) -> &str {
        match (self, self.index()) {
            (Self::Named(name), _) => name,
            (_, Some(index)) => NAMES[index],
            (_, None) => unreachable!("only a named user is outside the cast"),
        }
    }

    /// The identity the relay would present, if any.
    fn identity(&self) -> Option<PublicIdentity> {
        self.index().map(|index| CAST.published[index].clone())
    }
}

/// A change a relay could make to a genuine sender key, message, invitation or removal;
/// each applies what it can to each.
#[derive(Debug)]
enum Tamper {
    Nothing,
    /// The sender, or the owner of an invitation or a removal.
    Sender(Who),
    Room(String),
    /// The key id, or when an invitation or removal was made.
    Number(u64),
    Iteration(u32),
    Device(u32),
    /// A copy's place among the distribution's copies, and their count.
    Index(u32),
    Count(u32),
    Prekey(u64),
    /// A copy's recipient, an invitation's invitee, a removal's member.
    Recipient(Who),
    /// A bit flipped in one part (by number), or a part cut short.
    Flip(u8, u16),
    /// A Merkle path cut short (even), or one hash longer (odd).
    Path(u8),
    /// A part left out.
    Empty,
    /// Another recipient's copy of the key; an invitation of the impostor's keys.
    Theirs,
    /// Our copy of the key handed out later, from iteration 1.
    Later,
}

impl Tamper {
    fn read(input: &mut Input) -> Self {
        match input.byte() % 15 {
            0 => Self::Nothing,
            1 => Self::Sender(Who::read(input)),
            2 => Self::Room(input.string()),
            3 => Self::Number(input.u64()),
            4 => Self::Iteration(input.u32()),
            5 => Self::Device(input.u32()),
            6 => Self::Index(input.u32()),
            7 => Self::Count(input.u32()),
            8 => Self::Prekey(input.u64()),
            9 => Self::Recipient(Who::read(input)),
            10 => Self::Flip(input.byte(), input.u16()),
            11 => Self::Path(input.byte()),
            12 => Self::Empty,
            13 => Self::Theirs,
            _ => Self::Later,
        }
    }
}

/// `bytes` with the bit at `at` (wrapping) flipped; unchanged if empty.
fn flip(bytes: &bytes::Bytes, at: u16) -> bytes::Bytes {
    let mut flipped = bytes.to_vec();
    if !flipped.is_empty() {
        let index = usize::from(at) % flipped.len();
        flipped[index] ^= 1 << (at % 8);
    }
    flipped.into()
}

/// `bytes` cut to `at` (wrapping) bytes.
fn cut(bytes: &bytes::Bytes, at: u16) -> bytes::Bytes {
    bytes.slice(..usize::from(at) % (bytes.len() + 1))
}

fn sender_key(pick: u8, seq: u64, tamper: &Tamper) -> SenderKeyDelivery {
    let sent = &CAST.keys[usize::from(pick) % CAST.keys.len()];
    let mut key = match tamper {
        Tamper::Theirs => sent.theirs.clone(),
        Tamper::Later => sent.later.clone(),
        _ => sent.ours.clone(),
    };
    key.seq = seq;
    let header = key.header.as_mut().expect("a header");
    let copy = key.copy.as_mut().expect("a copy");
    match tamper {
        Tamper::Sender(who) => key.sender = who.name().to_owned(),
        Tamper::Room(room) => key.room.clone_from(room),
        Tamper::Number(id) => header.key_id = *id,
        Tamper::Iteration(iteration) => header.iteration = *iteration,
        Tamper::Device(device) => header.device = *device,
        Tamper::Index(index) => key.index = *index,
        Tamper::Count(count) => key.count = *count,
        Tamper::Prekey(id) => copy.prekey_id = *id,
        Tamper::Recipient(who) => copy.recipient = who.name().to_owned(),
        Tamper::Flip(part, at) => match part % 5 {
            0 => key.signature = flip(&key.signature, *at),
            1 => copy.wrapped = flip(&copy.wrapped, *at),
            2 => header.signing_public_key = flip(&header.signing_public_key, *at),
            3 => {
                if !key.path.is_empty() {
                    let hash = usize::from(at >> 8) % key.path.len();
                    key.path[hash] = flip(&key.path[hash], *at);
                }
            }
            _ => key.signature = cut(&key.signature, *at),
        },
        Tamper::Path(n) => {
            if n % 2 == 0 {
                key.path.truncate(usize::from(n / 2) % (key.path.len() + 1));
            } else {
                key.path.push(bytes::Bytes::from_static(&[0; 32]));
            }
        }
        Tamper::Empty => key.header = None,
        Tamper::Nothing | Tamper::Theirs | Tamper::Later => {}
    }
    key
}

/// The `counter`th message sealed with the cast's `key`th sender key.
fn message(key: u8, counter: u8, seq: u64, tamper: &Tamper) -> MessageDelivery {
    let key = usize::from(key) % CAST.keys.len();
    let index = key * MESSAGES_PER_KEY + usize::from(counter) % MESSAGES_PER_KEY;
    let mut message = CAST.messages[index].clone();
    message.seq = seq;
    let sealed = message.sealed.as_mut().unwrap();
    match tamper {
        Tamper::Sender(who) => message.sender = who.name().to_owned(),
        Tamper::Room(room) => message.room.clone_from(room),
        Tamper::Number(id) => sealed.key_id = *id,
        Tamper::Iteration(iteration) | Tamper::Index(iteration) => sealed.iteration = *iteration,
        Tamper::Device(device) => sealed.device = *device,
        Tamper::Flip(part, at) => match part % 4 {
            0 => sealed.signature = flip(&sealed.signature, *at),
            1 => sealed.ciphertext = flip(&sealed.ciphertext, *at),
            2 => sealed.signature = cut(&sealed.signature, *at),
            _ => sealed.ciphertext = cut(&sealed.ciphertext, *at),
        },
        Tamper::Empty => message.sealed = None,
        _ => {}
    }
    message
}

/// The cast's `pick`th invitation.
fn invitation(pick: u8, tamper: &Tamper) -> Invitation {
    let mut invitation = CAST.invitations[usize::from(pick) % CAST.invitations.len()]
        .wire
        .clone();
    match tamper {
        Tamper::Sender(who) => invitation.owner = who.name().to_owned(),
        Tamper::Room(room) => invitation.room.clone_from(room),
        Tamper::Number(time) => invitation.issued_at_ms = *time,
        Tamper::Recipient(who) => invitation.invitee = who.name().to_owned(),
        Tamper::Flip(part, at) => match part % 3 {
            0 => invitation.signature = flip(&invitation.signature, *at),
            1 => invitation.invitee_fingerprint = flip(&invitation.invitee_fingerprint, *at),
            _ => invitation.signature = cut(&invitation.signature, *at),
        },
        Tamper::Empty => invitation.invitee_fingerprint = bytes::Bytes::new(),
        Tamper::Theirs => {
            invitation.invitee_fingerprint = CAST.verified[IMPOSTOR]
                .fingerprint
                .as_bytes()
                .to_vec()
                .into();
        }
        _ => {}
    }
    invitation
}

/// The cast's `pick`th removal.
fn removal(pick: u8, tamper: &Tamper) -> Removal {
    let mut removal = CAST.removals[usize::from(pick) % CAST.removals.len()]
        .wire
        .clone();
    match tamper {
        Tamper::Sender(who) => removal.owner = who.name().to_owned(),
        Tamper::Room(room) => removal.room.clone_from(room),
        Tamper::Number(time) => removal.issued_at_ms = *time,
        Tamper::Recipient(who) => removal.member = who.name().to_owned(),
        Tamper::Flip(part, at) => match part % 2 {
            0 => removal.signature = flip(&removal.signature, *at),
            _ => removal.signature = cut(&removal.signature, *at),
        },
        Tamper::Empty => removal.signature = bytes::Bytes::new(),
        _ => {}
    }
    removal
}

/// Members by bit: alice, bob, carol, the impostor.
fn identities(mask: u8) -> Vec<PublicIdentity> {
    (0..US)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|index| CAST.published[index].clone())
        .collect()
}

/// The fuzzer's bytes, read front to back; past the end every read is zero. A plain
/// format (one byte picks what comes next) so that seeds can be written by hand.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        first
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0; 8];
        bytes.iter_mut().for_each(|byte| *byte = self.byte());
        u64::from_le_bytes(bytes)
    }

    /// A length byte, then that many bytes (not necessarily UTF-8).
    fn string(&mut self) -> String {
        let len = self.byte();
        String::from_utf8_lossy(self.bytes(len.into())).into_owned()
    }

    /// A byte: 0 for none, else the pick (minus one) and how it is tampered with.
    fn pick(&mut self) -> Option<(u8, Tamper)> {
        match self.byte() {
            0 => None,
            pick => Some((pick - 1, Tamper::read(self))),
        }
    }
}

/// How the relay answered our join, before the frames that follow: 12 bytes.
struct Start {
    members: u8,
    former_members: u8,
    private_room: bool,
    resumed: bool,
    /// 0 alice, 1 bob, 2 carol, 3 us, 4 no valid name.
    owner: u8,
    last_seq: u8,
    after_seq: Option<u8>,
    /// The cast's invitations and removals, by bit.
    invitations: u32,
    removals: u16,
}

impl Start {
    fn read(input: &mut Input) -> Self {
        let members = input.byte();
        let former_members = input.byte();
        let flags = input.byte();
        let owner = input.byte() % 5;
        let last_seq = input.byte();
        let after_seq = input.byte();
        let invitations = input.u32();
        let removals = input.u16();
        Self {
            members,
            former_members,
            private_room: flags & 1 != 0,
            resumed: flags & 2 != 0,
            owner,
            last_seq,
            after_seq: (flags & 4 != 0).then_some(after_seq),
            invitations,
            removals,
        }
    }

    fn owner(&self) -> &'static str {
        match self.owner {
            0 => "alice",
            1 => "bob",
            2 => "carol",
            3 => ME,
            _ => "",
        }
    }

    fn joined(&self) -> Joined {
        let invitations = (0..CAST.invitations.len())
            .filter(|bit| *bit < 32 && self.invitations & (1 << bit) != 0)
            .map(|index| CAST.invitations[index].wire.clone())
            .collect();
        let removals = (0..CAST.removals.len())
            .filter(|bit| *bit < 16 && self.removals & (1 << bit) != 0)
            .map(|index| CAST.removals[index].wire.clone())
            .collect();
        Joined {
            room: ROOM.to_owned(),
            members: identities(self.members),
            private_room: self.private_room,
            owner: if self.private_room {
                self.owner().to_owned()
            } else {
                String::new()
            },
            last_seq: self.last_seq.into(),
            resumed: self.resumed,
            former_members: identities(self.former_members),
            invitations,
            removals,
        }
    }
}

/// One step: a frame from the relay, or something the user does.
#[derive(Debug)]
enum Step {
    /// Whatever bytes a relay may send, if they decode as a frame.
    Raw(Vec<u8>),
    MemberJoined {
        who: Who,
        invitation: Option<(u8, Tamper)>,
    },
    MemberLeft {
        who: Who,
        reason: i32,
        removal: Option<(u8, Tamper)>,
    },
    /// A sender key of the cast, by index.
    SenderKey {
        pick: u8,
        seq: u8,
        tamper: Tamper,
    },
    /// A message of the cast: the index of the key it is sealed with, and its counter.
    Message {
        key: u8,
        counter: u8,
        seq: u8,
        tamper: Tamper,
    },
    CaughtUp {
        seq: u8,
    },
    History {
        request: u8,
        former_members: u8,
        entries: Vec<HistoryPick>,
    },
    Ack {
        request: u8,
        seq: u8,
    },
    Rejection {
        request: u8,
        code: i32,
        message: String,
    },
    /// The user asks for something, so that the relay's answers have frames to match
    /// (request ids count from 2: 1 is the join).
    Ask(Ask),
    /// The user accepts the keys a member has now.
    Trust(Who),
    /// The key directory presents the prekey of a member of the cast.
    Prekey(Who),
    /// The session hands our key out as last owed (at most `MAX_DISTRIBUTIONS` times
    /// per input: each costs an RSA signature).
    Distribute,
}

#[derive(Debug)]
enum HistoryPick {
    Key {
        pick: u8,
        tamper: Tamper,
    },
    Message {
        key: u8,
        counter: u8,
        seq: u8,
        tamper: Tamper,
    },
}

#[derive(Debug)]
enum Ask {
    Leave,
    Invite(Who),
    Kick(Who),
    History(u8),
}

/// The most entries of one history: each may cost an RSA decryption.
const MAX_HISTORY_ENTRIES: u8 = 16;
/// The most distributions of our key one input makes.
const MAX_DISTRIBUTIONS: usize = 4;

impl Step {
    fn read(input: &mut Input) -> Self {
        match input.byte() % 13 {
            0 => {
                let len = input.u16();
                Self::Raw(input.bytes(len.into()).to_vec())
            }
            1 => Self::MemberJoined {
                who: Who::read(input),
                invitation: input.pick(),
            },
            2 => Self::MemberLeft {
                who: Who::read(input),
                reason: input.byte().into(),
                removal: input.pick(),
            },
            3 => Self::SenderKey {
                pick: input.byte(),
                seq: input.byte(),
                tamper: Tamper::read(input),
            },
            4 => Self::Message {
                key: input.byte(),
                counter: input.byte(),
                seq: input.byte(),
                tamper: Tamper::read(input),
            },
            5 => Self::CaughtUp { seq: input.byte() },
            6 => {
                let request = input.byte();
                let former_members = input.byte();
                let count = input.byte() % (MAX_HISTORY_ENTRIES + 1);
                let entries = (0..count)
                    .map(|_| match input.byte() % 2 {
                        0 => HistoryPick::Key {
                            pick: input.byte(),
                            tamper: Tamper::read(input),
                        },
                        _ => HistoryPick::Message {
                            key: input.byte(),
                            counter: input.byte(),
                            seq: input.byte(),
                            tamper: Tamper::read(input),
                        },
                    })
                    .collect();
                Self::History {
                    request,
                    former_members,
                    entries,
                }
            }
            7 => Self::Ack {
                request: input.byte(),
                seq: input.byte(),
            },
            8 => Self::Rejection {
                request: input.byte(),
                code: input.byte().into(),
                message: input.string(),
            },
            9 => Self::Ask(match input.byte() % 4 {
                0 => Ask::Leave,
                1 => Ask::Invite(Who::read(input)),
                2 => Ask::Kick(Who::read(input)),
                _ => Ask::History(input.byte()),
            }),
            10 => Self::Trust(Who::read(input)),
            11 => Self::Prekey(Who::read(input)),
            _ => Self::Distribute,
        }
    }
}

fn frame(request_id: u64, kind: server_frame::Kind) -> ServerFrame {
    ServerFrame {
        request_id,
        kind: Some(kind),
    }
}

/// The frame a step sends; `None` for what the user does, and raw bytes that do not
/// decode.
fn server_frame(step: Step) -> Option<ServerFrame> {
    use server_frame::Kind;

    let room = ROOM.to_owned();
    Some(match step {
        Step::Raw(bytes) => ServerFrame::decode(bytes.as_slice()).ok()?,
        Step::MemberJoined {
            who,
            invitation: pick,
        } => frame(
            0,
            Kind::MemberJoined(MemberJoined {
                room,
                member: who.identity(),
                invitation: pick.map(|(pick, tamper)| invitation(pick, &tamper)),
            }),
        ),
        Step::MemberLeft {
            who,
            reason,
            removal: pick,
        } => frame(
            0,
            Kind::MemberLeft(MemberLeft {
                room,
                user: who.name().to_owned(),
                reason,
                removal: pick.map(|(pick, tamper)| removal(pick, &tamper)),
            }),
        ),
        Step::SenderKey { pick, seq, tamper } => {
            frame(0, Kind::SenderKey(sender_key(pick, seq.into(), &tamper)))
        }
        Step::Message {
            key,
            counter,
            seq,
            tamper,
        } => frame(0, Kind::Message(message(key, counter, seq.into(), &tamper))),
        Step::CaughtUp { seq } => frame(
            0,
            Kind::CaughtUp(CaughtUp {
                room,
                seq: seq.into(),
            }),
        ),
        Step::History {
            request,
            entries,
            former_members,
        } => {
            let entries = entries
                .into_iter()
                .map(|pick| HistoryEntry {
                    kind: Some(match pick {
                        HistoryPick::Key { pick, tamper } => {
                            history_entry::Kind::SenderKey(sender_key(pick, 0, &tamper))
                        }
                        HistoryPick::Message {
                            key,
                            counter,
                            seq,
                            tamper,
                        } => {
                            history_entry::Kind::Message(message(key, counter, seq.into(), &tamper))
                        }
                    }),
                })
                .collect();
            let history = History {
                room,
                entries,
                former_members: identities(former_members),
            };
            frame(request.into(), Kind::History(history))
        }
        Step::Ack { request, seq } => frame(request.into(), Kind::Ack(Ack { seq: seq.into() })),
        Step::Rejection {
            request,
            code,
            message,
        } => frame(request.into(), Kind::Rejection(Rejection { code, message })),
        Step::Ask(_) | Step::Trust(_) | Step::Prekey(_) | Step::Distribute => return None,
    })
}

/// What the client must make of a private room's membership: the owner it pinned, and
/// the cast's invitations and removals the relay passed on (by index), whoever signed
/// them; in an open room, anyone the relay announces is a member. (The client keeps at
/// most 4,096 of each; no input passes on that many.)
struct PrivateRoom {
    owner: String,
    /// The owner's identity (an index of the cast), if the client knows its keys.
    owner_keys: Option<usize>,
    invitations: Vec<usize>,
    removals: Vec<usize>,
}

impl PrivateRoom {
    /// What the client pins from the answer to its first join.
    fn new(joined: &Joined) -> Self {
        let valid = e2ee_chat::protocol::validate_user(&joined.owner).is_ok();
        let owner = if valid {
            joined.owner.clone()
        } else {
            String::new()
        };
        let owner_keys = if !valid {
            None
        } else if owner == ME {
            Some(US)
        } else {
            // The first member named so, current then former, as the relay lists them.
            joined
                .members
                .iter()
                .chain(&joined.former_members)
                .find(|member| member.user == owner)
                .and_then(cast_index)
        };
        let mut room = Self {
            owner,
            owner_keys,
            invitations: Vec::new(),
            removals: Vec::new(),
        };
        joined
            .invitations
            .iter()
            .for_each(|i| room.learn_invitation(i));
        joined.removals.iter().for_each(|r| room.learn_removal(r));
        room
    }

    fn learn_invitation(&mut self, invitation: &Invitation) {
        if let Some(index) = CAST
            .invitations
            .iter()
            .position(|cast| cast.wire == *invitation)
        {
            self.invitations.push(index);
        }
    }

    fn learn_removal(&mut self, removal: &Removal) {
        if let Some(index) = CAST.removals.iter().position(|cast| cast.wire == *removal) {
            self.removals.push(index);
        }
    }

    /// Whether the `identity`th of the cast may be a member: the pinned owner itself, or
    /// invited by it with these keys, in an invitation no removal the relay passed on
    /// voids.
    fn admits(&self, identity: usize) -> bool {
        let Some(owner) = self.owner_keys else {
            return false;
        };
        if identity == owner {
            return true;
        }
        let by_owner = |signer: usize, named: &str| signer == owner && named == self.owner;
        let latest = self
            .invitations
            .iter()
            .map(|&index| &CAST.invitations[index])
            .filter(|cast| by_owner(cast.signer, &cast.wire.owner) && cast.invitee == identity)
            .map(|cast| cast.wire.issued_at_ms)
            .max();
        let Some(latest) = latest else {
            return false;
        };
        !self
            .removals
            .iter()
            .map(|&index| &CAST.removals[index])
            .filter(|cast| by_owner(cast.signer, &cast.wire.owner))
            .any(|cast| cast.wire.member == NAMES[identity] && cast.wire.issued_at_ms >= latest)
    }
}

/// The index in the cast of a presented identity, if it is one of the cast's.
fn cast_index(identity: &PublicIdentity) -> Option<usize> {
    CAST.published.iter().position(|cast| cast == identity)
}

/// What must hold of what one step showed, and of the key it says we owe.
fn check_events(
    state: &mut SessionState,
    events: &[Event],
    handout: Option<&KeyHandout>,
    shown: &mut HashSet<(String, String)>,
) {
    for event in events {
        match event {
            Event::Message { sender, text, .. } => {
                let message = (sender.clone(), text.clone());
                assert!(
                    CAST.genuine.contains(&message),
                    "showed a message nobody signed: {message:?}"
                );
                assert!(shown.insert(message), "showed a message twice: {event:?}");
            }
            Event::History { messages, .. } => {
                let mut in_history = HashSet::new();
                for message in messages {
                    let message = (message.sender.clone(), message.text.clone());
                    assert!(
                        CAST.genuine.contains(&message),
                        "history showed a message nobody signed: {message:?}"
                    );
                    assert!(
                        in_history.insert(message.clone()),
                        "history showed a message twice: {message:?}"
                    );
                }
            }
            _ => {}
        }
    }
    match handout {
        // Deciding nothing here: what matters is that no frame goes out (and no RSA
        // work is done to make one).
        Some(handout) if state.is_leaving() => {
            let frames = state.distribute(handout).expect("nothing to distribute");
            assert!(frames.is_empty(), "our key handed out after leaving");
        }
        Some(KeyHandout::Newcomer(user)) => {
            assert!(
                state.is_trusted(user) && state.members().contains(user),
                "owes our key to {user}, not a trusted member"
            );
        }
        _ => {}
    }
}

/// Hands our key out as `handout` says: only to ourselves and trusted members (only the
/// newcomer, for a newcomer), nothing once we leave.
fn check_distribution(state: &mut SessionState, handout: &KeyHandout) {
    let frames = state.distribute(handout).expect("a distribution is made");
    if state.is_leaving() {
        assert!(frames.is_empty(), "our key handed out after leaving");
    }
    let members = state.members();
    for frame in frames {
        let Some(client_frame::Kind::DistributeKey(distribution)) = frame.kind else {
            panic!("a distribution that is not one: {frame:?}");
        };
        for copy in &distribution.copies {
            let recipient = copy.recipient.as_str();
            if recipient == ME {
                continue;
            }
            assert!(
                state.is_trusted(recipient) && members.iter().any(|m| m == recipient),
                "our key wrapped for {recipient}, not a trusted member"
            );
            if let KeyHandout::Newcomer(user) = handout {
                assert_eq!(recipient, user, "our key for a newcomer went to another");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let start = Start::read(&mut input);
    let mut state = SessionState::new(
        ROOM,
        ME,
        CAST.identities[US].clone(),
        Arc::new(Mutex::new(Contacts::in_memory())),
        CAST.prekeys.clone(),
        RotationPolicy::default(),
        RequestIds::default(),
    )
    .expect("a state");
    let joined = start.joined();
    let applied = state
        .joined(&joined, start.after_seq.map(u64::from))
        .expect("the answer to a join is taken");
    let mut private = joined.private_room.then(|| PrivateRoom::new(&joined));
    if let Some(private) = &private {
        for member in state.members() {
            let admitted = joined
                .members
                .iter()
                .filter(|presented| presented.user == member)
                .filter_map(cast_index)
                .any(|index| private.admits(index));
            assert!(
                admitted,
                "{member} is a member of a private room, uninvited"
            );
        }
    }
    let mut shown = HashSet::new();
    check_events(
        &mut state,
        &applied.events,
        applied.handout.as_ref(),
        &mut shown,
    );
    let mut owed = applied.handout.unwrap_or(KeyHandout::Everyone);
    let mut distributions = 0;

    while !input.0.is_empty() {
        let applied = match Step::read(&mut input) {
            Step::Ask(ask) => {
                let _ = match ask {
                    Ask::Leave => Ok(state.leave().1.into_iter().next().unwrap_or_default()),
                    Ask::Invite(who) => match who.index() {
                        Some(index) => state.invite(&CAST.verified[index]),
                        None => continue,
                    },
                    Ask::Kick(who) => state.kick(who.name()),
                    Ask::History(limit) => Ok(state.history(limit.into())),
                };
                continue;
            }
            Step::Trust(who) => {
                let Some(index) = who.index() else {
                    continue;
                };
                state
                    .trust(who.name(), &CAST.verified[index])
                    .expect("trusting in memory")
            }
            Step::Prekey(who) => {
                if let Some(index) = who.index() {
                    let (id, prekey) = CAST.prekey_of(index);
                    state.set_prekey(&CAST.verified[index], id, prekey);
                }
                continue;
            }
            Step::Distribute => {
                if distributions < MAX_DISTRIBUTIONS {
                    distributions += 1;
                    check_distribution(&mut state, &owed);
                }
                continue;
            }
            step => {
                let Some(frame) = server_frame(step) else {
                    continue;
                };
                // What the client learns of the private room's membership from it.
                let mut joining = None;
                if let (Some(private), Some(kind)) = (&mut private, &frame.kind) {
                    match kind {
                        server_frame::Kind::MemberJoined(joined) if joined.room == ROOM => {
                            if let Some(invitation) = &joined.invitation {
                                private.learn_invitation(invitation);
                            }
                            joining = Some(joined.member.clone());
                        }
                        server_frame::Kind::MemberLeft(left)
                            if left.room == ROOM && left.user != ME =>
                        {
                            if let Some(removal) = &left.removal {
                                private.learn_removal(removal);
                            }
                        }
                        _ => {}
                    }
                }
                let members = state.members();
                let before = state.last_seq();
                let applied = state.apply(frame).expect("a frame is applied or ignored");
                assert!(state.last_seq() >= before, "the sequence number went back");
                if let Some(private) = &private {
                    for member in state.members() {
                        if members.contains(&member) {
                            continue;
                        }
                        let index = joining.clone().flatten().as_ref().and_then(cast_index);
                        assert!(
                            index.is_some_and(|index| {
                                NAMES[index] == member && private.admits(index)
                            }),
                            "{member} became a member of a private room, uninvited"
                        );
                    }
                }
                applied
            }
        };
        check_events(
            &mut state,
            &applied.events,
            applied.handout.as_ref(),
            &mut shown,
        );
        if let Some(handout) = applied.handout {
            owed = handout;
        }
    }
});
