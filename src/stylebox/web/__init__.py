"""The daemon's live status page, JSON API and Prometheus metrics (``[http] listen``)."""
