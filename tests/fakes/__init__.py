"""Stand-in servers only the tests use, each speaking a vendor's documented wire protocol to its unmodified SDK."""
