"""The device's signed prekeys (docs/PROTOCOL.md, "Prekeys" and "A client's home
directory"): ``HOME/USER/prekeys.json`` and one ``prekey-<id>.pem`` per listed prekey,
made, rotated every 7 days and erased 14 days after being replaced; the signed
``SignedPrekey`` this device publishes; and another device's prekey checked against the
identity it was published with."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Callable, Optional

from cryptography.hazmat.primitives.asymmetric import rsa

from .binding import parse_public_key, prekey_signed_bytes, public_key_der, verify_signature
from .envelope import _is_int
from .errors import ClientError
from .home import _load_private_key, _make_private_dirs, _pem, _replace_file, _write_new_file, user_dir
from .identity import Identity, PeerIdentity
from .proto import pb
from .protocol import DEVICE, PREKEY_KEEP_MS, PREKEY_ROTATE_MS

PREKEYS_VERSION = 1
_ID_RE = re.compile(r"[0-9a-fA-F]{1,16}")
_PEM_RE = re.compile(r"prekey-([0-9a-f]{16})\.pem")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def prekeys_path(home: Path, user: str) -> Path:
    return user_dir(home, user) / "prekeys.json"


def prekey_file_name(prekey_id: int) -> str:
    """``prekey-<id>.pem``, the id as 16 lowercase hex digits."""
    return f"prekey-{prekey_id:016x}.pem"


@dataclasses.dataclass
class Prekey:
    """One of this device's prekeys, with its private key."""

    prekey_id: int
    created_at_ms: int
    retired_at_ms: Optional[int]
    private_key: rsa.RSAPrivateKey


class PrekeyStore:
    """This device's prekeys, oldest first, the last one current, mirrored in
    ``prekeys.json`` (shared with the Rust client, byte for byte in meaning)::

        {"version": 1, "prekeys": [{"id": "9f3a0c5e71d2b846", "created_at_ms": 1764000000000,
                                    "retired_at_ms": null}]}
    """

    def __init__(
        self,
        home: Path,
        identity: Identity,
        log: Callable[[str], None] = lambda _m: None,
        clock_ms: Callable[[], int] = now_ms,
        rotate_ms: int = PREKEY_ROTATE_MS,
        keep_ms: int = PREKEY_KEEP_MS,
    ) -> None:
        self.directory = user_dir(home, identity.user)
        self.path = prekeys_path(home, identity.user)
        self.identity = identity
        self.log = log
        self.clock_ms = clock_ms
        self.rotate_ms = rotate_ms
        self.keep_ms = keep_ms
        self.prekeys: list[Prekey] = []
        self._signed: Optional[pb.SignedPrekey] = None

    # -- the files ----------------------------------------------------------------------

    def _unreadable(self, reason: str) -> ClientError:
        return ClientError(f"cannot read {self.path}: {reason}")

    def _read_list(self) -> Optional[list[tuple[int, int, Optional[int]]]]:
        """The entries of prekeys.json, or None if there is no file."""
        if not self.path.exists():
            return None
        raw = _load_private_file(self.path)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._unreadable(f"not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or not _is_int(data.get("version")) or data["version"] != PREKEYS_VERSION:
            raise self._unreadable(f"not a prekeys file of version {PREKEYS_VERSION}")
        entries = data.get("prekeys")
        if not isinstance(entries, list):
            raise self._unreadable("not a prekeys file (no list of prekeys)")
        out = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise self._unreadable("a prekey entry is not an object")
            ident, created, retired = entry.get("id"), entry.get("created_at_ms"), entry.get("retired_at_ms")
            if not isinstance(ident, str) or _ID_RE.fullmatch(ident) is None:
                raise self._unreadable(f"invalid prekey id {ident!r}")
            if not _is_int(created) or not 0 <= created < 1 << 64:
                raise self._unreadable(f"invalid created_at_ms of prekey {ident}")
            if retired is not None and (not _is_int(retired) or not 0 <= retired < 1 << 64):
                raise self._unreadable(f"invalid retired_at_ms of prekey {ident}")
            out.append((int(ident, 16), created, retired))
        return out

    def _write_list(self) -> None:
        data = {
            "version": PREKEYS_VERSION,
            "prekeys": [
                {"id": f"{p.prekey_id:016x}", "created_at_ms": p.created_at_ms, "retired_at_ms": p.retired_at_ms}
                for p in self.prekeys
            ],
        }
        _make_private_dirs(self.directory)
        _replace_file(self.path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))

    def load(self) -> bool:
        """Reads the list and every listed key; False if there is no list yet."""
        entries = self._read_list()
        if entries is None:
            self.prekeys = []
            return False
        prekeys = []
        for prekey_id, created, retired in entries:
            pem = self.directory / prekey_file_name(prekey_id)
            if not pem.exists():
                raise ClientError(f"{self.path} lists the prekey {prekey_id:016x}, but {pem} is missing")
            prekeys.append(Prekey(prekey_id, created, retired, _load_private_key(pem, "prekey")))
        self.prekeys = prekeys
        return True

    def _make(self, now: int) -> Prekey:
        bits = self.identity.encryption_key.key_size
        prekey_id = int.from_bytes(os.urandom(8), "big")
        pem = self.directory / prekey_file_name(prekey_id)
        self.log(f"making a {bits}-bit RSA prekey for {self.identity.user} in {pem} (this takes a few seconds)...")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        _make_private_dirs(self.directory)
        if not _write_new_file(pem, _pem(key)):
            raise ClientError(f"cannot write the prekey {pem}: it exists already")
        return Prekey(prekey_id, now, None, key)

    def maintain(self) -> bool:
        """Loads the prekeys, makes the first one, rotates the current one when it is
        7 days old, erases those retired 14 days ago, and deletes any ``prekey-*.pem``
        the list does not name. True when a new prekey was made (to publish, and to hand
        a new sender key out under)."""
        try:
            had_list = self.load()
            now = self.clock_ms()
            made = False
            if not had_list or not self.prekeys:
                self.prekeys = [self._make(now)]  # the .pem before the list names it
                self._write_list()
                made = True
            elif now - self.prekeys[-1].created_at_ms >= self.rotate_ms:
                new = self._make(now)
                for prekey in self.prekeys:
                    if prekey.retired_at_ms is None:
                        prekey.retired_at_ms = now
                self.prekeys.append(new)
                self._write_list()
                made = True
            erased = [
                p for p in self.prekeys
                if p is not self.prekeys[-1] and p.retired_at_ms is not None and now - p.retired_at_ms >= self.keep_ms
            ]
            if erased:
                self.prekeys = [p for p in self.prekeys if p not in erased]
                self._write_list()  # the list first, then the files
            named = {prekey_file_name(p.prekey_id) for p in self.prekeys}
            for path in self.directory.glob("prekey-*.pem"):
                if path.name not in named:
                    path.unlink(missing_ok=True)
        except OSError as exc:
            raise ClientError(f"cannot update the prekeys in {self.directory}: {exc.strerror or exc}") from exc
        if made:
            self._signed = None
        return made

    # -- use ----------------------------------------------------------------------------

    @property
    def current(self) -> Prekey:
        if not self.prekeys:
            raise RuntimeError("no prekey: call maintain() first")
        return self.prekeys[-1]

    def private_key(self, prekey_id: int) -> Optional[rsa.RSAPrivateKey]:
        """The private key of a prekey this device still holds (current or retired)."""
        for prekey in self.prekeys:
            if prekey.prekey_id == prekey_id:
                return prekey.private_key
        return None

    def signed_current(self) -> pb.SignedPrekey:
        """The current prekey, signed by the identity: the same message until it changes
        (RSA-PSS is randomized: a re-signed prekey would look new to the directory)."""
        current = self.current
        if self._signed is None or self._signed.prekey_id != current.prekey_id:
            self._signed = sign_prekey(self.identity, current.prekey_id, current.created_at_ms, current.private_key)
        return self._signed


def _load_private_file(path: Path) -> bytes:
    import stat

    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ClientError(f"cannot read {path}: it is accessible by other users (mode {mode:o}); run: chmod 600 {path}")
    return path.read_bytes()


def sign_prekey(identity: Identity, prekey_id: int, created_at_ms: int, key: rsa.RSAPrivateKey) -> pb.SignedPrekey:
    """A ``SignedPrekey`` of device 1 for ``key``."""
    der = public_key_der(key)
    signature = identity.sign(prekey_signed_bytes(identity.user, DEVICE, prekey_id, created_at_ms, der))
    return pb.SignedPrekey(
        device=DEVICE, prekey_id=prekey_id, created_at_ms=created_at_ms, public_key=der, signature=signature
    )


@dataclasses.dataclass(frozen=True)
class PeerPrekey:
    """Another device's prekey, checked against the identity it was published with."""

    user: str
    device: int
    prekey_id: int
    public_key: rsa.RSAPublicKey


class PrekeyError(ValueError):
    """A prekey that must not be used."""


def check_prekey(peer: PeerIdentity, signed: pb.SignedPrekey) -> PeerPrekey:
    """The prekey's signature by ``peer``'s signing key over the prekey string built
    from ``peer.user`` and the prekey's fields, and its key (DER RSA, 2048..4096 bits);
    raises :class:`PrekeyError`."""
    if signed.device != DEVICE:
        raise PrekeyError(f"its device is {signed.device}, not {DEVICE}")
    data = prekey_signed_bytes(peer.user, signed.device, signed.prekey_id, signed.created_at_ms, signed.public_key)
    if not verify_signature(peer.signing_key, signed.signature, data):
        raise PrekeyError("its signature does not verify")
    try:
        key = parse_public_key(signed.public_key)
    except ValueError as exc:
        raise PrekeyError(f"its key is unusable ({exc})") from exc
    return PeerPrekey(peer.user, signed.device, signed.prekey_id, key)
