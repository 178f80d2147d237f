//! Protocol v2's group cipher as a recipient meets it: genuine messages in any order,
//! repeated, tampered with, or forged outright. A genuine message opens exactly once, to
//! what was sealed; nothing else ever opens; nothing panics.

#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use e2ee_chat::crypto::CryptoError;
use e2ee_chat::crypto::group::{
    GroupMessage, MessageContext, OwnSenderKey, PeerSenderKey, SenderKeyDistribution,
};
use libfuzzer_sys::fuzz_target;

const CONTEXT: MessageContext<'static> = MessageContext {
    room: "lobby",
    sender: "alice",
    device: 1,
};

const GENUINE: usize = 64;

/// A sender key handed out before its first message, and its first messages.
struct Sent {
    distribution: SenderKeyDistribution,
    messages: Vec<GroupMessage>,
}

fn sent() -> &'static Sent {
    static SENT: OnceLock<Sent> = OnceLock::new();
    SENT.get_or_init(|| {
        let mut own = OwnSenderKey::generate().unwrap();
        let distribution = own.distribution();
        let messages = (0..GENUINE)
            .map(|n| own.seal(CONTEXT, format!("m{n}").as_bytes()).unwrap())
            .collect();
        Sent {
            distribution,
            messages,
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Step {
    Genuine(u8),
    Tampered {
        index: u8,
        at: u16,
        in_signature: bool,
    },
    Forged {
        real_key_id: bool,
        iteration: u32,
        ciphertext: Vec<u8>,
        signature: Vec<u8>,
    },
}

fuzz_target!(|steps: Vec<Step>| {
    let sent = sent();
    let mut peer = PeerSenderKey::new(&sent.distribution).unwrap();
    let mut opened = HashSet::new();
    for step in steps {
        match step {
            Step::Genuine(index) => {
                let index = usize::from(index) % GENUINE;
                let result = peer.open(CONTEXT, &sent.messages[index]);
                if opened.insert(index) {
                    let plaintext = result.expect("a genuine message opens the first time");
                    assert_eq!(plaintext.as_slice(), format!("m{index}").as_bytes());
                } else {
                    assert!(
                        matches!(result, Err(CryptoError::AlreadyOpened)),
                        "{result:?}"
                    );
                }
            }
            Step::Tampered {
                index,
                at,
                in_signature,
            } => {
                let mut message = sent.messages[usize::from(index) % GENUINE].clone();
                if in_signature {
                    message.signature[usize::from(at) % message.signature.len()] ^= 1;
                } else {
                    let len = message.ciphertext.len();
                    message.ciphertext[usize::from(at) % len] ^= 1;
                }
                assert!(peer.open(CONTEXT, &message).is_err());
            }
            Step::Forged {
                real_key_id,
                iteration,
                ciphertext,
                signature,
            } => {
                let mut forged_signature = [0u8; 64];
                let len = signature.len().min(64);
                forged_signature[..len].copy_from_slice(&signature[..len]);
                let message = GroupMessage {
                    key_id: if real_key_id {
                        sent.distribution.key_id
                    } else {
                        u64::from(iteration)
                    },
                    iteration,
                    ciphertext,
                    signature: forged_signature,
                };
                assert!(peer.open(CONTEXT, &message).is_err());
            }
        }
    }
});
