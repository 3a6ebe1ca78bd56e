"""Seccomp profiles: the shipped ones are valid, bad ones are rejected naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel_guard import cli
from kernel_guard.exceptions import ProfileError
from kernel_guard.launch import profiles

GOOD_RULE = {"names": ["execve", "execveat"], "action": "SCMP_ACT_NOTIFY"}


def write(tmp_path: Path, data: object, name: str = "p.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def base(**overrides: object) -> dict:
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [dict(GOOD_RULE)]}
    profile.update(overrides)
    return profile


def test_shipped_profiles_are_valid_and_refuse_or_record_exec() -> None:
    """default is enforce/fail-closed with exec notified; audit is record-only and not fail-closed."""
    default = profiles.load_profile("default")
    audit = profiles.load_profile("audit")
    assert (default.mode, default.fail_closed, default.action_for("execve")) == ("enforce", True, "SCMP_ACT_NOTIFY")
    assert (audit.mode, audit.fail_closed, audit.action_for("execveat")) == ("audit", False, "SCMP_ACT_NOTIFY")
    assert "NOT A SECURITY BOUNDARY" in audit.comment


def test_default_profile_refuses_the_attack_syscalls_with_eperm() -> None:
    """The default profile lists ptrace, process_vm_*, mount, unshare/setns, bpf, perf, keyctl, userfaultfd, kexec, modules."""
    default = profiles.load_profile("default")
    for name in ("ptrace", "process_vm_writev", "process_vm_readv", "mount", "unshare", "setns", "bpf",
                 "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "kexec_load",
                 "kexec_file_load", "init_module", "finit_module", "delete_module"):
        rule = next(r for r in default.rules if name in r.names)
        assert (rule.action, rule.errno_ret) == ("SCMP_ACT_ERRNO", 1), name


@pytest.mark.parametrize("data, field", [
    (base(syscalls=[{"names": ["execve"], "action": "SCMP_ACT_BOGUS"}]), "syscalls[0].action"),
    (base(syscalls=[GOOD_RULE, {"names": ["ptrace", "no_such_call"], "action": "SCMP_ACT_ERRNO"}]),
     "syscalls[1].names[1]"),
    (base(syscalls=[GOOD_RULE, {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": "1"}]),
     "syscalls[1].errnoRet"),
    (base(syscalls=[GOOD_RULE, {"names": "ptrace", "action": "SCMP_ACT_ERRNO"}]), "syscalls[1].names"),
    (base(defaultAction=7), "defaultAction"),
    (base(architectures=["SCMP_ARCH_Z80"]), "architectures[0]"),
    (base(syscalls=[GOOD_RULE, {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO",
                                "args": [{"index": 9, "value": 0, "op": "SCMP_CMP_EQ"}]}]), "syscalls[1].args[0].index"),
    (base(syscalls=[GOOD_RULE, {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "includes": {}}]),
     "syscalls[1].includes"),
    (base(kernel_guard={"mode": "strict"}), "kernel_guard.mode"),
    (base(kernel_guard={"mode": "enforce", "fail_closed": "yes"}), "kernel_guard.fail_closed"),
    (base(defaultActoin="SCMP_ACT_ALLOW"), "defaultActoin"),
    (base(syscalls=[]), "syscalls"),
    (base(syscalls=[{"names": ["execve"], "action": "SCMP_ACT_NOTIFY",
                     "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
                    {"names": ["execveat"], "action": "SCMP_ACT_NOTIFY"}]), "syscalls[0].args"),
])
def test_bad_profiles_name_the_file_and_the_field(tmp_path: Path, data: dict, field: str) -> None:
    """Unknown actions, syscalls, arches, keys, wrong types and an enforce profile that allows exec are rejected."""
    path = write(tmp_path, data)
    with pytest.raises(ProfileError) as info:
        profiles.load_profile(path)
    assert path in str(info.value) and f"field {field}" in str(info.value)


def test_unparsable_json_names_the_file(tmp_path: Path) -> None:
    """A profile that is not JSON is rejected with the file, line and column."""
    path = write(tmp_path, '{"defaultAction": "SCMP_ACT_ALLOW",,}')
    with pytest.raises(ProfileError, match="not valid JSON") as info:
        profiles.load_profile(path)
    assert path in str(info.value) and "line 1" in str(info.value)


def test_unknown_builtin_name_lists_the_builtins() -> None:
    """A profile name that is neither built in nor a file says which names exist."""
    with pytest.raises(ProfileError, match="audit, default"):
        profiles.load_profile("nonexistent")


def test_conflicting_rules_are_rejected_naming_the_rule(tmp_path: Path) -> None:
    """Two different actions for the same syscall are rejected (libseccomp would pick one silently)."""
    path = write(tmp_path, base(syscalls=[GOOD_RULE, {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"},
                                          {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"}]))
    with pytest.raises(ProfileError, match=r"field syscalls\[2\]\.names\[0\]"):
        profiles.load_profile(path)


def test_docker_style_profile_with_errno_default_is_accepted(tmp_path: Path) -> None:
    """A Docker-shaped allow-list profile (ERRNO default, archMap) parses, and exec is refused."""
    path = write(tmp_path, {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
                            "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                                         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
                            "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]})
    profile = profiles.load_profile(path)
    assert profile.architectures == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
    assert profile.action_for("execve") == "SCMP_ACT_ERRNO" and not profile.uses_notify


def test_cli_validate_reports_and_exits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`kernel-guard profile validate` exits 0 for a good profile and 1 naming the field for a bad one."""
    assert cli.main(["profile", "validate", "default"]) == 0
    assert "valid" in capsys.readouterr().out
    bad = write(tmp_path, base(syscalls=[{"names": ["execve"], "action": "SCMP_ACT_NOPE"}]))
    assert cli.main(["profile", "validate", bad]) == 1
    err = capsys.readouterr().err
    assert bad in err and "syscalls[0].action" in err


def test_cli_export_pfc_shows_every_abi(tmp_path: Path) -> None:
    """`kernel-guard profile export --format pfc` writes libseccomp's filter for x86_64, x86 and x32."""
    out = tmp_path / "default.pfc"
    assert cli.main(["profile", "export", "default", "--format", "pfc", "--output", str(out)]) == 0
    text = out.read_text()
    for needle in ("filter for arch x86_64", "filter for arch x86 ", "filter for arch x32",
                   'syscall "execve"', 'syscall "execveat"', "invalid architecture action", "KILL_PROCESS"):
        assert needle in text, needle


LISTENER_RULE = {"names": ["seccomp"], "action": "SCMP_ACT_NOTIFY",
                 "args": [{"index": 1, "value": 8, "valueTwo": 8, "op": "SCMP_CMP_MASKED_EQ"}]}


@pytest.mark.parametrize("seccomp_rules, accepted", [
    ([], False),
    ([LISTENER_RULE], True),
    ([{**LISTENER_RULE, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}], True),
    ([{"names": ["seccomp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}], True),
    # a wider mask lets NEW_LISTENER through together with another flag
    ([{**LISTENER_RULE, "args": [{"index": 1, "value": 12, "valueTwo": 8, "op": "SCMP_CMP_MASKED_EQ"}]}], False),
    ([{**LISTENER_RULE, "args": [{"index": 0, "value": 8, "valueTwo": 8, "op": "SCMP_CMP_MASKED_EQ"}]}], False),
    ([{**LISTENER_RULE, "action": "SCMP_ACT_LOG"}], False),
])
def test_a_notifying_profile_must_refuse_new_listeners(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       seccomp_rules: list, accepted: bool) -> None:
    """Exec sent to the supervisor needs seccomp(NEW_LISTENER) refused; `profile validate` says what to add."""
    path = write(tmp_path, base(syscalls=[GOOD_RULE, *seccomp_rules]))
    assert (cli.main(["profile", "validate", path]) == 0) is accepted
    if not accepted:
        assert "new seccomp notification listeners are allowed" in capsys.readouterr().err


def test_a_profile_that_refuses_exec_outright_needs_no_listener_rule(tmp_path: Path) -> None:
    """ERRNO on exec outranks any notification a later filter asks for: no listener rule is needed."""
    path = write(tmp_path, base(syscalls=[{"names": ["execve", "execveat"], "action": "SCMP_ACT_ERRNO"}]))
    assert not profiles.load_profile(path).uses_notify


def test_supervisor_rules_cover_every_thread_the_witness_and_the_group() -> None:
    """The launcher's extra rules name each tid for kill/tkill/..., each process for tgkill, -pid for the group."""
    from kernel_guard.launch import seccomp_filter

    rules = seccomp_filter.supervisor_rules(100, [100, 101], witness=105)
    aimed = {(name, rule.args[-1].value_two) for rule in rules for name in rule.names}
    for tid in (100, 101, 105):
        assert {("kill", tid), ("tkill", tid), ("prlimit64", tid), ("pidfd_open", tid)} <= aimed
    assert {("tgkill", 100), ("tgkill", 105), ("kill", (-100) & 0xFFFFFFFF), ("fcntl", 100)} <= aimed
    assert all(rule.action == "SCMP_ACT_NOTIFY" for rule in rules)
    seccomp_filter.build_filter(profiles.load_profile("default"), rules)  # libseccomp accepts them
