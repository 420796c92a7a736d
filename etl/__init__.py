"""devin-etl: sync Devin sessions into a SQL warehouse."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("devin-etl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
