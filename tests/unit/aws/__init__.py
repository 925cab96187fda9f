"""aws tests."""
