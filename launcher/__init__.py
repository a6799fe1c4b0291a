"""launch.py's process supervision: start the roles, watch them, restart the dead."""

from launcher.supervisor import MemorySampler, Supervisor

__all__ = ["MemorySampler", "Supervisor"]
