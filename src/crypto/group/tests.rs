use super::*;

const LOBBY: MessageContext<'static> = MessageContext {
    room: "lobby",
    sender: "alice",
    device: 1,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A sender key and a recipient's copy of it, handed out before the first message.
fn pair() -> (OwnSenderKey, PeerSenderKey) {
    let own = OwnSenderKey::generate().unwrap();
    let peer = PeerSenderKey::new(&own.distribution()).unwrap();
    (own, peer)
}

fn seal_many(own: &mut OwnSenderKey, count: usize) -> Vec<GroupMessage> {
    (0..count)
        .map(|n| own.seal(LOBBY, format!("message {n}").as_bytes()).unwrap())
        .collect()
}

fn opened(peer: &mut PeerSenderKey, message: &GroupMessage) -> Result<String, CryptoError> {
    let plaintext = peer.open(LOBBY, message)?;
    Ok(String::from_utf8(plaintext.to_vec()).unwrap())
}

/// The vectors of docs/PROTOCOL.md, computed independently with Python's hmac, hashlib
/// and `cryptography` (HKDF written out from RFC 5869).
#[test]
fn the_chain_and_a_sealed_message_are_the_documented_bytes() {
    let chain = ChainKey {
        iteration: 0,
        key: Zeroizing::new(std::array::from_fn(|n| n as u8)),
    };
    let expected = [
        (
            "c2973ff22745e38ab7720fcb378b1c1736cd3758be28abd5fba181a627e2ae0e",
            "e5774de9eef1caf3374b8a60",
            "4304c22c84a53755ab08ead8d97a8d429be5efa480682d7ad1da27f73e1fbe1d",
        ),
        (
            "279c9bdf1e30169abc0b7cd65a464ea26f630f49d64137f9db7430a5939e7b43",
            "a5e939b5ec66e670a978efe7",
            "26fc86b9b1303ea2e66f53ed0f1de753407e5428caf5e440e6b51c48d4bd4949",
        ),
    ];
    let mut at = chain;
    for (iteration, (key, nonce, next_chain)) in expected.into_iter().enumerate() {
        let message_key = at.message_key();
        assert_eq!(message_key.iteration, iteration as u32);
        assert_eq!(hex(message_key.key.as_ref()), key);
        assert_eq!(hex(&message_key.nonce), nonce);
        at = at.next().unwrap();
        assert_eq!(hex(at.key.as_ref()), next_chain);
    }

    let mut own = OwnSenderKey::from_secrets(
        0x0102030405060708,
        std::array::from_fn(|n| n as u8),
        [7; 32],
    );
    assert_eq!(
        hex(&own.distribution().signing_key),
        "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"
    );
    let peer_before = PeerSenderKey::new(&own.distribution()).unwrap();
    seal_many(&mut own, 2);
    let third = own.seal(LOBBY, b"hello").unwrap();
    assert_eq!(third.iteration, 2);
    assert_eq!(
        hex(&third.ciphertext),
        "0ba11b2d0c3d94762147056b71b9597d603abc38b0"
    );
    assert_eq!(
        hex(&third.signature),
        "d5cf47286a11693ff9577fdac254ae1c3e1659edb45f5ed8a929a6a38ae11c43\
         93956c5b1cfcd95ad6bfe202bcbfdcb7147b7d318edf6f41dd8a336a65755003"
    );
    let mut peer = peer_before;
    assert_eq!(opened(&mut peer, &third).unwrap(), "hello");
}

#[test]
fn messages_open_in_order_each_once() {
    let (mut own, mut peer) = pair();
    let messages = seal_many(&mut own, 3);
    assert_eq!(
        messages.iter().map(|m| m.iteration).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_ne!(messages[0].ciphertext, messages[1].ciphertext);
    for (n, message) in messages.iter().enumerate() {
        assert_eq!(opened(&mut peer, message).unwrap(), format!("message {n}"));
    }
    for message in &messages {
        assert!(matches!(
            opened(&mut peer, message),
            Err(CryptoError::AlreadyOpened)
        ));
    }
    assert_eq!(peer.next_iteration(), 3);
}

#[test]
fn messages_arriving_out_of_order_open_once_each() {
    let (mut own, mut peer) = pair();
    let messages = seal_many(&mut own, 5);
    for n in [4, 0, 2, 1, 3] {
        assert_eq!(
            opened(&mut peer, &messages[n]).unwrap(),
            format!("message {n}")
        );
        assert!(matches!(
            opened(&mut peer, &messages[n]),
            Err(CryptoError::AlreadyOpened)
        ));
    }
    assert!(
        peer.skipped.is_empty(),
        "every kept key was used, and erased"
    );
}

#[test]
fn a_key_handed_out_later_cannot_open_what_came_before() {
    let (mut own, _) = pair();
    let before = seal_many(&mut own, 3);
    // Until the relay acknowledged them, a newcomer may be delivered them: it is handed
    // the chain from the oldest unacknowledged message on.
    let mut early = PeerSenderKey::new(&own.distribution()).unwrap();
    assert_eq!(early.next_iteration(), 0);
    assert!(early.open(LOBBY, &before[2]).is_ok());
    own.acknowledged(1);
    assert_eq!(own.distribution().iteration, 2);
    own.acknowledged(2);
    let mut newcomer = PeerSenderKey::new(&own.distribution()).unwrap();
    let after = own.seal(LOBBY, b"welcome").unwrap();
    for message in &before {
        assert!(matches!(
            opened(&mut newcomer, message),
            Err(CryptoError::AlreadyOpened)
        ));
    }
    assert_eq!(opened(&mut newcomer, &after).unwrap(), "welcome");
}

#[test]
fn keys_jumped_over_are_kept_up_to_the_bound_the_oldest_dropped_first() {
    let (mut own, mut peer) = pair();
    let extra = 10;
    let messages = seal_many(&mut own, MAX_SKIPPED_KEYS + extra + 1);
    let last = messages.last().unwrap();
    assert!(opened(&mut peer, last).is_ok());
    assert_eq!(peer.skipped.len(), MAX_SKIPPED_KEYS);
    for message in &messages[..extra] {
        assert!(matches!(
            opened(&mut peer, message),
            Err(CryptoError::AlreadyOpened)
        ));
    }
    for (n, message) in messages
        .iter()
        .enumerate()
        .skip(extra)
        .take(MAX_SKIPPED_KEYS)
    {
        assert_eq!(opened(&mut peer, message).unwrap(), format!("message {n}"));
    }
}

#[test]
fn a_message_too_far_ahead_is_refused_and_changes_nothing() {
    let (mut own, mut peer) = pair();
    let first = own.seal(LOBBY, b"first").unwrap();
    // The sender's chain, moved on as if it had sealed that many messages unseen.
    for _ in 0..=MAX_FORWARD_JUMP {
        own.chain = own.chain.next().unwrap();
    }
    let far = own.seal(LOBBY, b"far").unwrap();
    assert_eq!(far.iteration, MAX_FORWARD_JUMP + 2);
    assert!(matches!(
        opened(&mut peer, &far),
        Err(CryptoError::TooFarAhead { jump }) if jump == MAX_FORWARD_JUMP + 2
    ));
    assert_eq!(peer.next_iteration(), 0);
    assert!(peer.skipped.is_empty());
    assert_eq!(opened(&mut peer, &first).unwrap(), "first");
}

#[test]
fn the_signature_is_checked_before_anything_is_derived_or_opened() {
    let (mut own, mut peer) = pair();
    let message = own.seal(LOBBY, b"hello").unwrap();

    let mut flipped = message.clone();
    flipped.ciphertext[0] ^= 1;
    let mut resigned = message.clone();
    resigned.signature[0] ^= 1;
    // A forgery claiming to be far ahead: refused for its signature, so no key is
    // derived for it and the chain does not move.
    let mut ahead = message.clone();
    ahead.iteration = 1_000;
    for forged in [&flipped, &resigned, &ahead] {
        assert!(matches!(
            peer.open(LOBBY, forged),
            Err(CryptoError::BadSignature)
        ));
    }
    for context in [
        MessageContext {
            room: "other",
            ..LOBBY
        },
        MessageContext {
            sender: "mallory",
            ..LOBBY
        },
        MessageContext { device: 2, ..LOBBY },
    ] {
        assert!(matches!(
            peer.open(context, &message),
            Err(CryptoError::BadSignature)
        ));
    }
    let mut relabelled = message.clone();
    relabelled.key_id ^= 1;
    assert!(matches!(
        peer.open(LOBBY, &relabelled),
        Err(CryptoError::Open)
    ));
    assert_eq!(peer.next_iteration(), 0);
    assert_eq!(opened(&mut peer, &message).unwrap(), "hello");
}

#[test]
fn another_sender_key_cannot_sign_for_this_one() {
    let (mut own, mut peer) = pair();
    let mut impostor = OwnSenderKey::generate().unwrap();
    impostor.key_id = own.id();
    let forged = impostor.seal(LOBBY, b"forged").unwrap();
    assert!(matches!(
        peer.open(LOBBY, &forged),
        Err(CryptoError::BadSignature)
    ));
    let real = own.seal(LOBBY, b"real").unwrap();
    assert_eq!(opened(&mut peer, &real).unwrap(), "real");
}

#[test]
fn a_small_order_signing_key_is_refused() {
    let own = OwnSenderKey::generate().unwrap();
    let mut distribution = own.distribution();
    // The identity point, of order 1: signatures under it prove nothing.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    distribution.signing_key = identity;
    assert!(matches!(
        PeerSenderKey::new(&distribution),
        Err(CryptoError::BadSigningKey)
    ));
}
