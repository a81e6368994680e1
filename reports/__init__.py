"""Self-contained HTML reports built from result files."""
