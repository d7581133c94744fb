"""SECURITY A1-A3: usernames, the password rule, argon2id storage."""

from __future__ import annotations

from importlib.resources import files

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carechart.auth.errors import InvalidUsername, PasswordRejected
from carechart.auth.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    PasswordHasher,
    breached_passwords,
    canonical_username,
    check_password,
)

GOOD = "plum tuesday orbit lantern"


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    # Light parameters keep the suite fast; the production profile is tested separately.
    return PasswordHasher(time_cost=1, memory_cost_kib=1024, parallelism=1)


def _reason(password: str, **kwargs: list[str]) -> str:
    with pytest.raises(PasswordRejected) as caught:
        check_password(password, **kwargs)
    assert caught.value.status == 422
    return caught.value.reason


def test_password_shorter_than_12_characters_is_refused() -> None:
    assert _reason("plum tuesda") == "too_short"


def test_password_of_12_characters_is_accepted() -> None:
    assert check_password("plum tuesday") == "plum tuesday"


def test_password_of_128_characters_is_accepted_and_129_refused() -> None:
    unit = "Vq7 plum lantern "
    long = (unit * 10)[:MAX_LENGTH]
    assert check_password(long) == long
    assert _reason(long + "x") == "too_long"


def test_long_password_is_never_truncated(hasher: PasswordHasher) -> None:
    # bcrypt would ignore everything past byte 72; these differ only at character 128.
    base = ("orbit lantern tuesday " * 6)[: MAX_LENGTH - 1]
    stored = hasher.hash(base + "a")
    assert hasher.verify(stored, base + "a")
    assert not hasher.verify(stored, base + "b")
    assert not hasher.verify(stored, base)


def test_length_is_counted_after_nfkc() -> None:
    # "㎏" (one code point) becomes "kg" (two) under NFKC: 11 + 1 raw, 13 after.
    assert check_password("plum tuesda㎏") == "plum tuesdakg"
    assert MIN_LENGTH == 12


def test_password_is_nfkc_normalised_before_hashing(hasher: PasswordHasher) -> None:
    fullwidth = "ｐｌｕｍ ｔｕｅｓｄａｙ ｏｒｂｉｔ"
    stored = hasher.hash(fullwidth)
    assert hasher.verify(stored, "plum tuesday orbit")


@pytest.mark.parametrize(
    "password",
    [
        "password1234",
        "123456789012",
        "qwertyuiop123",
        "Password1234",
        "ＰＡＳＳＷＯＲＤ1234",
        "1qaz2wsx3edc",
    ],
)
def test_breached_password_is_refused(password: str) -> None:
    assert _reason(password) == "breached"


def test_breached_list_is_shipped_with_its_source() -> None:
    data = files("carechart").joinpath("data")
    source = data.joinpath("SOURCE.md").read_text("utf-8")
    assert "Django" in source
    assert "zxcvbn" in source
    assert len(breached_passwords()) > 300
    assert all(MIN_LENGTH <= len(p) <= MAX_LENGTH for p in breached_passwords())


@pytest.mark.parametrize(
    "password", ["aaaaaaaaaaaaaa", "abababababab", "abcdefghijklmnop", "987654321098"]
)
def test_repetitive_or_sequential_password_is_refused(password: str) -> None:
    assert _reason(password) in {"repetitive", "breached"}


def test_password_built_from_the_username_is_refused() -> None:
    assert _reason("Alice.Smith2024!", context_words=["alice.smith"]) == "context"
    assert _reason("carechart12345") == "context"


def test_no_composition_rule_for_a_long_passphrase() -> None:
    # No digits, no capitals, no symbols: 800-63B forbids demanding them.
    assert check_password(GOOD) == GOOD


def test_hash_is_salted_argon2id(hasher: PasswordHasher) -> None:
    first, second = hasher.hash(GOOD), hasher.hash(GOOD)
    assert first.startswith("$argon2id$")
    assert first != second
    assert GOOD not in first
    assert hasher.verify(first, GOOD)
    assert not hasher.verify(first, GOOD + "!")


def test_default_profile_is_rfc9106_second_recommendation() -> None:
    stored = PasswordHasher().hash(GOOD)
    assert "$argon2id$v=19$m=65536,t=3,p=4$" in stored


def test_hash_made_with_old_parameters_needs_rehash(hasher: PasswordHasher) -> None:
    stored = hasher.hash(GOOD)
    assert not hasher.needs_rehash(stored)
    assert PasswordHasher(time_cost=2, memory_cost_kib=1024, parallelism=1).needs_rehash(stored)


def test_garbage_hash_does_not_verify(hasher: PasswordHasher) -> None:
    assert not hasher.verify("not-a-hash", GOOD)
    assert hasher.needs_rehash("not-a-hash")


def test_oversized_password_is_refused_without_hashing(hasher: PasswordHasher) -> None:
    stored = hasher.hash(GOOD)
    assert not hasher.verify(stored, "x" * 1_000_000)
    with pytest.raises(PasswordRejected):
        hasher.hash("x" * (MAX_LENGTH + 1))


def test_unknown_user_verification_is_always_false(hasher: PasswordHasher) -> None:
    assert not hasher.verify_unknown_user(GOOD)


@pytest.mark.parametrize("variant", ["alice", "ALICE", "Ａlice", "ａｌｉｃｅ", " Alice "])
def test_usernames_collide_after_nfkc_and_casefold(variant: str) -> None:
    assert canonical_username(variant) == canonical_username("Alice") == "alice"


def test_email_casefold_goes_beyond_lower() -> None:
    assert canonical_username("STRASSE@Example.org") == canonical_username("straße@example.org")


@pytest.mark.parametrize("name", ["", "   ", "alice\u200b", "al\x00ice", "a" * 255])
def test_invalid_username_is_refused(name: str) -> None:
    with pytest.raises(InvalidUsername):
        canonical_username(name)


@given(st.text(min_size=1, max_size=40))
def test_canonical_username_is_idempotent(raw: str) -> None:
    try:
        once = canonical_username(raw)
    except InvalidUsername:
        return
    assert canonical_username(once) == once
