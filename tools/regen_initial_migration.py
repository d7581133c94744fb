"""Regenerate the initial Alembic migration from the declared tables (before 1.0 only).

Until the first release the schema has one migration; this rebuilds it with Alembic's
autogenerate against an empty SQLite database and re-adds what autogenerate cannot see
(the append-only audit triggers). After a release, add new revisions instead.
"""

from __future__ import annotations

import pprint
import re
import tempfile
from pathlib import Path

from alembic import command

from carechart.db.auth_schema import AUDIT_TRIGGER_SQL
from carechart.db.engine import make_engine
from carechart.db.migrate import MIGRATIONS, alembic_config

TARGET = MIGRATIONS / "versions" / "0001_initial_schema.py"
TRIGGERS_HEADER = """
# Append-only audit store (SECURITY C3). Written out here, not imported, so this migration
# keeps meaning what it meant when it was written.
"""
# The statements come from carechart.db.auth_schema (the one definition); only the drops,
# which the application never needs, live here.
TRIGGER_DROPS = """
AUDIT_TRIGGER_DROPS = {
    "sqlite": (
        "DROP TRIGGER IF EXISTS audit_event_no_update",
        "DROP TRIGGER IF EXISTS audit_event_no_delete",
    ),
    "postgresql": (
        "DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_event",
        "DROP TRIGGER IF EXISTS audit_event_no_update_delete ON audit_event",
        "DROP FUNCTION IF EXISTS audit_event_append_only()",
    ),
}
"""
END = "    # ### end Alembic commands ###\n"


def main() -> None:
    TARGET.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'empty.db'}")
        command.revision(
            alembic_config(engine), message="initial schema", autogenerate=True, rev_id="0001"
        )
        engine.dispose()
    text = TARGET.read_text()
    text = re.sub(r"^Create Date: .*\n", "", text, flags=re.M)
    text = re.sub(r"^Revises: $", "Revises:", text, flags=re.M)
    triggers = (
        TRIGGERS_HEADER
        + "AUDIT_TRIGGERS = "
        + pprint.pformat({k: list(v) for k, v in AUDIT_TRIGGER_SQL.items()}, width=96)
        + "\n"
        + TRIGGER_DROPS
    )
    text = text.replace(
        "\n\ndef upgrade() -> None:", "\n" + triggers + "\n\ndef upgrade() -> None:", 1
    )
    first_end = text.index(END)
    text = (
        text[: first_end + len(END)]
        + "    for statement in AUDIT_TRIGGERS.get(op.get_bind().dialect.name, ()):\n"
        + "        op.execute(statement)\n"
        + text[first_end + len(END) :]
    )
    text = text.replace(
        "def downgrade() -> None:\n",
        "def downgrade() -> None:\n"
        "    for statement in AUDIT_TRIGGER_DROPS.get(op.get_bind().dialect.name, ()):\n"
        "        op.execute(statement)\n",
        1,
    )
    TARGET.write_text(text)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
