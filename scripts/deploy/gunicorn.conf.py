"""gunicorn settings for an app that emits with rudder_fast.

Nothing is needed but the spool's environment variable: no post_fork hook, no flush at exit, with or
without ``--preload`` (each worker writes its own segment file; nothing is shared across the fork).
Setting it here with ``raw_env`` is the same as setting it in the service's environment; the sender
(systemd unit, supervisor program or sidecar container) must use the same directory, as the same user.

    gunicorn -c scripts/deploy/gunicorn.conf.py --preload flask_app:app
"""

raw_env = ["RUDDER_FAST_SPOOL_DIR=/var/spool/rudder-fast"]

# Ordinary settings, unrelated to rudder_fast (command-line options override them, e.g. --bind).
bind = ["127.0.0.1:8000"]
workers = 4
graceful_timeout = 15
