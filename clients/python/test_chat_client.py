"""Unit checks of the Python client's protocol layer and home files, without a relay.

Run: clients/python/.venv/bin/python -m unittest discover -s clients/python -p 'test_*.py'
(after clients/python/setup.sh). The end-to-end tests against the Rust relay and client
are in tests/python.rs (`cargo test --test python`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from e2ee_chat.binding import (
    enc_str,
    identity_signed_bytes,
    login_signed_bytes,
    message_ad,
    message_signed_bytes,
    public_key_der,
    sender_key_label,
    sender_key_signed_bytes,
    sign,
    unwrap_sender_key,
    verify_signature,
)
from e2ee_chat.errors import ClientError
from e2ee_chat.home import (
    ContactBook,
    ContactsError,
    ProgressError,
    _pem,
    forget_room,
    load_last_seq,
    load_or_create_identity,
    progress_path,
    save_last_seq,
)
from e2ee_chat.identity import (
    Identity,
    IdentityError,
    PeerIdentity,
    fingerprint,
    format_fingerprint,
    safety_number,
)
from e2ee_chat.proto import pb
from e2ee_chat.protocol import ACCEPTED_KEY_IDS_KEPT
from e2ee_chat.room import RoomState, history_line, starting_seq, utc_time
from e2ee_chat.session import ChatClient, history_limit, pending_lines
from e2ee_chat.transport import is_loopback_host, parse_server_url

_KEYS: list[rsa.RSAPrivateKey] = []


def key(i: int) -> rsa.RSAPrivateKey:
    """The i-th 2048-bit test key, made once (key generation is slow)."""
    while len(_KEYS) <= i:
        _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _KEYS[i]


def identity(user: str, i: int) -> Identity:
    """``user`` with test keys 2i (signing) and 2i+1 (encryption)."""
    return Identity(user, key(2 * i), key(2 * i + 1))


def deliveries_for(recipient: str, sender: str, frames: list[pb.DistributeSenderKey]) -> list[pb.SenderKeyDelivery]:
    """What the relay gives ``recipient`` for ``sender``'s key distributions."""
    out = []
    for frame in frames:
        for copy in frame.keys:
            if copy.recipient == recipient:
                out.append(
                    pb.SenderKeyDelivery(
                        room=frame.room,
                        sender=sender,
                        key_id=frame.key_id,
                        wrapped_key=copy.wrapped_key,
                        signature=copy.signature,
                    )
                )
    return out


def delivery(sender: str, message: pb.SendMessage, seq: int = 0) -> pb.MessageDelivery:
    return pb.MessageDelivery(room=message.room, sender=sender, sealed=message.sealed, seq=seq)


def recipients(frames: list[pb.DistributeSenderKey]) -> list[str]:
    """Who the copies of some distributions are wrapped for, in order."""
    return [copy.recipient for frame in frames for copy in frame.keys]


class Vectors(unittest.TestCase):
    """The byte strings of docs/PROTOCOL.md, byte for byte."""

    def test_login_string(self) -> None:
        expected = bytes.fromhex("636861742e76312f6c6f67696e" "0003" "626f62" "00000002" "cafe")
        self.assertEqual(login_signed_bytes("bob", bytes.fromhex("cafe")), expected)

    def test_sender_key_label(self) -> None:
        expected = bytes.fromhex(
            "636861742e76312f73656e6465722d6b6579" "0001" "72" "0001" "61" "0001" "62" "ffffffffffffffff"
        )
        self.assertEqual(sender_key_label("r", "a", "b", 2**64 - 1), expected)

    def test_message_ad(self) -> None:
        expected = bytes.fromhex(
            "636861742e76312f6d657373616765" "0005" "6c6f626279" "0005" "616c696365"
            "0000000000000102" "0000000000000007"
        )
        self.assertEqual(message_ad("lobby", "alice", 0x102, 7), expected)

    def test_signed_strings_are_built_from_str_bytes_and_u64(self) -> None:
        self.assertEqual(
            identity_signed_bytes("al", b"S", b"EE"),
            b"chat.v1/identity" + b"\x00\x02al" + b"\x00\x00\x00\x01S" + b"\x00\x00\x00\x02EE",
        )
        self.assertEqual(
            message_signed_bytes("r", "a", 1, 2, b"n" * 12, b"c" * 3),
            b"chat.v1/message-signature" + b"\x00\x01r" + b"\x00\x01a"
            + (1).to_bytes(8, "big") + (2).to_bytes(8, "big")
            + b"\x00\x00\x00\x0c" + b"n" * 12 + b"\x00\x00\x00\x03ccc",
        )
        self.assertEqual(
            sender_key_signed_bytes("r", "a", "b", 2**64 - 1, b"w"),
            b"chat.v1/sender-key-signature" + b"\x00\x01r\x00\x01a\x00\x01b" + b"\xff" * 8 + b"\x00\x00\x00\x01w",
        )
        self.assertEqual(enc_str("ü"), b"\x00\x02\xc3\xbc")

    def test_fingerprint_example(self) -> None:
        self.assertEqual(
            fingerprint(b"s", b"e").hex(),
            "301d4b63196a2c69e9c2ba7a405c7548c708d8f74e6b875fb9f67a5898074e02",
        )

    def test_safety_number_example(self) -> None:
        expected = "08940 22870 87407 56001 96721 49985 24506 87332 60637 75593 12840 20400"
        self.assertEqual(safety_number("alice", bytes(32), "bob", b"\x01" * 32), expected)
        self.assertEqual(safety_number("bob", b"\x01" * 32, "alice", bytes(32)), expected)

    def test_fingerprint_and_safety_number(self) -> None:
        fp = fingerprint(b"S", b"E")
        import hashlib

        self.assertEqual(
            fp, hashlib.sha256(b"chat.v1/fingerprint\x00\x00\x00\x01S\x00\x00\x00\x01E").digest()
        )
        shown = format_fingerprint(fp)
        self.assertEqual(len(shown.split(" ")), 16)
        self.assertEqual(shown.replace(" ", ""), fp.hex().upper())

        other = fingerprint(b"S2", b"E")
        number = safety_number("alice", fp, "bob", other)
        self.assertEqual(number, safety_number("bob", other, "alice", fp))
        groups = number.split(" ")
        self.assertEqual([len(g) for g in groups], [5] * 12)
        self.assertTrue(number.replace(" ", "").isdigit())
        self.assertNotEqual(number, safety_number("alice", fp, "bob", fingerprint(b"S3", b"E")))
        # Each half by the definition: SHA-256(tag || str(user) || fp), six 5-byte integers mod 100000.
        h = hashlib.sha256(b"chat.v1/safety-number\x00\x05alice" + fp).digest()
        half = "".join(f"{int.from_bytes(h[i:i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))
        self.assertIn(half, number.replace(" ", ""))


class Urls(unittest.TestCase):
    def test_parse_and_loopback(self) -> None:
        self.assertEqual(parse_server_url("http://127.0.0.1:5555"), ("127.0.0.1:5555", False))
        self.assertEqual(parse_server_url("https://[::1]:5555"), ("[::1]:5555", True))
        self.assertEqual(parse_server_url("https://chat.example.org"), ("chat.example.org:443", True))
        for url in ("127.0.0.1:5555", "ftp://x:1", "http://x:1/path"):
            with self.subTest(url), self.assertRaises(ClientError):
                parse_server_url(url)
        for host in ("127.0.0.1", "127.1.2.3", "[::1]", "localhost", "LOCALHOST"):
            self.assertTrue(is_loopback_host(host), host)
        for host in ("10.0.0.1", "0.0.0.0", "example.org", "[::]"):
            self.assertFalse(is_loopback_host(host), host)


class Identities(unittest.TestCase):
    def test_sign_and_verify(self) -> None:
        me = identity("alice", 0)
        data = b"anything"
        signature = me.sign(data)
        self.assertEqual(len(signature), 256)
        self.assertTrue(verify_signature(me.signing_key.public_key(), signature, data))
        self.assertFalse(verify_signature(me.signing_key.public_key(), signature, data + b"!"))
        self.assertFalse(verify_signature(me.encryption_key.public_key(), signature, data))
        self.assertFalse(verify_signature(me.signing_key.public_key(), b"", data))

    def test_public_identity_verifies(self) -> None:
        me = identity("alice", 0)
        peer = PeerIdentity.from_public(me.public_identity())
        self.assertEqual(peer.user, "alice")
        self.assertEqual(peer.fingerprint, me.fingerprint)
        self.assertEqual(len(peer.fingerprint_hex), 64)

    def test_bad_identities_are_refused(self) -> None:
        good = identity("alice", 0).public_identity()
        cases = {}
        renamed = pb.PublicIdentity(); renamed.CopyFrom(good); renamed.user = "mallory"
        cases["another name"] = renamed
        swapped = pb.PublicIdentity(); swapped.CopyFrom(good)
        swapped.signing_public_key, swapped.encryption_public_key = good.encryption_public_key, good.signing_public_key
        cases["keys swapped"] = swapped
        flipped = pb.PublicIdentity(); flipped.CopyFrom(good)
        flipped.signature = bytes([good.signature[0] ^ 1]) + good.signature[1:]
        cases["signature flipped"] = flipped
        bad_name = pb.PublicIdentity(); bad_name.CopyFrom(good); bad_name.user = "al ice"
        cases["invalid name"] = bad_name
        # Same key twice, correctly self-signed.
        same_der = public_key_der(key(0))
        same = pb.PublicIdentity(
            user="alice", signing_public_key=same_der, encryption_public_key=same_der,
            signature=sign(key(0), identity_signed_bytes("alice", same_der, same_der)),
        )
        cases["same key"] = same
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        small_der = public_key_der(small)
        enc_der = public_key_der(key(1))
        cases["1024-bit signing key"] = pb.PublicIdentity(
            user="alice", signing_public_key=small_der, encryption_public_key=enc_der,
            signature=sign(small, identity_signed_bytes("alice", small_der, enc_der)),
        )
        cases["garbage key"] = pb.PublicIdentity(
            user="alice", signing_public_key=b"junk", encryption_public_key=enc_der, signature=good.signature
        )
        for what, bad in cases.items():
            with self.subTest(what), self.assertRaises(IdentityError):
                PeerIdentity.from_public(bad)
        with self.assertRaises(ValueError):
            Identity("alice", key(0), key(0))


class Rooms(unittest.TestCase):
    """Three members, with the relay played by hand."""

    def setUp(self) -> None:
        self.ids = {name: identity(name, i) for i, name in enumerate(["alice", "bob", "carol"])}

    def room(self, name: str, **kw) -> RoomState:
        return RoomState("lobby", self.ids[name], **kw)

    def pair(self):
        """alice in the room first, then bob joins; both hold each other's key."""
        alice, bob = self.room("alice"), self.room("bob")
        self.assertEqual(recipients(alice.on_joined(pb.Joined(room="lobby"))), ["alice"])
        bob_frames = bob.on_joined(pb.Joined(room="lobby", members=[self.ids["alice"].public_identity()]))
        alice_frames = alice.member_joined(self.ids["bob"].public_identity())
        for d in deliveries_for("alice", "bob", bob_frames):
            self.assertEqual(alice.accept_sender_key(d), [])
        for d in deliveries_for("bob", "alice", alice_frames):
            self.assertEqual(bob.accept_sender_key(d), [])
        return alice, bob

    def test_messages_open_both_ways(self) -> None:
        alice, bob = self.pair()
        message, extra = alice.seal_text("hello")
        self.assertEqual(extra, [])
        self.assertEqual(len(message.sealed.signature), 256)
        opened = bob.open(delivery("alice", message))
        self.assertEqual(opened.line(), "[lobby] alice: hello")
        message, _ = bob.seal_text("hi\tthere")
        self.assertEqual(alice.open(delivery("bob", message)).line(), "[lobby] bob: hi\\u{9}there")
        self.assertEqual(alice.warnings + bob.warnings, [])

    def test_a_bit_flipped_after_signing_fails_the_signature_before_decryption(self) -> None:
        alice, bob = self.pair()
        message, _ = alice.seal_text("hello")
        message.sealed.ciphertext = bytes([message.sealed.ciphertext[0] ^ 1]) + message.sealed.ciphertext[1:]
        with mock.patch("e2ee_chat.room.AESGCM", side_effect=AssertionError("decrypted before verifying")):
            self.assertIsNone(bob.open(delivery("alice", message)))
        self.assertIn("signature does not verify", bob.warnings[-1])
        self.assertIn("tampered with or corrupted", bob.warnings[-1])
        # The genuine next message still opens.
        message, _ = alice.seal_text("again")
        self.assertEqual(bob.open(delivery("alice", message)).text, "again")

    def test_a_message_claimed_for_another_member_fails(self) -> None:
        alice, bob = self.pair()
        carol = self.room("carol")
        carol.on_joined(pb.Joined(room="lobby", members=[self.ids["alice"].public_identity(),
                                                         self.ids["bob"].public_identity()]))
        bob.member_joined(self.ids["carol"].public_identity())
        message, _ = alice.seal_text("from alice")
        self.assertIsNone(bob.open(delivery("carol", message)))
        self.assertIn("signature does not verify", bob.warnings[-1])

    def test_re_signed_tampering_fails_the_tag(self) -> None:
        alice, bob = self.pair()
        message, _ = alice.seal_text("hello")
        s = message.sealed
        s.ciphertext = bytes([s.ciphertext[0] ^ 1]) + s.ciphertext[1:]
        s.signature = self.ids["alice"].sign(
            message_signed_bytes("lobby", "alice", s.key_id, s.counter, s.nonce, s.ciphertext))
        self.assertIsNone(bob.open(delivery("alice", message)))
        self.assertIn("tampered with or corrupted", bob.warnings[-1])

    def test_replayed_message_is_dropped(self) -> None:
        alice, bob = self.pair()
        message, _ = alice.seal_text("once")
        self.assertIsNotNone(bob.open(delivery("alice", message)))
        self.assertIsNone(bob.open(delivery("alice", message)))
        self.assertIn("replayed", bob.warnings[-1])

    def test_sender_key_signature_is_checked_before_the_unwrap(self) -> None:
        alice, bob = self.room("alice"), self.room("bob")
        alice.on_joined(pb.Joined(room="lobby"))
        bob_frames = bob.on_joined(pb.Joined(room="lobby", members=[self.ids["alice"].public_identity()]))
        (d,) = deliveries_for("alice", "bob", bob_frames)
        alice.member_joined(self.ids["bob"].public_identity())
        bad = pb.SenderKeyDelivery(); bad.CopyFrom(d)
        bad.signature = bytes([d.signature[0] ^ 1]) + d.signature[1:]
        with mock.patch("e2ee_chat.room.unwrap_sender_key", side_effect=AssertionError("unwrapped first")):
            self.assertEqual(alice.accept_sender_key(bad), [])
        self.assertIn("signature does not verify", alice.warnings[-1])
        self.assertNotIn("bob", alice.peer_keys)
        # The signature covers the key id too.
        other = pb.SenderKeyDelivery(); other.CopyFrom(d); other.key_id ^= 1
        self.assertEqual(alice.accept_sender_key(other), [])
        self.assertEqual(alice.accept_sender_key(d), [])
        self.assertIn("bob", alice.peer_keys)

    def test_a_key_id_is_never_accepted_twice(self) -> None:
        alice, bob = self.room("alice"), self.room("bob")
        alice.on_joined(pb.Joined(room="lobby"))
        first = bob.on_joined(pb.Joined(room="lobby", members=[self.ids["alice"].public_identity()]))
        alice.member_joined(self.ids["bob"].public_identity())
        (old,) = deliveries_for("alice", "bob", first)
        alice.accept_sender_key(old)
        message, _ = bob.seal_text("one")
        self.assertIsNotNone(alice.open(delivery("bob", message)))
        # The current key again (as a catch-up starts): ignored silently, and it does
        # not reset the replay window.
        self.assertEqual(alice.accept_sender_key(old), [])
        self.assertEqual(alice.warnings, [])
        self.assertIsNone(alice.open(delivery("bob", message)))
        self.assertIn("replayed", alice.warnings[-1])
        # bob rotates; the relay then brings back the old key: refused.
        (new,) = deliveries_for("alice", "bob", bob.rotate())
        alice.accept_sender_key(new)
        self.assertEqual(alice.accept_sender_key(old), [])
        self.assertIn("already accepted", alice.warnings[-1])
        self.assertEqual(alice.peer_keys["bob"].key_id, new.key_id)
        # Remembered even after bob leaves and comes back.
        alice.member_left("bob")
        alice.member_joined(self.ids["bob"].public_identity())
        self.assertEqual(alice.accept_sender_key(old), [])
        self.assertNotIn("bob", alice.peer_keys)

    def test_history_of_key_ids_is_bounded(self) -> None:
        alice = self.room("alice")
        alice.on_joined(pb.Joined(room="lobby", members=[self.ids["bob"].public_identity()]))
        bob = self.room("bob")
        bob.on_joined(pb.Joined(room="lobby", members=[self.ids["alice"].public_identity()]))
        first = None
        for _ in range(ACCEPTED_KEY_IDS_KEPT + 1):
            (d,) = deliveries_for("alice", "bob", bob.rotate())
            first = first or d
            alice.accept_sender_key(d)
        self.assertEqual(len(alice.accepted_key_ids["bob"]), ACCEPTED_KEY_IDS_KEPT)
        self.assertNotIn(first.key_id, alice.accepted_key_ids["bob"])

    def test_message_before_key_is_buffered_then_opened(self) -> None:
        alice, bob = self.room("alice"), self.room("bob")
        alice.on_joined(pb.Joined(room="lobby"))
        bob_frames = bob.on_joined(pb.Joined(room="lobby", members=[self.ids["alice"].public_identity()]))
        alice.member_joined(self.ids["bob"].public_identity())
        message, _ = bob.seal_text("early")
        self.assertIsNone(alice.open(delivery("bob", message)))
        self.assertEqual(len(alice.pending), 1)
        (d,) = deliveries_for("alice", "bob", bob_frames)
        opened = alice.accept_sender_key(d)
        self.assertEqual([m.text for m in opened], ["early"])

    def test_a_forged_message_is_not_buffered(self) -> None:
        alice, bob = self.room("alice"), self.room("bob")
        alice.on_joined(pb.Joined(room="lobby"))
        bob.on_joined(pb.Joined(room="lobby", members=[self.ids["alice"].public_identity()]))
        alice.member_joined(self.ids["bob"].public_identity())
        message, _ = bob.seal_text("early")
        message.sealed.signature = b"\x00" * 256
        self.assertIsNone(alice.open(delivery("bob", message)))
        self.assertEqual(len(alice.pending), 0)

    def test_leave_rotates_and_the_leaver_cannot_read(self) -> None:
        alice, bob = self.pair()
        carol = self.room("carol")
        carol_frames = carol.on_joined(pb.Joined(room="lobby", members=[
            self.ids["alice"].public_identity(), self.ids["bob"].public_identity()]))
        for d in deliveries_for("carol", "alice", alice.member_joined(self.ids["carol"].public_identity())):
            carol.accept_sender_key(d)
        for d in deliveries_for("alice", "carol", carol_frames):
            alice.accept_sender_key(d)
        old_id = alice.own_key.key_id
        frames = alice.member_left("bob")
        self.assertNotEqual(alice.own_key.key_id, old_id)
        self.assertEqual(recipients(frames), ["alice", "carol"])
        for d in deliveries_for("carol", "alice", frames):
            carol.accept_sender_key(d)
        message, _ = alice.seal_text("after bob")
        self.assertEqual(carol.open(delivery("alice", message)).text, "after bob")
        self.assertIsNone(bob.open(delivery("alice", message)))
        self.assertIn("stale or unknown sender key", bob.warnings[-1])

    def test_unverifiable_member_is_ignored(self) -> None:
        alice = self.room("alice")
        forged = self.ids["bob"].public_identity()
        forged.signature = b"\x01" * 256
        self.assertEqual(recipients(alice.on_joined(pb.Joined(room="lobby", members=[forged]))), ["alice"])
        self.assertEqual(alice.members, {})
        self.assertIn("signature does not verify", alice.warnings[-1])
        self.assertIsNone(alice.member_joined(forged))

    def test_untrusted_member_gets_nothing_and_is_not_heard_until_trusted(self) -> None:
        trusted = {"bob": False}
        alice = self.room("alice", trust=lambda peer: trusted.get(peer.user, True))
        bob = self.room("bob")
        frames = alice.on_joined(pb.Joined(room="lobby", members=[
            self.ids["bob"].public_identity(), self.ids["carol"].public_identity()]))
        self.assertEqual(recipients(frames), ["alice", "carol"])
        frames = alice.rotate()
        self.assertEqual(recipients(frames), ["alice", "carol"])
        bob_frames = bob.on_joined(pb.Joined(room="lobby", members=[self.ids["alice"].public_identity()]))
        (d,) = deliveries_for("alice", "bob", bob_frames)
        with mock.patch("e2ee_chat.room.unwrap_sender_key", side_effect=AssertionError("unwrapped")):
            self.assertEqual(alice.accept_sender_key(d), [])
        self.assertIn("keys changed", alice.warnings[-1])
        message, _ = bob.seal_text("hello")
        self.assertIsNone(alice.open(delivery("bob", message)))
        self.assertIn("keys changed", alice.warnings[-1])
        self.assertEqual(alice.untrusted_members(), ["bob"])
        # The user accepts the keys: alice rotates, bob gets only the new key, and the
        # held key is used.
        old_id = alice.own_key.key_id
        frames = alice.trust_member("bob")
        self.assertNotEqual(alice.own_key.key_id, old_id)
        self.assertEqual(recipients(frames), ["alice", "bob", "carol"])
        self.assertEqual({f.key_id for f in frames}, {alice.own_key.key_id})
        message, _ = bob.seal_text("now")
        self.assertEqual(alice.open(delivery("bob", message)).text, "now")

    def test_own_name_and_second_announcements_are_ignored(self) -> None:
        alice = self.room("alice")
        impostor = Identity("alice", key(4), key(5)).public_identity()
        self.assertEqual(recipients(alice.on_joined(pb.Joined(room="lobby", members=[impostor]))), ["alice"])
        self.assertEqual(alice.members, {})
        self.assertIn("your own name", alice.warnings[-1])
        self.assertIsNone(alice.member_joined(impostor))
        # bob, with a key accepted; the relay announces bob again (other keys or not).
        bob = self.room("bob")
        frames = bob.on_joined(pb.Joined(room="lobby", members=[self.ids["alice"].public_identity()]))
        self.assertIsNotNone(alice.member_joined(self.ids["bob"].public_identity()))
        (d,) = deliveries_for("alice", "bob", frames)
        alice.accept_sender_key(d)
        for again in (self.ids["bob"].public_identity(), Identity("bob", key(4), key(5)).public_identity()):
            self.assertIsNone(alice.member_joined(again))
            self.assertIn("second announcement", alice.warnings[-1])
        self.assertEqual(alice.members["bob"].identity.fingerprint, self.ids["bob"].fingerprint)
        self.assertEqual(alice.peer_keys["bob"].key_id, d.key_id)

    def test_frames_hold_at_most_32_copies(self) -> None:
        alice = self.room("alice")
        members = [Identity(f"u{i}", key(0), key(1)).public_identity() for i in range(130)]
        frames = alice.on_joined(pb.Joined(room="lobby", members=members))
        # Our own copy first, then 130 members.
        self.assertEqual([len(f.keys) for f in frames], [32, 32, 32, 32, 3])
        self.assertEqual(frames[0].keys[0].recipient, "alice")


class Durable(unittest.TestCase):
    """Durable delivery: sequence numbers, catch-up, former members, our own key copy and
    history, with the relay played by hand."""

    def setUp(self) -> None:
        self.ids = {name: identity(name, i) for i, name in enumerate(["alice", "bob", "carol"])}

    def room(self, name: str, **kw) -> RoomState:
        return RoomState("lobby", self.ids[name], **kw)

    def public(self, *names: str) -> list[pb.PublicIdentity]:
        return [self.ids[n].public_identity() for n in names]

    def key_of(self, sender: RoomState, frames, recipient: str, seq: int) -> pb.SenderKeyDelivery:
        (d,) = deliveries_for(recipient, sender.user, frames)
        d.seq = seq
        return d

    def test_a_copy_of_our_key_is_wrapped_for_ourselves_first(self) -> None:
        alice = self.room("alice")
        frames = alice.on_joined(pb.Joined(room="lobby", members=self.public("bob")))
        self.assertEqual(recipients(frames), ["alice", "bob"])
        own = self.key_of(alice, frames, "alice", 1)
        signed = sender_key_signed_bytes("lobby", "alice", "alice", own.key_id, own.wrapped_key)
        self.assertTrue(verify_signature(self.ids["alice"].signing_key.public_key(), own.signature, signed))
        unwrapped = unwrap_sender_key(
            self.ids["alice"].encryption_key, own.wrapped_key, "lobby", "alice", "alice", own.key_id)
        self.assertEqual(unwrapped, alice.own_key.key)
        # Alone in the room, the own copy is still sent; a newcomer's frame has one too.
        self.assertEqual(recipients(self.room("carol").on_joined(pb.Joined(room="lobby"))), ["carol"])
        self.assertEqual(recipients(alice.member_joined(self.ids["carol"].public_identity())), ["alice", "carol"])

    def test_every_join_makes_a_fresh_key(self) -> None:
        alice = self.room("alice")
        before = alice.own_key.key_id
        frames = alice.on_joined(pb.Joined(room="lobby", resumed=True, last_seq=9), after_seq=9)
        self.assertNotEqual(alice.own_key.key_id, before)
        self.assertEqual({f.key_id for f in frames}, {alice.own_key.key_id})

    def test_where_the_numbering_starts(self) -> None:
        self.assertEqual(starting_seq(False, None, 42), (42, None))
        self.assertEqual(starting_seq(False, 0, 42), (42, None))
        self.assertEqual(starting_seq(True, 17, 42), (17, None))
        self.assertEqual(starting_seq(True, None, 42), (42, None))
        start, warning = starting_seq(True, 50, 42)
        self.assertEqual(start, 42)
        self.assertIn("older backup", warning)
        start, warning = starting_seq(False, 50, 3)
        self.assertEqual(start, 3)
        self.assertIn("no longer counted you as a member", warning)

    def test_messages_at_or_below_the_last_seq_are_dropped_silently(self) -> None:
        alice = self.room("alice")
        alice_frames = alice.on_joined(pb.Joined(room="lobby", members=self.public("bob")))
        seen, new, later = (alice.seal_text(t)[0] for t in ("seen", "new", "later"))
        # bob comes back having processed up to 10; the relay's latest is 12.
        resumed = self.room("bob")
        resumed.on_joined(pb.Joined(room="lobby", members=self.public("alice"), resumed=True, last_seq=12),
                          after_seq=10)
        self.assertEqual(resumed.last_seq, 10)
        # The key in force, numbered below where the catch-up starts, is taken.
        self.assertEqual(resumed.accept_sender_key(self.key_of(alice, alice_frames, "bob", 4)), [])
        self.assertIn("alice", resumed.peer_keys)
        self.assertEqual(resumed.last_seq, 10)
        with mock.patch("e2ee_chat.room.verify_signature", side_effect=AssertionError("checked a duplicate")):
            self.assertIsNone(resumed.open(delivery("alice", seen, seq=10)))
        self.assertEqual(resumed.open(delivery("alice", new, seq=11)).text, "new")
        self.assertEqual(resumed.last_seq, 11)
        self.assertIsNone(resumed.open(delivery("alice", new, seq=11)))
        self.assertEqual(resumed.warnings, [], "duplicates are dropped silently")
        # The current key again, as the next catch-up starts: ignored silently.
        self.assertEqual(resumed.accept_sender_key(self.key_of(alice, alice_frames, "bob", 4)), [])
        self.assertEqual(resumed.warnings, [])
        self.assertEqual(resumed.open(delivery("alice", later, seq=13)).text, "later")
        self.assertEqual(resumed.last_seq, 13)
        # A later key numbered higher moves it too; our own acks never do (not seen here).
        (rotated,) = deliveries_for("bob", "alice", alice.rotate())
        rotated.seq = 20
        resumed.accept_sender_key(rotated)
        self.assertEqual(resumed.last_seq, 20)

    def test_former_members_are_read_during_the_catch_up_then_forgotten(self) -> None:
        bob = self.room("bob")
        carol = self.room("carol")
        bob_frames = bob.on_joined(pb.Joined(room="lobby", members=self.public("alice", "carol")))
        carol_frames = carol.on_joined(pb.Joined(room="lobby", members=self.public("alice", "bob")))
        before, _ = carol.seal_text("carol, before leaving")
        after, _ = carol.seal_text("carol, after the catch-up")

        alice = self.room("alice")
        frames = alice.on_joined(pb.Joined(room="lobby", members=self.public("bob"), resumed=True, last_seq=12,
                                           former_members=self.public("carol")), after_seq=8)
        self.assertEqual(recipients(frames), ["alice", "bob"], "nothing wrapped for a former member")
        self.assertEqual(alice.current_members(), ["bob"])
        self.assertIsNone(alice.member_joined(self.ids["bob"].public_identity()))
        self.assertEqual(alice.accept_sender_key(self.key_of(bob, bob_frames, "alice", 3)), [])
        self.assertEqual(alice.accept_sender_key(self.key_of(carol, carol_frames, "alice", 9)), [])
        self.assertEqual(alice.open(delivery("carol", before, seq=11)).text, "carol, before leaving")
        # A message whose signature does not verify is refused, former member or not.
        forged, _ = carol.seal_text("forged")
        forged.sealed.signature = bytes(256)
        self.assertIsNone(alice.open(delivery("carol", forged, seq=12)))
        self.assertIn("signature does not verify", alice.warnings[-1])

        alice.caught_up()
        self.assertNotIn("carol", alice.members)
        self.assertNotIn("carol", alice.peer_keys)
        self.assertIsNone(alice.open(delivery("carol", after, seq=13)))
        self.assertIn("not a member", alice.warnings[-1])
        # Back as a member: its new key is taken (the old one is still refused).
        self.assertEqual(recipients(alice.member_joined(self.ids["carol"].public_identity())), ["alice", "carol"])
        (new,) = deliveries_for("alice", "carol", carol.rotate())
        alice.accept_sender_key(new)
        self.assertEqual(alice.peer_keys["carol"].key_id, new.key_id)

    def history(self):
        """alice and bob, each with a key and two messages; then the answer to alice's
        GetHistory as the relay stores it: the keys wrapped for alice (her own copy
        included), then the messages, ours included."""
        alice, bob = self.room("alice"), self.room("bob")
        alice_frames = alice.on_joined(pb.Joined(room="lobby", members=self.public("bob")))
        bob_frames = bob.on_joined(pb.Joined(room="lobby", members=self.public("alice")))
        entries = [
            pb.HistoryEntry(sender_key=self.key_of(alice, alice_frames, "alice", 2)),
            pb.HistoryEntry(sender_key=self.key_of(bob, bob_frames, "alice", 3)),
        ]
        for seq, (room, text) in enumerate([(alice, "mine"), (bob, "his"), (alice, "mine again")], start=4):
            entries.append(pb.HistoryEntry(message=delivery(room.user, room.seal_text(text)[0], seq=seq)))
        alice.accept_sender_key(self.key_of(bob, bob_frames, "alice", 3))
        return alice, bob, pb.History(room="lobby", entries=entries)

    def test_history_opens_our_own_messages_and_leaves_the_live_state_alone(self) -> None:
        alice, _, history = self.history()
        live_key = alice.peer_keys["bob"]
        last_seq = alice.last_seq
        messages = alice.open_history(history)
        self.assertEqual([(m.seq, m.sender, m.text) for m in messages],
                         [(4, "alice", "mine"), (5, "bob", "his"), (6, "alice", "mine again")])
        self.assertEqual(alice.warnings, [])
        self.assertIs(alice.peer_keys["bob"], live_key)
        self.assertIsNone(live_key.window.highest, "history does not move replay windows")
        self.assertEqual(alice.last_seq, last_seq)
        line = messages[1].line("lobby")
        self.assertRegex(line, r"^history \[lobby\] bob \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\): his$")
        # The same answer again reads the same: nothing was used up.
        self.assertEqual(len(alice.open_history(history)), 3)

    def test_history_checks_signatures_before_unwrapping_or_decrypting(self) -> None:
        alice, _, history = self.history()
        # A key entry and a message entry tampered with after signing.
        key_entry = history.entries[1].sender_key
        key_entry.wrapped_key = bytes([key_entry.wrapped_key[0] ^ 1]) + key_entry.wrapped_key[1:]
        sealed = history.entries[2].message.sealed
        sealed.ciphertext = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
        unwrapped: list[str] = []
        real_unwrap = unwrap_sender_key

        def spy(own_key, wrapped, room, sender, recipient, key_id):
            unwrapped.append(sender)
            return real_unwrap(own_key, wrapped, room, sender, recipient, key_id)

        real_aesgcm = AESGCM
        decrypted: list[bytes] = []

        class SpyAESGCM:
            def __init__(self, key: bytes) -> None:
                self.aead = real_aesgcm(key)

            def decrypt(self, nonce, data, associated_data):
                decrypted.append(bytes(data))
                return self.aead.decrypt(nonce, data, associated_data)

        with mock.patch("e2ee_chat.room.unwrap_sender_key", spy), mock.patch("e2ee_chat.room.AESGCM", SpyAESGCM):
            messages = alice.open_history(history)
        self.assertEqual(unwrapped, ["alice"], "bob's tampered key was never unwrapped")
        self.assertNotIn(bytes(sealed.ciphertext), decrypted, "the tampered message was never decrypted")
        # bob's key was refused, so his message cannot be read either; ours still can.
        self.assertEqual([m.text for m in messages], ["mine again"])
        self.assertEqual(len(alice.warnings), 1)
        self.assertIn("2 older message(s) could not be verified or decrypted", alice.warnings[0])
        self.assertIn("1 sender key(s) were rejected", alice.warnings[0])

    def test_history_reads_former_members_it_names_and_nobody_else(self) -> None:
        alice, bob, history = self.history()
        alice.member_left("bob")
        self.assertEqual([m.text for m in alice.open_history(history)], ["mine", "mine again"])
        history.former_members.extend(self.public("bob"))
        self.assertEqual([m.text for m in alice.open_history(history)], ["mine", "his", "mine again"])
        self.assertNotIn("bob", alice.members, "a former member of a history is not a member")
        # Unless its keys are not the trusted ones.
        wary = RoomState("lobby", self.ids["alice"], trust=lambda peer: peer.user != "bob")
        self.assertEqual([m.text for m in wary.open_history(history)], ["mine", "mine again"])


class CliHelpers(unittest.TestCase):
    """What /history and /pending print, as the Rust client does."""

    def test_history_lines_show_the_time_in_utc_and_escape_the_text(self) -> None:
        self.assertEqual(utc_time(0), "1970-01-01 00:00:00 UTC")
        self.assertEqual(utc_time(1_700_000_000_999), "2023-11-14 22:13:20 UTC")
        self.assertEqual(utc_time(951_782_400_000), "2000-02-29 00:00:00 UTC")
        self.assertEqual(utc_time(4_102_444_799_000), "2099-12-31 23:59:59 UTC")
        self.assertTrue(utc_time(2**64 - 1).endswith(" UTC"), "whatever a sender claims")
        self.assertEqual(
            history_line("lobby", "alice", 1_700_000_000_000, "two\nlines"),
            "history [lobby] alice (2023-11-14 22:13:20 UTC): two\\u{a}lines",
        )

    def test_history_takes_1_to_100_messages_and_20_by_default(self) -> None:
        self.assertEqual(history_limit(None), 20)
        self.assertEqual(history_limit("1"), 1)
        self.assertEqual(history_limit("100"), 100)
        for wrong in ("0", "101", "-3", "ten", "", "²"):
            with self.subTest(wrong), self.assertRaises(ValueError):
                history_limit(wrong)

    def test_a_refused_message_is_reported_and_pending_lists_the_others(self) -> None:
        client = ChatClient("http://127.0.0.1:1", "alice", "lobby", Path("/nonexistent"), 2048)
        client.room = RoomState("lobby", identity("alice", 0))
        client._send_text("first")
        client._send_text("second\nline")
        first, second = client.unacked
        refusal = pb.ServerFrame(request_id=first, rejection=pb.Rejection(code=14, message="disk full"))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            client._on_answer(refusal, "rejection")
            client._command("/pending")
        self.assertEqual(err.getvalue().splitlines(), [
            'failed to send "first": UNAVAILABLE: disk full',
            "1 message(s) sent but not acknowledged yet:",
            '  "second\\u{a}line"',
        ])
        self.assertEqual(client.refused, 1)
        client._on_answer(pb.ServerFrame(request_id=second, ack=pb.Ack(seq=9)), "ack")
        self.assertEqual(client.unacked, {})
        self.assertEqual(client.room.last_seq, 0, "our own entries never move last_seq")

    def test_pending_lists_each_text_on_one_line(self) -> None:
        self.assertEqual(len(pending_lines([])), 1)
        self.assertEqual(
            pending_lines(["hi", "a\nb"]),
            ["2 message(s) sent but not acknowledged yet:", '  "hi"', '  "a\\u{a}b"'],
        )


class Home(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.home = Path(self.tmp.name) / "home"
        self.log: list[str] = []

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def mode(self, path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    def test_new_home(self) -> None:
        me = load_or_create_identity(self.home, "alice", 2048, self.log.append)
        user = self.home / "alice"
        self.assertEqual(self.mode(user), 0o700)
        for name in ("signing.pem", "encryption.pem"):
            self.assertEqual(self.mode(user / name), 0o600)
            self.assertTrue((user / name).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----"))
        self.assertEqual(me.signing_key.key_size, 2048)
        self.assertEqual(sorted(p.name for p in user.iterdir()), ["encryption.pem", "signing.pem"])
        again = load_or_create_identity(self.home, "alice", 4096)
        self.assertEqual(again.fingerprint, me.fingerprint)

    def test_open_key_file_is_refused(self) -> None:
        load_or_create_identity(self.home, "alice", 2048)
        path = self.home / "alice" / "signing.pem"
        os.chmod(path, 0o640)
        with self.assertRaises(ClientError) as caught:
            load_or_create_identity(self.home, "alice", 2048)
        self.assertIn("chmod 600", str(caught.exception))

    def test_migration_of_an_old_home(self) -> None:
        user = self.home / "alice"
        user.mkdir(parents=True, mode=0o755)
        old = key(3)
        pem = _pem(old)
        (user / "identity.pem").write_bytes(pem)
        os.chmod(user / "identity.pem", 0o600)
        me = load_or_create_identity(self.home, "alice", 4096, self.log.append)
        self.assertFalse((user / "identity.pem").exists())
        self.assertEqual((user / "encryption.pem").read_bytes(), pem)
        self.assertEqual(me.encryption_public_der, public_key_der(old))
        self.assertEqual(me.signing_key.key_size, 2048)  # the old key's size, not --key-bits
        self.assertEqual(self.mode(user / "signing.pem"), 0o600)
        self.assertEqual(self.mode(user), 0o700)
        self.assertTrue(any("migrated" in line for line in self.log), self.log)

    def test_migration_refuses_an_open_old_key(self) -> None:
        user = self.home / "alice"
        user.mkdir(parents=True)
        (user / "identity.pem").write_bytes(_pem(key(3)))
        os.chmod(user / "identity.pem", 0o644)
        with self.assertRaises(ClientError) as caught:
            load_or_create_identity(self.home, "alice", 2048)
        self.assertIn("chmod 600", str(caught.exception))
        self.assertTrue((user / "identity.pem").exists())

    def test_interrupted_migration_gets_a_signing_key(self) -> None:
        user = self.home / "alice"
        user.mkdir(parents=True, mode=0o700)
        path = user / "encryption.pem"
        path.write_bytes(_pem(key(3)))
        os.chmod(path, 0o600)
        me = load_or_create_identity(self.home, "alice", 3072)
        self.assertEqual(me.signing_key.key_size, 2048)

    def test_signing_key_alone_is_refused(self) -> None:
        load_or_create_identity(self.home, "alice", 2048)
        (self.home / "alice" / "encryption.pem").unlink()
        with self.assertRaises(ClientError):
            load_or_create_identity(self.home, "alice", 2048)

    def test_contacts(self) -> None:
        path = self.home / "alice" / "contacts.json"
        book = ContactBook(path)
        bob = PeerIdentity.from_public(identity("bob", 1).public_identity())
        self.assertEqual(book.check(bob), "new")
        self.assertEqual(self.mode(path), 0o600)
        self.assertEqual(
            json.loads(path.read_text()),
            {"version": 1, "contacts": {"bob": {"fingerprint": bob.fingerprint_hex, "verified": False}}},
        )
        self.assertEqual(ContactBook(path).check(bob), "same")
        impostor = PeerIdentity.from_public(Identity("bob", key(4), key(5)).public_identity())
        self.assertEqual(book.check(impostor), "changed")
        # A verified contact, with a field this client does not know, re-pinned.
        data = json.loads(path.read_text())
        data["contacts"]["bob"].update(verified=True, note="kept")
        path.write_text(json.dumps(data))
        book = ContactBook(path)
        self.assertTrue(book.verified("bob"))
        book.pin("bob", impostor.fingerprint_hex)
        entry = json.loads(path.read_text())["contacts"]["bob"]
        self.assertEqual(entry, {"fingerprint": impostor.fingerprint_hex, "verified": False, "note": "kept"})
        self.assertEqual(sorted(p.name for p in path.parent.iterdir()), ["contacts.json"])
        book.set_verified("bob", impostor.fingerprint_hex)
        self.assertTrue(ContactBook(path).verified("bob"))

    def test_progress_round_trip_private_and_shared_with_the_rust_format(self) -> None:
        path = progress_path(self.home, "alice")
        server = "https://chat.example:5555"
        self.assertIsNone(load_last_seq(path, server, "lobby"))
        save_last_seq(path, server, "lobby", 41)
        save_last_seq(path, server, "lobby", 42)
        save_last_seq(path, server, "ops", 3)
        save_last_seq(path, "http://127.0.0.1:5555", "lobby", 2**64 - 1)
        self.assertEqual(load_last_seq(path, server, "lobby"), 42)
        self.assertEqual(load_last_seq(path, server + "/", "lobby"), 42, "a trailing slash names the same server")
        self.assertEqual(load_last_seq(path, "http://127.0.0.1:5555", "lobby"), 2**64 - 1)
        self.assertEqual(self.mode(path), 0o600)
        self.assertEqual(self.mode(path.parent), 0o700)
        self.assertEqual([p.name for p in path.parent.iterdir()], ["progress.json"], "no temporary file left")
        # Byte for byte what the Rust client writes (serde_json's pretty printer).
        self.assertEqual(path.read_text(), (
            '{\n  "version": 1,\n  "servers": {\n    "http://127.0.0.1:5555": {\n      "lobby": 18446744073709551615\n'
            '    },\n    "https://chat.example:5555": {\n      "lobby": 42,\n      "ops": 3\n    }\n  }\n}\n'))
        forget_room(path, server, "lobby")
        self.assertIsNone(load_last_seq(path, server, "lobby"))
        self.assertEqual(load_last_seq(path, server, "ops"), 3)
        forget_room(path, "http://127.0.0.1:5555", "lobby")
        self.assertNotIn("127.0.0.1", path.read_text())

    def test_progress_that_is_corrupt_or_open_to_others_is_refused(self) -> None:
        path = progress_path(self.home, "alice")
        save_last_seq(path, "http://x:1", "lobby", 7)
        for text in ('{"version": 1, "servers": {"x": {"lobby": -1}}}',
                     '{"version": 1, "servers": {"x": {"lobby": 1.0}}}',
                     '{"version": 2, "servers": {}}', "not json", "[]"):
            path.write_text(text)
            for attempt in (lambda: load_last_seq(path, "http://x:1", "lobby"),
                            lambda: save_last_seq(path, "http://x:1", "lobby", 8)):
                with self.subTest(text), self.assertRaises(ProgressError) as caught:
                    attempt()
                self.assertIn(str(path), str(caught.exception))
                self.assertNotIn("\n", str(caught.exception))
            self.assertEqual(path.read_text(), text, "nothing was overwritten")
        save_last_seq(path.with_name("other.json"), "http://x:1", "lobby", 7)
        path.write_text('{"version": 1, "servers": {}}')
        os.chmod(path, 0o644)
        with self.assertRaises(ProgressError) as caught:
            load_last_seq(path, "http://x:1", "lobby")
        self.assertIn("chmod 600", str(caught.exception))

    def test_contacts_of_another_version_are_refused(self) -> None:
        path = self.home / "contacts.json"
        path.parent.mkdir(parents=True)
        path.write_text('{"version": 2, "contacts": {}}')
        with self.assertRaises(ContactsError):
            ContactBook(path)


if __name__ == "__main__":
    unittest.main()
