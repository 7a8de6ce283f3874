"""`taskhook users | keys | credits` as an operator runs them (issue 17.2)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskhook.cli import cli

Invoke = Callable[..., tuple[int, str]]


@pytest.fixture
def invoke(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TASKHOOK_DATA_DIR", str(tmp_path))
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        return result.exit_code, result.output

    return run


@pytest.mark.parametrize("email", ["nope", "a b@example.com", "ops@", "@example.com", "x@y"])
def test_users_create_refuses_what_is_not_an_email(invoke: Invoke, email: str) -> None:
    code, out = invoke("users", "create", email)
    assert code == 1 and "not an email address" in out
    assert json.loads(invoke("users", "list", "--json")[1]) == []


def test_keys_create_list_revoke(invoke: Invoke) -> None:
    first = json.loads(invoke("users", "create", "keys@example.com", "--credits", "2")[1])
    code, out = invoke("keys", "create", "keys@example.com")
    assert code == 0
    made = json.loads(out)
    assert set(made) == {"id", "api_key", "prefix"} and made["id"].startswith("key_")
    assert made["api_key"].startswith(made["prefix"]) and made["api_key"] != first["api_key"]

    code, out = invoke("keys", "list", "keys@example.com")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["id", "prefix", "created", "revoked"]
    assert lines[1].startswith(made["id"]) and len(lines) == 3
    assert made["api_key"] not in out

    code, out = invoke("keys", "revoke", made["id"])
    assert code == 0 and json.loads(out)["revoked_at"].endswith("Z")
    listed = json.loads(invoke("keys", "list", "keys@example.com", "--json")[1])
    assert [k["revoked_at"] is not None for k in listed] == [True, False]

    assert invoke("keys", "revoke", "key_" + "0" * 32)[0] == 1
    assert invoke("keys", "revoke", "tsk_" + "0" * 32)[0] == 1
    assert invoke("keys", "create", "nobody@example.com")[0] == 1


def test_credits_adjust_with_reason_never_below_zero(invoke: Invoke) -> None:
    invoke("users", "create", "money@example.com", "--credits", "5")
    code, out = invoke("credits", "adjust", "money@example.com", "-3", "--reason", "refund fix")
    assert code == 0 and json.loads(out) == {
        "email": "money@example.com",
        "credits": 2,
        "adjusted": -3,
    }
    code, out = invoke("credits", "adjust", "money@example.com", "-3", "--reason", "too much")
    assert code == 1 and "below zero" in out
    assert json.loads(invoke("credits", "show", "money@example.com")[1])["credits"] == 2
    assert invoke("credits", "adjust", "money@example.com", "4")[0] == 2  # --reason required
    assert invoke("credits", "adjust", "money@example.com", "0", "--reason", "x")[0] == 1
    code, out = invoke("credits", "adjust", "money@example.com", "+10", "--reason", "promo")
    assert code == 0 and json.loads(out)["credits"] == 12
    assert invoke("audit")[0] == 0  # balance = sum(ledger) with adjustments in it


def test_users_list(invoke: Invoke) -> None:
    invoke("users", "create", "b@example.com", "--credits", "3")
    invoke("users", "create", "a@example.com")
    code, out = invoke("users", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["email", "id", "credits"]
    assert [line.split()[0] for line in lines[1:]] == ["a@example.com", "b@example.com"]
    rows = json.loads(invoke("users", "list", "--json")[1])
    assert [(r["email"], r["credits"], r["keys"]) for r in rows] == [
        ("a@example.com", 0, 1),
        ("b@example.com", 3, 1),
    ]
