"""gunicorn settings for an app that emits with rudder_fast.

Nothing is needed but the spool's environment variable: no post_fork hook, no flush at exit, with or
without ``--preload`` (each worker writes its own segment file; nothing is shared across the fork).
It is set here only when the service's environment does not name a spool (systemd's ``Environment=``,
the image's ``ENV``, the pod's ``env`` win); the sender (systemd unit, supervisor program or sidecar
container) must use the same directory, as the same user.

Run from the directory that holds this file and ``flask_app.py`` (``/app`` in the Dockerfile's image):

    cd scripts/deploy
    gunicorn -c gunicorn.conf.py --preload flask_app:app
"""

import os

# Before gunicorn forks; an empty variable counts as unset, as everywhere in rudder_fast.
os.environ["RUDDER_FAST_SPOOL_DIR"] = os.environ.get("RUDDER_FAST_SPOOL_DIR") or "/var/spool/rudder-fast"

# Ordinary settings, unrelated to rudder_fast (command-line options override them).
# On a host the app listens on loopback behind a reverse proxy; in a container it must listen on all
# of the container's interfaces (APP_BIND=0.0.0.0:8000, as the Dockerfile sets), or a published port
# reaches nothing.
bind = [os.environ.get("APP_BIND", "127.0.0.1:8000")]
workers = 4
graceful_timeout = 15
