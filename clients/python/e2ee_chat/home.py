"""The files of a user's home, HOME/USER/: the two identity keys (made, loaded, migrated
from the single key of the previous version), the pinned contacts (contacts.json) and the
saved progress (progress.json); private modes, and atomic writes."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Callable, Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .envelope import _is_int
from .errors import ClientError
from .identity import Identity, PeerIdentity
from .protocol import (
    DEFAULT_KEY_BITS,
    KEY_BITS_ALLOWED,
    MAX_PEER_KEY_BITS,
    MIN_PEER_KEY_BITS,
    is_valid_user_name,
)


# ---------------------------------------------------------------------------------------
# The files of a user's home: identity keys and pinned contacts
# ---------------------------------------------------------------------------------------


def user_dir(home: Path, user: str) -> Path:
    return home / user


def signing_key_path(home: Path, user: str) -> Path:
    return user_dir(home, user) / "signing.pem"


def encryption_key_path(home: Path, user: str) -> Path:
    return user_dir(home, user) / "encryption.pem"


def legacy_identity_path(home: Path, user: str) -> Path:
    """The single key of the previous protocol version; it becomes the encryption key."""
    return user_dir(home, user) / "identity.pem"


def contacts_path(home: Path, user: str) -> Path:
    return user_dir(home, user) / "contacts.json"


# Kept under its old name: the README documents it.
identity_path = encryption_key_path


def _make_private_dirs(directory: Path) -> None:
    """Creates ``directory`` and any missing parents with mode 0700; the user's own
    directory is set to 0700 even if it already existed."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    os.chmod(directory, 0o700)


def _write_temp_beside(path: Path, data: bytes) -> Path:
    """Writes ``data`` to ``<file>.tmp`` in ``path``'s directory (a leftover one is
    deleted first; created anew, mode 0600) and syncs it; returns its path. The caller
    moves it in place or removes it."""
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        tmp.unlink()  # a leftover of a crash
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_new_file(path: Path, data: bytes) -> bool:
    """Creates ``path`` with ``data``, mode 0600, all at once: written to a temporary
    file, then linked in place. Returns False (and writes nothing) if ``path`` already
    exists, for instance because another process made it meanwhile."""
    tmp = _write_temp_beside(path, data)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _replace_file(path: Path, data: bytes) -> None:
    """Replaces ``path`` atomically (temporary file in the same directory, fsync,
    rename), mode 0600."""
    tmp = _write_temp_beside(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private_key(path: Path, what: str) -> rsa.RSAPrivateKey:
    """Reads a PKCS#8 PEM RSA key, refusing a file that group or others can access."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ClientError(
                f"cannot read {what} {path}: it is accessible by other users "
                f"(mode {mode:o}); run: chmod 600 {path}"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ClientError(f"cannot read {what} {path}: not an unencrypted PKCS#8 PEM key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ClientError(f"cannot read {what} {path}: not an RSA key")
    if not MIN_PEER_KEY_BITS <= key.key_size <= MAX_PEER_KEY_BITS:
        raise ClientError(f"cannot read {what} {path}: {key.key_size} bits is outside 2048..4096")
    return key


def _load_or_generate(path: Path, what: str, bits: int, user: str, log: Callable[[str], None]) -> rsa.RSAPrivateKey:
    if path.exists():
        return _load_private_key(path, what)
    log(f"generating a {bits}-bit RSA {what} for {user} in {path} (this takes a few seconds)...")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    try:
        _make_private_dirs(path.parent)
        if not _write_new_file(path, _pem(key)):  # another process made it meanwhile
            return _load_private_key(path, what)
    except OSError as exc:
        raise ClientError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc
    return key


def load_or_create_identity(
    home: Path, user: str, bits: int = DEFAULT_KEY_BITS, log: Callable[[str], None] = lambda _m: None
) -> Identity:
    """Loads HOME/USER/signing.pem and encryption.pem, making what is missing.

    - Both keys are PKCS#8 PEM, mode 0600, in a 0700 directory; a key file that other
      users can access is refused (the keys are the user's identity).
    - An old home (``identity.pem`` and no ``encryption.pem``) is migrated: the old key
      becomes the encryption key, and a new signing key of the same size is made.
    - An encryption key without a signing key gets a new signing key of its size (what
      an interrupted migration leaves). A signing key without an encryption key is
      refused: a new encryption key would not match what the relay registered.
    - New keys are ``bits`` long.
    """
    if not is_valid_user_name(user):
        raise ClientError(f'user name "{user}" is invalid; use 1 to 32 of letters, digits and _ . -')
    signing_path = signing_key_path(home, user)
    encryption_path = encryption_key_path(home, user)
    legacy_path = legacy_identity_path(home, user)

    if not encryption_path.exists() and legacy_path.exists():
        old = _load_private_key(legacy_path, "identity key")  # checks its mode first
        try:
            os.chmod(legacy_path.parent, 0o700)
            # link + unlink rather than rename: never replaces an encryption.pem that
            # another process made meanwhile.
            os.link(legacy_path, encryption_path)
            os.unlink(legacy_path)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ClientError(f"cannot migrate {legacy_path} to {encryption_path}: {exc.strerror or exc}") from exc
        else:
            log(
                f"migrated the identity of {user} to signing and encryption keys: "
                f"{legacy_path} is now {encryption_path}"
            )
        if not signing_path.exists():
            bits = old.key_size  # a signing key the size of the old identity key
    elif encryption_path.exists() and not signing_path.exists():
        bits = _load_private_key(encryption_path, "encryption key").key_size
    elif signing_path.exists() and not encryption_path.exists():
        raise ClientError(
            f"found the signing key {signing_path} but no encryption key {encryption_path}: "
            f"restore it from a backup, or delete {signing_path} to make a new identity "
            f"(the relay keeps the name {user} bound to the old keys)"
        )
    if bits not in KEY_BITS_ALLOWED:
        raise ClientError(f"invalid key size {bits}; use 2048, 3072 or 4096")

    # The encryption key first: an interruption then leaves a state handled above.
    encryption_key = _load_or_generate(encryption_path, "encryption key", bits, user, log)
    signing_key = _load_or_generate(signing_path, "signing key", bits, user, log)
    try:
        return Identity(user, signing_key, encryption_key)
    except ValueError as exc:
        raise ClientError(f"cannot use the keys of {user} in {user_dir(home, user)}: {exc}") from exc


class ContactsError(Exception):
    """contacts.json cannot be read or has a format this client does not know."""


class ContactBook:
    """The pinned keys of other users: ``HOME/USER/contacts.json``, shared with the Rust
    client::

        {"version": 1, "contacts": {"bob": {"fingerprint": "<64 lowercase hex>", "verified": false}},
         "private_rooms": {"club": "alice"}}

    Every change re-reads the file, changes one contact, and replaces the file
    atomically (mode 0600). Fields this client does not know are kept.
    """

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data = self._read()

    def _read(self) -> dict:
        try:
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if mode & 0o077:
                raise ContactsError(
                    f"cannot read {self.path}: it is accessible by other users (mode {mode:o}); "
                    f"run: chmod 600 {self.path}"
                )
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {"version": self.VERSION, "contacts": {}}
        except OSError as exc:
            raise ContactsError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ContactsError(f"cannot read {self.path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("contacts"), dict):
            raise ContactsError(f"cannot read {self.path}: not a contacts file")
        if data.get("version") != self.VERSION or isinstance(data.get("version"), bool):
            raise ContactsError(
                f"cannot read {self.path}: version {data.get('version')!r} is not supported (expected 1)"
            )
        for name, entry in data["contacts"].items():
            if not isinstance(entry, dict) or not _is_fingerprint_hex(entry.get("fingerprint")):
                raise ContactsError(f"cannot read {self.path}: the entry of {name!r} has no valid fingerprint")
        return data

    def pinned_owner(self, room: str) -> Optional[str]:
        """The owner pinned for private room ``room`` (``private_rooms``), if any."""
        rooms = self._data.get("private_rooms")
        owner = rooms.get(room) if isinstance(rooms, dict) else None
        return owner if isinstance(owner, str) else None

    def pin_owner(self, room: str, owner: str) -> str:
        """Pins ``owner`` as the owner of private room ``room`` unless one is pinned
        already (by another process meanwhile, too); returns the pinned owner."""
        try:
            data = self._read()
        except ContactsError:
            data = self._data
        rooms = data.get("private_rooms")
        if not isinstance(rooms, dict):
            rooms = {}
        pinned = rooms.get(room)
        if isinstance(pinned, str):
            self._data = data
            return pinned
        rooms[room] = owner
        data["private_rooms"] = dict(sorted(rooms.items()))
        self._data = data
        self._save(data)
        return owner

    def _save(self, data: dict) -> None:
        data["contacts"] = dict(sorted(data["contacts"].items()))
        _make_private_dirs(self.path.parent)
        text = json.dumps(data, indent=2) + "\n"
        _replace_file(self.path, text.encode("utf-8"))

    def fingerprint_of(self, user: str) -> Optional[str]:
        entry = self._data["contacts"].get(user)
        return entry["fingerprint"] if entry is not None else None

    def verified(self, user: str) -> bool:
        entry = self._data["contacts"].get(user)
        return bool(entry is not None and entry.get("verified") is True)

    def pin(self, user: str, fingerprint_hex: str) -> None:
        """Pins ``user`` to ``fingerprint_hex``, unverified, and saves the file."""
        self._update(user, fingerprint_hex, verified=False)

    def set_verified(self, user: str, fingerprint_hex: str) -> None:
        """Marks ``user`` verified, pinned to ``fingerprint_hex``, and saves the file."""
        self._update(user, fingerprint_hex, verified=True)

    def _update(self, user: str, fingerprint_hex: str, verified: bool) -> None:
        if not _is_fingerprint_hex(fingerprint_hex):
            raise ValueError("a fingerprint is 64 lowercase hex digits")
        try:
            data = self._read()  # what another process may have written meanwhile
        except ContactsError:
            data = self._data
        entry = dict(data["contacts"].get(user) or {})
        entry["fingerprint"] = fingerprint_hex
        entry["verified"] = verified
        data["contacts"][user] = entry
        self._data = data
        self._save(data)

    def check(self, peer: PeerIdentity) -> str:
        """``"new"`` (not pinned before: pinned now), ``"same"`` or ``"changed"``."""
        pinned = self.fingerprint_of(peer.user)
        if pinned is None:
            try:
                self._data = self._read()  # pinned by another process meanwhile?
            except ContactsError:
                pass
            pinned = self.fingerprint_of(peer.user)
        if pinned is None:
            self.pin(peer.user, peer.fingerprint_hex)
            return "new"
        return "same" if pinned == peer.fingerprint_hex else "changed"


def _is_fingerprint_hex(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


# -- saved progress: the last sequence number processed per server and room ------------

PROGRESS_VERSION = 1


class ProgressError(Exception):
    """progress.json cannot be read or has a format this client does not know."""


def progress_path(home: Path, user: str) -> Path:
    return user_dir(home, user) / "progress.json"


def _server_key(server: str) -> str:
    """The same server however its URL is written at the end (a trailing slash)."""
    return server.rstrip("/")


def _is_seq(value: object) -> bool:
    return _is_int(value) and 0 <= value < 1 << 64


def _read_progress(path: Path) -> dict[str, dict[str, int]]:
    """The ``servers`` of ``HOME/USER/progress.json`` (shared with the Rust client)::

        {"version": 1, "servers": {"http://127.0.0.1:5555": {"lobby": 42}}}

    Empty if there is no file; :class:`ProgressError` for a file others can access, or
    one that is not of this format.
    """

    def unreadable(reason: str) -> ProgressError:
        return ProgressError(
            f"cannot read saved progress {path}: {reason}; fix it, or move it away to start "
            f"from the latest messages"
        )

    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise unreadable(f"it is accessible by other users (mode {mode:o}); run: chmod 600 {path}")
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise unreadable(exc.strerror or str(exc)) from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise unreadable(f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("servers"), dict):
        raise unreadable("not a progress file")
    if not _is_int(data.get("version")) or data["version"] != PROGRESS_VERSION:
        raise unreadable(f"version {data.get('version')!r} is not the supported {PROGRESS_VERSION}")
    for server, rooms in data["servers"].items():
        if not isinstance(rooms, dict) or not all(_is_seq(seq) for seq in rooms.values()):
            raise unreadable(f"the entry of {server!r} is not rooms and sequence numbers")
    return data["servers"]


def _write_progress(path: Path, servers: dict[str, dict[str, int]]) -> None:
    """Replaces the file atomically, mode 0600, laid out as the Rust client writes it."""
    ordered = {server: dict(sorted(rooms.items())) for server, rooms in sorted(servers.items())}
    text = json.dumps({"version": PROGRESS_VERSION, "servers": ordered}, indent=2) + "\n"
    _make_private_dirs(path.parent)
    _replace_file(path, text.encode("utf-8"))


def load_last_seq(path: Path, server: str, room: str) -> Optional[int]:
    """The last sequence number saved for ``room`` on ``server``, if any."""
    return _read_progress(path).get(_server_key(server), {}).get(room)


def save_last_seq(path: Path, server: str, room: str, seq: int) -> None:
    """Saves ``seq`` for ``room`` on ``server``. The file is read again first, so the
    entries other processes wrote meanwhile are kept. Raises :class:`ProgressError` or
    ``OSError``."""
    save_last_seqs(path, server, {room: seq})


def save_last_seqs(path: Path, server: str, seqs: dict[str, int]) -> None:
    """Saves the seq of each room of ``seqs`` on ``server`` in one write (the rooms of one
    stream), changing only those rooms' entries; raises as :func:`save_last_seq`."""
    servers = _read_progress(path)
    servers.setdefault(_server_key(server), {}).update(seqs)
    _write_progress(path, servers)


def forget_room(path: Path, server: str, room: str) -> None:
    """Forgets ``room`` on ``server``: the user left it, and joining it again is a new start."""
    servers = _read_progress(path)
    rooms = servers.get(_server_key(server))
    if rooms is None or room not in rooms:
        return
    del rooms[room]
    if not rooms:
        del servers[_server_key(server)]
    _write_progress(path, servers)
