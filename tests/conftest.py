"""Shared pytest configuration: plugins with fixtures for real engines."""

pytest_plugins = ["slurm_fixtures", "pg_fixtures"]
