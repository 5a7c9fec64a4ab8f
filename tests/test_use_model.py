"""Using a merged model: packages, recommendations (Python, CLI), the HTTP service, the
side-by-side report."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from common.data import SyntheticConfig, make_synthetic_domains, write_mergerec_json
from common.evaluation import target_ranks
from common.model_cli import main as model_cli
from common.package import CONFIG, WEIGHTS, PackageError, load_package
from common.pipeline import run_pipeline
from common.recommend import Catalogue, Recommender, UnknownItem
from common.serve import wait_until_healthy
from tests.runs import tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run: its model packages and its domains."""
    tmp = tmp_path_factory.mktemp("use")
    cfg = tiny_config(tmp, output_dir=str(tmp / "out"))
    report = run_pipeline(cfg)
    domains = {d.name: d for d in make_synthetic_domains(cfg.data.synthetic)}
    return tmp / "out" / "models", domains, report, tmp


def _catalogue(domain) -> Catalogue:
    return Catalogue(domain.name, domain.item_keys, domain.item_texts)


def test_every_model_is_a_package_with_a_card(run):
    models, _, report, _ = run
    names = {p.name for p in models.iterdir()}
    assert {"zero-shot_base_θ₀", "average", "ties", "mergerec_task-wise"} <= names
    model, info = load_package(models / "mergerec_task-wise")
    assert info.kind == "learned" and info.base_hash == report["base_hash"]
    assert info.metrics["beauty"]["recall@10"] == report["results"]["mergerec task-wise"]["beauty"]["recall@10"]
    assert set(info.made_by["silos"]) == {"beauty", "sports", "pantry"} and info.made_by["weights"]
    card = (models / "mergerec_task-wise" / "README.md").read_text()
    assert "mergerec-model recommend" in card and "| beauty |" in card


def test_package_round_trip_gives_the_same_scores(run):
    models, domains, _, _ = run
    model, info = load_package(models / "mergerec_task-wise")
    again, _ = load_package(models / "mergerec_task-wise")
    cat = _catalogue(domains["beauty"])
    hist = [domains["beauty"].train[u] for u in range(5)]
    a, b = Recommender(model, info, cat).scores(hist), Recommender(again, info, cat).scores(hist)
    assert torch.equal(a, b)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_tampered_foreign_and_mismatched_packages_are_refused(run, tmp_path):
    models, _, _, _ = run
    tampered = _copy(models / "average", tmp_path / "tampered")
    raw = bytearray((tampered / WEIGHTS).read_bytes())
    raw[-3] ^= 0xFF
    (tampered / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(PackageError, match="SHA-256 differs"):
        load_package(tampered)
    foreign = _copy(models / "average", tmp_path / "foreign")
    config = json.loads((foreign / CONFIG).read_text())
    (foreign / CONFIG).write_text(json.dumps({**config, "encoder": "hashing-32"}))
    with pytest.raises(PackageError, match="made with text encoder hashing-64"):
        load_package(foreign)
    shape = _copy(models / "average", tmp_path / "shape")
    (shape / CONFIG).write_text(json.dumps({**config, "model": {**config["model"], "hidden": 24}}))
    with pytest.raises(PackageError, match="do not fit the package's architecture"):
        load_package(shape)
    with pytest.raises(PackageError, match="not a model package"):
        load_package(tmp_path)


def test_recommendations_rank_as_the_evaluation_does(run):
    models, domains, _, _ = run
    domain = domains["beauty"]
    rec = Recommender(*load_package(models / "mergerec_task-wise"), _catalogue(domain))
    histories, targets = domain.eval_examples("test")
    lists = rec.recommend(histories[:40], k=domain.num_items, exclude_history=False)
    ranks = target_ranks(rec.scores(histories[:40]), torch.tensor(targets[:40]))
    for items, target, rank in zip(lists, targets[:40], ranks.tolist()):
        assert items[rank].item_id == domain.item_keys[target]
    excluded = rec.recommend(histories[:3], k=10, exclude_history=True)
    assert all(domain.item_keys.index(r.item_id) not in h for h, items in zip(histories, excluded)
               for r in items)
    [every] = rec.recommend(histories[:1], k=domain.num_items, exclude_history=True)
    assert len(every) == domain.num_items - len(set(histories[0]))  # no history item at -inf
    assert all(math.isfinite(r.score) for r in every)


def test_a_domain_that_never_took_part(run, tmp_path):
    models, _, _, _ = run
    toys = make_synthetic_domains(SyntheticConfig(domains=("toys",), users_per_domain=30))[0]
    table = tmp_path / "toys.csv"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["item_id", "title"])
        writer.writerows(zip(toys.item_keys, toys.item_texts))
    rec = Recommender.open(models / "mergerec_task-wise", table, cache_dir=tmp_path / "cache")
    [items] = rec.recommend([[toys.item_keys[0], toys.item_texts[1]]], k=5)
    assert len(items) == 5 and all(r.item_id in toys.item_keys for r in items)
    with pytest.raises(UnknownItem, match="not an item id or title"):
        rec.recommend([["no such thing"]])


def test_cli_prints_a_table_or_json_and_names_bad_input(run, tmp_path, capsys):
    models, domains, _, tmp = run
    folder = write_mergerec_json(domains["pantry"], tmp_path / "pantry")
    keys = domains["pantry"].item_keys
    args = ["recommend", "--model", str(models / "average"), "--catalogue", str(folder),
            "--history", keys[0], keys[1], "--k", "3"]
    assert model_cli(args) == 0
    out = capsys.readouterr().out
    assert "rank" in out and out.count("\n   ") >= 3
    assert model_cli(args + ["--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["history"] == [keys[0], keys[1]] and len(result["items"]) == 3
    assert model_cli(args[:5] + ["--history", "nothing like this"]) == 2
    assert "not an item id or title" in capsys.readouterr().err
    assert model_cli(["info", "--model", str(tmp_path)]) == 2
    (tmp_path / "h.jsonl").write_text(json.dumps([keys[0]]) + "\n\n42\n")
    assert model_cli(args[:5] + ["--histories", str(tmp_path / "h.jsonl")]) == 2
    assert "h.jsonl, line 3: expected a JSON list" in capsys.readouterr().err


def test_compare_report_marks_the_next_item(run, tmp_path):
    models, domains, _, tmp = run
    folder = write_mergerec_json(domains["beauty"], tmp_path / "beauty")
    received = tmp / "out" / "received" / "beauty.safetensors"
    assert model_cli(["compare", "--catalogue", str(folder), "--model",
                      f"θ₀={models / 'zero-shot_base_θ₀'}", "--model",
                      f"merged={models / 'mergerec_task-wise'}", "--weights", f"silo={received}",
                      "--users", "5", "--output", str(tmp_path / "cmp.md")]) == 0
    text = (tmp_path / "cmp.md").read_text()
    assert text.count("## User") == 5 and "| rank | θ₀ | merged | silo |" in text
    assert "Next: **" in text


@pytest.fixture(scope="module")
def server(run):
    """``mergerec-model serve`` on a loopback port, in its own process."""
    models, domains, _, tmp = run
    folder = write_mergerec_json(domains["sports"], tmp / "sports-data")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "common.model_cli", "serve",
                             "--model", str(models / "mergerec_task-wise"),
                             "--model", str(models / "average"),
                             "--catalogue", f"sports={folder}", "--port", str(port),
                             "--max-batch", "8"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    if not wait_until_healthy(url, 120):
        proc.kill()
        raise AssertionError(proc.stdout.read())  # type: ignore[union-attr]
    yield url, domains["sports"]
    proc.terminate()
    proc.wait(10)


def test_service_endpoints(server):
    url, domain = server
    assert httpx.get(f"{url}/health").json()["catalogues"] == ["sports"]
    models = httpx.get(f"{url}/models").json()
    assert set(models) == {"mergerec_task-wise", "average"}
    body = {"model": "average", "catalogue": "sports", "history": domain.item_keys[:2], "k": 4}
    items = httpx.post(f"{url}/recommend", json=body).json()["items"]
    assert [r["rank"] for r in items] == [1, 2, 3, 4]
    batch = httpx.post(f"{url}/recommend/batch", json={**body, "histories": [domain.item_keys[:2]] * 3})
    assert batch.status_code == 200
    assert [r["item_id"] for r in batch.json()["results"][0]] == [r["item_id"] for r in items]


@pytest.mark.parametrize("change,status,message", [
    ({"history": ["not an item"]}, 400, "not an item id or title"),
    ({"history": []}, 400, "at least one item"),
    ({"k": 0}, 400, "k must lie in"),
    ({"k": 100000}, 400, "k must lie in"),
    ({"catalogue": "books"}, 404, "no catalogue 'books'"),
    ({"model": None}, 400, "several models are loaded"),
    ({"k": "ten"}, 422, "k:"),
])
def test_service_bad_requests(server, change, status, message):
    url, domain = server
    body = {"model": "average", "catalogue": "sports", "history": domain.item_keys[:1], "k": 5}
    reply = httpx.post(f"{url}/recommend", json={**body, **change})
    assert reply.status_code == status and message in reply.json()["error"]
    assert "Traceback" not in reply.text


def test_service_refuses_oversized_batches_and_bodies(server):
    url, domain = server
    body = {"model": "average", "catalogue": "sports", "histories": [domain.item_keys[:1]] * 9}
    reply = httpx.post(f"{url}/recommend/batch", json=body)
    assert reply.status_code == 413 and "at most 8" in reply.json()["error"]
    long = httpx.post(f"{url}/recommend/batch", json={**body, "histories": [[0] * 1001]})
    assert long.status_code == 422 and "histories.0" in long.json()["error"]
    huge = httpx.post(f"{url}/recommend", content=b"{" + b" " * (2 << 20) + b"}",
                      headers={"content-type": "application/json"})
    assert huge.status_code == 413
    chunked = httpx.post(f"{url}/recommend", content=iter([b"{", b" " * 1024, b"}"]),
                         headers={"content-type": "application/json"})
    assert chunked.status_code == 411  # a body without a length is not read at all


def test_two_model_folders_of_one_name_are_refused(run, tmp_path):
    from common.serve import load_recommenders

    models, _, _, _ = run
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / "average"
    twin.symlink_to(models / "average", target_is_directory=True)
    with pytest.raises(ValueError, match="same name"):
        load_recommenders([str(models / "average"), str(twin)], {})


def test_service_under_a_short_load_from_another_process(server):
    url, domain = server
    script = f"""
import httpx, json, time
body = {{"model": "average", "catalogue": "sports", "history": {domain.item_keys[:3]!r}, "k": 10}}
lat, ok = [], 0
with httpx.Client() as c:
    for _ in range(200):
        t = time.perf_counter(); r = c.post("{url}/recommend", json=body)
        lat.append(time.perf_counter() - t); ok += r.status_code == 200
lat.sort()
print(json.dumps({{"ok": ok, "p50": lat[len(lat) // 2], "p95": lat[int(len(lat) * 0.95)]}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    result = json.loads(out.stdout)
    assert result["ok"] == 200 and result["p95"] < 5.0, result


def test_a_written_catalogue_is_spreadsheet_safe_and_reads_back_exactly(tmp_path):
    """Texts that a spreadsheet would run as formulas are written escaped (CSV injection) and
    the item-table reader gives the original texts back."""
    from common.data.item_table import item_table
    from common.recommend import load_catalogue

    texts = ["=HYPERLINK(\"http://x\")", "+1 cable", "-20% soap", "@sum(A1)", "'quoted", "''",
             "plain text", "'=already escaped"]
    path = tmp_path / "shop.csv"
    path.write_text(item_table(texts), encoding="utf-8")
    cells = [row["text"] for row in csv.DictReader(path.open(newline="", encoding="utf-8"))]
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)
    assert load_catalogue(path).texts == texts


def test_a_request_body_too_slow_to_arrive_gets_408():
    """A client that announces a body and never sends it held the service indefinitely."""
    import asyncio

    from common.serve import create_app

    app = create_app({}, body_timeout_s=0.2)
    sent: list[dict] = []

    async def never() -> dict:
        await asyncio.sleep(3600)
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/recommend", "raw_path": b"/recommend", "root_path": "",
             "query_string": b"", "server": ("test", 80), "client": ("slow", 1),
             "headers": [(b"content-length", b"100"), (b"content-type", b"application/json")]}
    asyncio.run(asyncio.wait_for(app(scope, never, send), 10))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 408 and b"not received within 0.2 s" in body
