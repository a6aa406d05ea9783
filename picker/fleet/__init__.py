"""The fleet: which workers exist, what they are, and what they last said about themselves.

Worker specs and the registry, the one writer of membership (manager) and its sources,
health checks, engine-metrics scraping, circuit breaking and learned speeds."""
