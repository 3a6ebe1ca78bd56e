"""The guard's state in this process: its settings, its context and its pipeline.

Both entry points (the IPython extension and the launcher) call
:func:`start`, which is idempotent: the second caller gets the first one's
runtime, so the launcher and a ``%load_ext`` in the same kernel share one
pipeline and one audit hook.  The supervisor and its witness start it with
the settings the launcher handed them (:mod:`.launch.handover`): traitlets
is imported only where settings are read from their sources.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Callable, Optional

from .events import pipeline as _pipeline
from .events.aggregate import Aggregate
from .events.pipeline import EventPipeline
from .events.processors import AddContext, Redact, Sequence, TruncateCode, set_process_redactor
from .events.schema import Event, KernelContext, make_event
from .events.streams import StreamChain
from .events.sinks import Sink, SinkOptions, describe_url, open_sink
from .exceptions import SinkError

if TYPE_CHECKING:
    from traitlets.config import Config

    from .config import KernelGuard
    from .launch.handover import HandedSettings

__all__ = ["Runtime", "current", "emit", "start"]


class Runtime:
    """Settings, context and pipeline of the guard in this process."""

    def __init__(self, guard: KernelGuard | HandedSettings, context: KernelContext, pipeline: EventPipeline) -> None:
        self.guard = guard
        self.context = context
        self.pipeline = pipeline
        self.kernel_started = False
        self.layers: dict[str, str] = {}

    @property
    def mode(self) -> str:
        return self.guard.mode

    def emit(self, event: Event) -> None:
        """Emit through this runtime's pipeline."""
        self.pipeline.emit(event)


_runtime: Optional[Runtime] = None


def current() -> Optional[Runtime]:
    """The runtime of this process, if the guard has started."""
    return _runtime


def emit(event: Event) -> None:
    """Emit an event through the process's pipeline (kept until there is one)."""
    _pipeline.emit(event)


def emit_later(build: Callable[[], Event]) -> None:
    """Have the writer thread build and emit an event (see ``EventPipeline.emit_later``)."""
    _pipeline.emit_later(build)


def open_sinks(urls: list[str], options: SinkOptions | None = None) -> tuple[list[Sink], list[tuple[str, str]]]:
    """Open every sink that can be opened; return them and the failures."""
    sinks: list[Sink] = []
    failures: list[tuple[str, str]] = []
    for url in urls:
        try:
            sinks.append(open_sink(url, options))
        except (SinkError, OSError, ValueError) as exc:
            failures.append((describe_url(url), str(exc)))
    return sinks, failures


def guard_sinks(guard: KernelGuard | HandedSettings) -> tuple[list[Sink], list[tuple[str, str]]]:
    """The sinks of ``guard`` that open (the server log when none does: never no
    record), and the failures."""
    opened, failures = open_sinks(list(guard.sinks), guard.sink_options())
    if not opened:
        from .events.sinks.stream import StderrSink

        opened = [StderrSink()]
    return opened, failures


def report_sink_failures(pipe: EventPipeline, failures: list[tuple[str, str]]) -> None:
    """Each sink that could not be opened: on stderr and as a ``sink-error``."""
    for url, reason in failures:
        _stderr(f"kernel_guard: {reason}")
        pipe.emit(make_event("sink-error", outcome="failure", layer="pipeline", reason=reason, sink=url))


def _stderr(text: str) -> None:
    _pipeline._stderr_line(text)


def start(config: Config | None = None, kernel_id: str | None = None, threads: bool = True,
          sinks: bool = True, author: str | None = None, settings: HandedSettings | None = None) -> Runtime:
    """Start the guard's runtime once per process and return it.  ``threads=False``
    opens sinks and spools but leaves the pipeline's threads to ``pipeline.start()``;
    ``sinks=False`` opens none either: the caller sets them before the threads start
    (the launcher hands the kernel's events to its custodian).  ``author`` marks every
    record of this process (``kernel_guard.recorded_by``): the supervisor and its witness.
    ``settings``: the launcher's, handed over and taken as they are (``config`` unused)."""
    global _runtime
    if _runtime is not None:
        if kernel_id and not _runtime.context.kernel_id:
            _runtime.context.kernel_id = kernel_id
        return _runtime
    guard, ignored = (settings, []) if settings is not None else _load_settings(config)
    context = KernelContext(kernel_id=kernel_id, mode=guard.mode)
    context.author = author
    opened, failures = guard_sinks(guard) if sinks else ([], [])
    # aggregate before numbering and redacting: repeats cost no regex work and
    # leave no holes in event.sequence; redaction runs on the writer thread
    # (deferred), not in the cell
    redact = Redact(guard.redact_patterns)
    set_process_redactor(redact)  # text cut before it is queued (a reason quoting a command) is redacted first
    processors = [AddContext(context), Aggregate(guard.aggregate_interval), Sequence(),
                  redact, TruncateCode(), StreamChain()]
    pipe = EventPipeline(opened, processors, queue_size=guard.queue_size,
                         spool_dir=guard.spool_dir, spool_max_bytes=guard.spool_max_bytes, start=threads)
    _pipeline.set_pipeline(pipe)
    _runtime = Runtime(guard, context, pipe)
    report_sink_failures(pipe, failures)
    for item in ignored:
        _stderr(f"kernel_guard: ignored {item['setting']}={item['value']}: {item['reason']}")
        pipe.emit(make_event("config-ignored", outcome="failure", layer="config",
                             reason=item["reason"], setting=item["setting"], value=item["value"],
                             files=item.get("files", [])))
    return _runtime


def _load_settings(config: Config | None) -> tuple[KernelGuard, list[dict[str, Any]]]:
    """The effective settings from their sources, with those ignored."""
    from .config import load_config

    try:
        return load_config(config)
    except Exception as exc:  # a configuration that cannot even be read must not leave the kernel unguarded
        return _strict_settings(exc)


def _strict_settings(exc: BaseException) -> tuple[KernelGuard, list[dict[str, Any]]]:
    """The strict defaults (enforce, the server log), with the reason the configuration was dropped."""
    from traitlets.config import Config

    from .config import KernelGuard

    guard = KernelGuard(config=Config(), mode="enforce", sinks=["stderr://"])
    reason = (f"the configuration could not be read ({type(exc).__name__}: {exc}); "
              "running with the strict defaults (mode enforce, sink stderr://): fix the setting named above")
    return guard, [{"setting": "KernelGuard", "value": "(all)", "reason": reason}]


def kernel_id_from_app() -> Optional[str]:
    """The kernel id of the running ipykernel, from its connection file."""
    try:
        from ipykernel.kernelapp import IPKernelApp

        if IPKernelApp.initialized():
            return KernelContext.kernel_id_from_connection_file(IPKernelApp.instance().connection_file)
    except Exception:
        pass
    return None


def status_fields() -> dict[str, Any]:
    """Facts about this process for ``guard-loaded`` and ``%guard_status``."""
    status: dict[str, Any] = {"pid": os.getpid()}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("Seccomp", "NoNewPrivs", "Seccomp_filters"):
                    status[key] = value.strip()
    except OSError:
        pass
    return status
