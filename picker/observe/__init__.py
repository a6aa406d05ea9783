"""What the picker shows about itself: Prometheus metrics, decision records, the access log
and the status page."""
