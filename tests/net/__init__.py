"""The net suite: real network faults between the sender and the data plane.

On loopback a dead server answers at once with "connection refused". Real networks fail otherwise:
packets vanish and a request waits for its timeout, links are slow and lossy, a load balancer resets
connections mid-response, a gateway accepts and never answers, DNS fails. This kernel has no netem and no
netfilter, so the faults are made in user space, on a real path between two network namespaces::

    app namespace (10.201.0.1)          root namespace             dp namespace (10.201.0.2)
    rudder-fast-sender  ──TUN──  relay.py: delay / loss / blackhole  ──TUN──  tcpfault.py :PORT
    DNS responder 127.0.0.1:53                                                  └→ rudder-fast devserver
                                                                                   --host 0.0.0.0
    producers (root namespace) ──→ spool directory (shared on disk) ←── the sender

Modules:

- :mod:`~tests.net.netns` — the topology: namespaces with per-run names, the relay, addresses, routes,
  ``/etc/netns/<ns>/{hosts,resolv.conf}``, processes started inside, teardown and stale cleanup;
- :mod:`~tests.net.relay` — the IP relay (a subprocess holding both TUN devices): pass, one-way delay,
  random loss, blackhole, changed at run time over a control UNIX socket;
- :mod:`~tests.net.tcpfault` — the TCP/HTTP fault relay in front of the devserver: pass, reset
  mid-response (RST), accept and never answer, trickle one byte a second; it logs how long each request
  waited;
- :mod:`~tests.net.dns` — a nameserver that answers SERVFAIL, or nothing;
- :mod:`~tests.net.produce` — a producer at a steady rate, recording every messageId;
- :mod:`~tests.net.scenario` — the runner (:class:`~tests.net.scenario.NetRun`) and the scenarios,
  reusable outside pytest; :mod:`~tests.net.control` — the JSON-lines control channel of the helpers.

Tests: ``test_kit.py`` proves each fault is real as a plain client sees it (a 200 ms round trip, ~1 %
loss, timeouts under a blackhole, RST / silence / trickle from the TCP relay, the name failing and
resolving again, teardown and stale cleanup); ``test_scenarios.py`` runs the sender through each fault
and requires every event delivered, and no request waiting past connect + read timeout; it also checks
that ``status`` and ``doctor`` show a stalled sender while requests go unanswered, that a silent name
server holds no attempt past the connect timeout, and that a blackholed data plane fails over to a
second one (a devserver on the app namespace's loopback) and back. Each scenario prints one line
(delivered / lost / duplicates, longest stall, longest request, and the states the sender's status went
through: a fault must show as ``backoff`` or ``stalled``), also written to ``results.txt`` in its tmp
dir, listed at the end of the run, and appended as JSON to ``$RUDDER_FAST_NET_RESULTS`` if set.

Running: as root, on Linux with ``/dev/net/tun`` and iproute2::

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/net          # about 2 minutes
    .venv/bin/python -m pytest -q -p no:cacheprovider -s tests/net -m net -k trickle

Without root or TUN the namespace tests skip with the reason; ``RUDDER_FAST_REQUIRE_NETNS=1`` (set by
``./scripts/test`` when run as root) makes that a failure. Every namespace, device, process and
``/etc/netns`` entry a test makes is removed by it, and leftovers of a crashed run are removed by the
next one.
"""
