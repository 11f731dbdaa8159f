from tests.integration.procs import procs

__all__ = ["procs"]
