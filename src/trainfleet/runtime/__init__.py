"""What runs on a node: the agent that spawns ranks, their environment, log pipes and ``report``."""
