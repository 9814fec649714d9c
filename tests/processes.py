"""A command run in its own process group with its output collected, and what is left of it after it stops.

For the tests of commands that start other processes (scripts/run, the installed `header-augment`): the group
started with `start_new_session=True` holds every process the command started, so /proc shows what remains. The
pieces are the helpers package's (tests/helpers/), named here as the tests have always imported them.
"""

from helpers.ports import free_port, port_is_free
from helpers.procfs import alive, processes_in_group
from helpers.running import Running
from helpers.waiting import DEADLINE, wait_until

__all__ = ["Running", "alive", "free_port", "port_is_free", "processes_in_group", "wait_all_gone"]


def wait_all_gone(pids, timeout: float = DEADLINE) -> None:
    pids = set(pids)
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout, 0.05, f"processes {sorted(pids)} to end")
