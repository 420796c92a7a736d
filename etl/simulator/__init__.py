"""A fake Devin API v3 on loopback HTTP, with deterministic generated data.

``Simulator`` serves sessions, organizations and users as the real enterprise
endpoints do, and lets tests change data, shift the clock and inject faults
while a client pages through it. ``server`` holds the control API, ``listing``
the filters, cursors and pages, and ``data`` the generated records.
"""

from etl.simulator.data import (
    generate_organizations,
    generate_sessions,
    generate_users,
)
from etl.simulator.server import (
    Fault,
    RequestRecord,
    Simulator,
    SimulatorConfig,
    serve,
)

__all__ = [
    "Fault",
    "RequestRecord",
    "Simulator",
    "SimulatorConfig",
    "generate_organizations",
    "generate_sessions",
    "generate_users",
    "serve",
]
