"""docs/API.md's settings table against the declarations (common/settings.py and each vendor
module's settings): every declared variable documented, every documented one declared, and a
default the table states as a literal equal to the declared one."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

from common.settings import ServerLimits, Settings, declarations, declared_settings
from vendors.registry import VENDORS

API_MD = Path(__file__).resolve().parents[2] / "docs" / "API.md"
VARIABLE = re.compile(r"`([A-Z][A-Z0-9_]+)`")


def documented() -> dict[str, str]:
    """Variable -> its row's "unset" cell, from the configuration table(s) of API.md."""
    text = API_MD.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        names = VARIABLE.findall(cells[0])
        unset = cells[-1]
        parts = unset.split(" / ")
        for i, name in enumerate(names):
            # "`10` / `30`": one default per variable of the row, in order.
            rows[name] = parts[i] if len(parts) == len(names) else unset
    return rows


def defaults() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for cls in [Settings, ServerLimits, *(vendor.settings for vendor in VENDORS)]:
        for f in fields(cls):
            if "setting" in f.metadata and f.default is not MISSING:
                found[f.metadata["setting"].env] = f.default
    return found


def test_every_declared_setting_is_documented() -> None:
    missing = {d.env for d in declared_settings(VENDORS)} - set(documented())
    assert not missing, f"declared but not in docs/API.md's settings table: {sorted(missing)}"


def test_every_documented_setting_is_declared() -> None:
    unknown = set(documented()) - {d.env for d in declared_settings(VENDORS)}
    assert not unknown, f"in docs/API.md's settings table but declared nowhere: {sorted(unknown)}"


def test_every_declaration_says_what_it_is() -> None:
    for cls in [Settings, ServerLimits, *(vendor.settings for vendor in VENDORS)]:
        for name, declared in declarations(cls):
            assert declared.doc.strip(), f"{cls.__name__}.{name} ({declared.env}) has no doc"


def shown(value: Any) -> str:
    """A default as the table writes it."""
    if isinstance(value, tuple):
        return ",".join(shown(item) for item in value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else str(int(value))
    return str(value)


@pytest.mark.parametrize("name", sorted(defaults()))
def test_a_literal_default_in_the_table_is_the_declared_one(name: str) -> None:
    cell = documented().get(name, "")
    literal = re.match(r"`([^`]+)`", cell)
    if literal is None or defaults()[name] is None:
        return  # said in words ("disabled", "generated ..."): nothing literal to compare
    value = defaults()[name]
    if isinstance(value, Path):
        assert Path(literal.group(1)) == value
    else:
        assert literal.group(1) == shown(value), f"{name}: table says {cell!r}, declared {value!r}"
