"""devin-etl: sync Devin sessions into a SQL warehouse."""

# The single source of the version: pyproject.toml reads it from here, which
# spares every start of the command line a scan of the installed packages.
__version__ = "0.1.0"
