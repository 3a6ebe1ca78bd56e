"""The audit layer: a CPython audit hook in the kernel process.

Installed by the IPython extension or, first of all, by the launcher, the
hook (:mod:`.hook`, filtered in C by ``_filter.c`` when it was compiled)
refuses in enforce mode, or records in audit mode, process creation, ctypes
look-ups of exec functions, changes to loader and path variables, writes to
start-up and config files, foreign audit hooks and subinterpreters, whatever
Python route reaches them.  It is in-process: it cannot see what CPython
does not audit (``_posixsubprocess.fork_exec`` called directly, calls to
native code through ctypes, a native library's constructors), and code that
rewrites the interpreter's memory can defeat it.  Only the launcher's seccomp
filter stops exec for those routes.
"""
