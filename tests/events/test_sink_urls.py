"""Sink URLs are read as ``urllib.parse`` reads them, whether or not it is imported: a plain
``file:///`` URL is split without it (the supervisor leaves it out, docs/launcher.md
"Memory"), and every other one through it."""

from __future__ import annotations

import random
from urllib.parse import unquote, urlsplit

import pytest

from kernel_guard.events.sinks import describe_url, file_path, split_url, validate_sink_url
from kernel_guard.exceptions import ConfigError

PARTS = ("scheme", "netloc", "path", "query", "fragment", "hostname")


def _reading(split, url: str) -> tuple:
    try:
        parts = split(url)
    except ValueError as exc:  # "Invalid IPv6 URL" ...: the same error both ways
        return ("ValueError", str(exc))
    try:
        port = parts.port
    except ValueError as exc:
        port = f"ValueError: {exc}"
    return tuple(getattr(parts, name) for name in PARTS) + (port,)


def _read_alike(url: str) -> None:
    reading = _reading(split_url, url)
    assert reading == _reading(urlsplit, url), url
    if reading[0] != "ValueError":
        assert file_path(url) == unquote(urlsplit(url).path), url


@pytest.mark.parametrize("url", [
    "file:///var/log/kernel-guard/events.jsonl", "file:///tmp/kg-x/e.jsonl", "file:////double/slash",
    "file:///", "file:///a~b+c_d-e.f", "file:///with%20space", "file:///q?x=1", "file:///h#frag",
    "file:///tab\there", "file:///end\n", " file:///lead", "file:///caf\u00e9", "file://localhost/var/x",
    "file://host/x", "FILE:///upper", "file:/one-slash", "file:relative", "file:///a[b]", "file:///a:b@c",
    "syslog+unix:///dev/log", "http://[::1]:4318/v1/logs", "otlp+http://collector:4318/v1/logs",
])
def test_known_urls_are_read_as_urlsplit_reads_them(url: str) -> None:
    _read_alike(url)


def test_random_urls_are_read_as_urlsplit_reads_them() -> None:
    """5,000 URLs of plain and special characters after file:/// and its near spellings."""
    rng = random.Random(7)
    plain = "abcXYZ019/._-~+"
    special = "%?#;:@[]\\ \t\n\r\x00\x7f\u00e9\u2028=&!$'()*,"
    prefixes = ("file:///", "file://", "file:/", "file:", "File:///", "file:////", " file:///", "file:///\t")
    for _ in range(5000):
        body = "".join(rng.choice(plain if rng.random() < 0.85 else special) for _ in range(rng.randint(0, 24)))
        _read_alike(rng.choice(prefixes) + body)


def test_validation_and_descriptions_are_unchanged_for_file_urls() -> None:
    assert validate_sink_url("file:///var/log/kg/events.jsonl") == "file:///var/log/kg/events.jsonl"
    assert describe_url("file:///var/log/kg/events.jsonl") == "file:///var/log/kg/events.jsonl"
    with pytest.raises(ConfigError, match="needs an absolute path"):
        validate_sink_url("file://host/var/log/events.jsonl")
    assert file_path("file:///var/log/kg/a%20b.jsonl") == "/var/log/kg/a b.jsonl"
