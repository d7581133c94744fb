import base64
import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from carechart.crypto.keys import KeyRing, MasterKey, load_master_key
from carechart.db.schema import tenant_key
from carechart.errors import EncryptionError


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    first = load_master_key(None, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(None, path) == first


def test_environment_key_wins_over_the_file(tmp_path: Path) -> None:
    raw = os.urandom(32)
    key = load_master_key(base64.b64encode(raw).decode(), tmp_path / "absent.key")
    assert key.key == raw
    assert not (tmp_path / "absent.key").exists()


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
def test_a_malformed_master_key_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(EncryptionError):
        load_master_key(bad, tmp_path / "k")


def test_data_keys_are_stored_wrapped_never_in_clear(engine: Engine, tenant: str) -> None:
    master = MasterKey.from_bytes(os.urandom(32))
    ring = KeyRing(master, engine)
    data_key = ring.active(tenant)
    with engine.connect() as conn:
        wrapped = conn.execute(
            sa.select(tenant_key.c.wrapped_key).where(tenant_key.c.tenant_id == tenant)
        ).scalar_one()
    assert data_key.key not in wrapped
    # A second key ring (another process) unwraps the same key.
    assert KeyRing(master, engine).active(tenant).key == data_key.key


def test_tenants_get_different_data_keys(engine: Engine, tenant: str) -> None:
    ring = KeyRing(MasterKey.from_bytes(os.urandom(32)), engine)
    assert ring.active(tenant).key != ring.active(tenant + "-other").key


def test_a_different_master_key_cannot_open_the_data_keys(engine: Engine, tenant: str) -> None:
    KeyRing(MasterKey.from_bytes(os.urandom(32)), engine).active(tenant)
    with pytest.raises(EncryptionError):
        KeyRing(MasterKey.from_bytes(os.urandom(32)), engine).active(tenant)
