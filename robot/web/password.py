"""The one parent password: a salted scrypt hash in the state directory, never in the configuration file.

`storybot web-password` sets it (read from the terminal, or one line of standard input). The file holds the
scrypt parameters beside the hash, so that a later version can make them stronger without breaking old files.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from robot.plumbing.statefile import read_or_set_aside, write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_NAME = "web-password.json"
# 128 * r * n = 16 MiB of memory for about 50 ms on a small board's core: dear to guess in bulk, cheap to check
# once; the login rate limit does the rest.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM_BYTES = 64 * 1024 * 1024
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 256  # a login body is small; scrypt would take any length


class PasswordError(ValueError):
    """A password that cannot be set (too short, too long), or a password file that cannot be written."""


@dataclass(frozen=True)
class PasswordHash:
    salt: bytes
    digest: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    @classmethod
    def of(cls, password: str) -> PasswordHash:
        salt = secrets.token_bytes(SALT_BYTES)
        return cls(salt, _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))

    def matches(self, password: str) -> bool:
        if len(password) > MAX_PASSWORD_CHARS:
            return False
        return hmac.compare_digest(self.digest, _scrypt(password, self.salt, self.n, self.r, self.p))

    def as_dict(self) -> dict:
        return {
            "version": FORMAT_VERSION,
            "kdf": "scrypt",
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "salt": self.salt.hex(),
            "hash": self.digest.hex(),
        }


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM_BYTES, dklen=HASH_BYTES
    )


def password_path(state: Path) -> Path:
    return state / FILE_NAME


def load_hash(path: Path) -> PasswordHash | None:
    """The stored hash; None when no password is set (or the file is unreadable: it is moved aside and logged)."""
    data = read_or_set_aside(path, FORMAT_VERSION)
    if data is None:
        return None
    try:
        if data["kdf"] != "scrypt":
            raise ValueError(f"kdf {data['kdf']!r} is not scrypt")
        found = PasswordHash(
            bytes.fromhex(data["salt"]), bytes.fromhex(data["hash"]), int(data["n"]), int(data["r"]), int(data["p"])
        )
        if len(found.digest) != HASH_BYTES or found.n < 2 or found.n & (found.n - 1):
            raise ValueError("hash length or scrypt n is wrong")
        return found
    except (KeyError, TypeError, ValueError) as e:
        log.error("the parent password file %s is malformed (%s); set it again with storybot web-password", path, e)
        return None


def save_hash(path: Path, password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise PasswordError(f"the password is too short: at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise PasswordError(f"the password is too long: at most {MAX_PASSWORD_CHARS} characters")
    try:
        write_atomic(path, PasswordHash.of(password).as_dict())
        os.chmod(path, 0o600)
    except OSError as e:
        raise PasswordError(f"{path}: cannot be written ({e.strerror or e})") from None


def read_new_password() -> str:
    """From the terminal (twice), or the first line of standard input when it is not a terminal (scripts)."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("new parent password: ")
    if getpass.getpass("again: ") != first:
        raise PasswordError("the two passwords differ")
    return first


def set_password_command(state: Path) -> int:
    """`storybot web-password`: 0 when set, 1 with one line saying why not."""
    path = password_path(state)
    try:
        save_hash(path, read_new_password())
    except PasswordError as e:
        print(f"storybot: {e}", file=sys.stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print("storybot: no password given", file=sys.stderr)
        return 1
    print(f"storybot: parent password set ({path})", file=sys.stderr)
    return 0
