"""certman: certificate and DANE (TLSA) lifecycle manager for Postfix."""
