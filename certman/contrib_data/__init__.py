"""The operator files shipped in the wheel; see certman contrib list."""
