"""Flows that join the database and an outside service (Stripe); no Dagster here either."""
