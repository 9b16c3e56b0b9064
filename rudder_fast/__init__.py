"""rudder_fast: a multiprocessing-safe, durable, fast event emitter for RudderStack.

``from rudder_fast import emit`` and call ``emit.track(...)``: the event is validated, packed and appended
to this process's own file in the on-disk spool in a few microseconds; ``rudder-fast-sender`` delivers
the spool to the data plane. Importing this package creates no file and starts no thread.
"""

from __future__ import annotations

# The version, written once (setuptools reads it from here), and before the imports below: the
# modules they load name the library's version in what they send.
__version__ = "0.1.0"

from .emitter import Emitter, configure, emit
from .errors import ConfigurationError, InvalidEventError, RudderFastError, SpoolError

__all__ = [
    "ConfigurationError",
    "Emitter",
    "InvalidEventError",
    "RudderFastError",
    "SpoolError",
    "__version__",
    "configure",
    "emit",
]
