"""The ``llmmesh`` command: terminal clients of the public HTTP API (``llmmesh chat``, ...)."""
