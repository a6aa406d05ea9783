"""The `llm-picker` command: composes the core with its adapters and the harness packages.

Kept out of `picker` (the core) because `serve` needs the Envoy adapter and `sim`, `demo` and
`bench` need the harness; each subcommand imports only what it runs.
"""
