"""Generation backends besides the local vLLM engines, and the registry that puts them all
behind the one Backend interface (domain.py) with fallback and cooldown.

- config.py: deploy/backends.yaml, validated (pydantic); keys from variables or files.
- base.py: what the external kinds share (failures, HTTP statuses, approximate counts).
- openai_compat.py: `openai-compatible` and `openai`, through the openai SDK.
- anthropic.py: `anthropic`, through the anthropic SDK.
- cooldown.py: which backends to skip after failures in a row.
- registry.py: model id -> backend, and the walk down a request's candidates.
"""
