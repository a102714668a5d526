"""End-to-end recipes that chain several training runs (stages, baselines)."""
