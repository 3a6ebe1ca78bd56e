"""Configuration: traitlets settings, the environment, trusted and untrusted config files."""

from __future__ import annotations

import os
import pytest
from traitlets import TraitError
from traitlets.config import Config

from conftest import assert_short_refusal
from kernel_guard.config import KernelGuard, load_config, trusted_file
from kernel_guard.testing import plain_kernel_argv


def test_environment_sets_mode_and_sinks(monkeypatch):
    """KERNEL_GUARD_MODE and KERNEL_GUARD_SINKS are the defaults of the traits."""
    monkeypatch.setenv("KERNEL_GUARD_MODE", "audit")
    monkeypatch.setenv("KERNEL_GUARD_SINKS", "stderr://, file:///var/log/kg.jsonl")
    guard = KernelGuard()
    assert guard.mode == "audit"
    assert guard.sinks == ["stderr://", "file:///var/log/kg.jsonl"]


def test_defaults_are_strict(monkeypatch):
    """With nothing set: enforce, stderr sink, package magics refused, code truncated."""
    monkeypatch.delenv("KERNEL_GUARD_MODE", raising=False)
    monkeypatch.delenv("KERNEL_GUARD_SINKS", raising=False)
    guard = KernelGuard()
    assert (guard.mode, guard.sinks, guard.unsafe_allow_package_magics, guard.code_policy) == \
        ("enforce", ["stderr://"], False, "truncated")


def test_bad_environment_values_fall_back_to_strict_and_are_reported(monkeypatch):
    """A wrong KERNEL_GUARD_MODE or sink URL never weakens the guard; it is reported."""
    monkeypatch.setenv("KERNEL_GUARD_MODE", "off")
    monkeypatch.setenv("KERNEL_GUARD_SINKS", "ftp://collector/x")
    guard, ignored = load_config(Config())
    assert guard.mode == "enforce" and guard.sinks == ["stderr://"]
    settings = {item["setting"] for item in ignored}
    assert settings == {"KERNEL_GUARD_MODE", "KERNEL_GUARD_SINKS"}


@pytest.mark.parametrize("trait,value,message", [
    ("sinks", ["udp://x:1"], "unknown sink scheme"),
    ("sinks", ["file://logs/e.jsonl"], "absolute path"),
    ("queue_size", 5, "between 100"),
    ("code_max_chars", -1, "0 or more"),
    ("extra_persistence_paths", ["relative/dir"], "absolute path"),
    ("mode", "off", "enforce"),
])
def test_invalid_settings_name_the_setting(trait, value, message):
    """Validation messages name the setting and what a valid value looks like."""
    with pytest.raises(TraitError, match=message):
        KernelGuard(**{trait: value})


def test_every_trait_has_help():
    """Every configurable trait is documented."""
    for name, trait in KernelGuard.class_traits(config=True).items():
        assert trait.help and len(trait.help) > 20, name


def test_trusted_file_rules(tmp_path, monkeypatch):
    """Root-owned files outside the home are trusted; files in the home, or writable by others, are not."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    admin = etc / "ipython_kernel_config.py"
    admin.write_text("")
    admin.chmod(0o644)
    user = home / "ipython_kernel_config.py"
    user.write_text("")
    assert trusted_file(str(admin)) is (os.getuid() == 0)
    assert not trusted_file(str(user))
    admin.chmod(0o666)
    assert not trusted_file(str(admin))


def _write_user_config(kernel, text):
    profile = os.path.join(kernel.home, ".ipython", "profile_default")
    os.makedirs(profile, exist_ok=True)
    with open(os.path.join(profile, "ipython_kernel_config.py"), "w") as fh:
        fh.write(text)


def test_user_config_cannot_weaken_but_can_strengthen(make_kernel):
    """In the user's profile, mode='audit' is ignored (and recorded) while code_policy='full' applies."""
    kernel = make_kernel(start=False)
    extra_sink = os.path.join(kernel.root, "user-sink.jsonl")
    _write_user_config(kernel, "c.KernelGuard.mode = 'audit'\n"
                               "c.KernelGuard.code_policy = 'full'\n"
                               f"c.KernelGuard.sinks = ['file://{extra_sink}']\n")
    kernel.start()
    kernel.mark()
    assert_short_refusal(kernel.execute("!ls"), "`!ls`")
    code = "x = 1  # " + "z" * 400
    kernel.execute(code)
    events = kernel.new_events(until=lambda evs: any(e["kernel_guard"].get("code") == code for e in evs))
    events = kernel.events()
    ignored = [e for e in events if e["event"]["action"] == "config-ignored"]
    assert ignored and ignored[0]["kernel_guard"]["setting"] == "KernelGuard.mode"
    assert ignored[0]["kernel_guard"]["files"][0].endswith("ipython_kernel_config.py")
    cells = [e for e in events if e["event"]["action"] == "cell-executed"]
    assert cells[-1]["kernel_guard"]["code"] == code
    # the user's sink is added to, not instead of, the trusted one
    assert os.path.exists(extra_sink)


@pytest.mark.skipif(os.getuid() != 0, reason="trusted files are root-owned; CI runs as root")
def test_trusted_config_file_may_set_audit_mode(make_kernel, tmp_path):
    """An admin's root-owned config file outside the home is honoured, even when it weakens."""
    etc = tmp_path / "etc-ipython"
    etc.mkdir(mode=0o755)
    admin = etc / "kernel_guard_config.py"
    admin.write_text("c.KernelGuard.mode = 'audit'\n")
    kernel = make_kernel(argv=plain_kernel_argv("--ext=kernel_guard", f"--config={admin}"), start=False)
    kernel.session.env.pop("KERNEL_GUARD_MODE")
    kernel.start()
    kernel.mark()
    result = kernel.execute("!echo admin-allowed")
    assert result.status == "ok" and "admin-allowed" in result.stdout


def test_command_line_config_is_trusted(make_kernel):
    """--KernelGuard.* on the kernelspec's command line applies (here: code_policy=sha256)."""
    kernel = make_kernel(argv=plain_kernel_argv("--ext=kernel_guard", "--KernelGuard.code_policy=sha256"))
    kernel.mark()
    kernel.execute("secret_cell = 1")
    cells = kernel.new_events(until=lambda evs: any(e["event"]["action"] == "cell-executed" for e in evs))
    event = [e for e in cells if e["event"]["action"] == "cell-executed"][0]
    assert "code" not in event["kernel_guard"] and len(event["kernel_guard"]["code_sha256"]) == 64


def test_package_magics_policy(make_kernel):
    """unsafe_allow_package_magics lets %pip through the IPython layer; the audit layer still decides."""
    kernel = make_kernel(argv=plain_kernel_argv("--ext=kernel_guard", "--KernelGuard.unsafe_allow_package_magics=True"))
    kernel.mark()
    kernel.execute("%pip --version")
    # past the IPython layer, the audit layer (enforce) refuses the program pip would start
    failures = kernel.failures()
    assert [e["kernel_guard"]["layer"] for e in failures] == ["audit"]
    assert failures[0]["event"]["action"] == "exec-denied"
    assert not [e for e in kernel.new_events() if e["event"]["action"] == "shell-refused"]


def test_list_settings_on_the_command_line_are_split_on_commas() -> None:
    """--KernelGuard.sinks=a,b is two sinks (a list literal works too); a regex list takes one pattern."""
    from traitlets.config.loader import KVArgParseConfigLoader

    from kernel_guard.config import load_config

    config = KVArgParseConfigLoader(argv=["--KernelGuard.sinks=stderr://,logging://kg",
                                          "--KernelGuard.extra_protected_env=['A', 'B']",
                                          "--KernelGuard.redact_patterns=x{1,3}"]).load_config()
    guard, ignored = load_config(config)
    assert guard.sinks == ["stderr://", "logging://kg"] and guard.extra_protected_env == ["A", "B"]
    assert guard.redact_patterns == ["x{1,3}"] and ignored == []


def test_one_bad_value_never_takes_the_other_settings_with_it(tmp_path):
    """A bad sink URL, a NUL and a 10**400 from a trusted source: each is reported by name,
    the good sinks and every other setting stay."""
    config = Config()
    good = [f"file://{tmp_path}/a.jsonl", f"file://{tmp_path}/b.jsonl"]
    config.KernelGuard.sinks = [good[0], "ftp://x", "http://collector\udcff:80/", good[1]]
    config.KernelGuard.aggregate_interval = 10**400
    config.KernelGuard.spool_dir = "/var/spool/kernel\0guard"
    config.KernelGuard.code_policy = "full"
    guard, ignored = load_config(config)
    assert guard.sinks == good and guard.code_policy == "full" and guard.aggregate_interval == 5.0
    reasons = {(item["setting"], item["reason"].split(":")[0]) for item in ignored}
    assert ("KernelGuard.aggregate_interval", "invalid, kept 5.0") in reasons
    assert sum(item["setting"] == "KernelGuard.sinks" for item in ignored) == 2
    assert any(item["setting"] == "KernelGuard.spool_dir" and "NUL" in item["reason"] for item in ignored)


@pytest.mark.parametrize("pattern", [".", "(?s).*", "", "s"])
def test_a_redaction_pattern_that_blanks_the_record_is_weakening(pattern):
    """From a user-writable file, a pattern matching ordinary commands and code is ignored and
    reported; a pattern for a secret is added."""
    from kernel_guard.config import _apply_untrusted

    guard, ignored = KernelGuard(), []
    _apply_untrusted(guard, "redact_patterns", [pattern, r"tok_[0-9a-f]{32}"], ignored, ["/home/u/cfg.py"])
    assert guard.redact_patterns == [r"tok_[0-9a-f]{32}"]
    assert [item["setting"] for item in ignored] == ["KernelGuard.redact_patterns"]
    assert "user-writable" in ignored[0]["reason"] and ignored[0]["files"] == ["/home/u/cfg.py"]
