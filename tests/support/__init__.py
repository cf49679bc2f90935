"""Test support: models registered without training, server processes, a load generator (bench/ uses them too)."""
