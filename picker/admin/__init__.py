"""The admin HTTP API (workers, probes, metrics, status page) and how it is served."""
