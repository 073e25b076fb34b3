"""Nightly billing automation for therapy practices, as a Dagster code location."""
