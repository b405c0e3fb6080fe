"""butler."""
