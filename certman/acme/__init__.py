"""ACME (RFC 8555): client, account, orders, challenges (DNS-01, HTTP-01), ARI (RFC 9773)."""
