"""Postfix: postconf/postfix commands, the keys it serves, the atomic install and rollback."""
