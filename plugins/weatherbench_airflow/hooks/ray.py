"""`RayHook`: the Ray cluster's state through its dashboard's HTTP API (no Airflow Ray provider exists).

The connection (`weatherbench_ray`) is the dashboard's host and port. The hook reads nodes and
actors without joining the cluster (a `ray.init` inside an Airflow worker would start a driver
there), which is all the DAGs need: how many worker nodes are alive, which inference actors
serve, on which node.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from airflow.sdk import BaseHook

from weatherbench_airflow.environment import RAY_CONN_ID


class RayHook(BaseHook):
    """Read-only client of a Ray cluster's dashboard (state API)."""

    conn_name_attr = "ray_conn_id"
    default_conn_name = RAY_CONN_ID
    conn_type = "generic"
    hook_name = "Ray dashboard"

    def __init__(self, ray_conn_id: str = RAY_CONN_ID, timeout_s: float = 10.0) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id
        self.timeout_s = timeout_s
        conn = self.get_connection(ray_conn_id)
        self.base_url = f"http://{conn.host or '127.0.0.1'}:{conn.port or 8265}"

    def get_conn(self) -> str:
        return self.base_url

    def _get(self, path: str, **query: Any) -> Any:
        url = f"{self.base_url}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def nodes(self) -> list[dict[str, Any]]:
        """Every node the cluster knows: node_id, state (ALIVE/DEAD), is_head_node, resources."""
        data = self._get("/api/v0/nodes", limit=1000, detail=1)
        return list(data["data"]["result"]["result"])

    def alive_worker_nodes(self) -> int:
        return sum(1 for n in self.nodes() if n.get("state") == "ALIVE" and not n.get("is_head_node"))

    def actors(self, class_name: str | None = None, state: str = "ALIVE") -> list[dict[str, Any]]:
        """Actors in `state` (of `class_name`, if given): actor_id, class_name, node_id, pid."""
        query: dict[str, Any] = {
            "limit": 1000,
            "filter_keys": "state",
            "filter_predicates": "=",
            "filter_values": state,
        }
        data = self._get("/api/v0/actors", **query)
        actors = list(data["data"]["result"]["result"])
        return [a for a in actors if class_name is None or a.get("class_name") == class_name]
