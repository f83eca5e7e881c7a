"""DANE: TLSA record data from keys and certificates; the live STARTTLS probe that checks them."""
