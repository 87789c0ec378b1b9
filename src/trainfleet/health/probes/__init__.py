"""Fabric and device probes: the worker that measures, the arithmetic, the schedule, and the judge."""
