"""release tests."""
