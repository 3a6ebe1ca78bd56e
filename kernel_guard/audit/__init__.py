"""The audit layer: a CPython audit hook in the kernel process.

Installed by the IPython extension or, first of all, by the launcher, the
hook (:mod:`.hook`, filtered in C by ``_filter.c`` when it was compiled)
refuses in enforce mode, or records in audit mode, process creation, ctypes
look-ups of exec and signal functions (the exec set read from the loaded
libc, :mod:`.libc_symbols`), changes to loader and path variables, writes,
renames, removals and mode changes of start-up and config files, reads of
``/proc/*/environ`` and ``/proc/*/mem`` and links made to them, foreign audit
hooks and subinterpreters, whatever Python route reaches them.  Paths given
relative to a directory descriptor (``dir_fd=``) are judged where they land
(:mod:`.dirfd`).  Its parts: :mod:`.processes` (starting programs),
:mod:`.persistence` (writes that would run at the next start), :mod:`.probes`
(everyday libraries' probes and each refusal's fix), :mod:`.recording`.
See docs/architecture.md.

It is in-process, and these limits are known:

* it cannot see what CPython does not audit: ``_posixsubprocess.fork_exec``
  called directly (a wrapper in front of it is a speed bump), calls to native
  code through ctypes at computed addresses, a native library's constructors;
  and code that rewrites the interpreter's memory can defeat it;
* ``os.open``'s event carries no ``dir_fd``: a relative path is judged against
  the working folder and every folder the process holds open.  Both this and
  the ``dir_fd`` resolution of the other events read the descriptor table at
  the time of the event; a second thread that swaps a descriptor
  (``os.dup2``) or opens a folder between the check and the system call wins
  the race.  A folder descriptor held on a protected folder also makes
  relative writes elsewhere be judged as if there (refused, not missed);
* a link to a ``/proc`` secret is refused when the kernel makes it; one made
  by another process (or before the guard) and named innocently is opened
  without a check: the read is judged by its name, not by resolving every
  read;
* CPython audits neither ``os.pidfd_open`` nor ``signal.pidfd_send_signal``:
  signals through a pidfd are not refused here (their ctypes look-ups are,
  and ``os.kill`` is checked); nor is ``os.kill`` limited to the kernel's own
  processes on the extension-only route.

Only the launcher's seccomp filter and Landlock domain stop exec, writes and
signals for those routes.
"""
