"""``smartcache serve / status / stop``: parsing, the table, and errors as ``error: ...`` with exit 2."""

from __future__ import annotations

import pytest

from cache_service.api.samples import cache_status
from trainer.cli import build_parser, main
from cache_service.cli import format_status


def test_parser_defaults() -> None:
    serve = build_parser().parse_args(["serve"])
    assert (serve.host, serve.port, serve.foreground, serve.namespace) == ("127.0.0.1", 8740, False, "smartcache")
    status = build_parser().parse_args(["status", "--json", "--url", "http://h:1"])
    assert status.json and status.url == "http://h:1"
    assert build_parser().parse_args(["stop", "--address", "auto"]).address == "auto"


def test_status_table_names_the_pool_and_the_sampler() -> None:
    table = format_status([cache_status().model_dump()])
    assert "cache 0123456789abcdef  ready  pool 6/6 of 12 items" in table
    assert "case_02(4)" in table and "quarantined case_11" in table
    row = next(line for line in table.splitlines() if "spleen-a1b2c3" in line)
    assert row.split()[1:5] == ["17", "2.750", "73%", "0.885"]
    assert format_status([]) == "no cache is running in this namespace"


def test_unsafe_bind_and_unreachable_api_are_clean_errors(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMARTCACHE_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to bind 0.0.0.0:8740 without a token" in capsys.readouterr().err
    assert main(["status", "--url", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the status API" in capsys.readouterr().err
