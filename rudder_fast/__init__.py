"""rudder_fast: a multiprocessing-safe, durable, fast event emitter for RudderStack.

``from rudder_fast import emit`` and call ``emit.track(...)``: the event is validated, packed and appended
to this process's own file in the on-disk spool in a few microseconds; ``rudder-fast-sender`` delivers
the spool to the data plane. Importing this package creates no file and starts no thread.
"""

from __future__ import annotations

from .emitter import Emitter, configure, emit
from .errors import ConfigurationError, InvalidEventError, RudderFastError, SpoolError

__version__ = "0.1.0"

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
