"""Reading a kernelspec without starting it: which command lines import from the working folder."""

from __future__ import annotations

import pytest

from kernel_guard.cli.specs import check_spec, imports_from_working_folder

PY = "/opt/conda/bin/python3.11"


@pytest.mark.parametrize("argv,env,unsafe", [
    ([PY, "-m", "ipykernel_launcher", "-f", "{connection_file}"], {}, True),
    ([PY, "-c", "import ipykernel_launcher"], {}, True),
    ([PY, "-P", "-m", "ipykernel_launcher"], {}, False),
    ([PY, "-I", "-m", "kernel_guard.launch"], {}, False),
    ([PY, "-sP", "-m", "x"], {}, False),
    ([PY, "-Wignore", "-Im", "x"], {}, False),
    ([PY, "-m", "x"], {"PYTHONSAFEPATH": "1"}, False),
    ([PY, "-E", "-m", "x"], {"PYTHONSAFEPATH": "1"}, True),  # -E: Python ignores PYTHONSAFEPATH
    ([PY, "-m", "x"], {"PYTHONSAFEPATH": ""}, True),  # empty means unset
    ([PY, "-W", "P", "-m", "x"], {}, True),  # "P" is -W's value, not -P
    ([PY, "-X", "frozen_modules=off", "-m", "x"], {}, True),
    ([PY, "--check-hash-based-pycs", "never", "-m", "x"], {}, True),
    ([PY, "/opt/kernels/start.py"], {}, False),  # a script: its own folder goes first
    (["/usr/lib/R/bin/R", "--slave", "-e", "IRkernel::main()"], {}, False),
])
def test_imports_from_working_folder(argv, env, unsafe):
    """Flags (clustered, with values), PYTHONSAFEPATH and -E are read as the interpreter reads them."""
    assert imports_from_working_folder(argv, env) is unsafe


def test_the_finding_names_the_fix():
    """A failed finding says what happens and how to fix it."""
    layers, folder = check_spec([PY, "-m", "ipykernel_launcher"], {})
    assert not folder.ok and "-P" in folder.fix and "PYTHONSAFEPATH" in folder.fix
    assert not layers.ok and "launcher" in layers.fix and "~/.ipython" in layers.detail


def test_a_launcher_kernelspec_has_the_os_layers():
    """The kernelspec install-kernelspec writes passes both findings."""
    from kernel_guard.launch.kernelspec import launcher_argv

    findings = check_spec(launcher_argv("default"), {"PYTHONSAFEPATH": "1"})
    assert [f.ok for f in findings] == [True, True]
