"""The probe daemon: ``kvmppc serve`` and its client ``kvmppc query``.

One process, one asyncio loop.  It probes the host at start (in a thread: the probe opens
``/dev/kvm`` and issues ioctls through :mod:`kvmppc.probe`; nothing here does), keeps the
answer, reads the fast-changing hugepage counts fresh for each answer, and serves HTTP/1.1 +
JSON on a unix socket and Prometheus metrics on TCP.  Under systemd it takes the sockets it is
handed, speaks the notify protocol and logs to the journal; without systemd it is a plain
foreground process.

Modules: :mod:`.sd` (notify, listen-fds, watchdog), :mod:`.config`, :mod:`.cache`,
:mod:`.http` (the HTTP/1.1 protocol), :mod:`.metrics` (the Prometheus collector),
:mod:`.server` (the daemon), :mod:`.log`, :mod:`.client` and :mod:`.cli`.
"""
