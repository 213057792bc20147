"""The resident helper (cnmd) stays bounded over many requests: its worker threads are reused
(no more of them than requests ever ran at once), it keeps no descriptor, and its worker
threads share one malloc arena.

Why the arena: glibc gives a thread an arena of its own whenever every existing one is held
(concurrent requests), up to 8 per core. Each arena keeps the pages its requests freed, so the helper's RSS rose in
steps of an arena's working set over thousands of ADD/DEL pairs (bench --full-rss).
"""

from __future__ import annotations

import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.common import BIN, GO_PLUGINS, unique
from test_helper import env, run, start_helper  # noqa: F401 (env: the same fixture)

# glibc's HEAP_MAX_SIZE: a thread arena's heap is an anonymous mapping of this size, aligned
# to it (its unused part mapped PROT_NONE).
HEAP_MAX = 2 * 4 * 1024 * 1024 * struct.calcsize("l")


def thread_malloc_heaps(pid: int) -> list[str]:
    """Start addresses of the glibc thread-arena heaps in process `pid`."""
    heaps, run_start, run_end = [], None, None
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            anonymous = len(fields) == 5 and fields[4] == "0"
            if anonymous and run_start is not None and start == run_end:
                run_end = end  # the PROT_NONE rest of the same heap
            else:
                run_start, run_end = (start, end) if anonymous and start % HEAP_MAX == 0 else (None, None)
            if run_start is not None and run_end - run_start == HEAP_MAX:
                heaps.append(hex(run_start))
                run_start = run_end = None
    return heaps


def status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def quiet(pid: int) -> tuple[int, int]:
    """(threads, open descriptors) once both have stayed put for a while: no request in flight."""
    deadline = time.monotonic() + 30
    last = None
    while True:
        now = (status(pid, "Threads"), len(os.listdir(f"/proc/{pid}/fd")))
        if now == last:
            return now
        assert time.monotonic() < deadline, "the helper did not settle"
        last = now
        time.sleep(0.3)


def test_helper_threads_fds_and_malloc_arenas_stay_bounded(tmp_path, env, netns):
    proc, sock = start_helper(tmp_path)
    try:
        conf = {"cniVersion": "1.0.0", "name": unique("hm"), "type": "cnm-none"}
        pods = [(unique("c"), netns()) for _ in range(8)]

        def cmd(command, pod):
            return run("cnm-none", command, conf, env, socket_path=sock, container_id=pod[0], netns=pod[1],
                       ifname="eth0")

        def round_of_requests():
            with ThreadPoolExecutor(len(pods)) as pool:  # concurrent requests: overlapping workers
                for command in ("ADD", "DEL"):
                    answers = list(pool.map(lambda p: cmd(command, p), pods))
                    assert all(rc == 0 and served for rc, _, served in answers), answers

        round_of_requests()
        warm_threads, warm_fds = quiet(proc.pid)
        for _ in range(3):
            round_of_requests()
        threads, fds = quiet(proc.pid)
        assert fds == warm_fds  # no descriptor left open
        # Workers are reused: the main thread, the firewall watch, the name service's sweep, one
        # per request that ran at once (plus one that read start_helper's probe), however many rounds.
        assert threads <= 4 + len(pods), threads
        assert thread_malloc_heaps(proc.pid) == []  # all threads allocated from the one arena
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
