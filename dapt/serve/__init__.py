"""The HTTP service over an exported model (python -m dapt.serve)."""
