"""Web console, JSON API and /metrics."""
