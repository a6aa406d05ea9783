"""Routing: a request in, a lease on one worker out.

Request parsing (OpenAI bodies, control headers), the router and the router manager, admission
and the lease book, and what a response teaches about the worker that served it."""
