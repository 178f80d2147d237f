"""Unit checks of the Python client's protocol layer and home files, without a relay:
every byte string, derivation and vector of docs/PROTOCOL.md (chat.v2), and the rules it
states for sender keys, distributions, prekeys, private rooms and the home directory.

Run: clients/python/.venv/bin/python -m unittest discover -s clients/python -p 'test_*.py'
(after clients/python/setup.sh). The end-to-end tests against the Rust relay and client
are in tests/python.rs (`cargo test --test python`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import stat
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import e2ee_chat.room as room_module
from e2ee_chat.binding import (
    copy_label,
    copy_leaf,
    distribution_signed_bytes,
    enc_str,
    identity_signed_bytes,
    invitation_signed_bytes,
    login_signed_bytes,
    message_ad,
    message_signed_bytes,
    prekey_signed_bytes,
    public_key_der,
    removal_signed_bytes,
    sign,
    unwrap_chain_key,
    verify_signature,
    wrap_chain_key,
)
from e2ee_chat.envelope import (
    EnvelopeError,
    decode_envelope,
    encode_envelope,
    encode_receipt,
    pad_envelope,
    pad_spaces,
)
from e2ee_chat.errors import ClientError
from e2ee_chat.group import (
    OwnSenderKey,
    PeerSenderKey,
    Repeated,
    TooFarAhead,
    is_small_order,
    step,
    verify_strict,
)
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
from e2ee_chat.membership import sign_invitation, sign_removal
from e2ee_chat.merkle import audit_path, leaf_hash, root, root_from_path
from e2ee_chat.prekeys import PrekeyStore, check_prekey, PrekeyError, sign_prekey
from e2ee_chat.proto import pb
from e2ee_chat.protocol import (
    ACCEPTED_KEY_IDS_KEPT,
    MAX_COPIES_PER_DISTRIBUTION,
    MAX_FORWARD_JUMP,
    MAX_SKIPPED_KEYS,
    PREKEY_KEEP_MS,
    PREKEY_ROTATE_MS,
)
from e2ee_chat.room import MemoryOwnerPins, RoomState, history_line, starting_seq, utc_time
from e2ee_chat.receipts import ReceiptBook, ReceiptSchedule
from e2ee_chat.rooms import JoinedRoom, room_list
from e2ee_chat.session import ChatClient, Request, history_arguments, history_limit, pending_lines
from e2ee_chat.transport import Backoff, Relays, is_loopback_host, is_relay_down, parse_server_url, server_list

_KEYS: list[rsa.RSAPrivateKey] = []


def key(i: int) -> rsa.RSAPrivateKey:
    """The i-th 2048-bit test key, made once (key generation is slow)."""
    while len(_KEYS) <= i:
        _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _KEYS[i]


def identity(user: str, i: int) -> Identity:
    """``user`` with test keys 3i (signing) and 3i+1 (encryption); 3i+2 is its prekey."""
    return Identity(user, key(3 * i), key(3 * i + 1))


class Prekey:
    def __init__(self, prekey_id: int, private_key: rsa.RSAPrivateKey) -> None:
        self.prekey_id, self.private_key, self.created_at_ms = prekey_id, private_key, 1_700_000_000_000


class FakePrekeys:
    """A device's prekeys in memory: what RoomState needs of a PrekeyStore."""

    def __init__(self, *prekeys: Prekey) -> None:
        self.prekeys = list(prekeys)

    @property
    def current(self) -> Prekey:
        return self.prekeys[-1]

    def private_key(self, prekey_id: int):
        return next((p.private_key for p in self.prekeys if p.prekey_id == prekey_id), None)


class User:
    """A test user: identity, one prekey, a RoomState in ``room``."""

    def __init__(self, name: str, i: int, room: str = "lobby", **kwargs) -> None:
        self.identity = identity(name, i)
        self.prekey = Prekey(0x1000 + i, key(3 * i + 2))
        self.prekeys = FakePrekeys(self.prekey)
        self.state = RoomState(room, self.identity, self.prekeys, **kwargs)

    @property
    def name(self) -> str:
        return self.identity.user

    def public(self) -> pb.PublicIdentity:
        return self.identity.public_identity()

    def bundle(self) -> pb.KeyBundle:
        p = self.prekeys.current
        return pb.KeyBundle(
            identity=self.public(), device=1,
            prekey=sign_prekey(self.identity, p.prekey_id, p.created_at_ms, p.private_key),
        )


def join(members: list[User], newcomer: User, seq: int = 0) -> None:
    """``newcomer`` joins a room of ``members``: everyone learns about everyone, and
    everyone has everyone's prekey (no key handed out)."""
    newcomer.state.on_joined(pb.Joined(room=newcomer.state.room, members=[m.public() for m in members], last_seq=seq))
    newcomer.state.take_bundles([m.bundle() for m in members])
    for member in members:
        member.state.member_joined(newcomer.public())
        member.state.take_bundles([newcomer.bundle()])


def deliveries_for(recipient: str, sender: str, frames: list[pb.DistributeSenderKey], seq: int = 0) -> list[pb.SenderKeyDelivery]:
    """What the relay gives ``recipient`` of ``sender``'s distributions: its copy, its
    place, its audit path and the frame's signature."""
    out = []
    for frame in frames:
        hashes_ = [leaf_hash(copy_leaf(c.recipient, c.device, c.prekey_id, c.wrapped)) for c in frame.copies]
        for index, copy in enumerate(frame.copies):
            if copy.recipient == recipient:
                out.append(pb.SenderKeyDelivery(
                    room=frame.room, sender=sender, header=frame.header, copy=copy, index=index,
                    count=len(frame.copies), path=audit_path(hashes_, index), signature=frame.signature, seq=seq,
                ))
    return out


def give(frames: list[pb.DistributeSenderKey], sender: User, *recipients: User) -> None:
    for recipient in recipients:
        for delivery in deliveries_for(recipient.name, sender.name, frames):
            recipient.state.accept_sender_key(delivery)


def delivery(sender: str, message: pb.SendMessage, seq: int = 0) -> pb.MessageDelivery:
    return pb.MessageDelivery(room=message.room, sender=sender, sealed=message.sealed, seq=seq)


def recipients(frames: list[pb.DistributeSenderKey]) -> list[str]:
    return [copy.recipient for frame in frames for copy in frame.copies]


def offline_client(*rooms: str, receipts: bool = True) -> ChatClient:
    """alice's ChatClient in ``rooms``, each joined alone and caught up, without a relay:
    its frames pile up in ``client.outbound``; events are fed to ``_on_frame`` and
    ``_on_input`` by the test."""
    client = ChatClient("http://127.0.0.1:1", "alice", list(rooms), Path("/nonexistent"), 2048, receipts=receipts)
    alice = User("alice", 0)
    client.identity, client.prekeys = alice.identity, alice.prekeys  # type: ignore[assignment]
    for name in rooms:
        state = User("alice", 0, room=name).state
        state.on_joined(pb.Joined(room=name))
        room = client.rooms[name] = JoinedRoom(state, None, at_start=True, create_private=False)
        room.on_joined([])
        room.ready = room.caught_up = True
    client.current = rooms[0]
    return client


def sent_frames(client: ChatClient) -> list[pb.ClientFrame]:
    """The frames ``client`` queued for the relay so far."""
    frames = []
    while not client.outbound.empty():
        frames.append(client.outbound.get_nowait())
    return frames


H = bytes.fromhex
KEY_ID = 0x0102030405060708
PREKEY_ID = 0x1112131415161718


class Vectors(unittest.TestCase):
    """The byte strings and vectors of docs/PROTOCOL.md, byte for byte."""

    def test_tags(self) -> None:
        import e2ee_chat.protocol as p

        table = {
            p.IDENTITY_TAG: (16, "636861742e76312f6964656e74697479"),
            p.LOGIN_TAG: (13, "636861742e76312f6c6f67696e"),
            p.FINGERPRINT_TAG: (19, "636861742e76312f66696e6765727072696e74"),
            p.SAFETY_NUMBER_TAG: (21, "636861742e76312f7361666574792d6e756d626572"),
            p.PREKEY_TAG: (14, "636861742e76322f7072656b6579"),
            p.MESSAGE_KEY_INFO: (19, "636861742e76322f6d6573736167652d6b6579"),
            p.MESSAGE_AD_TAG: (15, "636861742e76322f6d657373616765"),
            p.MESSAGE_SIGNATURE_TAG: (25, "636861742e76322f6d6573736167652d7369676e6174757265"),
            p.COPY_LABEL_TAG: (18, "636861742e76322f73656e6465722d6b6579"),
            p.COPY_LEAF_TAG: (23, "636861742e76322f73656e6465722d6b65792d636f7079"),
            p.DISTRIBUTION_TAG: (31, "636861742e76322f73656e6465722d6b65792d646973747269627574696f6e"),
            p.INVITATION_TAG: (18, "636861742e76322f696e7669746174696f6e"),
            p.REMOVAL_TAG: (15, "636861742e76322f72656d6f76616c"),
        }
        for tag, (length, hex_) in table.items():
            self.assertEqual((len(tag), tag.hex()), (length, hex_), tag)

    def test_login_and_identity_strings(self) -> None:
        self.assertEqual(login_signed_bytes("bob", H("cafe")), H("636861742e76312f6c6f67696e0003626f6200000002cafe"))
        self.assertEqual(
            identity_signed_bytes("u", b"s", b"e"),
            H("636861742e76312f6964656e7469747900017500000001730000000165"),
        )
        self.assertEqual(enc_str("ü"), b"\x00\x02\xc3\xbc")

    def test_message_ad_and_signed_string(self) -> None:
        ad = H("636861742e76322f6d65737361676500056c6f6262790005616c69636500000001010203040506070800000002")
        self.assertEqual(message_ad("lobby", "alice", 1, KEY_ID, 2), ad)
        self.assertEqual(
            message_signed_bytes("lobby", "alice", 1, KEY_ID, 2, H("cafe")),
            H("636861742e76322f6d6573736167652d7369676e617475726500056c6f6262790005616c696365"
              "0000000101020304050607080000000200000002cafe"),
        )

    def test_prekey_string(self) -> None:
        self.assertEqual(
            prekey_signed_bytes("bob", 2, PREKEY_ID, 1_700_000_000_000, H("3000")),
            H("636861742e76322f7072656b65790003626f620000000211121314151617180000018bcfe56800000000023000"),
        )

    def test_copy_label_and_leaf(self) -> None:
        self.assertEqual(
            copy_label("lobby", "alice", 1, "bob", 2, KEY_ID, PREKEY_ID),
            H("636861742e76322f73656e6465722d6b657900056c6f6262790005616c696365000000010003626f62"
              "0000000201020304050607081112131415161718"),
        )
        self.assertEqual(
            copy_leaf("bob", 2, PREKEY_ID, H("aabb")),
            H("636861742e76322f73656e6465722d6b65792d636f70790003626f6200000002111213141516171800000002aabb"),
        )

    def test_merkle_example_and_distribution_string(self) -> None:
        bob = leaf_hash(copy_leaf("bob", 2, PREKEY_ID, H("aabb")))
        carol = leaf_hash(copy_leaf("carol", 1, PREKEY_ID, H("cc")))
        self.assertEqual(bob.hex(), "c3552395e3f5299d7e8c351088e303f08083a37a6ed079928cd2712dfbdec5da")
        self.assertEqual(carol.hex(), "abb81c6628b1786d8dec096967b5206511ae6c83173e59c34a18e20318870740")
        tree_root = root([bob, carol])
        self.assertEqual(tree_root.hex(), "d66ca0ae624c0b369c9e5cd0e3b2372e6abd28218fd8d905c9f22d10ca656822")
        self.assertEqual(audit_path([bob, carol], 0), [carol])
        self.assertEqual(audit_path([bob, carol], 1), [bob])
        self.assertEqual(root_from_path(bob, 0, 2, [carol]), tree_root)
        self.assertEqual(root_from_path(carol, 1, 2, [bob]), tree_root)
        self.assertEqual(
            distribution_signed_bytes("lobby", "alice", 1, KEY_ID, 3, b"\x11" * 32, 2, tree_root),
            H("636861742e76322f73656e6465722d6b65792d646973747269627574696f6e00056c6f6262790005616c696365"
              "000000010102030405060708000000030000002011111111111111111111111111111111111111111111111111111111"
              "1111111100000002d66ca0ae624c0b369c9e5cd0e3b2372e6abd28218fd8d905c9f22d10ca656822"),
        )

    def test_invitation_and_removal_strings(self) -> None:
        self.assertEqual(
            invitation_signed_bytes("club", "alice", "bob", b"\xab" * 32, 1_700_000_000_000),
            H("636861742e76322f696e7669746174696f6e0004636c75620005616c6963650003626f62"
              + "ab" * 32 + "0000018bcfe56800"),
        )
        self.assertEqual(
            removal_signed_bytes("club", "alice", "bob", 1_700_000_000_001),
            H("636861742e76322f72656d6f76616c0004636c75620005616c6963650003626f620000018bcfe56801"),
        )

    def test_length_prefixes_keep_fields_apart(self) -> None:
        self.assertNotEqual(message_ad("ab", "c", 1, 0, 0), message_ad("a", "bc", 1, 0, 0))
        self.assertNotEqual(copy_leaf("ab", 1, 0, b"c"), copy_leaf("a", 1, 0, b"bc"))

    def test_fingerprint_and_safety_number_examples(self) -> None:
        self.assertEqual(
            fingerprint(b"s", b"e").hex(), "301d4b63196a2c69e9c2ba7a405c7548c708d8f74e6b875fb9f67a5898074e02"
        )
        expected = "08940 22870 87407 56001 96721 49985 24506 87332 60637 75593 12840 20400"
        self.assertEqual(safety_number("alice", bytes(32), "bob", b"\x01" * 32), expected)
        self.assertEqual(safety_number("bob", b"\x01" * 32, "alice", bytes(32)), expected)
        fp = fingerprint(b"S", b"E")
        self.assertEqual(fp, hashlib.sha256(b"chat.v1/fingerprint\x00\x00\x00\x01S\x00\x00\x00\x01E").digest())
        shown = format_fingerprint(fp)
        self.assertEqual(len(shown.split(" ")), 16)
        self.assertEqual(shown.replace(" ", ""), fp.hex().upper())

    def test_chain_vectors(self) -> None:
        chain = bytes(range(32))
        rows = [
            ("c2973ff22745e38ab7720fcb378b1c1736cd3758be28abd5fba181a627e2ae0e", "e5774de9eef1caf3374b8a60",
             "4304c22c84a53755ab08ead8d97a8d429be5efa480682d7ad1da27f73e1fbe1d"),
            ("279c9bdf1e30169abc0b7cd65a464ea26f630f49d64137f9db7430a5939e7b43", "a5e939b5ec66e670a978efe7",
             "26fc86b9b1303ea2e66f53ed0f1de753407e5428caf5e440e6b51c48d4bd4949"),
            ("623443cc2947957e53a670d62f76b11fe57bc3c04b848701d61eb26ec44d005f", "87f8eb5debf65a4c4f47292a", None),
        ]
        for message_key, nonce, next_key in rows:
            mk, n, after = step(chain)
            # The spec's own snippet, independently.
            seed = hmac.new(chain, b"\x01", hashlib.sha256).digest()
            okm = HKDF(algorithm=hashes.SHA256(), length=44, salt=None, info=b"chat.v2/message-key").derive(seed)
            self.assertEqual((mk, n), (okm[:32], okm[32:]))
            self.assertEqual(after, hmac.new(chain, b"\x02", hashlib.sha256).digest())
            self.assertEqual((mk.hex(), n.hex()), (message_key, nonce))
            if next_key is not None:
                self.assertEqual(after.hex(), next_key)
            chain = after

    def test_sealed_message_vector(self) -> None:
        own = OwnSenderKey(KEY_ID, bytes(range(32)), b"\x07" * 32)
        self.assertEqual(own.signing_public_key.hex(), "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c")
        own.seal("lobby", "alice", b"0")
        own.seal("lobby", "alice", b"1")
        iteration, ciphertext, signature = own.seal("lobby", "alice", b"hello")
        self.assertEqual(iteration, 2)
        self.assertEqual(ciphertext.hex(), "0ba11b2d0c3d94762147056b71b9597d603abc38b0")
        self.assertEqual(
            signature.hex(),
            "d5cf47286a11693ff9577fdac254ae1c3e1659edb45f5ed8a929a6a38ae11c4393956c5b1cfcd95ad6bfe202bcbfdcb7"
            "147b7d318edf6f41dd8a336a65755003",
        )
        # With the spec's aad and the derived key of iteration 2, independently.
        mk = H("623443cc2947957e53a670d62f76b11fe57bc3c04b848701d61eb26ec44d005f")
        nonce = H("87f8eb5debf65a4c4f47292a")
        aad = H("636861742e76322f6d65737361676500056c6f6262790005616c69636500000001010203040506070800000002")
        self.assertEqual(AESGCM(mk).encrypt(nonce, b"hello", aad), ciphertext)
        # A reader with the chain from iteration 0 checks and opens it.
        reader = PeerSenderKey(KEY_ID, own.signing_public_key, bytes(range(32)), 0)
        self.assertTrue(reader.verifies("lobby", "alice", KEY_ID, 2, ciphertext, signature))
        self.assertEqual(reader.open("lobby", "alice", 2, ciphertext), b"hello")

    def test_certificate_transparency_roots(self) -> None:
        leaves = [H(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                 "606162636465666768696a6b6c6d6e6f")]
        roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ]
        for n in range(1, 9):
            hashes_ = [leaf_hash(leaf) for leaf in leaves[:n]]
            self.assertEqual(root(hashes_).hex(), roots[n - 1], n)
            for m in range(n):
                path = audit_path(hashes_, m)
                self.assertEqual(root_from_path(hashes_[m], m, n, path), root(hashes_), (n, m))
                self.assertIsNone(root_from_path(hashes_[m], n, n, path), "index out of range")
                self.assertIsNone(root_from_path(hashes_[m], m, n, path + [bytes(32)]), "path too long")
                if n > 1:
                    other = (m + 1) % n
                    self.assertNotEqual(root_from_path(hashes_[m], other, n, path), root(hashes_))

    def test_strict_ed25519(self) -> None:
        own = OwnSenderKey(KEY_ID, bytes(32), b"\x07" * 32)
        _, ciphertext, signature = own.seal("r", "a", b"x")
        data = message_signed_bytes("r", "a", 1, KEY_ID, 0, ciphertext)
        self.assertTrue(verify_strict(own.signing_public_key, signature, data))
        self.assertFalse(verify_strict(own.signing_public_key, signature, data + b"!"))
        self.assertFalse(verify_strict(own.signing_public_key, signature[:63], data))
        # S not below the group order: S + L verifies in lax libraries, never here.
        group_order = 2**252 + 27742317777372353535851937790883648493
        s = int.from_bytes(signature[32:], "little") + group_order
        self.assertFalse(verify_strict(own.signing_public_key, signature[:32] + s.to_bytes(32, "little"), data))
        # Points of small order: the identity (y = 1), the point of order 2 (y = -1).
        identity_point = (1).to_bytes(32, "little")
        order_two = (2**255 - 19 - 1).to_bytes(32, "little")
        self.assertTrue(is_small_order(identity_point))
        self.assertTrue(is_small_order(order_two))
        self.assertFalse(is_small_order(own.signing_public_key))
        self.assertFalse(verify_strict(identity_point, signature, data))
        self.assertFalse(verify_strict(own.signing_public_key, identity_point + signature[32:], data))

    def test_rsa_oaep_with_the_copy_label(self) -> None:
        label = copy_label("lobby", "alice", 1, "bob", 1, KEY_ID, PREKEY_ID)
        wrapped = wrap_chain_key(key(0).public_key(), b"\x05" * 32, label)
        self.assertEqual(unwrap_chain_key(key(0), wrapped, label), b"\x05" * 32)
        with self.assertRaises(ValueError):
            unwrap_chain_key(key(0), wrapped, copy_label("lobby", "alice", 1, "carol", 1, KEY_ID, PREKEY_ID))
        short = wrap_chain_key(key(0).public_key(), b"\x05" * 31, label)
        with self.assertRaises(ValueError):
            unwrap_chain_key(key(0), short, label)


class Chains(unittest.TestCase):
    """Opening (PROTOCOL.md, "Sender keys"): once each, any order, bounded jumps and kept keys."""

    def setUp(self) -> None:
        self.own = OwnSenderKey(KEY_ID, bytes(32), b"\x09" * 32)
        self.reader = PeerSenderKey(KEY_ID, self.own.signing_public_key, bytes(32), 0)

    def seal(self, text: bytes) -> tuple[int, bytes]:
        iteration, ciphertext, _ = self.own.seal("r", "a", text)
        return iteration, ciphertext

    def test_each_message_opens_once_in_any_order(self) -> None:
        sealed = [self.seal(bytes([i])) for i in range(5)]
        for i in (3, 0, 4, 1, 2):
            self.assertEqual(self.reader.open("r", "a", *sealed[i]), bytes([i]))
        for i in range(5):
            with self.assertRaises(Repeated):
                self.reader.open("r", "a", *sealed[i])
        self.assertEqual(self.reader.kept_count, 0)

    def test_a_bad_tag_moves_nothing(self) -> None:
        iteration, ciphertext = self.seal(b"x")
        with self.assertRaises(Exception):
            self.reader.open("r", "a", iteration, bytes([ciphertext[0] ^ 1]) + ciphertext[1:])
        with self.assertRaises(Exception):
            self.reader.open("r", "b", iteration, ciphertext)  # claimed for another sender
        self.assertEqual(self.reader.next_iteration, 0)
        self.assertEqual(self.reader.open("r", "a", iteration, ciphertext), b"x")

    def test_jumps_and_kept_keys_are_bounded(self) -> None:
        self.own.skip(MAX_FORWARD_JUMP)
        iteration, ciphertext = self.seal(b"just within")
        self.assertEqual(iteration, MAX_FORWARD_JUMP)
        self.assertEqual(self.reader.open("r", "a", iteration, ciphertext), b"just within")
        self.assertEqual(self.reader.kept_count, MAX_SKIPPED_KEYS)
        self.own.skip(MAX_FORWARD_JUMP + 1)
        iteration, ciphertext = self.seal(b"too far")
        with self.assertRaises(TooFarAhead):
            self.reader.open("r", "a", iteration, ciphertext)
        self.assertEqual(self.reader.next_iteration, MAX_FORWARD_JUMP + 1, "nothing derived")

    def test_a_key_handed_out_later_cannot_open_what_came_before(self) -> None:
        early = self.seal(b"early")
        self.own.acknowledged(0)
        iteration, chain_key = self.own.handout()
        self.assertEqual(iteration, 1)
        late_reader = PeerSenderKey(KEY_ID, self.own.signing_public_key, chain_key, iteration)
        with self.assertRaises(Repeated):
            late_reader.open("r", "a", *early)
        self.assertEqual(late_reader.open("r", "a", *self.seal(b"late")), b"late")

    def test_the_hand_out_point_waits_for_the_oldest_unacknowledged(self) -> None:
        for i in range(3):
            self.seal(bytes([i]))
        self.assertEqual(self.own.handout()[0], 0, "nothing acknowledged yet")
        self.own.acknowledged(0)  # the relay acknowledges in order
        self.assertEqual(self.own.handout()[0], 1)
        self.own.acknowledged(1)
        self.assertEqual(self.own.handout()[0], 2)
        self.own.acknowledged(1)  # already past: nothing moves
        self.assertEqual(self.own.handout()[0], 2)
        self.own.acknowledged(2)
        self.assertEqual(self.own.handout()[0], 3, "all acknowledged: the next one")


class Rooms(unittest.TestCase):
    """RoomState: distributions, receiving keys, opening messages."""

    def setUp(self) -> None:
        self.alice = User("alice", 0)
        self.bob = User("bob", 1)
        self.alice.state.on_joined(pb.Joined(room="lobby"))
        join([self.alice], self.bob)
        self.alice_frames = self.alice.state.rotate()
        self.bob_frames = self.bob.state.rotate()
        give(self.alice_frames, self.alice, self.bob)
        give(self.bob_frames, self.bob, self.alice)

    def test_messages_open_both_ways(self) -> None:
        message = self.alice.state.seal_text("hi bob")
        self.assertEqual(message.sealed.device, 1)
        self.assertEqual(len(message.sealed.signature), 64)
        self.assertEqual(self.bob.state.open(delivery("alice", message)).text, "hi bob")
        reply = self.bob.state.seal_text("hi alice")
        self.assertEqual(self.alice.state.open(delivery("bob", reply)).line(), "[lobby] bob: hi alice")
        self.assertEqual(self.alice.state.warnings + self.bob.state.warnings, [])

    def test_a_distribution_has_our_own_copy_first_and_one_signature_over_its_root(self) -> None:
        (frame,) = self.alice_frames
        self.assertEqual(recipients(self.alice_frames), ["alice", "bob"])
        self.assertEqual([c.prekey_id for c in frame.copies], [self.alice.prekey.prekey_id, self.bob.prekey.prekey_id])
        self.assertEqual(frame.header.iteration, 0)
        self.assertEqual(len(frame.header.signing_public_key), 32)
        tree_root = root([leaf_hash(copy_leaf(c.recipient, c.device, c.prekey_id, c.wrapped)) for c in frame.copies])
        signed = distribution_signed_bytes("lobby", "alice", 1, frame.header.key_id, 0,
                                           frame.header.signing_public_key, 2, tree_root)
        self.assertTrue(verify_signature(self.alice.identity.signing_key.public_key(), frame.signature, signed))
        own = deliveries_for("alice", "alice", self.alice_frames)[0]
        label = copy_label("lobby", "alice", 1, "alice", 1, frame.header.key_id, self.alice.prekey.prekey_id)
        self.assertEqual(len(unwrap_chain_key(self.alice.prekey.private_key, own.copy.wrapped, label)), 32)

    def test_out_of_order_and_too_far_ahead(self) -> None:
        sealed = [self.alice.state.seal_text(t) for t in ("one", "two", "three")]
        for i in (2, 0, 1):
            self.assertEqual(self.bob.state.open(delivery("alice", sealed[i])).text, ["one", "two", "three"][i])
        self.alice.state.own_key.skip(MAX_FORWARD_JUMP + 1)
        self.assertIsNone(self.bob.state.open(delivery("alice", self.alice.state.seal_text("far ahead"))))
        warning = self.bob.state.warnings[-1]
        self.assertIn("alice", warning)
        self.assertIn("ahead", warning)
        give(self.alice.state.rotate(), self.alice, self.bob)
        self.assertEqual(self.bob.state.open(delivery("alice", self.alice.state.seal_text("new"))).text, "new")

    def test_a_bit_flipped_after_signing_fails_the_signature_before_anything_is_derived(self) -> None:
        message = self.alice.state.seal_text("hi")
        flipped = bytearray(message.sealed.ciphertext)
        flipped[0] ^= 1
        message.sealed.ciphertext = bytes(flipped)
        with mock.patch("e2ee_chat.group.step") as derive, mock.patch("e2ee_chat.group.message_key_and_nonce") as mk:
            self.assertIsNone(self.bob.state.open(delivery("alice", message)))
            derive.assert_not_called()
            mk.assert_not_called()
        self.assertIn("signature does not verify", self.bob.state.warnings[-1])
        self.assertEqual(self.bob.state.peer_keys["alice"].next_iteration, 0, "the chain did not move")

    def test_a_message_claimed_for_another_member_or_room_fails(self) -> None:
        carol = User("carol", 2)
        join([self.alice, self.bob], carol)
        give(self.alice.state.rotate(), self.alice, self.bob, carol)
        message = self.alice.state.seal_text("from alice")
        self.assertIsNone(carol.state.open(delivery("bob", message)))  # bob's key: not alice's
        moved = pb.MessageDelivery(room="lobby", sender="alice", sealed=message.sealed)
        other = User("bob", 1, room="other")
        self.assertIsNone(other.state.open(moved))

    def test_replayed_message_is_dropped(self) -> None:
        message = self.alice.state.seal_text("once")
        self.assertIsNotNone(self.bob.state.open(delivery("alice", message)))
        self.assertIsNone(self.bob.state.open(delivery("alice", message)))
        self.assertIn("repeated", self.bob.state.warnings[-1])

    def test_path_and_signature_are_checked_before_any_rsa_decryption(self) -> None:
        frames = self.alice.state.rotate()
        (good,) = deliveries_for("bob", "alice", frames)
        cases = {}
        wrapped = pb.SenderKeyDelivery(); wrapped.CopyFrom(good)
        wrapped.copy.wrapped = bytes([good.copy.wrapped[0] ^ 1]) + good.copy.wrapped[1:]
        cases["copy changed"] = wrapped
        moved = pb.SenderKeyDelivery(); moved.CopyFrom(good); moved.index = 0
        cases["place changed"] = moved
        counted = pb.SenderKeyDelivery(); counted.CopyFrom(good); counted.count = 3
        cases["count changed"] = counted
        header = pb.SenderKeyDelivery(); header.CopyFrom(good); header.header.iteration = 5
        cases["header changed"] = header
        sender = pb.SenderKeyDelivery(); sender.CopyFrom(good); sender.sender = "bob"
        cases["claimed by another sender"] = sender
        short = pb.SenderKeyDelivery(); short.CopyFrom(good); del short.path[:]
        cases["path missing"] = short
        for what, bad in cases.items():
            with self.subTest(what), mock.patch.object(room_module, "unwrap_chain_key") as unwrap:
                self.bob.state.accept_sender_key(bad)
                unwrap.assert_not_called()
        self.assertNotEqual(self.bob.state.peer_keys["alice"].key_id, good.header.key_id)
        self.bob.state.accept_sender_key(good)
        self.assertEqual(self.bob.state.peer_keys["alice"].key_id, good.header.key_id)

    def test_a_key_id_is_never_accepted_twice(self) -> None:
        first = deliveries_for("bob", "alice", self.alice_frames)[0]
        give(self.alice.state.rotate(), self.alice, self.bob)
        with mock.patch.object(room_module, "unwrap_chain_key") as unwrap:
            self.bob.state.accept_sender_key(first)
            unwrap.assert_not_called()
        self.assertIn("already accepted", self.bob.state.warnings[-1])
        self.assertEqual(len(self.bob.state.accepted_key_ids["alice"]), 2)
        for _ in range(ACCEPTED_KEY_IDS_KEPT + 5):
            give(self.alice.state.rotate(), self.alice, self.bob)
        self.assertEqual(len(self.bob.state.accepted_key_ids["alice"]), ACCEPTED_KEY_IDS_KEPT)

    def test_current_key_again_is_ignored_silently(self) -> None:
        (again,) = deliveries_for("bob", "alice", self.alice_frames)
        with mock.patch.object(room_module, "verify_signature") as verify:
            self.bob.state.accept_sender_key(again)
            verify.assert_not_called()
        self.assertEqual(self.bob.state.warnings, [])

    def test_a_copy_under_an_erased_prekey_is_dropped(self) -> None:
        frames = self.alice.state.rotate()
        self.bob.prekeys.prekeys = [Prekey(0x9999, key(8))]
        give(frames, self.alice, self.bob)
        self.assertIn("prekey this device no longer has", self.bob.state.warnings[-1])

    def test_message_before_key_is_kept_then_opened(self) -> None:
        carol = User("carol", 2)
        join([self.alice, self.bob], carol)
        frames = self.alice.state.handout_to("carol")
        self.assertEqual(recipients(frames), ["carol"], "the current key, to the newcomer only")
        message = self.alice.state.seal_text("early")
        self.assertIsNone(carol.state.open(delivery("alice", message)))
        self.assertEqual(len(carol.state.pending), 1)
        opened = []
        for d in deliveries_for("carol", "alice", frames):
            opened += carol.state.accept_sender_key(d)
        self.assertEqual([m.text for m in opened], ["early"])

    def test_a_waiting_message_under_another_key_is_dropped_when_the_key_comes(self) -> None:
        carol = User("carol", 2)
        join([self.alice, self.bob], carol)
        stale = self.bob.state.seal_text("under bob's key")
        forged = pb.MessageDelivery(room="lobby", sender="alice", sealed=stale.sealed)
        carol.state.open(forged)
        give(self.alice.state.handout_to("carol"), self.alice, carol)
        self.assertEqual(len(carol.state.pending), 0)
        self.assertTrue(carol.state.warnings)

    def test_hand_out_point_a_newcomer_reads_unacknowledged_messages_only(self) -> None:
        acked = self.alice.state.seal_text("before carol, acknowledged")
        self.alice.state.acknowledged(acked.sealed.key_id, acked.sealed.iteration)
        unacked = self.alice.state.seal_text("before carol, not acknowledged yet")
        carol = User("carol", 2)
        join([self.alice, self.bob], carol)
        frames = self.alice.state.handout_to("carol")
        self.assertEqual(frames[0].header.iteration, 1)
        give(frames, self.alice, carol)
        self.assertIsNone(carol.state.open(delivery("alice", acked)))
        self.assertEqual(carol.state.open(delivery("alice", unacked)).text, "before carol, not acknowledged yet")

    def test_leave_rotates_and_the_leaver_cannot_read(self) -> None:
        carol = User("carol", 2)
        join([self.alice, self.bob], carol)
        give(self.alice.state.handout_to("carol"), self.alice, carol)
        self.assertTrue(self.alice.state.member_left("carol"))
        frames = self.alice.state.rotate()
        self.assertEqual(recipients(frames), ["alice", "bob"])
        give(frames, self.alice, self.bob)
        after = self.alice.state.seal_text("after carol left")
        self.assertEqual(self.bob.state.open(delivery("alice", after)).text, "after carol left")
        self.assertIsNone(carol.state.open(delivery("alice", after)))

    def test_a_member_without_a_verified_prekey_gets_nothing_with_a_warning(self) -> None:
        carol = User("carol", 2)
        join([self.alice, self.bob], carol)
        self.alice.state.take_bundles([pb.KeyBundle(identity=carol.public(), device=1)], fresh_for=["carol"])
        self.assertEqual(self.alice.state.handout_to("carol"), [])
        self.assertIn("gets no key from you for now", self.alice.state.warnings[-1])
        # A prekey signed by someone else, or for another user, does not verify.
        wrong = carol.bundle()
        wrong.prekey.CopyFrom(sign_prekey(self.bob.identity, 7, 1, key(8)))
        self.alice.state.take_bundles([wrong])
        self.assertIsNone(self.alice.state.members["carol"].prekey)
        self.assertIn("does not verify", self.alice.state.warnings[-1])
        # A bundle with another identity than the one carol joined with.
        impostor = User("carol", 3)
        self.alice.state.take_bundles([impostor.bundle()])
        self.assertIsNone(self.alice.state.members["carol"].prekey)
        with self.assertRaises(PrekeyError):
            check_prekey(PeerIdentity.from_public(carol.public()), wrong.prekey)

    def test_untrusted_member_gets_nothing_and_is_not_heard_until_trusted(self) -> None:
        alice = User("alice", 0, trust=lambda peer: peer.user != "bob")
        bob = User("bob", 1)
        alice.state.on_joined(pb.Joined(room="lobby", members=[bob.public()]))
        alice.state.take_bundles([bob.bundle()])
        bob.state.on_joined(pb.Joined(room="lobby", members=[alice.public()]))
        bob.state.take_bundles([alice.bundle()])
        self.assertEqual(recipients(alice.state.rotate()), ["alice"])
        give(bob.state.rotate(), bob, alice)
        self.assertNotIn("bob", alice.state.peer_keys)
        self.assertIsNotNone(alice.state.members["bob"].held_key)
        self.assertIsNone(alice.state.open(delivery("bob", bob.state.seal_text("hi"))))
        self.assertTrue(alice.state.trust_member("bob"))
        self.assertIn("bob", alice.state.peer_keys)
        self.assertEqual(recipients(alice.state.rotate()), ["alice", "bob"])

    def test_own_name_and_second_announcements_are_ignored(self) -> None:
        self.assertIsNone(self.alice.state.member_joined(User("alice", 3).public()))
        self.assertIsNone(self.alice.state.member_joined(self.bob.public()))
        self.assertEqual(self.alice.state.current_members(), ["bob"])

    def test_frames_hold_at_most_96_copies(self) -> None:
        alice = User("alice", 0)
        alice.state.on_joined(pb.Joined(room="lobby"))
        bob = self.bob
        prekey = bob.bundle().prekey
        for i in range(100):
            name = f"m{i:03d}"
            alice.state.members[name] = room_module.Member(
                identity=PeerIdentity.from_public(bob.public()), prekey=check_prekey(
                    PeerIdentity.from_public(bob.public()), prekey))
        frames = alice.state.rotate()
        self.assertEqual([len(f.copies) for f in frames], [MAX_COPIES_PER_DISTRIBUTION, 5])
        self.assertEqual(frames[0].copies[0].recipient, "alice")
        self.assertNotEqual(frames[0].signature, frames[1].signature)

    def test_rotation_schedule(self) -> None:
        alice = User("alice", 0, rotate_after_messages=2)
        alice.state.on_joined(pb.Joined(room="lobby"))
        alice.state.rotate()
        self.assertFalse(alice.state.rotation_due())
        alice.state.seal_text("1")
        alice.state.seal_text("2")
        self.assertTrue(alice.state.rotation_due())
        now = [0]
        aged = User("alice", 0, clock_ms=lambda: now[0], rotate_after_ms=1000)
        now[0] = 999
        self.assertFalse(aged.state.rotation_due())
        now[0] = 1000
        self.assertTrue(aged.state.rotation_due())


class PrivateRooms(unittest.TestCase):
    def setUp(self) -> None:
        self.owner = User("alice", 0, room="club")
        self.bob = User("bob", 1, room="club")
        self.carol = User("carol", 2, room="club")

    def invitation(self, who: User, at: int = 1) -> pb.Invitation:
        return sign_invitation(self.owner.identity, "club", who.name, who.identity.fingerprint, at)

    def test_invitations_admit_and_removals_void(self) -> None:
        state = self.carol.state
        state.on_joined(pb.Joined(
            room="club", private_room=True, owner="alice", members=[self.owner.public(), self.bob.public()],
            invitations=[self.invitation(self.bob)],
        ))
        self.assertEqual(state.current_members(), ["alice", "bob"])
        self.assertEqual(state.owners.pinned_owner("club"), "alice")
        dave = User("dave", 3, room="club")
        self.assertIsNone(state.member_joined(dave.public()))
        self.assertIn("no invitation of these keys", state.warnings[-1])
        # Invited with other keys: refused.
        wrong = sign_invitation(self.owner.identity, "club", "dave", bytes(32), 5)
        self.assertIsNone(state.member_joined(dave.public(), wrong))
        # Signed by someone else: refused.
        forged = sign_invitation(self.bob.identity, "club", "dave", dave.identity.fingerprint, 5)
        forged.owner = "alice"
        self.assertIsNone(state.member_joined(dave.public(), forged))
        self.assertEqual(state.member_joined(dave.public(), self.invitation(dave, 5)), "dave")
        # Kicked: the removal voids the invitation; a new one lifts it.
        removal = sign_removal(self.owner.identity, "club", "dave", 6)
        self.assertTrue(state.member_left("dave", removal))
        self.assertIsNone(state.member_joined(dave.public(), self.invitation(dave, 6)))
        self.assertEqual(state.member_joined(dave.public(), self.invitation(dave, 7)), "dave")

    def test_the_owner_is_pinned_and_a_relay_cannot_change_it(self) -> None:
        state = self.carol.state
        state.owners.pin_owner("club", "alice")
        state.on_joined(pb.Joined(room="club", private_room=True, owner="bob", members=[self.bob.public()]))
        self.assertEqual(state.current_members(), [], "bob is not the pinned owner and has no invitation")
        self.assertTrue(any("pinned owner" in w for w in state.warnings), state.warnings)
        open_again = User("carol", 2, room="club", owners=state.owners)
        open_again.state.on_joined(pb.Joined(room="club", members=[self.bob.public()]))
        self.assertEqual(open_again.state.current_members(), [])

    def test_without_the_owners_keys_nobody_is_admitted(self) -> None:
        state = self.carol.state
        state.on_joined(pb.Joined(room="club", private_room=True, owner="alice", members=[self.bob.public()],
                                  invitations=[self.invitation(self.bob)]))
        self.assertEqual(state.current_members(), [])
        self.assertTrue(any("unknown" in w for w in state.warnings), state.warnings)

    def test_the_owner_admits_with_its_own_keys(self) -> None:
        state = self.owner.state
        state.on_joined(pb.Joined(room="club", private_room=True, owner="alice"))
        self.assertEqual(state.member_joined(self.bob.public(), self.invitation(self.bob)), "bob")


class Durable(unittest.TestCase):
    def test_where_the_numbering_starts(self) -> None:
        self.assertEqual(starting_seq(True, 5, 9), (5, None))
        self.assertEqual(starting_seq(False, None, 9), (9, None))
        latest, warning = starting_seq(True, 12, 9)
        self.assertEqual(latest, 9)
        self.assertIn("backup", warning)
        latest, warning = starting_seq(False, 5, 9)
        self.assertEqual(latest, 9)
        self.assertIn("no longer counted you as a member", warning)

    def test_messages_at_or_below_the_last_seq_are_dropped_silently(self) -> None:
        alice, bob = User("alice", 0), User("bob", 1)
        alice.state.on_joined(pb.Joined(room="lobby"))
        join([alice], bob, seq=3)
        give(alice.state.rotate(), alice, bob)
        first = alice.state.seal_text("first")
        self.assertEqual(bob.state.open(delivery("alice", first, seq=5)).text, "first")
        self.assertEqual(bob.state.last_seq, 5)
        self.assertIsNone(bob.state.open(delivery("alice", first, seq=5)))
        self.assertEqual(bob.state.warnings, [])

    def test_former_members_are_read_during_the_catch_up_then_forgotten(self) -> None:
        alice, bob = User("alice", 0), User("bob", 1)
        alice.state.on_joined(pb.Joined(room="lobby"))
        join([alice], bob)
        frames = alice.state.rotate()
        message = alice.state.seal_text("said before leaving")
        back = User("bob", 1)
        back.state.on_joined(pb.Joined(room="lobby", resumed=True, last_seq=9, former_members=[alice.public()]), 2)
        self.assertEqual(back.state.current_members(), [])
        self.assertEqual(back.state.rotate()[0].copies[0].recipient, "bob", "nothing for a former member")
        give(frames, alice, back)
        self.assertEqual(back.state.open(delivery("alice", message, seq=4)).text, "said before leaving")
        back.state.caught_up()
        self.assertNotIn("alice", back.state.members)

    def test_history_opens_our_own_messages_and_leaves_the_live_state_alone(self) -> None:
        alice, bob = User("alice", 0), User("bob", 1)
        alice.state.on_joined(pb.Joined(room="lobby"))
        join([alice], bob)
        alice_frames = alice.state.rotate()
        give(alice_frames, alice, bob)
        bob_frames = bob.state.rotate()
        give(bob_frames, bob, alice)
        mine = alice.state.seal_text("mine")
        theirs = bob.state.seal_text("theirs")
        alice.state.open(delivery("bob", theirs, seq=8))
        history = pb.History(room="lobby", entries=[
            pb.HistoryEntry(sender_key=d) for d in
            deliveries_for("alice", "alice", alice_frames, 3) + deliveries_for("alice", "bob", bob_frames, 4)
        ] + [pb.HistoryEntry(message=delivery("alice", mine, 7)), pb.HistoryEntry(message=delivery("bob", theirs, 8))])
        before = (alice.state.peer_keys["bob"].next_iteration, alice.state.last_seq)
        messages = alice.state.open_history(history)
        self.assertEqual([(m.sender, m.text) for m in messages], [("alice", "mine"), ("bob", "theirs")])
        self.assertEqual((alice.state.peer_keys["bob"].next_iteration, alice.state.last_seq), before)
        self.assertEqual(alice.state.warnings, [])

    def test_history_checks_copies_before_unwrapping_and_unwraps_each_key_once(self) -> None:
        alice = User("alice", 0)
        alice.state.on_joined(pb.Joined(room="lobby"))
        frames = alice.state.rotate()
        own = deliveries_for("alice", "alice", frames, 3)[0]
        forged = pb.SenderKeyDelivery(); forged.CopyFrom(own); forged.header.iteration = 9
        history = pb.History(room="lobby", entries=[pb.HistoryEntry(sender_key=forged)] + [
            pb.HistoryEntry(sender_key=own)] * 3)
        with mock.patch.object(room_module, "unwrap_chain_key", wraps=unwrap_chain_key) as unwrap:
            alice.state.open_history(history)
            self.assertEqual(unwrap.call_count, 1)


class Prekeys(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.home = Path(self.tmp.name) / "home"
        self.me = identity("alice", 0)
        self.now = [1_700_000_000_000]
        self.log: list[str] = []

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def store(self) -> PrekeyStore:
        return PrekeyStore(self.home, self.me, log=self.log.append, clock_ms=lambda: self.now[0])

    def listed(self) -> list[dict]:
        return json.loads((self.home / "alice" / "prekeys.json").read_text())["prekeys"]

    def test_first_prekey_files_and_format(self) -> None:
        store = self.store()
        self.assertTrue(store.maintain())
        self.assertEqual(len(self.log), 1, "one line says a prekey is being made")
        user = self.home / "alice"
        (entry,) = self.listed()
        self.assertEqual(entry["created_at_ms"], self.now[0])
        self.assertIsNone(entry["retired_at_ms"])
        self.assertRegex(entry["id"], r"^[0-9a-f]{16}$")
        pem = user / f"prekey-{entry['id']}.pem"
        self.assertTrue(pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----"))
        for path in (pem, user / "prekeys.json"):
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(json.loads((user / "prekeys.json").read_text())["version"], 1)
        self.assertEqual(store.current.private_key.key_size, self.me.encryption_key.key_size)
        signed = store.signed_current()
        self.assertIs(store.signed_current(), signed, "the same signed message until it changes")
        self.assertEqual(signed.device, 1)
        peer = check_prekey(PeerIdentity.from_public(self.me.public_identity()), signed)
        self.assertEqual(peer.prekey_id, int(entry["id"], 16))
        self.assertFalse(self.store().maintain(), "nothing to do a moment later")

    def test_rotation_after_7_days_and_erasure_14_days_later(self) -> None:
        store = self.store()
        store.maintain()
        first = store.current.prekey_id
        self.now[0] += PREKEY_ROTATE_MS - 1
        self.assertFalse(store.maintain())
        self.now[0] += 1
        self.assertTrue(store.maintain())
        retired, current = self.listed()
        self.assertEqual((int(retired["id"], 16), retired["retired_at_ms"]), (first, self.now[0]))
        self.assertIsNone(current["retired_at_ms"])
        self.assertIsNotNone(store.private_key(first), "kept to unwrap what is on its way")
        ids = lambda: [int(entry["id"], 16) for entry in self.listed()]  # noqa: E731
        self.now[0] += PREKEY_KEEP_MS - 1
        store.maintain()  # (the current one, 14 days old, is replaced too)
        self.assertIn(first, ids())
        self.now[0] += 1
        store.maintain()
        self.assertNotIn(first, ids())
        self.assertEqual(len(ids()), 2)
        self.assertIsNone(store.private_key(first))
        self.assertFalse((self.home / "alice" / f"prekey-{first:016x}.pem").exists())

    def test_stray_files_are_deleted_and_a_missing_one_is_an_error(self) -> None:
        store = self.store()
        store.maintain()
        stray = self.home / "alice" / "prekey-00000000000000aa.pem"
        stray.write_bytes(b"left by a crash")
        store.maintain()
        self.assertFalse(stray.exists())
        (self.home / "alice" / f"prekey-{store.current.prekey_id:016x}.pem").unlink()
        with self.assertRaises(ClientError):
            self.store().maintain()

    def test_files_open_to_others_or_of_another_version_are_refused(self) -> None:
        self.store().maintain()
        path = self.home / "alice" / "prekeys.json"
        os.chmod(path, 0o644)
        with self.assertRaises(ClientError) as caught:
            self.store().maintain()
        self.assertIn("chmod 600", str(caught.exception))
        os.chmod(path, 0o600)
        path.write_text('{"version": 2, "prekeys": []}')
        with self.assertRaises(ClientError):
            self.store().maintain()
        self.assertEqual(path.read_text(), '{"version": 2, "prekeys": []}', "never rewritten")

    def test_a_v1_home_keeps_its_identity_and_gains_a_prekey(self) -> None:
        me = load_or_create_identity(self.home, "alice", 2048)
        user = self.home / "alice"
        before = {p.name: p.read_bytes() for p in user.iterdir()}
        log: list[str] = []
        PrekeyStore(self.home, me, log=log.append).maintain()
        self.assertEqual(len(log), 1)
        self.assertIn("prekey", log[0])
        for name, data in before.items():
            self.assertEqual((user / name).read_bytes(), data)
        self.assertEqual(len(list(user.glob("prekey-*.pem"))), 1)


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


class Failover(unittest.TestCase):
    """Several relays of one deployment (PROTOCOL.md, "Several relays, one deployment")."""

    def test_relays_go_round_in_order_and_the_first_names_the_deployment(self) -> None:
        urls = server_list(["http://127.0.0.1:1,http://127.0.0.1:2", "http://127.0.0.1:3"])
        self.assertEqual(urls, ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"])
        relays = Relays(urls)
        used = [relays.current]
        for _ in range(3):
            relays.move_on()
            used.append(relays.current)
            self.assertEqual(relays.deployment, urls[0])
        self.assertEqual(used, urls + urls[:1])

    def test_the_wait_doubles_per_round_through_the_relays_not_per_relay(self) -> None:
        def waits(count: int, attempts: int) -> list[float]:
            relays, backoff = Relays([f"http://127.0.0.1:{n}" for n in range(1, count + 1)]), Backoff()
            out = []
            for _ in range(attempts):
                relays.move_on()
                out.append(backoff.before(relays))
            return out

        # Two relays: half a second before each, and the wait before a new round doubles.
        self.assertEqual(waits(2, 6), [0.5, 0.5, 0.5, 1.0, 0.5, 2.0])
        # One relay: every attempt is a round.
        self.assertEqual(waits(1, 7), [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0])

    def test_a_bad_url_anywhere_in_the_list_is_named(self) -> None:
        for values, bad in ((["http://127.0.0.1:1,ftp://x:1"], '"ftp://x:1"'), (["http://127.0.0.1:1,,"], '""')):
            with self.subTest(bad), self.assertRaises(ClientError) as caught:
                Relays(server_list(values)).check()
            self.assertIn(f"invalid server URL {bad}", str(caught.exception))

    def test_only_a_relay_that_is_gone_is_a_reason_to_try_another(self) -> None:
        class Ended(grpc.RpcError):
            def __init__(self, code: grpc.StatusCode) -> None:
                self._code = code

            def code(self) -> grpc.StatusCode:
                return self._code

        self.assertTrue(is_relay_down(None), "a stream that just ended")
        self.assertTrue(is_relay_down(Ended(grpc.StatusCode.UNAVAILABLE)))
        self.assertTrue(is_relay_down(OSError("reset")))
        for code in (grpc.StatusCode.ABORTED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            self.assertFalse(is_relay_down(Ended(code)), code)
        self.assertFalse(is_relay_down(ClientError("refused")))

    def test_messages_wait_for_the_relay_to_take_our_key_and_are_never_sealed_under_a_refused_one(self) -> None:
        def handing_out() -> tuple[ChatClient, JoinedRoom, int]:
            client = offline_client("lobby")
            room = client.rooms["lobby"]
            bob = User("bob", 1)
            room.state.on_joined(pb.Joined(room="lobby", members=[bob.public()]))
            room.state.take_bundles([bob.bundle()])
            [distribution] = client._send_distributions(room, room.state.rotate())
            return client, room, distribution

        client, room, distribution = handing_out()
        client._on_input(("line", "while the key is out"))
        client._on_input(("line", "and this"))
        self.assertEqual([f.WhichOneof("kind") for f in sent_frames(client)], ["distribute_key"])
        self.assertEqual([r.text for r in client._pending_messages()], ["while the key is out", "and this"])
        client._on_frame(pb.ServerFrame(request_id=distribution, ack=pb.Ack(seq=4)))
        sent = sent_frames(client)
        self.assertEqual([f.WhichOneof("kind") for f in sent], ["send", "send"], "in the order typed")
        self.assertEqual(room.held, [])

        # Refused (the relay could not store it): nothing was sealed under that key, and
        # the messages are reported not delivered.
        client, room, distribution = handing_out()
        client._on_input(("line", "never under the refused key"))
        refusal = pb.ServerFrame(request_id=distribution, rejection=pb.Rejection(code=14, message="no"))
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(ClientError) as caught:
            client._on_frame(refusal)
        self.assertIn("1 message(s) not delivered", str(caught.exception))
        self.assertEqual([f.WhichOneof("kind") for f in sent_frames(client)], ["distribute_key"])

    def test_on_the_next_stream_what_was_unanswered_goes_again_once_before_the_new_key(self) -> None:
        client = offline_client("lobby")
        client._on_input(("line", "hello"))
        [first] = sent_frames(client)
        client._rejoin()
        sent_frames(client)
        client._rejoin()  # that stream too ended before the room was joined again
        [join] = sent_frames(client)
        self.assertEqual([r.text for r in client._pending_messages()], ["hello"])
        self.assertEqual((join.join.room, join.join.after_seq), ("lobby", 0))
        self.assertTrue(join.join.HasField("after_seq"), "back from where it was")
        client._on_frame(pb.ServerFrame(request_id=join.request_id, joined=pb.Joined(room="lobby", resumed=True)))
        frames = sent_frames(client)
        kinds = [frame.WhichOneof("kind") for frame in frames]
        self.assertEqual(kinds, ["send", "distribute_key"], "the message first, as sealed, then the new key")
        self.assertEqual(frames[0].send, first.send)
        self.assertEqual(len({join.request_id, frames[0].request_id, frames[1].request_id}), 3)
        client._on_frame(pb.ServerFrame(request_id=frames[0].request_id, ack=pb.Ack(seq=3)))
        self.assertEqual([r.what for r in client.requests.values()], ["key distribution"])
        client._rejoin()
        client._on_frame(pb.ServerFrame(request_id=sent_frames(client)[0].request_id, joined=pb.Joined(room="lobby")))
        self.assertEqual([f.WhichOneof("kind") for f in sent_frames(client)], ["distribute_key", "distribute_key"],
                         "the unanswered key again, then a new one; the message was answered")


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
        client = offline_client("lobby")
        room = client.rooms["lobby"]
        client._on_input(("line", "first"))
        client._on_input(("line", "second\nline"))
        first, second = client.requests
        refusal = pb.ServerFrame(request_id=first, rejection=pb.Rejection(code=14, message="disk full"))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            client._on_frame(refusal)
            client._command("/pending")
        self.assertEqual(err.getvalue().splitlines(), [
            'failed to send "first": UNAVAILABLE: disk full',
            "1 message(s) sent but not acknowledged yet:",
            '  "second\\u{a}line"',
        ])
        self.assertEqual(client.refused, 1)
        client._on_frame(pb.ServerFrame(request_id=second, ack=pb.Ack(seq=9)))
        self.assertEqual(client.requests, {})
        self.assertEqual(room.state.last_seq, 0, "our own entries never move last_seq")

    def test_pending_lists_each_text_on_one_line(self) -> None:
        self.assertEqual(len(pending_lines([])), 1)
        self.assertEqual(
            pending_lines(["hi", "a\nb"]),
            ["2 message(s) sent but not acknowledged yet:", '  "hi"', '  "a\\u{a}b"'],
        )


class Padding(unittest.TestCase):
    """PROTOCOL.md, "Padding": every sealed envelope is a multiple of 256 bytes."""

    def test_every_envelope_is_a_multiple_of_256_bytes_and_parses_back_equal(self) -> None:
        texts = ["", "a", "hello", "ünïcödé 'quotes' \"doubles\"", "\u202e\n", "x" * 255, "y" * 1000, "€" * 300]
        texts += ["z" * n for n in range(150, 420)]  # every remainder mod 256
        for text in texts:
            padded = encode_envelope("alice", text, 1_764_012_345_678)
            with self.subTest(length=len(text)):
                self.assertEqual(len(padded) % 256, 0)
                parsed = json.loads(padded)
                pad = parsed.pop("pad")
                self.assertEqual(set(pad), set(" ") if pad else set())
                self.assertEqual(parsed, {"v": 1, "type": "text", "sender": "alice", "text": text,
                                          "sent_at_ms": 1_764_012_345_678})
                self.assertEqual(decode_envelope(padded, "alice").text, text)

    def test_the_formula(self) -> None:
        for length in range(2, 1200):
            spaces = pad_spaces(length)
            self.assertEqual(spaces, (256 - (length + 9) % 256) % 256)
            self.assertTrue(0 <= spaces < 256)
            self.assertEqual((length + 9 + spaces) % 256, 0)
        unpadded = b'{"v":1}'
        padded = pad_envelope(unpadded)
        self.assertEqual(padded, b'{"v":1,"pad":"' + b" " * (256 - 7 - 9) + b'"}')
        self.assertEqual(len(padded), 256)
        exact = b'{"a":"' + b"b" * (256 - 9 - 8) + b'"}'  # L + 9 = 256: no space at all
        self.assertEqual(pad_envelope(exact), exact[:-1] + b',"pad":""}')
        self.assertEqual(len(pad_envelope(exact)), 256)

    def test_receipts_are_padded_like_texts(self) -> None:
        receipt = encode_receipt("bob", 1_764_012_345_999, 42, 40)
        self.assertEqual(len(receipt), 256, "a short text and a receipt look alike")
        self.assertEqual(len(encode_envelope("bob", "ok", 1_764_012_345_999)), 256)

    def test_any_length_is_accepted_and_pad_ignored(self) -> None:
        unpadded = b'{"v":1,"type":"text","sender":"bob","text":"hi","sent_at_ms":5}'
        self.assertEqual(decode_envelope(unpadded, "bob").text, "hi")
        odd = b'{"v":1,"type":"text","sender":"bob","text":"hi","sent_at_ms":5,"pad":"   "}'
        self.assertEqual(decode_envelope(odd, "bob").text, "hi")
        self.assertEqual(decode_envelope(odd.replace(b'"   "', b"17"), "bob").text, "hi", "pad is ignored, whatever it is")

    def test_the_32_kib_limit_counts_the_padding(self) -> None:
        alice = User("alice", 0, clock_ms=lambda: 1_764_012_345_678)
        alice.state.on_joined(pb.Joined(room="lobby"))
        empty = encode_envelope("alice", "", 1_764_012_345_678)
        overhead = len(empty) - 9 - empty.count(b" ")  # the padding's spaces are its only ones
        most = 32 * 1024 - 9 - overhead  # padded to exactly 32 KiB, without a single space
        self.assertEqual(len(encode_envelope("alice", "x" * most, 1_764_012_345_678)), 32 * 1024)
        alice.state.seal_text("x" * most)
        with self.assertRaises(room_module.MessageTooLong):
            alice.state.seal_text("x" * (most + 1))


class ReceiptEnvelopes(unittest.TestCase):
    """PROTOCOL.md, "Receipts": the envelope and its refusals."""

    def receipt(self, **fields: object) -> bytes:
        envelope = {"v": 1, "type": "receipt", "sender": "bob", "text": "", "sent_at_ms": 1_764_012_345_999,
                    "delivered_through": 42, "read_through": 40}
        envelope.update(fields)
        return json.dumps({k: v for k, v in envelope.items() if v is not None}).encode()

    def test_a_receipt_parses(self) -> None:
        envelope = decode_envelope(self.receipt(), "bob")
        self.assertEqual((envelope.kind, envelope.delivered_through, envelope.read_through), ("receipt", 42, 40))
        own = decode_envelope(encode_receipt("bob", 7, 42, 40), "bob")
        self.assertEqual((own.kind, own.text, own.delivered_through, own.read_through), ("receipt", "", 42, 40))
        self.assertEqual(decode_envelope(encode_receipt("bob", 7, 3, 9), "bob").read_through, 3, "never above")
        top = decode_envelope(self.receipt(delivered_through=2**64 - 1, read_through=0), "bob")
        self.assertEqual(top.delivered_through, 2**64 - 1)
        above = decode_envelope(self.receipt(delivered_through=5, read_through=9), "bob")
        self.assertEqual(above.read_through, 9, "accepted; counted as delivered_through")

    def test_bad_receipts_are_refused(self) -> None:
        raw_bad = [
            self.receipt().replace(b'"delivered_through": 42', b'"delivered_through": 42.0'),
            self.receipt().replace(b'"read_through": 40', b'"read_through": 4e1'),
            self.receipt().replace(b'"read_through": 40', b'"read_through": 40, "read_through": 40'),
        ]
        bad = [
            self.receipt(delivered_through=None),
            self.receipt(read_through=None),
            self.receipt(delivered_through="42"),
            self.receipt(read_through=True),
            self.receipt(read_through=[40]),
            self.receipt(delivered_through=-1),
            self.receipt(delivered_through=2**64),
            self.receipt(read_through=2**64),
            self.receipt(text=None),
            self.receipt(text=5),
            self.receipt(sender="mallory"),
        ] + raw_bad
        for plaintext in bad:
            with self.subTest(plaintext), self.assertRaises(EnvelopeError):
                decode_envelope(plaintext, "bob")
        self.assertIsNone(decode_envelope(encode_envelope("bob", "t", 1), "bob").delivered_through)

    def test_through_a_room_a_receipt_is_recognized_and_a_bad_one_dropped_with_a_warning(self) -> None:
        alice, bob = User("alice", 0), User("bob", 1)
        alice.state.on_joined(pb.Joined(room="lobby"))
        join([alice], bob)
        give(bob.state.rotate(), bob, alice)
        opened = alice.state.open(delivery("bob", bob.state.seal_receipt(12, 10), seq=13))
        self.assertTrue(opened.is_receipt)
        self.assertFalse(opened.showable)
        self.assertEqual((opened.seq, opened.envelope.delivered_through, opened.envelope.read_through), (13, 12, 10))
        self.assertEqual(alice.state.warnings, [])
        bad = bob.state.seal_plaintext(self.receipt(read_through=None))
        self.assertIsNone(alice.state.open(delivery("bob", bad, seq=14)))
        self.assertIn("read_through", alice.state.warnings[-1])
        self.assertIn("bob", alice.state.warnings[-1])

    def test_receipts_are_not_part_of_the_history(self) -> None:
        alice, bob = User("alice", 0), User("bob", 1)
        alice.state.on_joined(pb.Joined(room="lobby"))
        join([alice], bob)
        bob_frames = bob.state.rotate()
        text = bob.state.seal_text("a text")
        receipt = bob.state.seal_receipt(3, 3)
        history = pb.History(room="lobby", entries=[pb.HistoryEntry(sender_key=d) for d in
                                                    deliveries_for("alice", "bob", bob_frames, 2)]
                             + [pb.HistoryEntry(message=delivery("bob", text, 3)),
                                pb.HistoryEntry(message=delivery("bob", receipt, 4))])
        self.assertEqual([m.text for m in alice.state.open_history(history)], ["a text"])
        self.assertEqual(alice.state.warnings, [], "no 'cannot show' for a receipt")


class Receipts(unittest.TestCase):
    """The states of our messages, and when a receipt goes."""

    def test_highest_numbers_are_kept_and_read_counts_at_most_as_delivered(self) -> None:
        book = ReceiptBook()
        book.note("bob", 10, 8)
        book.note("bob", 9, 9)  # lower delivered changes nothing; read moves to 9
        self.assertEqual(book.progress["bob"], (10, 9))
        book.note("carol", 5, 50)
        self.assertEqual(book.progress["carol"], (5, 5))

    def test_delivered_and_read_count_only_those_it_was_sealed_for(self) -> None:
        book = ReceiptBook()
        book.stored("hi", 7, ("bob", "carol", "dave"))
        book.note("bob", 9, 7)
        book.note("carol", 7, 6)
        book.note("erin", 100, 100)  # joined later: not counted
        self.assertEqual(book.lines("lobby"), [
            'receipts [lobby] "hi": delivered to 2 of 3 (bob, carol), read by 1 (bob)',
        ])
        book.stored("two\nlines", 11, ("bob",))
        self.assertEqual(book.lines("lobby")[1], 'receipts [lobby] "two\\u{a}lines": delivered to 0 of 1, read by 0')
        self.assertEqual(len(ReceiptBook().lines("lobby")), 1)
        for n in range(20):
            book.stored(str(n), 20 + n, ())
        self.assertEqual(len(book.lines("lobby")), 10, "the last 10")

    def test_at_most_one_receipt_every_two_seconds_and_only_when_something_moved(self) -> None:
        now = [100.0]
        schedule = ReceiptSchedule(clock=lambda: now[0])
        self.assertFalse(schedule.take(), "nothing processed yet")
        schedule.text_processed()
        self.assertTrue(schedule.take())
        self.assertFalse(schedule.take(), "nothing moved since")
        schedule.text_processed()
        now[0] += 1.9
        self.assertFalse(schedule.take())
        self.assertEqual(schedule.due_at(), 102.0)
        now[0] += 0.1
        self.assertTrue(schedule.take())
        schedule.text_shown(5)
        schedule.text_shown(3)
        self.assertEqual(schedule.read_through, 5)

    def test_the_session_counts_receipts_shows_no_line_and_sends_its_own_batched(self) -> None:
        client = offline_client("lobby")
        room = client.rooms["lobby"]
        alice, bob = User("alice", 0), User("bob", 1)  # alice: the client's keys
        room.state.on_joined(pb.Joined(room="lobby", members=[bob.public()]))
        room.state.take_bundles([bob.bundle()])
        bob.state.on_joined(pb.Joined(room="lobby", members=[alice.public()]))
        bob.state.take_bundles([alice.bundle()])
        for d in deliveries_for("bob", "alice", room.state.rotate()):
            bob.state.accept_sender_key(d)
        bob_frames = bob.state.rotate()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            for d in deliveries_for("alice", "bob", bob_frames, seq=5):
                client._on_frame(pb.ServerFrame(sender_key=d))
            client._on_frame(pb.ServerFrame(message=delivery("bob", bob.state.seal_text("hello"), seq=6)))
            client._on_frame(pb.ServerFrame(message=delivery("bob", bob.state.seal_receipt(6, 6), seq=7)))
            client._send_receipts()
            client._on_frame(pb.ServerFrame(message=delivery("bob", bob.state.seal_text("again"), seq=8)))
            client._send_receipts()  # within two seconds of the first: not yet
        self.assertEqual(out.getvalue().splitlines(), ["[lobby] bob: hello", "[lobby] bob: again"])
        self.assertEqual(err.getvalue(), "", "a valid receipt is never warned about")
        self.assertEqual(room.receipts.progress["bob"], (6, 6))
        (frame,) = sent_frames(client)
        receipt = bob.state.open(pb.MessageDelivery(room="lobby", sender="alice", sealed=frame.send.sealed, seq=9))
        self.assertTrue(receipt.is_receipt)
        # Piped stdout: delivered, not read. Only the first text was processed when it went.
        self.assertEqual((receipt.envelope.delivered_through, receipt.envelope.read_through), (7, 0))
        self.assertEqual(len(frame.send.sealed.ciphertext) - 16, 256, "padded like a short text")

    def test_no_receipt_during_a_catch_up_nor_with_no_receipts(self) -> None:
        for enabled in (True, False):
            client = offline_client("lobby", receipts=enabled)
            room = client.rooms["lobby"]
            room.caught_up = False
            room.schedule.text_processed()
            client._send_receipts()
            self.assertEqual(sent_frames(client), [])
            with contextlib.redirect_stderr(io.StringIO()):
                client._on_frame(pb.ServerFrame(caught_up=pb.CaughtUp(room="lobby", seq=3)))
            client._send_receipts()
            self.assertEqual(len(sent_frames(client)), 1 if enabled else 0)

    def test_receipts_lists_our_acknowledged_messages_of_the_current_room(self) -> None:
        client = offline_client("lobby")
        client._on_input(("line", "hi"))
        (request_id,) = client.requests
        client._on_frame(pb.ServerFrame(request_id=request_id, ack=pb.Ack(seq=4)))
        client.rooms["lobby"].receipts.note("bob", 4, 0)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            client._command("/receipts")
        self.assertEqual(err.getvalue(), 'receipts [lobby] "hi": delivered to 0 of 0, read by 0\n',
                         "alone when sent: sealed for nobody")


class SeveralRooms(unittest.TestCase):
    """One stream, several rooms: the commands of "Several rooms on one stream"."""

    def test_room_lists(self) -> None:
        self.assertEqual(room_list(["a,b", "c", "a"]), ["a", "b", "c"])
        self.assertEqual(room_list(["lobby"]), ["lobby"])

    def test_history_arguments(self) -> None:
        joined = {"a", "20"}.__contains__
        self.assertEqual(history_arguments([], joined), (None, None))
        self.assertEqual(history_arguments(["5"], joined), (None, "5"))
        self.assertEqual(history_arguments(["a"], joined), ("a", None))
        self.assertEqual(history_arguments(["20"], joined), ("20", None), "a joined room named 20")
        self.assertEqual(history_arguments(["a", "5"], joined), ("a", "5"))
        with self.assertRaises(ValueError):
            history_arguments(["a", "5", "6"], joined)

    def test_messages_go_to_the_current_room_or_the_one_named(self) -> None:
        client = offline_client("a", "b")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            client._on_input(("line", "to a"))
            client._on_input(("line", "/msg b  to b,  spaced"))
            client._on_input(("line", "/switch b"))
            client._on_input(("line", "//slash to b"))
            client._on_input(("line", "/msg c nowhere"))
            client._on_input(("line", "/msg b"))
        rooms = [f.send.room for f in sent_frames(client)]
        self.assertEqual(rooms, ["a", "b", "b"])
        self.assertEqual([(r.room, r.text) for r in client.requests.values()],
                         [("a", "to a"), ("b", "to b,  spaced"), ("b", "/slash to b")])
        self.assertIn("you are not in c", err.getvalue())
        self.assertIn("usage: /msg ROOM TEXT", err.getvalue())
        ids = list(client.requests)
        self.assertEqual(ids, sorted(set(ids)), "request ids unique on the stream")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            client._command("/pending")
        self.assertEqual(err.getvalue().splitlines()[1:], ['  [a] "to a"', '  [b] "to b,  spaced"', '  [b] "/slash to b"'])

    def test_part_leaves_once_answered_and_the_first_room_left_becomes_current(self) -> None:
        client = offline_client("a", "b", "c")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            client._on_input(("line", "/switch b"))
        self.assertEqual(err.getvalue(), "now in b: plain lines go there\n")
        client._on_input(("line", "to b"))
        client._on_input(("line", "/part"))
        self.assertEqual(client.current, "a")
        client._send_due_leaves()
        self.assertEqual([f.WhichOneof("kind") for f in sent_frames(client)], ["send"], "the leave waits")
        (message_id,) = client.requests
        client._on_frame(pb.ServerFrame(request_id=message_id, ack=pb.Ack(seq=3)))
        client._send_due_leaves()
        (leave,) = sent_frames(client)
        self.assertEqual(leave.leave.room, "b")
        client.progress = Path(tempfile.mkdtemp()) / "progress.json"
        with contextlib.redirect_stderr(io.StringIO()) as err:
            client._on_frame(pb.ServerFrame(request_id=leave.request_id, ack=pb.Ack()))
            client._on_frame(pb.ServerFrame(member_joined=pb.MemberJoined(room="b")))  # late: ignored
            client._on_input(("line", "/leave a"))
            client._on_input(("line", "/leave c"))
        self.assertEqual(err.getvalue(), "left b\n")
        self.assertEqual(list(client.rooms), ["a", "c"])
        self.assertIsNone(client.current)
        self.assertEqual(client.finishing, "quit", "no room left: ends as at end of input")

    def test_a_removal_takes_the_room_out_and_the_last_one_ends_the_session(self) -> None:
        client = offline_client("a", "b")
        client.progress = Path(tempfile.mkdtemp()) / "progress.json"
        save_last_seq(client.progress, client.relays.deployment, "a", 4)
        kicked = pb.MemberLeft(room="a", user="alice", reason=pb.LEAVE_REASON_KICKED)
        with contextlib.redirect_stderr(io.StringIO()) as err:
            client._on_frame(pb.ServerFrame(member_left=kicked))
        self.assertEqual(
            err.getvalue(),
            "* the owner of a removed you from it\n"
            "warning: a was your current room: choose another with /switch ROOM before sending\n",
        )
        # No current room until /switch: a line meant for a must not go to b.
        self.assertEqual((list(client.rooms), client.current, client.finishing), (["b"], None, None))
        with contextlib.redirect_stderr(io.StringIO()) as err:
            client._on_input(("line", "meant for a"))
        self.assertEqual(err.getvalue(), "you have no current room: choose one with /switch ROOM\n")
        self.assertIsNone(load_last_seq(client.progress, client.relays.deployment, "a"), "a later join is a first join")
        kicked.room = "b"
        with contextlib.redirect_stderr(io.StringIO()):
            client._on_frame(pb.ServerFrame(member_left=kicked))
        self.assertEqual(client.finishing, "quit", "no room left: ends as at end of input")
        with self.assertRaisesRegex(ClientError, "you were removed from b by its owner"):
            client._exit_status()

    def test_a_later_join_refused_is_reported_and_the_session_goes_on(self) -> None:
        client = offline_client("a")
        client.progress = Path(tempfile.mkdtemp()) / "progress.json"
        client._on_input(("line", "/join club"))
        (join_frame,) = sent_frames(client)
        self.assertEqual((join_frame.join.room, join_frame.join.create_private), ("club", False))
        self.assertTrue(client._joining(), "input waits until the room is joined")
        client.backlog.append(("line", "waits for the join"))
        refusal = pb.Rejection(code=7, message="not invited")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            client._on_frame(pb.ServerFrame(request_id=join_frame.request_id, rejection=refusal))
        self.assertEqual(err.getvalue(), "cannot join club: PERMISSION_DENIED: not invited\n")
        self.assertEqual(list(client.rooms), ["a"])
        self.assertIsNone(client.finishing)
        (sent,) = sent_frames(client)
        self.assertEqual((sent.send.room, client.requests[sent.request_id].text), ("a", "waits for the join"))
        with self.assertRaises(ClientError):  # a room of the command line: fatal
            client._on_rejection(Request("join", "a"), client.rooms["a"], refusal)


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
