import os

import pytest

from carechart.crypto.aead import open_sealed, resource_ad, seal
from carechart.errors import EncryptionError


def test_sealed_data_opens_with_the_same_key_and_row() -> None:
    key = os.urandom(32)
    ad = resource_ad("t1", "Patient", "p1", 1)
    assert open_sealed(key, seal(key, b"secret", ad), ad) == b"secret"


@pytest.mark.parametrize(
    "other",
    [
        resource_ad("t2", "Patient", "p1", 1),
        resource_ad("t1", "Observation", "p1", 1),
        resource_ad("t1", "Patient", "p2", 1),
        resource_ad("t1", "Patient", "p1", 2),
    ],
)
def test_a_ciphertext_moved_to_another_row_fails_to_open(other: bytes) -> None:
    key = os.urandom(32)
    sealed = seal(key, b"secret", resource_ad("t1", "Patient", "p1", 1))
    with pytest.raises(EncryptionError):
        open_sealed(key, sealed, other)


def test_a_flipped_byte_is_detected() -> None:
    key = os.urandom(32)
    ad = b"ad"
    sealed = bytearray(seal(key, b"secret", ad))
    sealed[-1] ^= 1
    with pytest.raises(EncryptionError):
        open_sealed(key, bytes(sealed), ad)


def test_nonces_never_repeat() -> None:
    key = os.urandom(32)
    nonces = {seal(key, b"x", b"ad")[1:13] for _ in range(10_000)}
    assert len(nonces) == 10_000
