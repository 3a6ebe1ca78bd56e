"""`kernel-guard install-kernelspec`: what kernel.json says, and what it refuses to install."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from kernel_guard import __version__, cli


def installed(prefix: Path, name: str) -> dict:
    with open(prefix / "share" / "jupyter" / "kernels" / name / "kernel.json") as fh:
        return json.load(fh)


def test_kernel_json_runs_the_launcher_with_this_interpreter(tmp_path: Path) -> None:
    """argv is [python, -I, -m, kernel_guard.launch, --profile, default, -f, {connection_file}] with deliberate
    metadata."""
    assert cli.main(["install-kernelspec", "--name", "kg", "--prefix", str(tmp_path)]) == 0
    spec = installed(tmp_path, "kg")
    assert spec["argv"] == [sys.executable, "-I", "-m", "kernel_guard.launch", "--profile", "default",
                            "-f", "{connection_file}"]
    assert spec["metadata"]["kernel_guard"] == {"version": __version__, "profile": "default", "mode": "enforce"}
    assert spec["metadata"]["debugger"] is False
    assert spec["metadata"]["supported_encryption"] == ["curve"]
    assert spec["interrupt_mode"] == "signal" and spec["language"] == "python"
    assert spec["env"]["PYTHONSAFEPATH"] == "1"
    assert {"logo-32x32.png", "logo-64x64.png"} <= set(os.listdir(tmp_path / "share/jupyter/kernels/kg"))


def test_jupyter_client_finds_the_installed_spec(tmp_path: Path) -> None:
    """KernelSpecManager over the prefix lists the spec with its display name."""
    assert cli.main(["install-kernelspec", "--name", "kg", "--prefix", str(tmp_path),
                     "--display-name", "Guarded Python"]) == 0
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "share" / "jupyter" / "kernels")])
    spec = ksm.get_kernel_spec("kg")
    assert spec.display_name == "Guarded Python" and "kernel_guard.launch" in spec.argv


def test_audit_profile_and_env_are_written(tmp_path: Path) -> None:
    """--profile audit marks the spec audit-only; --env K=V lands in the kernel's environment."""
    assert cli.main(["install-kernelspec", "--name", "kg-audit", "--prefix", str(tmp_path), "--profile", "audit",
                     "--env", "KERNEL_GUARD_SINKS=file:///var/log/kg.jsonl", "--env", "A=b=c"]) == 0
    spec = installed(tmp_path, "kg-audit")
    assert spec["metadata"]["kernel_guard"]["mode"] == "audit" and "audit only" in spec["display_name"]
    assert spec["env"]["KERNEL_GUARD_SINKS"] == "file:///var/log/kg.jsonl" and spec["env"]["A"] == "b=c"


def test_custom_profile_is_stored_by_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile given as a relative path is validated and written as an absolute path."""
    monkeypatch.chdir(tmp_path)
    source = Path(__file__).resolve().parents[2] / "seccomp_profiles" / "default.json"
    (tmp_path / "mine.json").write_text(source.read_text())
    assert cli.main(["install-kernelspec", "--name", "kg", "--prefix", str(tmp_path / "p"),
                     "--profile", "./mine.json"]) == 0
    spec = installed(tmp_path / "p", "kg")
    assert spec["argv"][spec["argv"].index("--profile") + 1] == str(tmp_path / "mine.json")


def test_replacing_python3_overwrites_the_default(tmp_path: Path) -> None:
    """--name python3 installs over an existing python3 spec in the same place."""
    plain = tmp_path / "share" / "jupyter" / "kernels" / "python3"
    plain.mkdir(parents=True)
    (plain / "kernel.json").write_text(json.dumps({"argv": ["python", "-m", "ipykernel_launcher", "-f",
                                                            "{connection_file}"], "display_name": "Python 3",
                                                   "language": "python"}))
    assert cli.main(["install-kernelspec", "--name", "python3", "--prefix", str(tmp_path)]) == 0
    assert "kernel_guard.launch" in installed(tmp_path, "python3")["argv"]


def test_bad_profile_is_refused_at_install_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid profile stops the install with the file and field named, and nothing is written."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                               "syscalls": [{"names": ["execve", "execveat"], "action": "SCMP_ACT_ALLOW"}]}))
    assert cli.main(["install-kernelspec", "--name", "kg", "--prefix", str(tmp_path / "p"),
                     "--profile", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "field syscalls" in err and "execve" in err
    assert not (tmp_path / "p").exists()


def test_malformed_env_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--env without '=' is an error naming the argument."""
    assert cli.main(["install-kernelspec", "--prefix", str(tmp_path), "--env", "NOVALUE"]) == 1
    assert "NOVALUE" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--name", ""], "a kernelspec name is letters"),
    (["--name", "has space"], "a kernelspec name is letters"),
    (["--env", "KERNEL_GUARD_MODE=weak"], "use one of enforce, audit"),
    (["--env", "KERNEL_GUARD_SINKS=stderr://,http://[::1"], "cannot be parsed"),
    (["--env", "KERNEL_GUARD_EXTRA_SINKS=syslog+udp://host:0"], "port 0"),
    (["--env", "PYTHONPATH=/somewhere"], "changes what the kernel loads"),
])
def test_install_refuses_what_every_kernel_start_would_reject(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              args: list, message: str) -> None:
    """A bad name or --env value is refused at install time, naming the option and the fix; nothing is written."""
    assert cli.main(["install-kernelspec", "--prefix", str(tmp_path), *args]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "share").exists()
