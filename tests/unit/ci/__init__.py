"""ci tests."""
