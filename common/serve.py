"""A small HTTP recommendation service over :class:`~common.recommend.Recommender`.

FastAPI with uvicorn: both already come with Flower's dependencies, FastAPI validates request
bodies from typed models and writes an OpenAPI description for free. Model packages and
catalogues are loaded once at start-up (each catalogue encoded once per model).

    GET  /health                 liveness and what is loaded
    GET  /models                 each model's package description and released metrics
    POST /recommend              {"catalogue", "history": [...], "k", "model"?, "exclude_history"?}
    POST /recommend/batch        {"catalogue", "histories": [[...], ...], "k", ...}

Bad requests get a 4xx with ``{"error": "..."}`` naming the problem (unknown item, model or
catalogue, empty history, k out of range, oversized batch or body, a body too slow to arrive);
never a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .package import load_package
from .recommend import Catalogue, Recommender, UnknownItem, load_catalogue

MAX_BODY_BYTES = 1 << 20
BODY_TIMEOUT_S = 10.0  # a body still arriving after this is dropped (a slow client holds no worker)
MAX_HISTORY = 1000  # items in one history (the model reads only its last max_len)
log = logging.getLogger("mergerec.serve")
History = Annotated[list[str | int], Field(max_length=MAX_HISTORY)]


class OneRequest(BaseModel):
    catalogue: str
    history: History
    k: int = 10
    model: str | None = None
    exclude_history: bool | None = None


class BatchRequest(BaseModel):
    catalogue: str
    histories: list[History]
    k: int = 10
    model: str | None = None
    exclude_history: bool | None = None


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(recommenders: dict[tuple[str, str], Recommender], max_batch: int = 256,
               max_body: int = MAX_BODY_BYTES, body_timeout_s: float = BODY_TIMEOUT_S) -> FastAPI:
    """The service for ``(model name, catalogue name) → Recommender``; a request body must
    arrive whole within ``body_timeout_s`` (408 otherwise)."""
    app = FastAPI(title="MergeRec recommendations", version="1")
    models = sorted({m for m, _ in recommenders})
    catalogues = sorted({c for _, c in recommenders})

    def pick(model: str | None, catalogue: str) -> Recommender:
        name = model or (models[0] if len(models) == 1 else None)
        if name is None:
            raise BadRequest(400, f"several models are loaded ({models}): name one in 'model'")
        if name not in models:
            raise BadRequest(404, f"no model {name!r} (have {models})")
        if catalogue not in catalogues:
            raise BadRequest(404, f"no catalogue {catalogue!r} (have {catalogues})")
        return recommenders[(name, catalogue)]

    def run(rec: Recommender, histories: list[list[str | int]], k: int,
            exclude: bool | None) -> list[list[dict]]:
        if not 1 <= k <= min(1000, len(rec.catalogue.texts)):
            raise BadRequest(400, f"k must lie in 1..{min(1000, len(rec.catalogue.texts))}, got {k}")
        if any(len(h) == 0 for h in histories):
            raise BadRequest(400, "every history needs at least one item")
        try:
            recs = rec.recommend(histories, k, exclude)
        except UnknownItem as exc:
            raise BadRequest(400, str(exc.args[0])) from None
        return [[vars(r) for r in items] for items in recs]

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # type: ignore[no-untyped-def]
        size = request.headers.get("content-length")
        if size is None and request.method == "POST":  # a chunked body would escape the bound
            return JSONResponse({"error": "send the body with a Content-Length"}, status_code=411)
        if size is not None and (not size.isdigit() or int(size) > max_body):
            return JSONResponse({"error": f"request body over {max_body} bytes"}, status_code=413)
        if request.method == "POST":  # read here (passed on to the route) under a deadline
            try:
                await asyncio.wait_for(request.body(), body_timeout_s)
            except asyncio.TimeoutError:
                return JSONResponse({"error": f"request body not received within "
                                     f"{body_timeout_s:g} s"}, status_code=408)
        try:
            return await call_next(request)
        except Exception:  # noqa: BLE001 - clients get no stack trace
            log.exception("request failed")
            return JSONResponse({"error": "internal error"}, status_code=500)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or "body"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"},
                            status_code=422)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "models": models, "catalogues": catalogues}

    @app.get("/models")
    def model_info() -> dict:
        out: dict[str, dict] = {}
        for (name, catalogue), rec in recommenders.items():
            info = rec.info
            out.setdefault(name, {"label": info.label, "kind": info.kind,
                                  "encoder": info.encoder_id, "base_hash": info.base_hash,
                                  "metrics": info.metrics, "trained_on": sorted(info.trained_on),
                                  "routes": {}})["routes"][catalogue] = rec.route
        return out

    @app.post("/recommend")
    def recommend(req: OneRequest) -> dict:
        return {"items": run(pick(req.model, req.catalogue), [req.history], req.k,
                             req.exclude_history)[0]}

    @app.post("/recommend/batch")
    def recommend_batch(req: BatchRequest) -> dict:
        if len(req.histories) > max_batch:
            raise BadRequest(413, f"{len(req.histories)} histories in one batch; at most {max_batch}")
        return {"results": run(pick(req.model, req.catalogue), req.histories, req.k,
                               req.exclude_history)}

    return app


def load_recommenders(model_dirs: list[str], catalogues: dict[str, str]
                      ) -> dict[tuple[str, str], Recommender]:
    """Every model with every catalogue (models named by their folder; two folders of one
    name are refused rather than one hiding the other)."""
    names = [Path(folder).name for folder in model_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"model folders with the same name {sorted(names)}: a model is "
                         "addressed by its folder name, give each a distinct one")
    loaded: dict[str, Catalogue] = {name: load_catalogue(path) for name, path in catalogues.items()}
    out = {}
    for folder in model_dirs:
        for name, cat in loaded.items():  # each catalogue on its package's route
            out[(Path(folder).name, name)] = Recommender(*load_package(folder, cat.texts), cat)
    return out


def wait_until_healthy(url: str, timeout_s: float = 300.0) -> bool:
    """Poll ``<url>/health`` until the service answers (True) or ``timeout_s`` passes."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.5)
    return False


def run_server(model_dirs: list[str], catalogues: dict[str, str], host: str, port: int,
               max_batch: int, body_timeout_s: float = BODY_TIMEOUT_S) -> None:
    import uvicorn

    app = create_app(load_recommenders(model_dirs, catalogues), max_batch,
                     body_timeout_s=body_timeout_s)
    print(f"serving {len(model_dirs)} model(s) × {len(catalogues)} catalogue(s) on "
          f"http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
