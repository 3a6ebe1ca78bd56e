"""The IPython layer: the shell routes of IPython, refused with a short message.

``%load_ext kernel_guard`` (:func:`kernel_guard.load_ipython_extension`)
replaces every IPython route to a shell (``!``, ``!!``, ``%%bash``, ``%sx``,
aliases, ``%pip`` ...) with a refusal that names the route (:mod:`.shell`),
guards the extension and ``%config`` against being switched off, records
every execute request as a ``cell-executed`` event (:mod:`.cells`) and adds
``%guard_status`` (:mod:`.magics`).  It only covers IPython's own routes:
``subprocess``, ``os`` and ``ctypes`` reach the operating system without
IPython, which the audit hook and, from outside the kernel's Python, the
launcher's seccomp filter are there to stop.

The layers, the path of an event and of an exec, who may write what: docs/architecture.md.
"""
