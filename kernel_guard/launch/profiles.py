"""Seccomp profiles: Docker/OCI-format JSON, parsed and checked before anything loads.

A profile is the JSON that Docker and OCI runtimes read (``defaultAction``,
``defaultErrnoRet``, ``architectures``, ``syscalls[].names/action/errnoRet/args``,
``comment``) plus one ``kernel_guard`` object saying how the launcher uses it::

    "kernel_guard": {"mode": "enforce", "fail_closed": true}

``mode`` tells the supervisor how to answer exec notifications (``enforce``:
always EPERM; ``audit``: CONTINUE, record only, not a security boundary);
``fail_closed`` makes the launcher refuse to start the kernel when the filter
cannot be loaded.  Every problem raises :class:`ProfileError` naming the file
and the field (``syscalls[3].action``), at ``install-kernelspec`` time and at
launch; nothing is silently ignored, because a typo must not weaken a filter.

``kernel-guard profile validate PATH`` and ``kernel-guard profile export PATH
--format pfc`` (libseccomp's readable pseudo-filter code) help admins review a
profile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from ..exceptions import ProfileError
from . import seccomp_filter
from .profile_model import LandlockSettings, Profile, Rule, RuleArg

__all__ = [
    "ACTIONS",
    "BUILTIN_PROFILES",
    "EXEC_SYSCALLS",
    "add_arguments",
    "builtin_dir",
    "load_profile",
    "resolve_profile_path",
    "run",
]

#: Docker/OCI action names this project understands.  SCMP_ACT_TRACE is left
#: out on purpose: there is no tracer, so it would only turn into ENOSYS.
ACTIONS = frozenset({
    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
})
#: actions that let a syscall run
_PERMISSIVE = frozenset({"SCMP_ACT_ALLOW", "SCMP_ACT_LOG"})
OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
             "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")
ARCHITECTURES = frozenset({
    "SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM",
    "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390X", "SCMP_ARCH_RISCV64",
})
#: the syscalls that start a program: an enforce profile must stop both
EXEC_SYSCALLS = ("execve", "execveat")
BUILTIN_PROFILES = ("default", "audit")

_TOP_KEYS = frozenset({"comment", "defaultAction", "defaultErrnoRet", "architectures", "archMap",
                       "syscalls", "kernel_guard", "flags"})
_UNSUPPORTED_TOP = {
    "listenerPath": "kernel_guard's own supervisor receives notifications; remove listenerPath",
    "listenerMetadata": "kernel_guard's own supervisor receives notifications; remove listenerMetadata",
}
_RULE_KEYS = frozenset({"names", "name", "action", "errnoRet", "args", "comment"})
_UNSUPPORTED_RULE = {
    "includes": "capability/kernel-version conditions are Docker-specific; write the rule without them",
    "excludes": "capability/kernel-version conditions are Docker-specific; write the rule without them",
}
_ARG_KEYS = frozenset({"index", "value", "valueTwo", "op"})
_GUARD_KEYS = frozenset({"mode", "fail_closed", "comment", "landlock"})
_LANDLOCK_KEYS = frozenset({"writable", "exec", "min_abi", "comment"})
#: placeholders a Landlock path may use, filled in by the launcher
LANDLOCK_TOKENS = ("{home}", "{notebook_dir}", "{python}")


# -- locating ----------------------------------------------------------------

def builtin_dir() -> Path:
    """Where the shipped profiles are: inside the wheel, or the source tree's top level."""
    packaged = Path(__file__).resolve().parent / "seccomp_profiles"
    if (packaged / "default.json").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "seccomp_profiles"


def resolve_profile_path(name_or_path: str) -> str:
    """A built-in profile name (``default``, ``audit``) or a path to a JSON file."""
    if name_or_path in BUILTIN_PROFILES or (os.sep not in name_or_path and not name_or_path.endswith(".json")):
        candidate = builtin_dir() / f"{name_or_path}.json"
        if not candidate.is_file():
            known = ", ".join(sorted(p.stem for p in builtin_dir().glob("*.json"))) or "none found"
            raise ProfileError(f"no built-in seccomp profile named {name_or_path!r} "
                               f"(built-in: {known}); give a path to a JSON file instead")
        return str(candidate)
    return os.path.abspath(os.path.expanduser(name_or_path))


# -- parsing -----------------------------------------------------------------

class _Checker:
    """Collects the file name so every error names the file and the field."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> ProfileError:
        return ProfileError(f"seccomp profile {self.path}: field {where}: {message}")

    def expect(self, value: Any, kind: type | tuple, where: str, what: str) -> Any:
        # bool is an int in Python; a profile saying "errnoRet": true is a mistake
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(where, f"must be {what}, not a boolean")
        if not isinstance(value, kind):
            raise self.fail(where, f"must be {what}, not {type(value).__name__} {value!r}"[:300])
        return value

    def keys(self, obj: dict, allowed: frozenset, unsupported: dict[str, str], where: str) -> None:
        for key in obj:
            if key in unsupported:
                raise self.fail(f"{where}{key}", f"not supported: {unsupported[key]}")
            if key not in allowed:
                raise self.fail(f"{where}{key}", f"unknown field (known: {', '.join(sorted(allowed))})")

    def action(self, value: Any, where: str) -> str:
        self.expect(value, str, where, "a string such as SCMP_ACT_ERRNO")
        if value not in ACTIONS:
            hint = " (SCMP_ACT_TRACE needs a tracer, which kernel_guard does not run)" if value == "SCMP_ACT_TRACE" else ""
            raise self.fail(where, f"unknown action {value!r}{hint}; use one of {', '.join(sorted(ACTIONS))}")
        return value

    def errno(self, value: Any, where: str) -> int:
        self.expect(value, int, where, "an errno number such as 1 (EPERM)")
        if not 0 < value < 4096:
            raise self.fail(where, f"errno {value} is out of range 1..4095")
        return value


def _syscall_known(name: str) -> bool:
    """Whether libseccomp knows ``name`` on any of the architectures we use."""
    return seccomp_filter.syscall_known(name)


def _parse_args(check: _Checker, value: Any, where: str) -> tuple[RuleArg, ...]:
    check.expect(value, list, where, "a list of argument comparisons")
    out = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        check.expect(item, dict, here, "an object with index, value, valueTwo, op")
        check.keys(item, _ARG_KEYS, {}, here + ".")
        index = check.expect(item.get("index"), int, here + ".index", "an argument index 0..5")
        if not 0 <= index <= 5:
            raise check.fail(here + ".index", f"argument index {index} is out of range 0..5")
        val = check.expect(item.get("value", 0), int, here + ".value", "an integer")
        two = check.expect(item.get("valueTwo", 0), int, here + ".valueTwo", "an integer")
        op = check.expect(item.get("op"), str, here + ".op", "a comparison such as SCMP_CMP_EQ")
        if op not in OPERATORS:
            raise check.fail(here + ".op", f"unknown comparison {op!r}; use one of {', '.join(OPERATORS)}")
        for label, number in ((".value", val), (".valueTwo", two)):
            if not 0 <= number < 2 ** 64:
                raise check.fail(here + label, f"{number} does not fit in an unsigned 64-bit argument")
        out.append(RuleArg(index, val, two, op))
    return tuple(out)


def _parse_rule(check: _Checker, item: Any, i: int, default_errno: int) -> Rule:
    where = f"syscalls[{i}]"
    check.expect(item, dict, where, "an object with names and action")
    check.keys(item, _RULE_KEYS, _UNSUPPORTED_RULE, where + ".")
    if "names" in item:
        names = check.expect(item["names"], list, where + ".names", "a list of syscall names")
    elif "name" in item:
        names = [check.expect(item["name"], str, where + ".name", "a syscall name")]
    else:
        raise check.fail(where + ".names", "missing (a list of syscall names)")
    if not names:
        raise check.fail(where + ".names", "is empty")
    for j, name in enumerate(names):
        check.expect(name, str, f"{where}.names[{j}]", "a syscall name")
        if not _syscall_known(name):
            raise check.fail(f"{where}.names[{j}]", f"unknown syscall name {name!r} (libseccomp does not know it)")
    if "action" not in item:
        raise check.fail(where + ".action", "missing")
    action = check.action(item["action"], where + ".action")
    errno_ret = default_errno
    if "errnoRet" in item:
        errno_ret = check.errno(item["errnoRet"], where + ".errnoRet")
        if action != "SCMP_ACT_ERRNO":
            raise check.fail(where + ".errnoRet", f"only applies to SCMP_ACT_ERRNO, not {action}")
    args = _parse_args(check, item["args"], where + ".args") if item.get("args") is not None else ()
    comment = check.expect(item.get("comment", ""), str, where + ".comment", "a string")
    return Rule(tuple(names), action, errno_ret, args, comment, where)


def _parse_landlock_paths(check: _Checker, value: Any, where: str) -> tuple[str, ...]:
    check.expect(value, list, where, "a list of absolute paths (or {home}, {notebook_dir}, {python} paths)")
    out = []
    for i, path in enumerate(value):
        here = f"{where}[{i}]"
        check.expect(path, str, here, "an absolute path")
        bare = path
        for token in LANDLOCK_TOKENS:
            bare = bare.replace(token, "/x")
        if "{" in bare or "}" in bare:
            raise check.fail(here, f"unknown placeholder in {path!r}; known: {', '.join(LANDLOCK_TOKENS)}")
        if not bare.startswith("/"):
            raise check.fail(here, f"{path!r} is not absolute (start it with / or a placeholder)")
        out.append(path)
    return tuple(out)


def _parse_landlock(check: _Checker, value: Any) -> LandlockSettings:
    where = "kernel_guard.landlock"
    check.expect(value, dict, where, "an object with writable, exec and min_abi")
    check.keys(value, _LANDLOCK_KEYS, {}, where + ".")
    writable = _parse_landlock_paths(check, value.get("writable", []), where + ".writable")
    programs = _parse_landlock_paths(check, value.get("exec", []), where + ".exec")
    min_abi = check.expect(value.get("min_abi", 0), int, where + ".min_abi", "a Landlock ABI number")
    if not 0 <= min_abi <= 64:
        raise check.fail(where + ".min_abi", f"{min_abi} is not a Landlock ABI (0 = whatever the kernel has)")
    check.expect(value.get("comment", ""), str, where + ".comment", "a string")
    return LandlockSettings(writable, programs, min_abi)


def _parse_guard(check: _Checker, value: Any) -> tuple[str, bool, str]:
    check.expect(value, dict, "kernel_guard", "an object with mode and fail_closed")
    check.keys(value, _GUARD_KEYS, {}, "kernel_guard.")
    mode = check.expect(value.get("mode", "enforce"), str, "kernel_guard.mode", "'enforce' or 'audit'")
    if mode not in ("enforce", "audit"):
        raise check.fail("kernel_guard.mode", f"{mode!r} is not 'enforce' or 'audit'")
    fail_closed = check.expect(value.get("fail_closed", mode == "enforce"), bool,
                               "kernel_guard.fail_closed", "true or false")
    comment = check.expect(value.get("comment", ""), str, "kernel_guard.comment", "a string")
    return mode, fail_closed, comment


def _check_conflicts(check: _Checker, rules: tuple[Rule, ...]) -> None:
    """libseccomp settles two plain rules for one syscall silently; a reviewer should not have to."""
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.args:
            continue
        for j, name in enumerate(rule.names):
            first = seen.setdefault(name, rule)
            if first is not rule and (first.action, first.errno_ret) != (rule.action, rule.errno_ret):
                raise check.fail(f"{rule.field}.names[{j}]", f"{name!r} already has action {first.action} "
                                 f"in {first.field}; one syscall, one action")


def _check_exec_covered(check: _Checker, profile: Profile) -> None:
    """An enforce profile must stop both exec syscalls unconditionally."""
    for rule in profile.rules:
        for name in EXEC_SYSCALLS:
            if name in rule.names and rule.args:
                raise check.fail(f"{rule.field}.args",
                                 f"conditional rules on {name} are not allowed in an enforce profile: "
                                 "seccomp cannot read paths, so a condition can only open holes")
    for name in EXEC_SYSCALLS:
        action = profile.action_for(name)
        if action in _PERMISSIVE:
            raise check.fail("syscalls", f"an enforce profile must refuse {name} "
                             f"(it is {action}); use SCMP_ACT_NOTIFY (recorded by the supervisor) "
                             "or SCMP_ACT_ERRNO")


#: actions that stop a syscall (NOTIFY included: the supervisor refuses every
#: notification that is not an exec, and without it the syscall fails with ENOSYS)
_REFUSING = frozenset({"SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS",
                       "SCMP_ACT_TRAP", "SCMP_ACT_NOTIFY"})
#: seccomp(2)'s SECCOMP_FILTER_FLAG_NEW_LISTENER (argument 1, the flags)
NEW_LISTENER_FLAG = 8
_LISTENER_ARG = RuleArg(1, NEW_LISTENER_FLAG, NEW_LISTENER_FLAG, "SCMP_CMP_MASKED_EQ")


def refuses_new_listeners(profile: Profile) -> bool:
    """Whether ``seccomp(..., SECCOMP_FILTER_FLAG_NEW_LISTENER, ...)`` is refused.

    Without that, once the supervisor's listener is closed, a forked child can
    load a filter with a listener of its own and answer its children's exec
    with CONTINUE.  Accepted: the seccomp syscall refused outright, or refused
    whenever bit 8 of its flags is set (mask 8, value 8: a wider mask would let
    a flag combination through).
    """
    if profile.action_for("seccomp") in _REFUSING:
        return True
    return any("seccomp" in rule.names and rule.args == (_LISTENER_ARG,) and rule.action in _REFUSING
               for rule in profile.rules)


def _check_listener_refused(check: _Checker, profile: Profile) -> None:
    """A profile whose exec goes to the supervisor must not let anyone else listen."""
    if not any(profile.action_for(name) == "SCMP_ACT_NOTIFY" for name in EXEC_SYSCALLS):
        return  # ERRNO/KILL on exec outranks any notification a later filter asks for
    if not refuses_new_listeners(profile):
        raise check.fail("syscalls", "exec goes to the supervisor (SCMP_ACT_NOTIFY), but new seccomp "
                         "notification listeners are allowed: if the supervisor died, a child could install "
                         "its own listener and let its exec run. Add "
                         '{"names": ["seccomp"], "action": "SCMP_ACT_NOTIFY", "args": [{"index": 1, '
                         '"value": 8, "valueTwo": 8, "op": "SCMP_CMP_MASKED_EQ"}]} (or refuse seccomp altogether)')


def parse_profile(data: Any, path: str) -> Profile:
    """Check parsed JSON and build a :class:`Profile` (raises ProfileError)."""
    check = _Checker(path)
    check.expect(data, dict, "(top level)", "a JSON object")
    check.keys(data, _TOP_KEYS, _UNSUPPORTED_TOP, "")
    if "defaultAction" not in data:
        raise check.fail("defaultAction", "missing (e.g. SCMP_ACT_ALLOW)")
    default_action = check.action(data["defaultAction"], "defaultAction")
    default_errno = check.errno(data.get("defaultErrnoRet", 1), "defaultErrnoRet")
    arches: list[str] = []
    if "architectures" in data:
        check.expect(data["architectures"], list, "architectures", "a list of SCMP_ARCH_* names")
        arches = list(data["architectures"])
    elif "archMap" in data:
        check.expect(data["archMap"], list, "archMap", "a list of {architecture, subArchitectures}")
        for i, entry in enumerate(data["archMap"]):
            check.expect(entry, dict, f"archMap[{i}]", "an object")
            arches.append(entry.get("architecture"))
            arches.extend(check.expect(entry.get("subArchitectures", []), list,
                                       f"archMap[{i}].subArchitectures", "a list"))
    for i, arch in enumerate(arches):
        check.expect(arch, str, f"architectures[{i}]", "an SCMP_ARCH_* name")
        if arch not in ARCHITECTURES:
            raise check.fail(f"architectures[{i}]", f"unknown architecture {arch!r}; use one of "
                             f"{', '.join(sorted(ARCHITECTURES))}")
    if "flags" in data:
        check.expect(data["flags"], list, "flags", "a list (kernel_guard always uses TSYNC)")
    rules_data = check.expect(data.get("syscalls", []), list, "syscalls", "a list of rules")
    rules = tuple(_parse_rule(check, item, i, default_errno) for i, item in enumerate(rules_data))
    _check_conflicts(check, rules)
    mode, fail_closed, guard_comment = _parse_guard(check, data.get("kernel_guard", {}))
    guard = data.get("kernel_guard", {})
    landlock = _parse_landlock(check, guard["landlock"]) if "landlock" in guard else None
    comment = check.expect(data.get("comment", ""), str, "comment", "a string")
    profile = Profile(path=path, name=Path(path).stem, default_action=default_action,
                      default_errno_ret=default_errno, architectures=tuple(arches), rules=rules,
                      mode=mode, fail_closed=fail_closed, comment=comment or guard_comment, raw=data,
                      landlock=landlock)
    if mode == "enforce":
        _check_exec_covered(check, profile)
    _check_listener_refused(check, profile)
    return profile


def load_profile(name_or_path: str, *, build: bool = True) -> Profile:
    """Read, parse and check a profile; with ``build`` also let libseccomp build it.

    Building catches what only libseccomp can judge (conflicting rules,
    comparisons it cannot express) without loading anything.
    """
    path = resolve_profile_path(name_or_path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ProfileError(f"seccomp profile {path}: cannot read it: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"seccomp profile {path}: field (file): not valid JSON: {exc.msg} "
                           f"at line {exc.lineno} column {exc.colno}") from exc
    profile = parse_profile(data, path)
    if build:
        seccomp_filter.build_filter(profile)
    return profile


# -- command line ------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``kernel-guard profile validate PATH`` / ``export PATH --format pfc``."""
    sub = parser.add_subparsers(dest="profile_command", metavar="ACTION", required=True)
    validate = sub.add_parser("validate", help="check a profile; exit 1 naming the file and field if it is bad")
    validate.add_argument("path", help="profile name (default, audit) or path to a JSON file")
    export = sub.add_parser("export", help="print libseccomp's readable filter (pfc) for a profile")
    export.add_argument("path", help="profile name (default, audit) or path to a JSON file")
    export.add_argument("--format", choices=["pfc", "bpf"], default="pfc",
                        help="pfc: readable pseudo-filter code; bpf: raw BPF program (binary)")
    export.add_argument("--output", "-o", help="write to this file instead of stdout")


def run(args: argparse.Namespace) -> int:
    """Run a ``profile`` subcommand."""
    try:
        profile = load_profile(args.path)
    except ProfileError as exc:
        print(f"kernel-guard: {exc}", file=sys.stderr)
        return 1
    if args.profile_command == "validate":
        print(f"{profile.path}: valid: {profile.describe()}")
        return 0
    if args.output:
        with open(args.output, "wb") as fh:
            seccomp_filter.export(profile, fh, args.format)
    else:
        sys.stdout.flush()
        seccomp_filter.export(profile, sys.stdout, args.format)
    return 0


def profile_summary(profile: Optional[Profile]) -> dict[str, Any]:
    """Fields describing a profile in events and status."""
    if profile is None:
        return {}
    summary = {"name": profile.name, "path": profile.path, "mode": profile.mode,
               "fail_closed": profile.fail_closed, "exec_action": profile.action_for("execve")}
    if profile.landlock is not None:
        summary["landlock"] = {"writable": list(profile.landlock.writable), "exec": list(profile.landlock.exec),
                               "min_abi": profile.landlock.min_abi}
    return summary
