#!/usr/bin/env python3
"""cnm-macvlan + cnm-ipam against Go macvlan + host-local (/usr/lib/cni), in one run, same client.

    .venv/bin/python bench/macvlan.py [--quick] [--iterations N] [--out FILE]

The setting of bench/bench.py (a throwaway host netns entered by this process, the helper in
the real host netns, bench/client.py's runner), with a veth "uplink" as the master. ADD, CHECK
and DEL interleaved pod by pod (the machine's drift falls on both alike), then 20 pods in
parallel, alternating rounds. Targets (issue 15): ADD ≤ 1.5×, DEL ≤ 1.0×, 20 parallel ≤ 1.0×.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench  # noqa: E402
from bench import GO_DIR, Lab, Report, interleaved, machine, median, ms, p95, parallel, ratio, verdict  # noqa: E402
from client import Chain  # noqa: E402


def conflist(lab, plugin: str, ipam_type: str, master: str, subnet: str, name: str) -> dict:
    return {"cniVersion": bench.VERSION, "name": lab.net(name), "plugins": [
        {"type": plugin, "master": master, "mode": "bridge",
         "ipam": {"type": ipam_type, "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                  "dataDir": os.path.join(lab.tmp, f"ipam-{name}")}}]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--iterations", type=int, help="pods per lifecycle row (default 30, quick 8)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "macvlan-latest.md"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("macvlan.py: run as root (it makes network namespaces)")
    n = args.iterations or (8 if args.quick else 30)
    rounds = 2 if args.quick else 5
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    header = machine()
    lab = Lab(None)
    report = Report()
    try:
        bench.BIN = ours_dir = lab.snapshot_checkout()
        sock = lab.start_helper("checkout", os.path.join(ours_dir, "cnmd"))
        master = f"{lab.tag}up"
        subprocess.run(["ip", "link", "add", master, "type", "veth", "peer", "name", f"{lab.tag}ln"], check=True)
        for link in (master, f"{lab.tag}ln"):
            subprocess.run(["ip", "link", "set", link, "up"], check=True)
        ours = Chain(ours_dir, conflist(lab, "cnm-macvlan", "cnm-ipam", master, "10.238.0.0/20", "mvcnm"),
                     lab.env(ours_dir, sock))
        go = Chain(GO_DIR, conflist(lab, "macvlan", "host-local", master, "10.239.0.0/20", "mvgo"),
                   lab.env(ours_dir, "off"))

        report.section(f"macvlan + IPAM, one pod at a time, interleaved ({n} pods each)",
                       ["plugins", "ADD ms (p95)", "CHECK ms (p95)", "DEL ms (p95)", "ADD × Go", "DEL × Go",
                        "target"])
        t = interleaved(lab, {"ours": ours, "go": go}, n)
        cells = lambda x: [f"{ms(median(x[k]))} ({ms(p95(x[k]))})" for k in ("ADD", "CHECK", "DEL")]  # noqa: E731
        a_r = median(t["ours"]["ADD"]) / median(t["go"]["ADD"])
        d_r = median(t["ours"]["DEL"]) / median(t["go"]["DEL"])
        report.row("Go macvlan + host-local", *cells(t["go"]), "1.00×", "1.00×", "")
        report.row("cnm-macvlan + cnm-ipam (helper)", *cells(t["ours"]), f"{a_r:.2f}×", f"{d_r:.2f}×",
                   f"ADD ≤ 1.5× {verdict(a_r, 1.5)}, DEL ≤ 1.0× {verdict(d_r, 1.0)}")

        report.section(f"20 pods in parallel ({rounds} rounds each, alternating)",
                       ["plugins", "ADD s (median)", "DEL s (median)", "ADD × Go", "DEL × Go", "target"])
        times = {"ours": ([], []), "go": ([], [])}
        for _ in range(rounds):
            for label, chain in (("ours", ours), ("go", go)):
                adds, dels = parallel(lab, chain, 20, 1)
                times[label][0].extend(adds)
                times[label][1].extend(dels)
        pa = median(times["ours"][0]) / median(times["go"][0])
        pd = median(times["ours"][1]) / median(times["go"][1])
        report.row("Go macvlan + host-local", f"{median(times['go'][0]):.3f}", f"{median(times['go'][1]):.3f}",
                   "1.00×", "1.00×", "")
        report.row("cnm-macvlan + cnm-ipam (helper)", f"{median(times['ours'][0]):.3f}",
                   f"{median(times['ours'][1]):.3f}", ratio(pa, 1), ratio(pd, 1),
                   f"≤ 1.0× {verdict(max(pa, pd), 1.0)}")
    finally:
        lab.close()
    elapsed = time.monotonic() - started
    text = (f"## cnm-macvlan benchmark ({'--quick' if args.quick else 'default'}, {elapsed:.0f} s)\n\n{header}\n"
            f"Client: bench/client.py's runner (one exec per plugin, env + stdin), wall time spawn to wait4, in a "
            f"throwaway host netns, the master a veth. Reproduce (as root): `.venv/bin/python bench/macvlan.py`.\n\n"
            + report.markdown())
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
