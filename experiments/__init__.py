"""Command-line experiments built on jaxdistill (thin wrappers: parse flags, call the library)."""
