"""The serving API: FastAPI application over the prediction store.

This module owns the HTTP surface users and benchmarks query:

* GET /health                          200 with consumer status; 503 if the consumer thread died
* GET /stations/{station_id}/latest    the latest window's prediction; 404 if none
* GET /stations/{station_id}/predictions?start=&end=&limit=
                                       predictions with start <= window_start < end (epoch ms)
* GET /predictions?limit=&offset=&station_prefix=
                                       every row, paged, with every trace stamp (benchmarks, tests)
* GET /stats                           rows, duplicates, stations, last api_time, consumer lag
* GET /metrics                         Prometheus text

Bad query parameters answer 422 with a message naming the parameter.
`create_app(config, start_consumer=False)` serves the store without Kafka
(tests, or reading a finished run's database).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline.api.consumer import ConsumerFactory, PredictionConsumer
from pipeline.api.store import Incoming, PredictionStore, UpsertResult
from pipeline.config import StackConfig

log = logging.getLogger("pipeline.api")

MAX_PAGE = 10_000
DEFAULT_PAGE = 1_000


def db_path_for(config: StackConfig) -> Path:
    return config.state_dir / "api" / "predictions.db"


class _StoreCollector(Collector):
    """Exports the store's persistent counters at scrape time (they survive restarts)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def collect(self) -> Iterator[Any]:
        store: PredictionStore | None = getattr(self._app.state, "store", None)
        if store is None:
            return
        try:
            counters = store.counters()
        except Exception as exc:  # a scrape must not fail because the DB is closing
            log.debug("store counters unavailable: %s", exc)
            return
        for name, help_text in (
            ("rows", "Predictions stored (distinct station/window)"),
            ("duplicates", "Deliveries of an already stored station/window"),
            ("replays", "Duplicates that were the same Kafka record re-read"),
            ("rejected", "Malformed prediction records skipped"),
        ):
            family = CounterMetricFamily(f"weather_api_predictions_{name}", help_text)
            family.add_metric([], counters.get(name, 0))
            yield family
        last = GaugeMetricFamily("weather_api_last_api_time_ms", "Epoch ms the newest row became queryable")
        last.add_metric([], counters.get("last_api_time", 0))
        yield last
        consumer: PredictionConsumer | None = getattr(self._app.state, "consumer", None)
        if consumer is not None:
            status = consumer.status()
            lag = GaugeMetricFamily("weather_api_consumer_lag", "Records behind on weather-predictions")
            lag.add_metric([], status["lag"] if status["lag"] is not None else float("nan"))
            yield lag
            alive = GaugeMetricFamily("weather_api_consumer_alive", "1 while the consumer thread runs")
            alive.add_metric([], 1.0 if status["alive"] else 0.0)
            yield alive


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        where = loc[0] if loc else "request"
        name = loc[-1] if len(loc) > 1 else where
        errors.append(
            {"parameter": name, "location": where, "message": error.get("msg"), "input": error.get("input")}
        )
    first = errors[0] if errors else {"parameter": "request", "location": "request", "message": "invalid"}
    detail = f"invalid {first['location']} parameter '{first['parameter']}': {first['message']}"
    return detail, errors


def create_app(
    config: StackConfig,
    start_consumer: bool = True,
    *,
    db_path: Path | None = None,
    consumer_factory: ConsumerFactory | None = None,
) -> FastAPI:
    """The API application; the store opens (and the consumer starts) in its lifespan."""
    registry = CollectorRegistry()
    request_latency = Histogram(
        "weather_api_request_seconds",
        "HTTP request latency by route template",
        ["method", "route", "status"],
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        registry=registry,
    )
    kafka_to_api = Histogram(
        "weather_api_kafka_to_queryable_seconds",
        "T6: prediction broker timestamp -> row queryable (api_time), first deliveries",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        registry=registry,
    )
    consumed = Counter("weather_api_consumed_records", "Prediction records consumed", registry=registry)
    commit_latency = Histogram(
        "weather_api_store_commit_seconds",
        "SQLite COMMIT duration: the bound on how early api_time can be stamped",
        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
        registry=registry,
    )

    def on_stored(result: UpsertResult, items: list[Incoming]) -> None:
        consumed.inc(len(items))
        commit_latency.observe(result.commit_ms / 1000.0)
        if result.api_time is None:
            return
        for item in items:
            if item.kafka_time is not None:
                kafka_to_api.observe(max(0.0, (result.api_time - item.kafka_time) / 1000.0))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        path = db_path or db_path_for(config)
        store = PredictionStore(path)
        app.state.store = store
        app.state.consumer = None
        app.state.started = time.time()
        log.info("prediction store at %s", path)
        if start_consumer:
            consumer = PredictionConsumer(
                config,
                store,
                on_stored=on_stored,
                **({"consumer_factory": consumer_factory} if consumer_factory else {}),
            )
            app.state.consumer = consumer
            consumer.start()
        try:
            yield
        finally:
            if app.state.consumer is not None:
                log.info("stopping the prediction consumer")
                app.state.consumer.stop()
            store.close()
            log.info("prediction store closed")

    app = FastAPI(title="Weather predictions API", version="1.0", lifespan=lifespan)
    app.state.consumer = None
    registry.register(_StoreCollector(app))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = _validation_message(exc)
        return JSONResponse(status_code=422, content={"detail": detail, "errors": errors})

    @app.middleware("http")
    async def time_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        request_latency.labels(request.method, template, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response

    def store_of(request: Request) -> PredictionStore:
        return request.app.state.store

    @app.get("/health")
    def health(request: Request) -> JSONResponse:
        consumer: PredictionConsumer | None = request.app.state.consumer
        body: dict[str, Any] = {"status": "ok", "uptime_s": round(time.time() - request.app.state.started, 1)}
        try:
            store_of(request).counters()
            body["db"] = "ok"
        except Exception as exc:  # report, do not crash the probe
            body.update(status="unhealthy", db=f"error: {exc}")
        if consumer is None:
            body["consumer"] = {"state": "disabled", "alive": False}
        else:
            status = consumer.status()
            body["consumer"] = status
            if not status["alive"]:
                body["status"] = "unhealthy"
                body["reason"] = (
                    f"consumer thread is not running (state {status['state']}): {status['error']}"
                )
        return JSONResponse(status_code=200 if body["status"] == "ok" else 503, content=body)

    @app.get("/stations/{station_id}/latest")
    def latest(station_id: str, request: Request) -> JSONResponse:
        row = store_of(request).latest(station_id)
        if row is None:
            return JSONResponse(
                status_code=404, content={"detail": f"no predictions for station '{station_id}'"}
            )
        return JSONResponse(content=row)

    @app.get("/stations/{station_id}/predictions")
    def station_predictions(
        station_id: str,
        request: Request,
        start: int | None = Query(None, ge=0, description="window_start >= start (epoch ms)"),
        end: int | None = Query(None, ge=0, description="window_start < end (epoch ms)"),
        limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
    ) -> JSONResponse:
        if start is not None and end is not None and end < start:
            return JSONResponse(
                status_code=422,
                content={
                    "detail": f"invalid query parameter 'end': must be >= start ({end} < {start})",
                    "errors": [{"parameter": "end", "location": "query", "message": "must be >= start"}],
                },
            )
        items = store_of(request).station_range(station_id, start, end, limit)
        return JSONResponse(
            content={
                "station_id": station_id,
                "start": start,
                "end": end,
                "count": len(items),
                "items": items,
            }
        )

    @app.get("/predictions")
    def predictions(
        request: Request,
        limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
        offset: int = Query(0, ge=0),
        station_prefix: str | None = Query(None, min_length=1, max_length=64),
    ) -> JSONResponse:
        store = store_of(request)
        items = store.page(limit, offset, station_prefix)
        total = store.count(station_prefix)
        next_offset = offset + len(items) if offset + len(items) < total else None
        return JSONResponse(
            content={
                "total": total,
                "limit": limit,
                "offset": offset,
                "next_offset": next_offset,
                "station_prefix": station_prefix,
                "items": items,
            }
        )

    @app.get("/stats")
    def stats(request: Request) -> JSONResponse:
        body = store_of(request).stats()
        consumer: PredictionConsumer | None = request.app.state.consumer
        if consumer is None:
            body["consumer"] = {"state": "disabled"}
        else:
            status = consumer.status()
            body["consumer"] = {
                k: status[k]
                for k in (
                    "state",
                    "alive",
                    "messages",
                    "batches",
                    "rejected",
                    "rejected_reasons",
                    "commit_errors",
                    "assigned_partitions",
                    "last_message_ms",
                    "last_commit_ms",
                )
            }
            body["consumer_lag"] = status["lag"]
            body["consumer_lag_by_partition"] = status["lag_by_partition"]
            body["consumer_lag_time_ms"] = status["lag_time_ms"]
        return JSONResponse(content=body)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
