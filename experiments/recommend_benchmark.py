"""Recommendation throughput and service latency on the Beauty catalogue, on this machine.

    python -m experiments.recommend_benchmark [--data-dir ../shared/data/amazon] [--requests 300]

A package with the benchmark's architecture (θ₀ of ``amazon3.yaml``: the same cost as any
merge of it) serves the Beauty catalogue (12,101 items). Measured: encoding a new catalogue
(cold cache) and reopening it (warm), histories per second through the Python API at several
batch sizes (the test users' histories), and the HTTP service's latency (p50 / p95) for single
requests sent one after another and by 4 concurrent clients from a second process. Writes
``experiments/reports/recommend/`` (report, JSON summary, plot).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.backbone import base_model, model_config_for
from common.config import load_yaml
from common.settings import PipelineConfig
from common.package import PackageInfo, finish_package, save_weights
from common.recommend import Recommender, load_catalogue
from common.serve import wait_until_healthy
from common.text import make_encoder
from experiments.publish import publish

ROOT = Path(__file__).resolve().parents[1]
LOAD = """
import httpx, json, sys, time
from concurrent.futures import ThreadPoolExecutor
url, n, clients, histories = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
def one(i):
    body = {"catalogue": "beauty", "history": histories[i % len(histories)], "k": 10}
    with httpx.Client(timeout=60) as c:
        t = time.perf_counter(); r = c.post(url + "/recommend", json=body)
        return time.perf_counter() - t, r.status_code
start = time.perf_counter()
with ThreadPoolExecutor(clients) as pool:
    got = list(pool.map(one, range(n)))
wall = time.perf_counter() - start
lat = sorted(t for t, _ in got)
print(json.dumps({"requests": n, "clients": clients, "ok": sum(s == 200 for _, s in got),
                  "p50_ms": 1000 * lat[n // 2], "p95_ms": 1000 * lat[int(n * 0.95)],
                  "requests_per_s": n / wall}))
"""


def make_package(folder: Path) -> Path:
    cfg = load_yaml(PipelineConfig, ROOT / "experiments/configs/pipelines/amazon3.yaml")
    encoder = make_encoder(cfg.encoder)
    model_cfg = model_config_for(cfg.model, encoder)
    state = base_model(model_cfg, encoder, 0).state_dict()
    save_weights(folder, state, "θ₀ (benchmark architecture)")
    finish_package(folder, PackageInfo("θ₀ (benchmark architecture)", "base", model_cfg,
                                       cfg.encoder, encoder.encoder_id, cfg.center_features, "",
                                       {"method": "the pretrained base θ₀"}))
    return folder


def throughput(rec: Recommender, histories: list[list[int]]) -> list[dict]:
    rows = []
    for batch in (1, 64, 1024):
        n = min(len(histories), max(batch * 4, 256))
        start = time.perf_counter()
        for i in range(0, n, batch):
            rec.recommend(histories[i:i + batch], k=10)
        secs = time.perf_counter() - start
        rows.append({"batch": batch, "histories": n, "seconds": secs, "per_s": n / secs})
    return rows


def service_latency(package: Path, catalogue: str, histories: list, requests: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "common.model_cli", "serve", "--model",
                               str(package), "--catalogue", f"beauty={catalogue}",
                               "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_healthy(url):
            raise SystemExit("the recommendation service did not start")
        rows = []
        for clients in (1, 4):
            out = subprocess.run([sys.executable, "-c", LOAD, url, str(requests), str(clients),
                                  json.dumps(histories[:200])], capture_output=True, text=True,
                                 check=True)
            rows.append(json.loads(out.stdout))
        return rows
    finally:
        server.terminate()
        server.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/amazon"))
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["MERGEREC_CACHE"] = str(work / "cache")  # a cold cache: encoding is measured
        package = make_package(work / "package")
        catalogue = load_catalogue(Path(args.data_dir) / "Beauty.tar.gz", work / "cache")
        start = time.perf_counter()
        rec = Recommender.open(package, catalogue)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        rec = Recommender.open(package, catalogue)
        warm = time.perf_counter() - start
        histories = [[catalogue.item_ids[i] for i in h[-50:]] for h in
                     _test_histories(Path(args.data_dir) / "Beauty.tar.gz", work / "cache")]
        rows = throughput(rec, histories)
        table = work / "beauty.csv"  # the catalogue as an item table (quoted CSV)
        with table.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([("item_id", "text"), *zip(catalogue.item_ids,
                                                                 catalogue.texts)])
        service = service_latency(package, str(table), histories, args.requests)
        plot = _plot(rows, service, work / "recommend.png")
        summary = {"cores": os.cpu_count(), "items": len(catalogue.texts),
                   "encode_new_catalogue_s": cold, "reopen_cached_catalogue_s": warm,
                   "throughput": rows, "service": service}
        text = _markdown(summary)
        where = publish("recommend", "Recommendation throughput and service latency", text,
                        summary, [plot])
    print(text)
    print(f"published to {where}")
    return 0


def _test_histories(path: Path, cache: Path) -> list[list[int]]:
    from common.data import load_mergerec_json
    return load_mergerec_json(path, cache_dir=cache / "data").eval_examples("test")[0]


def _markdown(s: dict) -> str:
    lines = [f"Beauty catalogue ({s['items']:,} items), {s['cores']} CPU cores, the benchmark's "
             "architecture (frozen MiniLM vectors, 2-block sequence tower).", "",
             f"- encoding a new catalogue (cold cache): {s['encode_new_catalogue_s']:.1f} s; "
             f"reopening it (cached): {s['reopen_cached_catalogue_s']:.2f} s", "",
             "| histories per call | histories | seconds | histories / s |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['histories']} | {r['seconds']:.2f} | {r['per_s']:.0f} |"
              for r in s["throughput"]]
    lines += ["", "HTTP service (`mergerec-model serve`, one process), single-history requests from "
              "a second process:", "",
              "| concurrent clients | requests | ok | p50 ms | p95 ms | requests / s |",
              "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['clients']} | {r['requests']} | {r['ok']} | {r['p50_ms']:.1f} | "
              f"{r['p95_ms']:.1f} | {r['requests_per_s']:.1f} |" for r in s["service"]]
    return "\n".join(lines)


def _plot(rows: list[dict], service: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.bar([str(r["batch"]) for r in rows], [r["per_s"] for r in rows])
    a.set_xlabel("histories per call")
    a.set_ylabel("histories / s")
    b.bar([f"{r['clients']} client(s)\np50" for r in service], [r["p50_ms"] for r in service])
    b.bar([f"{r['clients']} client(s)\np95" for r in service], [r["p95_ms"] for r in service])
    b.set_ylabel("latency ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
