"""The launcher layer: what is set up outside the kernel's Python, before it starts.

``python -m kernel_guard.launch [options] -f {connection_file}`` (the argv
``kernel-guard install-kernelspec`` writes, :mod:`.kernelspec`) removes hub
and server tokens from the environment, starts the exec supervisor in a
process of its own (:mod:`.supervisor`), which also keeps the kernel's record
(:mod:`.custodian`: the kernel opens no sink of its own), loads the seccomp filter libseccomp
builds from a Docker/OCI profile (:mod:`.seccomp_filter`, :mod:`.profiles`),
which hands every ``execve``/``execveat`` to the supervisor to refuse and
record, puts the kernel in a Landlock domain (:mod:`.landlock`: writes only
beneath the writable roots, only its own interpreter may be started, no
signal reaches the supervisor), gives it a private IPython folder (removed by
the supervisor if the kernel is killed, :mod:`.leftovers`) and runs
no ``.pth`` code from the writable user site (:mod:`.start_folders`), and then
runs ipykernel with the IPython layer and the audit hook on its command line
(:mod:`.launcher` runs these steps in order).  Code in the kernel cannot undo the filter or the domain;
but they stop only exec, writes, signals and the syscalls the profile names,
not what Python does without them (reading the user's files, opening
sockets), and they give no short refusal and see no cell: the IPython layer,
the audit hook and the events do.  Landlock is best effort by kernel ABI.
Nor can it stop a user from starting a kernelspec that does not use it: the
server layer does.

The layers, the path of an event and of an exec, who may write what: docs/architecture.md.
"""

# Nothing is imported here: ``python -m`` imports this package before it runs
# the launcher (whose first step installs the audit hook) or the supervisor
# (``python -m kernel_guard.launch.supervisor``).
