"""Built-in workloads and the scenario runner."""

from guest.workloads.base import WorkloadContext, WorkloadStats
from guest.workloads.builtin import BUILTINS, run_builtin
from guest.workloads.scenario import Scenario, load_scenario

__all__ = [
    "BUILTINS",
    "Scenario",
    "WorkloadContext",
    "WorkloadStats",
    "load_scenario",
    "run_builtin",
]
