"""Code that reaches the kernel outside a cell leaves a record with its hash: inspection and
completion (a __getattr__ runs), comm messages, replies to input(), long user expressions.
The kernel runs as the notebook user (uid 1000)."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import time
from typing import Iterator

import pytest
from conftest import GuardedKernel
from launcher_support import NOTEBOOK_USER, unprivileged_root


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def kernel() -> Iterator[GuardedKernel]:
    with unprivileged_root() as root:
        started = GuardedKernel(os.path.join(root, "k"), user=NOTEBOOK_USER).start()
        # only its own attributes: IPython 8's inspector reads dunder names and breaks on an int
        started.execute("class Probe:\n    def __getattr__(self, name):\n        print('looked up', name)\n"
                        "        if name.startswith('__'):\n            raise AttributeError(name)\n"
                        "        return 1\nprobe = Probe()")
        yield started
        started.shutdown()


def _reply(kernel: GuardedKernel, msg_id: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kernel.session.client.get_shell_msg(timeout=0.2)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg["content"]
    raise AssertionError("no reply")


def _event(kernel: GuardedKernel, action: str) -> dict:
    events = kernel.new_events(until=lambda evs: any(e["event"]["action"] == action for e in evs), timeout=10)
    found = [e for e in events if e["event"]["action"] == action]
    assert found, [e["event"]["action"] for e in events]
    return found[-1]


@pytest.mark.parametrize("request_type,action", [("inspect", "code-inspected"), ("complete", "code-completed")])
def test_inspection_and_completion_are_recorded_with_the_code_hash(kernel: GuardedKernel, request_type: str,
                                                                    action: str) -> None:
    code = f"probe.attribute_{request_type}"
    kernel.mark()
    client = kernel.session.client
    msg_id = getattr(client, request_type)(code, len(code))
    assert _reply(kernel, msg_id)["status"] == "ok"
    event = _event(kernel, action)
    assert event["kernel_guard"]["code_sha256"] == _sha(code) and event["kernel_guard"]["code"] == code
    assert event["user"]["name"] == "alice" and event["process"]["pid"]


def test_comm_data_is_recorded_with_its_hash(kernel: GuardedKernel) -> None:
    """A comm_open for an unknown target carries code as data: its hash is in the record."""
    data = {"code": "__import__('os').getpid()"}
    kernel.mark()
    client = kernel.session.client
    msg = client.session.msg("comm_open", {"comm_id": "c0ffee", "target_name": "kg.test", "data": data})
    client.shell_channel.send(msg)
    event = _event(kernel, "comm-message")
    assert event["kernel_guard"]["target_name"] == "kg.test" and event["kernel_guard"]["comm_id"] == "c0ffee"
    assert event["kernel_guard"]["code_sha256"] == _sha(json.dumps(data, sort_keys=True))


def _execute_with_input(kernel: GuardedKernel, code: str, answer: str) -> None:
    client = kernel.session.client
    msg_id = client.execute(code, allow_stdin=True)
    request = client.get_stdin_msg(timeout=10)
    assert request["msg_type"] == "input_request"
    client.input(answer)
    assert _reply(kernel, msg_id)["status"] == "ok"


def test_a_reply_to_input_is_recorded_with_its_hash(kernel: GuardedKernel) -> None:
    kernel.mark()
    _execute_with_input(kernel, "code = input('code? ')", "print('from input')")
    event = _event(kernel, "input-received")
    assert event["kernel_guard"]["code_sha256"] == _sha("print('from input')")
    assert event["kernel_guard"]["password"] is False and event["kernel_guard"]["prompt"] == "code? "


def test_a_password_is_recorded_by_its_length_only(kernel: GuardedKernel) -> None:
    kernel.mark()
    _execute_with_input(kernel, "import getpass\nsecret = getpass.getpass()", "hunter2-correct-horse")
    event = _event(kernel, "input-received")
    assert event["kernel_guard"]["password"] is True and event["kernel_guard"]["value_length"] == 21
    assert "hunter2" not in json.dumps(event) and "code_sha256" not in event["kernel_guard"]


def test_a_long_user_expression_keeps_its_whole_hash(kernel: GuardedKernel) -> None:
    expression = "probe." + "x" * 400
    kernel.mark()
    assert kernel.execute("1", user_expressions={"long": expression}).status == "ok"
    event = _event(kernel, "cell-executed")
    assert event["kernel_guard"]["user_expressions_sha256"] == {"long": _sha(expression)}
