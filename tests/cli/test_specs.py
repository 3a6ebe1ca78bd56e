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
    (finding,) = check_spec([PY, "-m", "ipykernel_launcher"], {})
    assert not finding.ok and "-P" in finding.fix and "PYTHONSAFEPATH" in finding.fix
