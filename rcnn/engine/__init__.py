"""Running models end to end: loading weights, testing on datasets (training later)."""
