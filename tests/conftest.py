"""Fixtures are plugins, one module per area (psycopg's layout)."""

pytest_plugins = ["tests.fix_stack", "tests.fix_faults"]
