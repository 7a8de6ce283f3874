"""The error tree in common/errors.py's docstring is the real one: every class, its parent,
its status and its code (it had drifted once: issue 19.6)."""

from __future__ import annotations

import inspect
import re

from common import errors

_LINE = re.compile(r"^(?P<indent> *)(?P<name>[A-Z]\w+)(?: +(?P<status>\d{3}) (?P<code>[a-z_]+))?")


def _tree() -> dict[str, tuple[str | None, int | None, str | None]]:
    """name -> (parent named by the indentation, status, code), as the docstring draws it."""
    assert errors.__doc__ is not None
    body = errors.__doc__.split("\n\n")[1]
    drawn: dict[str, tuple[str | None, int | None, str | None]] = {}
    parents: list[tuple[int, str]] = []
    for line in body.splitlines():
        found = _LINE.match(line)
        assert found, line
        depth = len(found["indent"])
        while parents and parents[-1][0] >= depth:
            parents.pop()
        status = int(found["status"]) if found["status"] else None
        drawn[found["name"]] = (parents[-1][1] if parents else None, status, found["code"])
        parents.append((depth, found["name"]))
    return drawn


def test_the_docstring_draws_every_error_class_as_it_is() -> None:
    classes = {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == errors.__name__
    }
    drawn = _tree()
    assert set(drawn) == set(classes)
    for name, (parent, status, code) in drawn.items():
        cls = classes[name]
        base = cls.__bases__[0].__name__
        assert parent == (None if base == "Exception" else base), name
        assert status == getattr(cls, "status_code", None), name
        assert code == getattr(cls, "code", None), name
