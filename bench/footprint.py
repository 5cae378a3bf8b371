"""Daemon memory with every variant loaded, and its CPU use while idle.

python -m bench.footprint [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import time

import psutil

from agent.cli.launch import running_daemon
from agent.client import Client
from bench.common import header, md_table, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    args = ap.parse_args()
    with running_daemon() as (proc, sock):
        with Client(sock) as client:
            variants = sorted(client.status()["variants"])
        p = psutil.Process(proc.pid)
        time.sleep(2)
        mem = p.memory_full_info()
        t0, c0 = time.monotonic(), p.cpu_times()
        time.sleep(args.idle_seconds)
        t1, c1 = time.monotonic(), p.cpu_times()
        cpu_pct = 100 * ((c1.user - c0.user) + (c1.system - c0.system)) / (t1 - t0)
        result = {
            **header(),
            "variants": variants,
            "rss_mb": round(mem.rss / 2**20, 1),
            "uss_mb": round(mem.uss / 2**20, 1),
            "pss_mb": round(mem.pss / 2**20, 1),
            "threads": p.num_threads(),
            "idle_seconds": args.idle_seconds,
            "idle_cpu_percent_of_one_core": round(cpu_pct, 3),
        }
    md = f"# Footprint\n\n{result['machine']}, {result['date']}\n\n" + md_table(
        [
            "variants loaded",
            "RSS MB",
            "USS MB",
            "PSS MB",
            "threads",
            f"idle CPU over {args.idle_seconds:g} s (% of a core)",
        ],
        [
            [
                ", ".join(variants),
                result["rss_mb"],
                result["uss_mb"],
                result["pss_mb"],
                result["threads"],
                result["idle_cpu_percent_of_one_core"],
            ]
        ],
    )
    write_results("footprint", result, md)
    print(md)


if __name__ == "__main__":
    main()
