"""What the test tiers share, one topic per module; tests import from the module that owns a helper.

- :mod:`.processes`: the repository's paths, the project's console scripts, environments, starting and
  stopping processes (and their process groups), reaping forked children, reading their pipes, ports;
- :mod:`.waiting`: waiting on a condition with a deadline, never sleeping and hoping;
- :mod:`.devserver`: the real ``rudder-fast devserver`` in a subprocess, and what it received;
- :mod:`.sender`: the real ``rudder-fast-sender`` in a subprocess, in the background or draining;
- :mod:`.spool`: what is on disk, read independently of the sender, and the toolbox's view of it
  (``rudder-fast inspect`` and ``status --json``, for real);
- :mod:`.producers`: producer processes: forked fillers, a child driven step by step, waves of
  short-lived processes, and the default emitter pointed at a test's spool;
- :mod:`.programs`: producer programs that run as ``python -m tests.support.programs ...``;
- :mod:`.delivery`: checks on what crossed the wire (exactly once, well-formed events);
- :mod:`.http_load`: a bounded keep-alive HTTP load against an app server;
- :mod:`.soak`: the soak's instruments (an RSS sampler, a data plane that flaps);
- :mod:`.deploy`: the deployment recipes as written, and ways to run them on this machine;
- :mod:`.sdk_migration`: comparing what rudder-sdk-python and rudder_fast send;
- :mod:`.fixtures`: the pytest fixtures built on these (registered for every tier by tests/conftest.py).

Every process a helper starts is stopped by it (or by the fixture that owns it), even when the test
fails.
"""
