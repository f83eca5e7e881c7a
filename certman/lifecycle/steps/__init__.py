"""The engine's actions, one idempotent step each: keys, DANE publish/confirm, issue, deploy."""
