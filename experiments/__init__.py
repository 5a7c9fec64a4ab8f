"""Benchmarks and experiments (scripts that print tables and write JSON/CSV/Markdown)."""
