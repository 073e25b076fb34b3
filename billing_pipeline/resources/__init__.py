"""Thin adapters over the outside world: database, Stripe, renderer, notifier, clock."""
