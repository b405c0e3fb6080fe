"""rucio."""
