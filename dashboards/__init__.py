"""Grafana dashboards for pdscaler, generated with grafana-foundation-sdk (see dashboards/build.py)."""
