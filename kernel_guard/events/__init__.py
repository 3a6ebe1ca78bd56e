"""The events layer: one ECS JSON line for everything that happened, to every sink.

Every layer (the IPython layer, the audit hook, the supervisor, the server
extension) builds a plain dict with :func:`.schema.make_event`; processors
add context, aggregate repeats, number and redact (:mod:`.processors`,
:mod:`.aggregate`, the secret shapes of :mod:`.secrets`, whose one-pass
scan in C, ``_gate.c``, lets events without a candidate skip the detectors)
and chain each process's stream (:mod:`.streams`: one serialisation, hashed
and written; orjson where it is installed, else the interpreter's C codec through
:mod:`.json_codec`, which the supervisor uses without importing ``json``); the
pipeline queues events off the caller's thread and writes them to the sinks
(:mod:`.pipeline`, :mod:`.sinks`), spooling for those on the network (:mod:`.spool`) and
reporting what it could not keep (:mod:`.losses`).  It records, it never
refuses: what is stopped is stopped by the other layers.  Events written from
inside the kernel can be suppressed by code that defeats the in-process
layers, which is why, under the launcher, the supervisor writes them
(:mod:`kernel_guard.launch.custodian`) and the chain shows what changed after.

The layers, the path of an event and of an exec, who may write what: docs/architecture.md.
"""
