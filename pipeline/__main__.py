"""Command line of the pipeline: run the stack by hand, train the model, run the demo job.

python -m pipeline up [--only kafka,spark-master,...]
python -m pipeline status
python -m pipeline scale spark-worker 3
python -m pipeline kill ray-worker [--which 2] [--graceful]
python -m pipeline kill kafka --which 2           # one broker of a 3-broker cluster (default: 1)
python -m pipeline restart kafka [--which 2]
python -m pipeline down [--purge]
python -m pipeline train
python -m pipeline demo [--duration 60 --stations 10 --rate 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import yaml

from pipeline.config import REPO_ROOT, STACK_BACKENDS, ConfigError, load_config
from pipeline.stack import get_stack
from pipeline.stack.base import ALL_COMPONENTS, COMPONENTS, KAFKA, SCALABLE, SPARK_HISTORY, StackError
from pipeline.stack.compose import compose_environment
from pipeline.stack.monitoring import LAYOUTS, compose_config_text, prometheus_config, targets_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="stack configuration YAML (default include/stack/local.yaml)")
    parser.add_argument(
        "--backend",
        choices=STACK_BACKENDS,
        default=None,
        help="stack backend: local processes, docker compose's containers, an existing cluster "
        "(default: the configuration's backend, WB_STACK_BACKEND, else local)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack (idempotent)")
    up.add_argument("--only", help=f"comma-separated components, of: {','.join(ALL_COMPONENTS)}")
    down = sub.add_parser("down", help="stop every component of the stack")
    down.add_argument(
        "--purge", action="store_true", help="also delete topic data, checkpoints and API state"
    )
    sub.add_parser("status", help="what runs now (JSON)")
    scale = sub.add_parser("scale", help="set the number of workers")
    # kafka is accepted so that the stack can explain why its broker count is fixed at `up`.
    scale.add_argument("component", choices=(*SCALABLE, KAFKA))
    scale.add_argument("count", type=int)
    for name in ("kill", "restart"):
        cmd = sub.add_parser(name, help=f"{name} one instance of a component")
        cmd.add_argument("component", choices=ALL_COMPONENTS)
        cmd.add_argument(
            "--which",
            type=int,
            help="instance number of a scalable component (default: last) or Kafka broker (default: 1)",
        )
        if name == "kill":
            cmd.add_argument(
                "--graceful",
                action="store_true",
                help="SIGTERM instead of SIGKILL (a stop: a supervised service is not restarted)",
            )
    component = sub.add_parser("component", help="run one component in the foreground (for containers)")
    component.add_argument("component", choices=(*COMPONENTS, SPARK_HISTORY))
    component.add_argument(
        "--index", type=int, default=1, help="instance number of a scalable component or Kafka broker"
    )
    component.add_argument(
        "--replica",
        action="store_true",
        help="one of the identical containers of a scaled worker service (instance 1's ports)",
    )
    component.add_argument(
        "--join-ray",
        action="store_true",
        help="inference: join the Ray cluster as a node without CPUs first (a driver needs a local node)",
    )
    sub.add_parser("topics", help="create the pipeline's topics (idempotent)")
    monitoring = sub.add_parser("monitoring-config", help="print the Prometheus configuration of a layout")
    monitoring.add_argument("--layout", choices=LAYOUTS, default="compose")
    train = sub.add_parser("train", help="train a new model version with the Spark batch layer")
    train.add_argument("--horizon-minutes", type=int, default=60)
    demo = sub.add_parser(
        "demo", help="bring the stack up, run synthetic load, print counts and latencies, tear down"
    )
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of measured load (default 60)")
    demo.add_argument("--warmup", type=float, default=20.0, help="seconds of load before it (default 20)")
    demo.add_argument("--stations", type=int, default=10)
    demo.add_argument(
        "--rate", type=float, default=20.0, help="messages per second, all stations (default 20)"
    )
    demo.add_argument("--source", choices=("synthetic", "replay"), default="synthetic")
    demo.add_argument("--keep-up", action="store_true", help="leave the stack running afterwards")
    return parser


def _orchestrated_stack_file(command: str) -> str | None:
    """A container's component reads the stack file its orchestrator wrote, if there is one.

    The compose backend writes <state>/stack.yaml before it starts containers, so a streaming
    job started for a benchmark gets the benchmark's windows and trigger; the container's own
    environment still sets the addresses on top.
    """
    if command != "component":
        return None
    stack_file = load_config().stack_file
    return str(stack_file) if stack_file.exists() else None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config or _orchestrated_stack_file(args.command))
        if args.command == "demo":
            from pipeline.demo import run_demo

            return run_demo(config, args)
        stack = get_stack(config, args.backend)
        if args.command == "up":
            components = tuple(args.only.split(",")) if args.only else COMPONENTS
            stack.up(components)
            print(json.dumps(stack.status().to_dict(), indent=2))
        elif args.command == "down":
            stack.down(purge=args.purge)
        elif args.command == "status":
            print(json.dumps(stack.status().to_dict(), indent=2))
        elif args.command == "scale":
            stack.scale(args.component, args.count)
        elif args.command == "kill":
            print(stack.kill(args.component, args.which, graceful=args.graceful))
        elif args.command == "restart":
            stack.restart(args.component, args.which)
        elif args.command == "component":
            from pipeline.stack.local import LocalStack

            proc = LocalStack(config).foreground(
                args.component, args.index, replica=args.replica, join_ray=args.join_ray
            )
            os.execvpe(proc.argv[0], proc.argv, proc.env or dict(os.environ))
        elif args.command == "topics":
            from pipeline.kafka_topics import TopicError, ensure_pipeline_topics, wait_for_brokers

            try:
                # Replicated topics need every broker (containers of a cluster start in any order).
                wait_for_brokers(config.kafka)
                topics = ensure_pipeline_topics(config.kafka)
            except TopicError as exc:
                raise StackError(str(exc)) from None
            for info in topics.values():
                print(
                    f"{info.name}: {info.partitions} partitions, replication factor {info.replication_factor}"
                )
        elif args.command == "monitoring-config":
            if args.layout == "compose":
                # The addresses of docker-compose.yml's containers, whatever this shell has set.
                environ = compose_environment(REPO_ROOT / "docker-compose.yml")
                print(compose_config_text(load_config(args.config, environ=environ)), end="")
            else:
                local = prometheus_config(config, "local", targets_dir(config))
                print(yaml.safe_dump(local, sort_keys=False), end="")
        elif args.command == "train":
            from pipeline.jobs import run_training

            print(json.dumps(run_training(config, horizon_minutes=args.horizon_minutes), indent=2))
    except (ConfigError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
