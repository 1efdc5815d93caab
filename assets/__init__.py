"""Feature registry and feature assets; the raw landing zone; the synthetic data generator."""
