"""Which files the daemon trusts: minisign signatures (Ed25519, the format of the `minisign`
tool Debian ships) on the zoo's manifest and on policy files, by keys the operator names.

A leaf, like `agent.errors`: the zoo and the policy store are handed `TrustedKeys.check` and
call it on the bytes they have just read and are about to parse, so what is verified is what is
used (read once, verify, parse). py-minisign does the cryptography; this module only finds the
files, words the refusals in one line each, and writes signatures for `edge-agent ... sign`.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import minisign

from agent.errors import AgentError
from agent.private_files import write_atomic

SIGNATURE_SUFFIX = ".minisig"
#: A .minisig is four lines; its trusted comment is at most 8 KiB. Anything larger is not one.
MAX_SIGNATURE_BYTES = 16 * 1024
#: A public key file is two short lines.
MAX_KEY_BYTES = 4 * 1024


class SignatureError(AgentError):
    """A file that must be signed is not, or not by a trusted key, or not as it is now."""

    code = "bad_signature"
    status = 422


def key_id(raw: bytes) -> str:
    """A key id as minisign prints it (`minisign public key 9D9DECBB187C6DED`): the 8 bytes
    read as a little-endian number, in upper-case hex without leading zeros (printf's PRIX64)."""
    return f"{int.from_bytes(raw, 'little'):X}"


def signature_path(path: Path) -> Path:
    """Where `minisign -Sm FILE` puts FILE's signature."""
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def _read_small(path: Path, limit: int) -> bytes:
    """A small regular file's bytes; opened non-blocking, so a FIFO in its place cannot hang us."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(0, f"larger than {limit} bytes")
    return data


@dataclass(frozen=True)
class TrustedKey:
    id: str
    path: Path
    key: minisign.PublicKey


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a signature must be made by (the `trusted_keys` setting), by raw key id."""

    keys: dict[bytes, TrustedKey]

    @property
    def ids(self) -> list[str]:
        return sorted(k.id for k in self.keys.values())

    def status(self) -> dict[str, object]:
        """For `GET /v1/status`: signatures are required, and by which keys."""
        return {"required": True, "keys": [{"id": k.id, "file": str(k.path)} for k in self.keys.values()]}

    def verify(self, name: str, data: bytes, signature: bytes | None, sig_name: str) -> None:
        """Raise SignatureError (one line, starting with `name`) unless `signature` (the bytes of
        the .minisig file `sig_name`, None when there is none) is a valid signature of `data` by a
        trusted key. Legacy (`minisign -l`) and prehashed (minisign's default) both count."""
        if signature is None:
            raise SignatureError(f"{name}: no signature ({sig_name} missing)")
        try:
            parsed = minisign.Signature.from_bytes(signature)
        except minisign.Error as exc:
            raise SignatureError(f"{name}: {sig_name} is not a minisign signature ({exc})") from None
        signer = parsed._key_id  # py-minisign keeps the id private; the format puts it in the clear
        trusted = self.keys.get(signer)
        if trusted is None:
            raise SignatureError(
                f"{name}: signature by untrusted key {key_id(signer)} (trusted: {', '.join(self.ids)})"
            )
        try:
            trusted.key.verify(data, parsed)
        except minisign.VerifyError:
            raise SignatureError(f"{name}: signature does not match (edited after signing?)") from None

    def check(self, path: Path, data: bytes) -> None:
        """Verify `data`, just read from `path`, against `path`'s .minisig beside it."""
        sig_path = signature_path(path)
        try:
            signature: bytes | None = _read_small(sig_path, MAX_SIGNATURE_BYTES)
        except FileNotFoundError:
            signature = None
        except OSError as exc:
            raise SignatureError(f"{path}: cannot read {sig_path.name} ({exc.strerror or exc})") from None
        self.verify(str(path), data, signature, sig_path.name)


def load_trusted_keys(paths: Sequence[Path]) -> TrustedKeys:
    """The public key files of the `trusted_keys` setting (as `minisign -G` writes them); an
    unreadable or malformed one is an AgentError naming it, so the daemon does not start on a
    trust setting that does not mean what the operator thinks."""
    keys: dict[bytes, TrustedKey] = {}
    for path in paths:
        try:
            key = minisign.PublicKey.from_bytes(_read_small(path, MAX_KEY_BYTES))
        except OSError as exc:
            raise AgentError(f"trusted_keys: cannot read public key {path} ({exc.strerror or exc})") from None
        except minisign.Error as exc:
            raise AgentError(f"trusted_keys: {path} is not a minisign public key ({exc})") from None
        raw = key._keynum_pk.key_id
        keys[raw] = TrustedKey(id=key_id(raw), path=path, key=key)
    return TrustedKeys(keys)


# -- signing, for `edge-agent zoo sign` / `policy sign` -------------------------------------------


def load_secret_key(path: Path) -> minisign.SecretKey:
    """A minisign secret key file as stored (maybe encrypted: `minisign -G` without -W);
    AgentError when it cannot be read or is not one."""
    try:
        return minisign.SecretKey.from_bytes(_read_small(path, MAX_KEY_BYTES))
    except OSError as exc:
        raise AgentError(f"cannot read secret key {path} ({exc.strerror or exc})") from None
    except minisign.Error as exc:
        raise AgentError(f"{path} is not a minisign secret key ({exc})") from None


def unlock(secret: minisign.SecretKey, path: Path, password: str | None) -> None:
    """Decrypt an encrypted key in place; AgentError without a password or with a wrong one."""
    if not secret.is_encrypted():
        return
    if password is None:
        raise AgentError(f"{path} is encrypted: give its password")
    try:
        secret.decrypt(password)
    except minisign.Error as exc:
        raise AgentError(f"{path}: {exc}") from None


def sign_file(path: Path, secret: minisign.SecretKey) -> Path:
    """Sign `path` as `minisign -Sm PATH` does (prehashed, the same trusted comment) and write
    PATH.minisig atomically (a reader sees the old signature or the new one, never half); returns it."""
    data = path.read_bytes()
    comment = f"timestamp:{int(time.time())}\tfile:{path.name}\thashed"
    signature = secret.sign(data, prehash=True, trusted_comment=comment)
    out = signature_path(path)
    write_atomic(out, bytes(signature) + b"\n", 0o644)  # public, and the daemon's user reads it
    return out
