"""Built-in DNS providers: RFC 2136 with TSIG, Route 53, the PowerDNS API, an external command."""
