"""dapt-workflow: the importable half of the workflow; the rules call the scripts, the scripts call this."""

__version__ = "0.1.0"
