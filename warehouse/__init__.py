"""Warehouse: the read side of TimescaleDB, and its schema.

Migrations (:mod:`warehouse.migrate`, the files in ``sql/``), prices, retention, and everything
that turns stored rows into answers: reports, FOCUS export, right-sizing, stranded capacity,
trends, the HTML statement, plots. Reads what :mod:`processor` writes; never writes usage rows.
"""
