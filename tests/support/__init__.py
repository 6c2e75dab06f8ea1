"""Helpers shared by test packages (not fixtures: those live in conftest modules)."""
