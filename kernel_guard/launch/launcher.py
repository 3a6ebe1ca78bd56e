"""``python -m kernel_guard.launch [options] -f {connection_file}``: the guarded kernel.

The wrapper sets up every layer before any notebook code can run, then starts
ipykernel in the same process.  The order is the security argument, so each
step is a function and :func:`launch` calls them in sequence:

1. ``record``    audit hook in record mode (from the first moment); the
                 seccomp profile; credential scrubbing; the guard's runtime
                 and sinks, opened but with no thread yet; the supervisor's
                 process spawned; imports and look-ups that need exec
                 (libseccomp bindings, ``find_library``, ``platform``); then
                 the Landlock domain (``scope``), while the process is still
                 single-threaded and with the supervisor outside it; then the
                 pipeline's threads, inside it;
2. ``supervisor`` a separate process (fork + exec while exec still works)
                 with its own sinks, session and process group, connected by a
                 socket pair; its start overlaps the warm-up, and is waited
                 for here;
3. ``filter``    no_new_privs, CAP_SYS_PTRACE dropped, the profile's filter
                 loaded with TSYNC, plus rules that send every signal, pidfd
                 and rlimit call aimed at the supervisor's threads to the
                 supervisor (refused, recorded); the listener fd passed to
                 the supervisor over SCM_RIGHTS and closed here;
4. ``verify``    ``/proc/self/status`` says ``Seccomp: 2``, ``NoNewPrivs: 1``,
                 no listener fd is left in this process, the supervisor lives;
                 then the audit hook switches to enforcing, with the
                 supervisor's pid protected from signals;
5. ``kernel``    IPKernelApp with ``--ext=kernel_guard`` and
                 ``reraise_ipython_extension_failures`` on the command line,
                 where no user config file can drop them.

A failure in steps 2-4 under a ``fail_closed`` profile (the default profile)
ends the process with one paragraph on stderr (the Jupyter server log) and a
``guard-error`` event: a kernel without its filter must not start.

Losing the supervisor later is not fatal to the kernel, and need not be: the
filter makes exec fail (ENOSYS) once its listener is gone, and refuses every
new listener, so nothing can take the supervisor's place and exec stays
blocked for good.  Ending the kernel instead would lose the user's work and
still race a forked child; the loss is recorded (event and stderr).

``python -m kernel_guard.launch`` runs this module's :func:`main` from the
package's ``__main__``.  The supervisor's steps are in :mod:`.supervisor_steps`,
what adapts the standard library in :mod:`.python_adaptations`.  It keeps no state; the state lives in
:mod:`runtime`, :mod:`supervisor`, :mod:`status` and the audit hook.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import os
import sys
from typing import Any, NoReturn, Optional

from .python_adaptations import (_adapt_python, _cached_find_library, _drop_cwd_from_path, _ldconfig_cache,
                                 _restore_user_paths, _start_ldconfig, _warm_up, user_site_wanted)
from .supervisor_steps import (_allow_supervisor_to_read, _exclude_from_children, _hand_record_to_custodian,
                               _on_supervisor_lost, _on_supervisor_resumed, _on_supervisor_stalled, _outer_domain,
                               _spawn_supervisor, _start_supervisor)

__all__ = ["DEFAULT_SCRUB", "build_parser", "kernel_argv", "launch", "main", "user_site_wanted"]

#: environment variables that let notebook code act as the server or the hub
DEFAULT_SCRUB = (
    "JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_OAUTH_*", "JUPYTER_TOKEN",
    "JUPYTER_PASSWORD", "JUPYTERHUB_COOKIE_SECRET", "JPY_COOKIE_SECRET", "CONFIGPROXY_AUTH_TOKEN",
)

_STEP_NAMES = {
    "record": "preparing the guard", "scope": "applying the kernel's Landlock domain",
    "supervisor": "starting the exec supervisor",
    "filter": "loading the seccomp filter", "verify": "verifying the seccomp filter",
    "kernel": "starting the kernel with the kernel_guard extension",
}


class LaunchError(Exception):
    """A step of the launch failed; ``step`` names it."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


def build_parser() -> argparse.ArgumentParser:
    """The launcher's own options; everything else goes to IPKernelApp."""
    parser = argparse.ArgumentParser(
        prog="python -m kernel_guard.launch",
        description="Start an IPython kernel behind kernel_guard's seccomp exec filter and supervisor.")
    parser.add_argument("-f", dest="connection_file", required=True, help="the kernel's connection file")
    parser.add_argument("--profile", default="default",
                        help="seccomp profile: a built-in name (default, audit) or a JSON file path")
    parser.add_argument("--scrub-env", action="append", default=[], metavar="PATTERN",
                        help="another environment variable (glob) to remove before the kernel starts")
    parser.add_argument("--unsafe-keep-credentials", action="store_true",
                        help="keep hub/server tokens in the kernel's environment (weakens the guard)")
    parser.add_argument("--unsafe-allow-debugger", action="store_true",
                        help="keep debugpy's debug_request, which evaluates code outside cells (weakens the guard)")
    parser.add_argument("--supervisor-timeout", type=float, default=30.0,
                        help="seconds to wait for the supervisor to start (default 30)")
    return parser


def kernel_argv(connection_file: str, extra: list[str]) -> list[str]:
    """IPKernelApp's argv: the extension and its failure mode fixed on the command line,
    and no ``PYTHONSTARTUP`` file (IPython reads that variable itself, whatever ``-I``
    says, and the file may lie where a cell can write)."""
    return [*extra, "-f", connection_file, "--ext=kernel_guard",
            "--InteractiveShellApp.reraise_ipython_extension_failures=True",
            "--InteractiveShellApp.exec_PYTHONSTARTUP=False"]


# -- step 1: record, prepare ----------------------------------------------------


def _trusted_config(extra: list[str]) -> Any:
    """KernelGuard settings from trusted sources only: root-owned system config files
    and ``--KernelGuard.*`` on the kernelspec's command line.  User config files run
    user code, which must not happen before the filter."""
    from traitlets.config import Config
    from traitlets.config.loader import KVArgParseConfigLoader

    from ..config import _load_file, trusted_file

    merged = Config()
    try:
        from IPython.core.application import SYSTEM_CONFIG_DIRS
    except ImportError:
        SYSTEM_CONFIG_DIRS = [os.path.join(sys.prefix, "etc", "ipython"), "/usr/local/etc/ipython", "/etc/ipython"]
    for directory in reversed(SYSTEM_CONFIG_DIRS):  # later (more specific) files win
        for base in ("ipython_config", "ipython_kernel_config"):
            for ext in (".py", ".json"):
                path = os.path.join(directory, base + ext)
                if os.path.isfile(path) and trusted_file(path):
                    try:
                        merged.merge(_load_file(path))
                    except Exception:
                        pass
    cli = [a for a in extra if a.startswith("--KernelGuard.")]
    if cli:
        merged.merge(KVArgParseConfigLoader(argv=cli).load_config())
    return merged


def _scrub_environment(patterns: list[str]) -> list[str]:
    """Remove credential variables from os.environ and from the initial environment
    block that /proc/self/environ shows; return the names removed."""
    names = sorted(n for n in os.environ if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    for name in names:
        del os.environ[name]  # unsetenv: libc's environ no longer points at them
    if names:
        _blank_initial_environ(names)
    return names


def _blank_initial_environ(names: list[str]) -> None:
    """Overwrite NAME=value in the process's initial environment block with NULs."""
    from .seccomp_filter import proc_stat

    fields = proc_stat()
    start, end = int(fields[47]), int(fields[48])  # env_start, env_end (proc(5) fields 50, 51)
    fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
    try:
        block = os.pread(fd, end - start, start)
        wanted = {n.encode() for n in names}
        offset = 0
        for entry in block.split(b"\0"):
            if entry.split(b"=", 1)[0] in wanted:
                os.pwrite(fd, b"\0" * len(entry), start + offset)
            offset += len(entry) + 1
    finally:
        os.close(fd)


# -- step 2: supervisor ---------------------------------------------------------


def _apply_landlock(profile: Any, guard: Any, own_spools: bool = True) -> Any:
    """The kernel's Landlock domain, for this process and every child: the profile's
    writable roots and allowed programs, and the signal scope (the supervisor, started
    just before, is outside it and out of the notebook's reach).  Applied while
    single-threaded (checked): before ABI 8 a domain covers the calling thread only.
    Returns the LandlockResult, or the OSError that prevented it."""
    from . import landlock, seccomp_filter

    settings = profile.landlock
    try:
        seccomp_filter.set_no_new_privs()  # Landlock needs it, as the filter will
        if settings is None:
            return landlock.restrict_signals()
        writable, programs = settings.expand(os.path.expanduser("~"), os.getcwd(), sys.executable)
        from ..events.spool import default_spool_root

        spool = default_spool_root() if guard.spool_dir is None else guard.spool_dir
        if spool and own_spools:  # the kernel's own network sinks keep their spools there
            writable = (*writable, spool)
        real = tuple(dict.fromkeys(os.path.realpath(p) for p in programs))
        return landlock.restrict(landlock.Domain(writable, real, min_abi=settings.min_abi))
    except OSError as exc:
        return exc


# -- step 3: filter ---------------------------------------------------------------

def _load_filter(profile: Any, handle: Any, allowed: tuple[str, ...] = (), truncation: bool = False) -> Any:
    from . import seccomp_filter

    seccomp_filter.drop_capability(seccomp_filter.CAP_SYS_PTRACE)
    seccomp_filter.set_no_new_privs()
    # signals, pidfds and rlimits aimed at the supervisor go to it: refused and recorded
    extra = seccomp_filter.supervisor_rules(handle.pid, handle.tids, handle.witness) if handle is not None else ()
    if handle is not None and allowed:
        extra += seccomp_filter.image_gate_rules()  # each new image is checked before it runs
        extra += seccomp_filter.memfd_rules()  # no program the domain does not check
    if truncation:
        # a domain below Landlock ABI 3 confines writes, not truncation by path:
        # the supervisor refuses and records it
        extra += seccomp_filter.truncation_rules(notify=handle is not None)
    loaded = seccomp_filter.load(profile, extra)
    if loaded.listener_fd is not None:
        if handle is None:
            os.close(loaded.listener_fd)  # nobody answers: notified syscalls fail with ENOSYS
        else:
            # programs the kernel's own domain lets run: the supervisor may let those
            # continue, since Landlock, not its reading of the target, decides
            handle.send_listener(loaded.listener_fd, allowed)
    return loaded


# -- step 4: verify ---------------------------------------------------------------

def _verify(handle: Any) -> dict[str, str]:
    from . import seccomp_filter

    status = seccomp_filter.proc_status()
    problems = []
    if status.get("Seccomp") != "2":
        problems.append(f"Seccomp is {status.get('Seccomp', 'missing')}, not 2 (filter mode)")
    if status.get("NoNewPrivs") != "1":
        problems.append(f"NoNewPrivs is {status.get('NoNewPrivs', 'missing')}, not 1")
    leftover = seccomp_filter.listener_fds()
    if leftover:
        problems.append(f"this process still holds listener fds {leftover}")
    if handle is not None and not handle.alive():
        problems.append(f"the supervisor (pid {handle.pid}) is not running")
    if problems:
        raise LaunchError("verify", "; ".join(problems))
    return status


def _enforce(rt: Any, handle: Any, allowed: tuple[str, ...] = ()) -> None:
    """Switch the audit hook to the configured mode, protecting the supervisor's pid
    and letting through the programs the kernel's Landlock domain allows."""
    from ..audit import hook as audit

    guard = rt.guard
    audit.install(guard.mode, extra_persistence=guard.extra_persistence_paths,
                  extra_env=guard.extra_protected_env,
                  protected_pids=[handle.pid] if handle is not None else [], allowed_programs=allowed)
    rt.layers["audit"] = audit.installed_mode() or "off"


# -- failing ---------------------------------------------------------------------

def _fail(step: str, reason: str, profile_path: str, fatal: bool, handle: Any = None) -> None:
    """Fail closed (exit) or, under a profile that allows it, warn and go on."""
    from .. import runtime
    from ..events import pipeline
    from ..events.schema import make_event

    what = _STEP_NAMES.get(step, step)
    if fatal:
        text = (f"kernel_guard: the kernel was not started: {what} failed: {reason}. The seccomp "
                f"profile {profile_path} requires the filter (fail_closed), and a kernel without it "
                "would run notebook code unguarded. Check that the kernel runs on Linux 5.7 or newer "
                "with seccomp user notification, that libseccomp and pyseccomp are installed, and that "
                "the profile is valid (`kernel-guard profile validate PATH`).")
    else:
        text = (f"kernel_guard: {what} failed: {reason}. The profile {profile_path} does not require "
                "the filter, so the kernel starts without the seccomp layer: exec is NOT blocked.")
    pipeline._stderr_line(text)
    runtime.emit(make_event("guard-error", outcome="failure", layer="launcher", reason=text, step=step,
                            profile=profile_path, fatal=fatal))
    if fatal:
        # a started supervisor follows us out (PR_SET_PDEATHSIG); signalling it
        # here would meet our own audit hook, which protects its pid
        rt = runtime.current()
        if rt is not None:
            rt.pipeline.close(timeout=3.0)
        raise SystemExit(1)


# -- the sequence ----------------------------------------------------------------

def launch(argv: Optional[list[str]] = None) -> NoReturn:
    """Run the five steps, then the kernel; never returns."""
    from ..audit import hook as audit
    from . import start_folders

    # start-up allocates what lives as long as the kernel: no collection until the
    # kernel runs (_settle_heap); a plain kernel spends about 27 ms of its start in them
    gc.disable()
    folders = start_folders.StartFolders()
    start_folders.private_ipython_dir(folders)  # ~/.ipython is writable by the kernel
    audit.install("audit")  # step 1 begins: record from the first moment
    dropped_path = _drop_cwd_from_path()
    args, extra = build_parser().parse_known_args(argv)
    with audit.launcher_setup() as programs:
        rt, profile, scrubbed, pending, scope = _prepare(args, extra, folders.held)
    if folders.held is not None:
        folders.held.close()  # the supervisor has its own copies; the kernel needs none
    _record_setup(programs)
    allowed = scope.programs if scope.enforces_exec else ()
    handle, loaded, proc_status = _guard(rt, profile, args.supervisor_timeout, pending, allowed,
                                         truncation=scope.needs_truncation_rules)  # steps 2-4
    if loaded is None:
        allowed = ()  # no filter: the supervisor answers nothing, the audit hook lets nothing through
    _enforce(rt, handle, allowed)
    if handle is not None:
        _allow_supervisor_to_read(handle.pid)
        handle.watch(_on_supervisor_lost)
        handle.watch_stalls(_on_supervisor_stalled, _on_supervisor_resumed)
    _adapt_python(loaded is not None and profile.mode == "enforce" and not allowed,
                  args.unsafe_allow_debugger)
    _restore_user_paths(dropped_path, folders)
    extra = [*extra, *start_folders.keep_history(folders)]
    _record_start(rt, profile, handle, loaded, proc_status, scrubbed, args.unsafe_allow_debugger, scope, folders)
    _run_kernel(args.connection_file, extra, handle, profile.path)


def _record_setup(programs: list[dict[str, Any]]) -> None:
    """One ``launcher-setup`` event naming the programs step 1 ran (ldconfig, uname,
    the supervisor) and the files of IPython's profile it created in its private
    folder: the launcher's own work, before any notebook code, is not an
    ``exec-attempt`` or a ``persistence-write``."""
    from .. import runtime
    from ..events.schema import make_event

    started = [p for p in programs if "executable" in p]
    writes = [p for p in programs if "file" in p]
    names = sorted({os.path.basename(p["executable"] or "?") for p in started})
    wrote = f"; it wrote {len(writes)} files of IPython's profile in its own folder" if writes else ""
    runtime.emit(make_event("launcher-setup", outcome="success", layer="launcher",
                            reason=f"the launcher ran {len(started)} programs to set the kernel up, before any "
                                   f"notebook code: {', '.join(names) or 'none'}{wrote}",
                            programs=started, writes=writes,
                            lookups=[p for p in programs if "executable" not in p and "file" not in p]))


def _prepare(args: argparse.Namespace, extra: list[str],
             private: Any = None) -> tuple[Any, Any, list[str], dict[str, str], Any, Any]:
    """Step 1: runtime and sinks (threads not yet started), the profile, credential
    scrubbing, the supervisor's process (spawned, see :func:`_spawn_supervisor`; it
    removes the ``private`` IPython folder if the kernel is killed), what needs exec,
    the Landlock domain, then the pipeline's threads."""
    from .. import runtime
    from ..events.schema import KernelContext, make_event
    from ..exceptions import ProfileError
    from . import profiles, seccomp_filter

    ldconfig = _start_ldconfig()  # runs while the settings are read
    kernel_id = KernelContext.kernel_id_from_connection_file(args.connection_file)
    config = _trusted_config(extra)
    # from here find_library answers from the snapshot, libseccomp's bindings first:
    # one ldconfig for the whole start, and none after the filter refuses exec
    _cached_find_library(_ldconfig_cache(ldconfig))
    profile_path, profile, problem = args.profile, None, None
    try:
        profile_path = profiles.resolve_profile_path(args.profile)
        profile = profiles.load_profile(profile_path, build=False)  # libseccomp builds it in step 3
    except (ProfileError, seccomp_filter.SeccompUnavailable) as exc:
        problem = str(exc)
    patterns = [*DEFAULT_SCRUB, *args.scrub_env]
    scrubbed = [] if args.unsafe_keep_credentials else _scrub_environment(patterns)
    pending = scope = warm_up_error = None
    # order matters: sinks and spools open before the Landlock domain (their files
    # may lie outside its writable roots), their threads start after it (a domain
    # covers only the thread that applies it and threads started later)
    rt = runtime.start(config, kernel_id=kernel_id, threads=False, sinks=False)
    if profile is not None and profile.uses_notify:
        # the supervisor starts outside the kernel's domain, and keeps the record there
        pending = _spawn_supervisor(rt.guard, kernel_id, profile, scoped=_outer_domain(), private=private)
    custodian = _hand_record_to_custodian(rt, pending)
    if profile is not None:
        # what needs exec runs before the domain allows only the interpreter
        try:
            _warm_up()
        except Exception as exc:
            warm_up_error = exc
        scope = _apply_landlock(profile, rt.guard, own_spools=not custodian)
    rt.pipeline.start()
    if profile is not None:
        # inside the Landlock domain, while the supervisor's interpreter starts (step 2
        # waits for it): the kernel's own imports overlap that wait
        import ipykernel.kernelapp  # noqa: F401
    rt.layers["launcher"] = "on"
    if profile is None:
        _fail("record", problem or "no profile", profile_path, fatal=True)
    runtime.emit(make_event("credentials-scrubbed", outcome="success", layer="launcher",
                            reason=(f"removed {len(scrubbed)} credential variables from the kernel's environment"
                                    if not args.unsafe_keep_credentials else
                                    "credential scrubbing disabled (--unsafe-keep-credentials)"),
                            variables=scrubbed, patterns=patterns))
    if isinstance(scope, OSError):
        from .landlock import LandlockResult

        required = profile.landlock is not None and profile.landlock.min_abi > 0
        _fail("scope", f"the Landlock domain could not be applied: {scope.strerror}", profile.path,
              fatal=profile.fail_closed or required)
        scope = LandlockResult(0, False, reason=f"could not be applied: {scope.strerror}")
    if warm_up_error is not None:
        _fail("record", f"{type(warm_up_error).__name__}: {warm_up_error}", profile.path, fatal=profile.fail_closed)
    return rt, profile, scrubbed, pending, scope


def _guard(rt: Any, profile: Any, timeout: float, pending: Any = None,
           allowed: tuple[str, ...] = (), truncation: bool = False) -> tuple[Any, Any, dict[str, str]]:
    """Steps 2-4: supervisor, filter, verification; (handle, loaded filter, /proc status).

    Fails closed under a fail_closed profile; otherwise returns (None, None, status)."""
    from ..exceptions import ProfileError
    from . import seccomp_filter

    handle = None
    step = "supervisor"
    try:
        if profile.uses_notify:
            handle = _start_supervisor(pending, timeout)  # step 2
            for sink in rt.pipeline.sinks:  # it started: losing it later is the custodian sink's to say
                getattr(sink, "confirm", lambda: None)()
        step = "filter"
        loaded = _load_filter(profile, handle, allowed, truncation)  # step 3
        step = "verify"
        return handle, loaded, _verify(handle)  # step 4
    except Exception as exc:
        failed_step, reason = (exc.step, exc.reason) if isinstance(exc, LaunchError) else (
            step, f"{type(exc).__name__}: {exc}")
        if handle is None:  # no custodian: the kernel keeps its own record, starting with this
            for sink in rt.pipeline.sinks:
                getattr(sink, "use_own_sinks", lambda: None)()
        # a profile libseccomp rejects is never started with, whatever it says
        _fail(failed_step, reason, profile.path, profile.fail_closed or isinstance(exc, ProfileError), handle)
        # not fatal (audit profile): go on without the seccomp layer, and without
        # a supervisor that has nothing to supervise
        if handle is not None:
            handle.stop()
        return None, None, seccomp_filter.proc_status()


def _record_start(rt: Any, profile: Any, handle: Any, loaded: Any, proc_status: dict[str, str],
                  scrubbed: list[str], debugger: bool, scope: Any, folders: Any) -> None:
    """What was set up, for status and for the kernel-started event."""
    from .. import status
    from ..ipython import cells
    from . import profiles

    summary = profiles.profile_summary(profile)
    sup_pid = handle.pid if handle is not None else None
    rt.layers["seccomp"] = profile.mode if loaded is not None else "off"
    rt.layers["supervisor"] = "running" if sup_pid else "none"
    rt.layers["landlock"] = scope.describe()
    status.record_launch(profile=summary, seccomp=loaded is not None, supervisor_pid=sup_pid,
                         architectures=list(loaded.architectures) if loaded else [],
                         scrubbed=scrubbed, debugger=debugger, landlock_abi=scope.abi,
                         landlock_writable=list(scope.writable), landlock_programs=list(scope.programs))
    cells.started(layer="launcher", profile=summary, layers=dict(rt.layers), supervisor_pid=sup_pid,
                  seccomp=proc_status.get("Seccomp"), no_new_privs=proc_status.get("NoNewPrivs"),
                  start_folders=folders.as_event_fields())
    if folders.not_read:
        print("kernel_guard: this kernel does not run code from folders it can write itself: "
              + ", ".join(folders.not_read) + " (shared IPython settings go in /etc/ipython)", file=sys.stderr)


def _run_kernel(connection_file: str, extra: list[str], handle: Any, profile_path: str) -> NoReturn:
    """Step 5: ipykernel in this process."""
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    try:
        app.initialize(kernel_argv(connection_file, extra))
    except BaseException as exc:  # catch_config_error exits; an extension failure raises
        _fail("kernel", f"{type(exc).__name__}: {exc}", profile_path, True, handle)
    if handle is not None:
        _exclude_from_children(app.kernel, handle.pid)
    _settle_heap()
    app.start()
    raise SystemExit(0)


def _settle_heap() -> None:
    """Freeze what start-up built (``gc.freeze``), then collect as usual: the kernel's
    modules, classes and settings stay for its whole life, so no later full collection
    walks them again (about 6 ms each in a plain kernel), nor writes to their pages in
    forked children.  Not collected first: that would cost as much as it saves here,
    and start-up leaves little garbage (measured: about 900 objects, 0.1-0.2 MB, which
    stay)."""
    gc.freeze()
    gc.enable()


def main(argv: Optional[list[str]] = None) -> NoReturn:
    """Entry point of ``python -m kernel_guard.launch``."""
    launch(argv)


if __name__ == "__main__":
    main()
