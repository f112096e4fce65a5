"""``smartcache serve / status / stop``: parsing, the table, and errors as ``error: ...`` with exit 2."""

from __future__ import annotations

import pytest

from cache_service.api.samples import cache_status
from trainer.cli import build_parser, main
from cache_service.cli import format_status, printable


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


def test_status_escapes_control_characters_in_ids() -> None:
    hostile = "exp\x1b[2J\x1b]0;pwned\x07\r\u202eevil"
    status = cache_status().model_dump()
    status["experiments"][0]["experiment_id"] = hostile
    status["pool"][0] = "case\x1b[31m"
    table = format_status([status])
    assert "\x1b" not in table and "\x07" not in table and "\r" not in table and "\u202e" not in table
    assert "exp\\x1b[2J\\x1b]0;pwned\\x07\\r\\u202eevil" in table and "case\\x1b[31m" in table
    assert printable("plain-id_1.2 é") == "plain-id_1.2 é"


def test_the_printed_dashboard_url_says_how_to_pass_the_token_without_printing_it() -> None:
    from cache_service.api.settings import ApiSettings
    from cache_service.cli import _dashboard_hint

    assert _dashboard_hint("http://h:1", ApiSettings()) == "http://h:1/"
    hint = _dashboard_hint("http://h:1", ApiSettings(host="0.0.0.0", token="s3cret"))
    assert hint.startswith("http://h:1/#token=<your token>") and "s3cret" not in hint


def test_a_second_serve_with_other_settings_is_told_what_differs() -> None:
    from cache_service.api.settings import ApiSettings

    running = ApiSettings()
    assert running.differences(ApiSettings()) == []
    asked = ApiSettings(host="0.0.0.0", token="X")
    assert running.differences(asked) == ["host 127.0.0.1 (asked 0.0.0.0)", "no token (asked with one)"]
    assert ApiSettings(token="a").differences(ApiSettings(token="b")) == ["a different token"]
    assert ApiSettings(token="a").differences(ApiSettings(port=1)) == ["port 8740 (asked 1)",
                                                                       "a token (asked without one)"]


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """cmd_stop without Ray: one cache with two attached experiments; records what was stopped."""
    from cache_service.api import server
    from cache_service import client
    from cache_service import cli as service_commands

    stopped: list[str] = []
    monkeypatch.setattr(service_commands, "_connect_ray", lambda address: None)
    monkeypatch.setattr(service_commands, "_attached",
                        lambda ns: ["cache ab12: spleen-1", "cache ab12: tune\x1b[31m-2"])
    monkeypatch.setattr(server, "stop_api", lambda ns: stopped.append("api") or True)
    monkeypatch.setattr(client, "stop_caches", lambda ns: stopped.append("caches") or ["smartcache-ab12"])
    return stopped


def test_stop_lists_attached_experiments_and_wants_force(fake_cluster: list[str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stop", "--namespace", "ns"]) == 2
    err = capsys.readouterr().err
    assert "2 experiment(s) are attached in namespace 'ns'" in err and "spleen-1" in err and "--force" in err
    assert "tune\\x1b[31m-2" in err and "\x1b" not in err
    assert fake_cluster == []  # nothing stopped
    assert main(["stop", "--namespace", "ns", "--force"]) == 0
    out = capsys.readouterr().out
    assert "detaching 2 experiment(s): cache ab12: spleen-1" in out and "stopped smartcache-api, smartcache-ab12" in out
    assert fake_cluster == ["api", "caches"]
