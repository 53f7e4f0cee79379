"""The HTTP face of the kernel: an OpenAI-compatible API (``/v1``) in front of the broker, for agents written
with any framework that speaks it. Every request is a syscall of the agent whose key is the bearer token.

- :mod:`aios.gateway.auth`: bearer token -> agent (the gateway is a kernel component: it holds the master key).
- :mod:`aios.gateway.openai_api`: the ``/v1`` routes (chat completions, streaming, models, embeddings).
- :mod:`aios.gateway.server`: the Starlette app and the context other route sets are given.
- :mod:`aios.gateway.console`, :mod:`aios.gateway.mcp_server`: the operator console and the kernel's tools over
  MCP (route sets of the same app). The ``aios gateway`` command is :mod:`aios.ops.cli_gateway`.
"""
