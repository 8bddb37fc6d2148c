"""migmeter: MIG-aware GPU metering.

The top-level packages follow the data: ``collector`` (sources -> snapshots -> Kafka),
``processor`` (Kafka -> window aggregates -> TimescaleDB, reports) and this small shared
package (CLI, settings, errors, local stack, migrations).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
