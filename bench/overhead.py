"""What the daemon adds over calling onnxruntime in process, on the same input.

Latency: a socket round trip (`.npy` body and PNG body) against the same `full@1.0` call made
in this process, interleaved call by call, with two clients: agent.client (httpcore; labelled
"httpx" in the results) and a lean client (the standard library's http.client, close to what a
compiled camera application pays).
The answer's own queue + compute time also splits each round trip into the daemon's model
time and everything else. A floor stands beside the daemon: bench/floor_server.py, the thinnest
Python server around the same model call (uvloop + httptools, no framework), measured with the
same lean client, shows what any Python server pays here and so what the daemon's stack adds.
Throughput: 1, 2 and 4 concurrent socket clients against in-process worker threads.
Writes bench/results/overhead.{json,md}.

    python -m bench.overhead [--calls 400] [--seconds 10]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.cli.launch import running_daemon
from agent.client import Client
from agent.paths import default_zoo_dir
from agent.serving.codec import load_pixels, open_image
from agent.settings import Settings
from agent.zoo.preprocess import image_to_input
from agent.zoo.sessions import SessionSettings, open_zoo
from bench.common import header, md_table, write_results
from bench.lean_client import LeanClient
from model_zoo import data


def run_for(seconds: float, workers: int, call: Callable[[int], object]) -> float:
    """Calls per second of `workers` threads calling `call` back to back for `seconds`."""
    stop = threading.Event()
    counts = [0] * workers

    def loop(k: int) -> None:
        while not stop.is_set():
            call(k)
            counts[k] += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / seconds


FLOOR = "http.client, minimal server"


@contextmanager
def floor_server() -> Iterator[Path]:
    """bench/floor_server.py on a temp socket, until the block ends."""
    with tempfile.TemporaryDirectory(prefix="edge-agent-floor-") as tmp:
        sock = Path(tmp) / "floor.sock"
        proc = subprocess.Popen([sys.executable, "-m", "bench.floor_server", str(sock)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # log lines, then "listening"
                if line.strip() == b"listening":
                    break
            else:
                raise RuntimeError("bench.floor_server exited before listening")
            yield sock
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    settings = Settings()
    zoo = open_zoo(default_zoo_dir(), SessionSettings(intra_threads=settings.ort_threads), names=["full"])
    full = zoo.variants["full"]
    img = data.sample(0, "test", 1).image
    x = image_to_input(img, 128)
    npy = io.BytesIO()
    np.save(npy, x[0])
    png = io.BytesIO()
    Image.fromarray(img).save(png, format="PNG")
    bodies = {"npy": (npy.getvalue(), "application/x-npy"), "png": (png.getvalue(), "image/png")}
    local = {
        "npy": lambda: full.run(x, 1.0),
        "png": lambda: full.run(image_to_input(load_pixels(open_image(bodies["png"][0])), 128), 1.0),
    }
    results: dict[str, object] = {**header(), "workers": settings.workers, "ort_threads": settings.ort_threads}
    rows = []
    with running_daemon() as (_, sock), Client(sock) as client, floor_server() as floor_sock:
        client.pin("full@1", 3600, "overhead bench: the same configuration as in process")
        lean, floor = LeanClient(sock), LeanClient(floor_sock)
        socket_clients: dict[str, Callable[[bytes, str], dict[str, Any]]] = {
            "httpx": client.classify,
            "http.client": lean.classify,
            FLOOR: floor.classify,
        }
        for kind, (body, ctype) in bodies.items():
            for name, classify in socket_clients.items():
                if name == FLOOR and kind != "npy":
                    continue
                for _ in range(20):
                    classify(body, ctype)
                    local[kind]()
                inproc, remote, model = [], [], []
                for _ in range(args.calls):
                    s = time.perf_counter()
                    local[kind]()
                    inproc.append((time.perf_counter() - s) * 1000)
                    s = time.perf_counter()
                    answer = classify(body, ctype)
                    remote.append((time.perf_counter() - s) * 1000)
                    model.append(answer["queue_ms"] + answer["compute_ms"])
                a, b, m = np.array(inproc), np.array(remote), np.array(model)
                row = {
                    "body": kind,
                    "client": name,
                    "in_process_p50_ms": round(float(np.median(a)), 3),
                    "socket_p50_ms": round(float(np.median(b)), 3),
                    "overhead_p50_ms": round(float(np.median(b) - np.median(a)), 3),
                    "overhead_p95_ms": round(float(np.percentile(b, 95) - np.percentile(a, 95)), 3),
                    "outside_model_p50_ms": None if name == FLOOR else round(float(np.median(b - m)), 3),
                }
                rows.append(row)
                print(row)
        results["latency"] = rows
        body, ctype = bodies["npy"]
        tput = {}
        for name in socket_clients:
            if name == "httpx":
                pool: list[Any] = [Client(sock) for _ in range(4)]
            else:
                pool = [LeanClient(floor_sock if name == FLOOR else sock) for _ in range(4)]

            def call(k: int, pool: list[Any] = pool) -> object:
                return pool[k].classify(body, ctype)

            for n in (1, 2, 4):
                key = f"socket_{name}_{n}_clients"
                tput[key] = round(run_for(args.seconds, n, call), 1)
                print(key, tput[key], "req/s")
            for c in pool:
                c.close()
        lean.close()
        floor.close()
    for n in (1, 2):
        tput[f"in_process_{n}_workers"] = round(run_for(args.seconds, n, lambda k: full.run(x, 1.0)), 1)
        print(n, "in-process workers", tput[f"in_process_{n}_workers"], "calls/s")
    for name in socket_clients:
        ratio = tput[f"socket_{name}_2_clients"] / tput["in_process_2_workers"]
        tput[f"ratio_{name}_2_clients_vs_2_workers"] = round(ratio, 3)
    results["throughput"] = tput
    md = (
        f"# Socket overhead\n\n{results['machine']}, {results['date']}; daemon with {settings.workers} workers x "
        f"{settings.ort_threads} ORT threads; `full@1.0`; client and daemon on the same cores.\n\n"
        + md_table(
            [
                "body",
                "client",
                "in-process p50 ms",
                "socket p50 ms",
                "overhead p50 ms",
                "overhead p95 ms",
                "outside model p50 ms",
            ],
            [
                [
                    r["body"],
                    r["client"],
                    r["in_process_p50_ms"],
                    r["socket_p50_ms"],
                    r["overhead_p50_ms"],
                    r["overhead_p95_ms"],
                    r["outside_model_p50_ms"],
                ]
                for r in rows
            ],
        )
        + "\n`outside model`: round trip minus the answer's own queue + compute time (HTTP, decode, thread hand-offs, "
        "client). `minimal server`: bench/floor_server.py, the same model call behind uvloop + httptools and nothing "
        "else (it reports no model time of its own).\n"
        + "\n## Throughput (requests/s, `.npy` body)\n\n"
        + md_table(["setup", "req/s"], [[k, v] for k, v in tput.items()])
    )
    write_results("overhead", results, md)
    print(md)


if __name__ == "__main__":
    main()
