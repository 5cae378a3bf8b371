"""What the daemon adds over calling onnxruntime in process, on the same input, measured side by
side with the thinnest servers around the same call.

Latency: socket round trips (`.npy` body and PNG body) against the same `full@1.0` call made in
this process, interleaved call by call in an order shuffled every round, so every row shares
one in-process baseline and none is always the call that follows another process's model run:
- the daemon with agent.client, and with a lean client (the standard library's bare
  http.client, close to what a compiled camera application pays);
- two floors (bench/floor_server.py) with the lean client, `.npy` only: `bare`, uvloop + httptools
  and nothing else (what any Python server pays here), and `uvicorn`, the same call as a bare
  ASGI app under uvicorn (what the daemon's server costs before its own code runs).
Each answer's own queue + compute time also splits its round trip into model time and
everything else (`outside model`), which leaves out the model's run-to-run noise.
Throughput: 1, 2 and 4 concurrent socket clients against in-process worker threads.
Writes bench/results/overhead.{json,md}.

    python -m bench.overhead [--calls 400] [--seconds 10]
"""

from __future__ import annotations

import argparse
import io
import random
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


CLIENT, LEAN = "agent.client", "http.client"
FLOOR, UVICORN_FLOOR = "http.client, bare floor", "http.client, uvicorn floor"


@contextmanager
def floor_server(under_uvicorn: bool = False) -> Iterator[Path]:
    """bench/floor_server.py on a temp socket (bare, or under uvicorn), until the block ends."""
    with tempfile.TemporaryDirectory(prefix="edge-agent-floor-") as tmp:
        sock = Path(tmp) / "floor.sock"
        command = [sys.executable, "-m", "bench.floor_server", str(sock), *(["--uvicorn"] if under_uvicorn else [])]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE)
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
    with (
        running_daemon() as (_, sock),
        Client(sock) as client,
        floor_server() as floor_sock,
        floor_server(under_uvicorn=True) as uvicorn_sock,
    ):
        client.pin("full@1", 3600, "overhead bench: the same configuration as in process")
        socks = {LEAN: sock, FLOOR: floor_sock, UVICORN_FLOOR: uvicorn_sock}  # each reached by a lean client
        leans = {name: LeanClient(path) for name, path in socks.items()}
        socket_clients: dict[str, Callable[[bytes, str], dict[str, Any]]] = {
            CLIENT: client.classify,
            **{name: lean.classify for name, lean in leans.items()},
        }
        for kind, (body, ctype) in bodies.items():
            clients = {name: c for name, c in socket_clients.items() if kind == "npy" or name in (CLIENT, LEAN)}
            rows += latency_rows(kind, local[kind], clients, body, ctype, args.calls)
        results["latency"] = rows
        results["side_by_side"] = side_by_side(rows)
        body, ctype = bodies["npy"]
        tput = {}
        for name in socket_clients:
            if name == CLIENT:
                pool: list[Any] = [Client(sock) for _ in range(4)]
            else:
                pool = [LeanClient(socks[name]) for _ in range(4)]

            def call(k: int, pool: list[Any] = pool) -> object:
                return pool[k].classify(body, ctype)

            for n in (1, 2, 4):
                key = f"socket_{name}_{n}_clients"
                tput[key] = round(run_for(args.seconds, n, call), 1)
                print(key, tput[key], "req/s")
            for c in pool:
                c.close()
        for lean in leans.values():
            lean.close()
    for n in (1, 2):
        tput[f"in_process_{n}_workers"] = round(run_for(args.seconds, n, lambda k: full.run(x, 1.0)), 1)
        print(n, "in-process workers", tput[f"in_process_{n}_workers"], "calls/s")
    for name in socket_clients:
        ratio = tput[f"socket_{name}_2_clients"] / tput["in_process_2_workers"]
        tput[f"ratio_{name}_2_clients_vs_2_workers"] = round(ratio, 3)
    results["throughput"] = tput
    md = markdown(results, rows, tput, settings.workers, settings.ort_threads)
    write_results("overhead", results, md)
    print(md)


def latency_rows(
    kind: str,
    local: Callable[[], object],
    clients: dict[str, Callable[[bytes, str], dict[str, Any]]],
    body: bytes,
    ctype: str,
    calls: int,
) -> list[dict[str, Any]]:
    """One row per client for `kind`: every call of the in-process model and of each client
    interleaved in one loop, in a shuffled order, so all rows share the baseline and the machine's
    moment."""
    for _ in range(20):
        local()
        for classify in clients.values():
            classify(body, ctype)
    inproc: list[float] = []
    remote: dict[str, list[float]] = {name: [] for name in clients}
    model: dict[str, list[float]] = {name: [] for name in clients}
    order: list[str | None] = [None, *clients]  # None: the in-process call
    rng = random.Random(0)
    for _ in range(calls):
        # A fresh order each round: a call right after another process's model run finds its
        # weights out of the shared cache (measured: +0.5 ms of model time), so no row may
        # always follow the same one.
        rng.shuffle(order)
        for name in order:
            s = time.perf_counter()
            if name is None:
                local()
                inproc.append((time.perf_counter() - s) * 1000)
                continue
            answer = clients[name](body, ctype)
            remote[name].append((time.perf_counter() - s) * 1000)
            model[name].append(answer["queue_ms"] + answer["compute_ms"])
    a = np.array(inproc)
    rows = []
    for name in clients:
        b, m = np.array(remote[name]), np.array(model[name])
        row = {
            "body": kind,
            "client": name,
            "in_process_p50_ms": round(float(np.median(a)), 3),
            "socket_p50_ms": round(float(np.median(b)), 3),
            "overhead_p50_ms": round(float(np.median(b) - np.median(a)), 3),
            "overhead_p95_ms": round(float(np.percentile(b, 95) - np.percentile(a, 95)), 3),
            "outside_model_p50_ms": round(float(np.median(b - m)), 3),
        }
        rows.append(row)
        print(row)
    return rows


def side_by_side(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The issue's comparisons (`.npy`, p50): the daemon against each floor, by overhead over the
    in-process call and by time outside the model, and agent.client against http.client."""
    npy = {r["client"]: r for r in rows if r["body"] == "npy"}
    out = {}
    for key in ("overhead_p50_ms", "outside_model_p50_ms"):
        out[f"daemon_minus_bare_floor_{key}"] = round(npy[LEAN][key] - npy[FLOOR][key], 3)
        out[f"daemon_minus_uvicorn_floor_{key}"] = round(npy[LEAN][key] - npy[UVICORN_FLOOR][key], 3)
        out[f"uvicorn_floor_minus_bare_floor_{key}"] = round(npy[UVICORN_FLOOR][key] - npy[FLOOR][key], 3)
        out[f"agent_client_minus_http_client_{key}"] = round(npy[CLIENT][key] - npy[LEAN][key], 3)
    return out


def markdown(
    results: dict[str, Any], rows: list[dict[str, Any]], tput: dict[str, float], workers: int, ort: int
) -> str:
    columns = ["body", "client", "in-process p50 ms", "socket p50 ms", "overhead p50 ms", "overhead p95 ms"]
    keys = ["body", "client", "in_process_p50_ms", "socket_p50_ms", "overhead_p50_ms", "overhead_p95_ms"]
    return (
        f"# Socket overhead\n\n{results['machine']}, {results['date']}; daemon with {workers} workers x "
        f"{ort} ORT threads; `full@1.0`; client, daemon and floors on the same cores, their calls interleaved.\n\n"
        + md_table([*columns, "outside model p50 ms"], [[r[k] for k in [*keys, "outside_model_p50_ms"]] for r in rows])
        + "\n`outside model`: round trip minus the answer's own queue + compute time (HTTP, decode, thread "
        "hand-offs, client). `bare floor`: bench/floor_server.py, the same model call behind uvloop + httptools and "
        "nothing else; `uvicorn floor`: the same call as a bare ASGI app under uvicorn.\n"
        + "\n## Side by side (`.npy`, p50 ms)\n\n"
        + md_table(["comparison", "ms"], [[k, v] for k, v in results["side_by_side"].items()])
        + "\n## Throughput (requests/s, `.npy` body)\n\n"
        + md_table(["setup", "req/s"], [[k, v] for k, v in tput.items()])
    )


if __name__ == "__main__":
    main()
