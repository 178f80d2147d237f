//! What the relay sends a client: sequences of `chat.v1.ServerFrame`s applied to a
//! client's state of one room (`client::SessionState::apply`, the step
//! `ChatSession::handle` runs every frame through, with `RoomKeys` and the replay window
//! under it).
//!
//! A relay cannot sign for anyone, so frames are built from a cast made once at start-up
//! with the project's own code: members with valid identities (and a second "bob" with
//! other keys, an impostor), the sender keys they wrapped and signed for us, and
//! messages they sealed and signed, each taken as it is or tampered with. Raw bytes
//! decoded as a frame cover the rest. The keys are new in every process, so an input
//! replays with other key bytes but the same roles.
//!
//! The input is read a byte at a time ([`Start::read`], [`Step::read`]), so that the
//! seeds in `corpus/server_frame/seed-*` could be written by hand: a conversation, a
//! message before its key, an impostor the user comes to trust, a history, requests and
//! their answers, a raw frame.
//!
//! What must hold, whatever the frames: no panic; a message is shown only if it is one
//! the cast really sealed and signed, from the member who did, and at most once; our
//! key is owed only to trusted members, and to nobody once we leave; the sequence
//! number processed never goes back.

#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use e2ee_chat::client::{Contacts, Event, KeyHandout, RoomKeys, SessionState};
use e2ee_chat::crypto::{Identity, VerifiedIdentity};
use e2ee_chat::proto::{
    Ack, CaughtUp, History, HistoryEntry, Joined, MemberJoined, MemberLeft, MessageDelivery,
    PublicIdentity, Rejection, SenderKeyDelivery, ServerFrame, history_entry, server_frame,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

const ROOM: &str = "lobby";
const ME: &str = "me";
const PEERS: [&str; 3] = ["alice", "bob", "carol"];
/// Sender keys each peer hands us, and messages sealed under each.
const KEYS_PER_PEER: usize = 2;
const MESSAGES_PER_KEY: usize = 3;

/// Everything signed that frames are built from, made once: RSA is slow.
struct Cast {
    me: Arc<Identity>,
    /// Ours, as the relay could present it (under our own name).
    my_public: PublicIdentity,
    /// The published identities of alice, bob, carol, then the impostor "bob".
    identities: Vec<PublicIdentity>,
    /// Sender keys wrapped for us: the peers', the impostor's, then our own copies.
    keys: Vec<SenderKeyDelivery>,
    /// Messages sealed under those keys, unnumbered.
    messages: Vec<MessageDelivery>,
    /// (sender, text) of every message the cast sealed: nothing else may be shown.
    genuine: HashSet<(String, String)>,
}

static CAST: LazyLock<Cast> = LazyLock::new(|| {
    let generate = || Arc::new(Identity::generate(2048).expect("an RSA key pair"));
    let me = generate();
    let my_public = me.publish(ME).unwrap();
    let my_identity = VerifiedIdentity::verify(&my_public).unwrap();
    let mut cast = Cast {
        me: me.clone(),
        my_public,
        identities: Vec::new(),
        keys: Vec::new(),
        messages: Vec::new(),
        genuine: HashSet::new(),
    };
    let senders = PEERS
        .iter()
        .map(|user| (*user, generate()))
        .chain([("bob", generate())])
        .collect::<Vec<_>>();
    for (index, (user, identity)) in senders.iter().enumerate() {
        cast.identities.push(identity.publish(user).unwrap());
        let mut keys = RoomKeys::new(ROOM, user, identity.clone()).unwrap();
        keys.insert_member(my_identity.clone(), true);
        cast.seal(&mut keys, user, index, ME);
    }
    // Our own copies, which only a history hands back.
    let mut own = RoomKeys::new(ROOM, ME, me).unwrap();
    cast.seal(&mut own, ME, senders.len(), ME);
    cast
});

impl Cast {
    /// The keys of `sender` (the cast's `identity`th) for `recipient`, and
    /// messages under each, their texts telling the identity apart from another of the
    /// same name.
    fn seal(&mut self, keys: &mut RoomKeys, sender: &str, identity: usize, recipient: &str) {
        for key in 0..KEYS_PER_PEER {
            if key > 0 {
                keys.rotate().unwrap();
            }
            let distribution = keys.distribute_to(&[recipient]).unwrap();
            let wrapped = distribution[0]
                .keys
                .iter()
                .find(|wrapped| wrapped.recipient == recipient)
                .unwrap();
            self.keys.push(SenderKeyDelivery {
                room: ROOM.to_owned(),
                sender: sender.to_owned(),
                key_id: distribution[0].key_id,
                wrapped_key: wrapped.wrapped_key.clone(),
                signature: wrapped.signature.clone(),
                seq: 0,
            });
            for counter in 0..MESSAGES_PER_KEY {
                let text =
                    format!("{sender} (identity {identity}): message {counter} under key {key}");
                let (_, send) = keys.seal_text(&text).unwrap();
                self.messages.push(MessageDelivery {
                    room: ROOM.to_owned(),
                    sender: sender.to_owned(),
                    sealed: send.sealed,
                    seq: 0,
                });
                self.genuine.insert((sender.to_owned(), text));
            }
        }
    }
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

    fn name(&self) -> &str {
        match self {
            Self::Alice => "alice",
            Self::Bob | Self::Impostor => "bob",
            Self::Carol => "carol",
            Self::Me => ME,
            Self::Named(name) => name,
        }
    }

    /// The identity the relay would present, if any.
    fn identity(&self) -> Option<PublicIdentity> {
        let index = match self {
            Self::Alice => 0,
            Self::Bob => 1,
            Self::Carol => 2,
            Self::Impostor => 3,
            Self::Me => return Some(CAST.my_public.clone()),
            Self::Named(_) => return None,
        };
        Some(CAST.identities[index].clone())
    }
}

/// A change a relay could make to a genuine entry.
#[derive(Debug)]
enum Tamper {
    Nothing,
    Sender(Who),
    Room(String),
    KeyId(u64),
    Counter(u64),
    Signature(u16),
    Ciphertext(u16),
    Nonce(u8),
    WrappedKey(u16),
    Empty,
}

impl Tamper {
    fn read(input: &mut Input) -> Self {
        match input.byte() % 10 {
            0 => Self::Nothing,
            1 => Self::Sender(Who::read(input)),
            2 => Self::Room(input.string()),
            3 => Self::KeyId(input.u64()),
            4 => Self::Counter(input.u64()),
            5 => Self::Signature(input.u16()),
            6 => Self::Ciphertext(input.u16()),
            7 => Self::Nonce(input.byte()),
            8 => Self::WrappedKey(input.u16()),
            _ => Self::Empty,
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

fn sender_key(pick: u8, seq: u64, tamper: &Tamper) -> SenderKeyDelivery {
    let mut key = CAST.keys[usize::from(pick) % CAST.keys.len()].clone();
    key.seq = seq;
    match tamper {
        Tamper::Sender(who) => key.sender = who.name().to_owned(),
        Tamper::Room(room) => key.room.clone_from(room),
        Tamper::KeyId(id) | Tamper::Counter(id) => key.key_id = *id,
        Tamper::Signature(at) => key.signature = flip(&key.signature, *at),
        Tamper::WrappedKey(at) | Tamper::Ciphertext(at) => {
            key.wrapped_key = flip(&key.wrapped_key, *at);
        }
        Tamper::Empty => key.signature = bytes::Bytes::new(),
        Tamper::Nothing | Tamper::Nonce(_) => {}
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
        Tamper::KeyId(id) => sealed.key_id = *id,
        Tamper::Counter(counter) => sealed.counter = *counter,
        Tamper::Signature(at) => sealed.signature = flip(&sealed.signature, *at),
        Tamper::Ciphertext(at) | Tamper::WrappedKey(at) => {
            sealed.ciphertext = flip(&sealed.ciphertext, *at);
        }
        Tamper::Nonce(at) => sealed.nonce = flip(&sealed.nonce, u16::from(*at)),
        Tamper::Empty => message.sealed = None,
        Tamper::Nothing => {}
    }
    message
}

/// Members by bit: alice, bob, carol, the impostor.
fn identities(mask: u8) -> Vec<PublicIdentity> {
    (0..CAST.identities.len())
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|index| CAST.identities[index].clone())
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
}

/// How the relay answered our join, before the frames that follow: 5 bytes.
struct Start {
    members: u8,
    former_members: u8,
    private_room: bool,
    resumed: bool,
    last_seq: u8,
    after_seq: Option<u8>,
}

impl Start {
    fn read(input: &mut Input) -> Self {
        let members = input.byte();
        let former_members = input.byte();
        let flags = input.byte();
        let last_seq = input.byte();
        let after_seq = input.byte();
        Self {
            members,
            former_members,
            private_room: flags & 1 != 0,
            resumed: flags & 2 != 0,
            last_seq,
            after_seq: (flags & 4 != 0).then_some(after_seq),
        }
    }
}

/// One step: a frame from the relay, or something the user does.
#[derive(Debug)]
enum Step {
    /// Whatever bytes a relay may send, if they decode as a frame.
    Raw(Vec<u8>),
    MemberJoined(Who),
    MemberLeft {
        who: Who,
        reason: i32,
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

impl Step {
    fn read(input: &mut Input) -> Self {
        match input.byte() % 11 {
            0 => {
                let len = input.u16();
                Self::Raw(input.bytes(len.into()).to_vec())
            }
            1 => Self::MemberJoined(Who::read(input)),
            2 => Self::MemberLeft {
                who: Who::read(input),
                reason: input.byte().into(),
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
            _ => Self::Trust(Who::read(input)),
        }
    }
}

fn frame(request_id: u64, kind: server_frame::Kind) -> ServerFrame {
    ServerFrame {
        request_id,
        kind: Some(kind),
    }
}

fn server_frame(step: Step) -> Option<ServerFrame> {
    use server_frame::Kind;

    let room = ROOM.to_owned();
    Some(match step {
        Step::Raw(bytes) => ServerFrame::decode(bytes.as_slice()).ok()?,
        Step::MemberJoined(who) => frame(
            0,
            Kind::MemberJoined(MemberJoined {
                room,
                member: who.identity(),
            }),
        ),
        Step::MemberLeft { who, reason } => frame(
            0,
            Kind::MemberLeft(MemberLeft {
                room,
                user: who.name().to_owned(),
                reason,
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
        Step::Ask(_) | Step::Trust(_) => return None,
    })
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
                for message in messages {
                    let message = (message.sender.clone(), message.text.clone());
                    assert!(
                        CAST.genuine.contains(&message),
                        "history showed a message nobody signed: {message:?}"
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

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let start = Start::read(&mut input);
    let mut state =
        SessionState::new(ROOM, ME, CAST.me.clone(), Contacts::in_memory()).expect("a state");
    let joined = Joined {
        room: ROOM.to_owned(),
        members: identities(start.members),
        private_room: start.private_room,
        owner: if start.private_room {
            "alice".to_owned()
        } else {
            String::new()
        },
        last_seq: start.last_seq.into(),
        resumed: start.resumed,
        former_members: identities(start.former_members),
    };
    let applied = state
        .joined(&joined, start.after_seq.map(u64::from))
        .expect("the answer to a join is taken");
    let mut shown = HashSet::new();
    check_events(
        &mut state,
        &applied.events,
        applied.handout.as_ref(),
        &mut shown,
    );

    while !input.0.is_empty() {
        let applied = match Step::read(&mut input) {
            Step::Ask(ask) => {
                let _ = match ask {
                    Ask::Leave => state.leave(),
                    Ask::Invite(who) => state.invite(who.name()),
                    Ask::Kick(who) => state.kick(who.name()),
                    Ask::History(limit) => state.history(limit.into()),
                };
                continue;
            }
            Step::Trust(who) => {
                let Some(identity) = who.identity() else {
                    continue;
                };
                let Ok(identity) = VerifiedIdentity::verify(&identity) else {
                    continue;
                };
                state
                    .trust(who.name(), &identity)
                    .expect("trusting in memory")
            }
            step => {
                let Some(frame) = server_frame(step) else {
                    continue;
                };
                let before = state.last_seq();
                let applied = state.apply(frame).expect("a frame is applied or ignored");
                assert!(state.last_seq() >= before, "the sequence number went back");
                applied
            }
        };
        check_events(
            &mut state,
            &applied.events,
            applied.handout.as_ref(),
            &mut shown,
        );
    }
});
