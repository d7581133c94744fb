"""The README's reference tables are the code's: the role matrix and the settings."""

from __future__ import annotations

import re
from pathlib import Path

from carechart.access.matrix import matrix_rows
from carechart.auth.principal import Role
from carechart.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_role_matrix_in_the_readme_is_the_enforced_one() -> None:
    header = "| category | " + " | ".join(role.value for role in Role) + " |"
    assert header in README
    for category, cells in matrix_rows():
        row = f"| {category} | " + " | ".join(cells) + " |"
        assert row in README, f"README role matrix row differs: {row}"


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`CARECHART_([A-Z_]+)`", README))
    missing = {name.upper() for name in Settings.model_fields} - documented
    assert not missing, f"settings missing from the README: {sorted(missing)}"
