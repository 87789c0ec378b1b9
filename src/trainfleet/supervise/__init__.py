"""Supervising a job: attempts, agent messages, the restart policy and the store writes (single writer)."""
