"""Usernames and passwords (SECURITY A1-A3, NIST SP 800-63B 5.1.1.2).

Memorised secrets: 12 to 128 characters counted as Unicode code points after NFKC, never
truncated, checked against a shipped breached-password list; no composition rules and no
forced rotation (800-63B advises against both). Stored as argon2id (RFC 9106).
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from importlib.resources import files

from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from carechart.auth.errors import InvalidUsername, PasswordRejected

MIN_LENGTH = 12
MAX_LENGTH = 128
MAX_USERNAME_LENGTH = 254  # an e-mail address (RFC 5321 4.5.3.1.3 path limit less brackets)
PRODUCT_WORDS = ("carechart",)


def canonical_username(raw: str) -> str:
    """The form under which usernames and e-mail addresses are unique (SECURITY A1).

    NFKC folds compatibility forms ("Ａlice" -> "Alice"), casefold folds case beyond lower()
    ("Straße" -> "strasse"); NFKC again because casefolding can leave unnormalised text
    (the Unicode NFKC_Casefold recipe, UAX #15 / UTS #46).
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold()).strip()
    if not folded or len(folded) > MAX_USERNAME_LENGTH:
        raise InvalidUsername("a username must have 1 to 254 characters")
    if any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in folded):
        # Control, format and separator characters make look-alike names ("alice\u200b").
        raise InvalidUsername("a username may not contain control or invisible characters")
    return folded


def normalize_password(password: str) -> str:
    """NFKC, so the same passphrase typed on another keyboard or IME still matches (800-63B)."""
    return unicodedata.normalize("NFKC", password)


@lru_cache(maxsize=1)
def breached_passwords() -> frozenset[str]:
    """The shipped list (see ``carechart/data/SOURCE.md``), casefolded."""
    text = files("carechart").joinpath("data/breached_passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def _is_repetitive_or_sequential(folded: str) -> bool:
    # 800-63B names "repetitive or sequential characters (e.g. 'aaaaaa', '1234abcd')".
    if len(set(folded)) <= 2:
        return True
    steps = {ord(b) - ord(a) for a, b in itertools.pairwise(folded)}
    return steps <= {1} or steps <= {-1}


def check_password(password: str, *, context_words: Iterable[str] = ()) -> str:
    """Return the normalised password, or raise :class:`PasswordRejected`.

    ``context_words`` are the account's own words (username, e-mail local part), which
    800-63B asks to refuse alongside the service name.
    """
    normalized = normalize_password(password)
    if len(normalized) < MIN_LENGTH:
        raise PasswordRejected("too_short", f"a password needs at least {MIN_LENGTH} characters")
    if len(normalized) > MAX_LENGTH:
        raise PasswordRejected("too_long", f"a password may have at most {MAX_LENGTH} characters")
    folded = normalized.casefold()
    if folded in breached_passwords():
        raise PasswordRejected("breached", "this password appears in known password breaches")
    if _is_repetitive_or_sequential(folded):
        raise PasswordRejected("repetitive", "a password may not be a run of repeated characters")
    for word in (*PRODUCT_WORDS, *context_words):
        word_folded = normalize_password(word).casefold().strip()
        if len(word_folded) < 4 or word_folded not in folded:
            continue
        # "alice" + "1234567" or "carechart!!!2026": the word plus digits and punctuation
        # is guessable by anyone who knows the account.
        rest = folded.replace(word_folded, "")
        if all(not ch.isalpha() for ch in rest):
            raise PasswordRejected("context", "a password may not be built from the account name")
    return normalized


class PasswordHasher:
    """argon2id with the RFC 9106 second recommended profile (t=3, 64 MiB, p=4) by default.

    Tests may pass lighter parameters; :meth:`needs_rehash` then reports stored hashes made
    with other parameters so they are upgraded on the next successful login.
    """

    def __init__(
        self, *, time_cost: int = 3, memory_cost_kib: int = 65536, parallelism: int = 4
    ) -> None:
        self._argon2 = _Argon2(
            time_cost=time_cost,
            memory_cost=memory_cost_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._dummy: str | None = None

    def hash(self, password: str) -> str:
        """Hash a password that :func:`check_password` accepted (the encoded PHC string)."""
        normalized = normalize_password(password)
        if len(normalized) > MAX_LENGTH:
            raise PasswordRejected(
                "too_long", f"a password may have at most {MAX_LENGTH} characters"
            )
        return self._argon2.hash(normalized)

    def verify(self, stored_hash: str, password: str) -> bool:
        normalized = normalize_password(password)
        if len(normalized) > MAX_LENGTH:
            # Refuse without hashing: a megabyte "password" must not buy a megabyte of argon2.
            return False
        try:
            return self._argon2.verify(stored_hash, normalized)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def verify_unknown_user(self, password: str) -> bool:
        """Spend the same time as a real verification, so response time does not tell
        whether an account exists; always False."""
        if self._dummy is None:
            self._dummy = self._argon2.hash("carechart-dummy-password")
        self.verify(self._dummy, password)
        return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._argon2.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True
