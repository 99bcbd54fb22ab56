"""Paper protocols as data, and the runner that fills their tables."""
