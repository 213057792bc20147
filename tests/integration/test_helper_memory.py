"""The resident helper (cnmd) stays bounded over many requests: its threads end with their
requests, it keeps no descriptor, and its worker threads share one malloc arena.

Why the arena: each request runs in a new thread, and glibc gives a thread an arena of its
own whenever every existing one is held (a previous worker still exiting, concurrent requests),
up to 8 per core. Each arena keeps the pages its requests freed, so the helper's RSS rose in
steps of an arena's working set over thousands of ADD/DEL pairs (bench --full-rss).
"""

from __future__ import annotations

import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import BIN, GO_PLUGINS, unique
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
    """(threads, open descriptors) once the helper has only its main thread left."""
    deadline = time.monotonic() + 30
    while status(pid, "Threads") != 1:
        assert time.monotonic() < deadline, "the helper's threads did not end"
        time.sleep(0.05)
    return status(pid, "Threads"), len(os.listdir(f"/proc/{pid}/fd"))


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
        warm = quiet(proc.pid)
        for _ in range(3):
            round_of_requests()
        assert quiet(proc.pid) == warm  # every worker thread ended, no descriptor left open
        assert thread_malloc_heaps(proc.pid) == []  # all threads allocated from the one arena
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
