"""`certman check`: the monitoring plugin (findings, thresholds, the concurrent live checks)."""
