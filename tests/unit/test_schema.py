"""The table of the six calls (``rudder_fast.schema``) is the one truth: the Emitter's methods, track's
inlined hot path, the wire mapping, replay, the drop-in module and the README all agree with it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from rudder_fast import Emitter, analytics
from rudder_fast.cli import replay_kwargs
from rudder_fast.events import KEYWORDS, record
from rudder_fast.schema import CALLS, COMMON, R_CALL_NS, WIRE_TO_KEYWORD
from rudder_fast.wire import WireMapper

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_emitter_method_takes_exactly_the_tables_fields(name: str) -> None:
    params = inspect.signature(getattr(Emitter, name)).parameters
    keyword_only = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keyword_only == set(CALLS[name].keywords)
    assert list(params)[:2] == ["self", "message"]  # and the docs' one-mapping form
    assert KEYWORDS[name] == CALLS[name].keywords
    assert getattr(Emitter, name).__doc__, f"Emitter.{name} has no docstring"


@pytest.mark.parametrize("name", sorted(CALLS))
def test_the_drop_in_takes_every_field_of_the_table(name: str) -> None:
    params = set(inspect.signature(getattr(analytics, name)).parameters)
    assert params == set(CALLS[name].keywords) - ({"anonymous_id"} if name == "alias" else set())


CASES: list[dict[str, Any]] = [
    {"user_id": "u", "event": "E"},
    {"anonymous_id": "a", "event": "E", "properties": {"x": 1}},
    {"user_id": 42, "event": "E", "context": {"ip": "1.2.3.4"}, "integrations": {"All": False}},
    {"user_id": "u", "event": "E", "timestamp": "2026-11-26T10:01:02.345Z", "message_id": "m-1"},
]


@pytest.mark.parametrize("values", CASES)
def test_tracks_inlined_hot_path_builds_the_tables_record(values: dict[str, Any], tmp_path: Path) -> None:
    em = Emitter(tmp_path / "spool")
    built: list[list[Any]] = []

    def keep(rec: list[Any], now: int) -> str:
        built.append(rec)
        return "id"

    em._append = keep
    em.track(**values)
    (hot,) = built
    by_table = record(CALLS["track"], hot[R_CALL_NS], values)
    assert hot == by_table


@pytest.mark.parametrize("name", sorted(CALLS))
def test_wire_names_and_replay_follow_the_table(name: str) -> None:
    call = CALLS[name]
    values: dict[str, Any] = {"user_id": "u", "anonymous_id": "a", "message_id": "m"}
    for field in call.fields:
        values[field.name] = {"k": 1} if field.check == "json" else f"v-{field.name}"
    event = WireMapper("1.0").event(record(call, 1_800_000_000_000_000_000, values), "0" * 16, 1)
    for field in (*COMMON, *call.fields):
        if field.name in values:
            assert field.wire in event, field
    method, kwargs = replay_kwargs(_plain(event))
    assert method == name
    for field in call.fields:
        assert kwargs[field.name] == values[field.name]
    assert {WIRE_TO_KEYWORD[f.wire] for f in call.fields} == {f.name for f in call.fields}


def _plain(event: dict[str, Any]) -> dict[str, Any]:
    import orjson

    plain: dict[str, Any] = orjson.loads(orjson.dumps(event))
    return plain


def test_the_readmes_field_list_is_the_table() -> None:
    text = README.read_text()
    section = text[text.index("## The producer API") :]
    section = section[: section.index("\n## ")]
    for field in COMMON:
        assert f"`{field.name}`" in section, field.name
    for name, call in CALLS.items():
        fields = ", ".join(f.name for f in call.fields)
        pattern = rf"`{name}\({re.escape(fields)}\)`|`page`/`screen\({re.escape(fields)}\)`"
        assert re.search(pattern, section), f"the README does not list {name}({fields})"
