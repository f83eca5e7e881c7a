"""Other tools certman works with: the certbot deploy hook."""
