"""A seccomp profile as data: what :mod:`.profiles` parses, :mod:`.seccomp_filter` builds.

A module of its own so that the imports run one way, profiles ->
seccomp_filter -> profile_model: the parser asks the filter builder
(libseccomp) whether a syscall name exists and to build each profile as a
check, while the builder needs nothing of the parser but its result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["LandlockSettings", "Profile", "Rule", "RuleArg"]


@dataclass(frozen=True)
class RuleArg:
    """One argument comparison of a rule (``args[i]``)."""

    index: int
    value: int
    value_two: int
    op: str


@dataclass(frozen=True)
class Rule:
    """One entry of ``syscalls``: names, action, errno and conditions."""

    names: tuple[str, ...]
    action: str
    errno_ret: int
    args: tuple[RuleArg, ...] = ()
    comment: str = ""
    field: str = ""  # where it came from, e.g. "syscalls[2]", for error messages


@dataclass(frozen=True)
class LandlockSettings:
    """``kernel_guard.landlock`` of a profile: the kernel's Landlock domain.

    ``writable``: folders (or device files) beneath which the kernel may write;
    ``exec``: the only programs it may start; ``min_abi``: the kernel does not
    start on a Landlock ABI below it.  Paths may use ``{home}``,
    ``{notebook_dir}`` and ``{python}``, filled in at launch.
    """

    writable: tuple[str, ...]
    exec: tuple[str, ...]
    min_abi: int = 0

    def expand(self, home: str, notebook_dir: str, python: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(writable, exec) with the placeholders filled in."""
        values = {"{home}": home, "{notebook_dir}": notebook_dir, "{python}": python}

        def fill(path: str) -> str:
            for token, value in values.items():
                path = path.replace(token, value)
            return os.path.normpath(path)

        return tuple(fill(p) for p in self.writable), tuple(fill(p) for p in self.exec)


@dataclass(frozen=True)
class Profile:
    """A parsed, checked seccomp profile."""

    path: str
    name: str
    default_action: str
    default_errno_ret: int
    architectures: tuple[str, ...]
    rules: tuple[Rule, ...]
    mode: str = "enforce"
    fail_closed: bool = True
    comment: str = ""
    landlock: Optional[LandlockSettings] = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def uses_notify(self) -> bool:
        """Whether the filter sends anything to the supervisor."""
        return self.default_action == "SCMP_ACT_NOTIFY" or any(
            r.action == "SCMP_ACT_NOTIFY" for r in self.rules)

    def action_for(self, syscall: str) -> str:
        """The unconditional action for ``syscall`` (default if no plain rule names it)."""
        for rule in self.rules:
            if syscall in rule.names and not rule.args:
                return rule.action
        return self.default_action

    def describe(self) -> str:
        """One line for logs and ``status``: name, mode, exec action."""
        return (f"{self.name} (mode {self.mode}, exec {self.action_for('execve')}, "
                f"{len(self.rules)} rules)")
