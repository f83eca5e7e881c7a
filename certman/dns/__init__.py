"""DNS: the provider contract, zone discovery, propagation checks, and the providers themselves."""
