"""Postfix DH parameters: published groups (RFC 7919 / RFC 3526), generation, plan, report."""
