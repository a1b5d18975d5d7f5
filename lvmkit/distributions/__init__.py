"""Pyro distributions that Pyro lacks (observation models arrive with the model zoo)."""
