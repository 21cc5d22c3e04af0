"""Whether a test left processes behind: members of a process group, zombies not counted."""

from __future__ import annotations

import subprocess
import time


def live_members(pgid: int) -> list[str]:
    """`pid command` of every process of group `pgid` that is not a zombie."""
    table = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in table.splitlines()]
    return [f"{r[0]} {r[3] if len(r) > 3 else ''}" for r in rows if len(r) >= 3 and r[1] == str(pgid) and not r[2].startswith("Z")]


def group_gone(pgid: int, timeout: float = 15.0) -> bool:
    """True once no live process is left in the group (killed processes take a moment to exit)."""
    deadline = time.monotonic() + timeout
    while live_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
