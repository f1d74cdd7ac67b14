"""Producer command line: live Open-Meteo polling, or open-loop synthetic / replayed load.

python -m pipeline.producer live [--stations-file F] [--interval 60] [--base-url URL]
python -m pipeline.producer load --stations 10 --rate 20 --duration 60 [--source replay]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import yaml
from prometheus_client import start_http_server

from pipeline.config import REPO_ROOT, load_config
from pipeline.producer.loadgen import LoadSpec, run_open_loop
from pipeline.producer.observations import make_source
from pipeline.producer.openmeteo import DEFAULT_BASE_URL, OpenMeteoClient, OpenMeteoError, Station
from pipeline.producer.producer import ProducerMetrics, WeatherProducer

log = logging.getLogger("pipeline.producer")
DEFAULT_STATIONS = REPO_ROOT / "include" / "stations" / "openmeteo.yaml"


def load_stations(path: Path) -> list[Station]:
    data = yaml.safe_load(path.read_text()) or {}
    try:
        return [
            Station(s["station_id"], float(s["latitude"]), float(s["longitude"])) for s in data["stations"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise SystemExit(
            f"error: {path}: each station needs station_id, latitude, longitude ({exc})"
        ) from None


def run_live(
    producer: WeatherProducer,
    client: OpenMeteoClient,
    stations: list[Station],
    interval_s: float,
    stop: threading.Event,
) -> None:
    """Poll every station each interval; publish an observation when its valid time is new."""
    last_sent: dict[str, int] = {}
    while not stop.is_set():
        began = time.monotonic()
        for station in stations:
            try:
                obs = client.current(station)
            except OpenMeteoError as exc:
                log.warning("%s", exc)
                continue
            if last_sent.get(obs.station_id) == obs.event_time_ms:
                continue  # Open-Meteo refreshes current conditions every 15 minutes
            producer.send(obs.station_id, obs.event_time_ms, obs.values)
            last_sent[obs.station_id] = obs.event_time_ms
        producer.flush(30)
        stop.wait(max(0.0, interval_s - (time.monotonic() - began)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.producer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="stack configuration YAML")
    parser.add_argument("--topic", help="target topic (default: the raw topic of the configuration)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Prometheus port (default monitoring.producer_port; 0 disables)",
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    live = sub.add_parser("live", help="poll Open-Meteo for current conditions")
    live.add_argument("--stations-file", type=Path, default=DEFAULT_STATIONS)
    live.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
    live.add_argument("--base-url", default=DEFAULT_BASE_URL)
    load = sub.add_parser("load", help="open-loop synthetic or replayed load")
    load.add_argument("--stations", type=int, default=10)
    load.add_argument("--rate", type=float, default=10.0, help="messages per second, all stations")
    load.add_argument("--duration", type=float, default=60.0, help="seconds")
    load.add_argument("--source", choices=("synthetic", "replay"), default="synthetic")
    load.add_argument("--station-prefix", default="st")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    config = load_config(args.config)
    metrics = ProducerMetrics()
    metrics_port = config.monitoring.producer_port if args.metrics_port is None else args.metrics_port
    if metrics_port:
        start_http_server(metrics_port, addr=config.network.bind, registry=metrics.registry)
    producer = WeatherProducer(
        config.kafka.bootstrap_servers, args.topic or config.kafka.raw_topic, metrics=metrics
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if args.mode == "live":
            run_live(
                producer,
                OpenMeteoClient(args.base_url),
                load_stations(args.stations_file),
                args.interval,
                stop,
            )
        else:
            spec = LoadSpec(args.stations, args.rate, args.duration, args.station_prefix)
            result = run_open_loop(
                producer,
                make_source(args.source),
                spec,
                stop=stop,
                on_progress=lambda s, t: log.info("sent %d/%d", s, t),
            )
            log.info(
                "acknowledged %d of %d sent (%.1f msg/s); %d sent >100 ms late",
                result.ledger.acked_count,
                result.sent,
                result.achieved_rate,
                result.behind_count,
            )
    except KeyboardInterrupt:
        pass
    finally:
        producer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
