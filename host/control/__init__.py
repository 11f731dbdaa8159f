"""Balloon controllers: host plug-ins that set every guest's balloon target
from the host's memory and the guests' stats (issue 24). The contract is in
``base.py``; the shipped controllers each transcribe one source; ``runner.py``
runs one on the host, guarded."""
