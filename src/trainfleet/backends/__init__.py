"""Execution engines behind one narrow seam (``base.Backend``): render a request, then submit/cancel it."""
