"""The forecasting model: its features, its file format, and prediction.

The batch layer (pipeline.batch.train, a Spark job) fits the coefficients;
Ray inference actors load the file and predict with numpy only, so neither
Spark nor scikit-learn is needed at inference time.

Model: the temperature `horizon_minutes` ahead is the current temperature plus
a linear function of (current temperature, time-of-day harmonics, season
harmonics). The persistence forecast ("it stays as it is now") is the
baseline a model must beat on held-out data.

Files: <model_dir>/temperature-v<N>.json, and <model_dir>/CURRENT naming the
version actors load by default. Versions only grow; files are never
rewritten, so a running actor never sees a half-written model.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FEATURE_NAMES = (
    "temperature_c",
    "sin_hour",
    "cos_hour",
    "sin_2hour",
    "cos_2hour",
    "sin_doy",
    "cos_doy",
    # How fast temperature changes at a time of day depends on how warm it is
    # (a warm afternoon cools faster): without these the model loses to
    # persistence on the Seattle hold-out.
    "temp_x_sin_hour",
    "temp_x_cos_hour",
    "temp_x_sin_2hour",
    "temp_x_cos_2hour",
)
MODEL_NAME = "temperature-delta-linear"
_FILE_RE = re.compile(r"temperature-v(\d+)\.json$")

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class ModelError(RuntimeError):
    """No usable model file (missing, unreadable, or for other features)."""


def feature_vector(temperature_c: float, epoch_ms: int) -> list[float]:
    """Features of one observation time; time of day and season are taken in UTC."""
    hour = (epoch_ms % DAY_MS) / HOUR_MS
    day_of_year = (epoch_ms // DAY_MS) % 365.25
    h = 2 * math.pi * hour / 24
    d = 2 * math.pi * day_of_year / 365.25
    t = float(temperature_c)
    diurnal = [math.sin(h), math.cos(h), math.sin(2 * h), math.cos(2 * h)]
    return [t, *diurnal, math.sin(d), math.cos(d), *(t * v for v in diurnal)]


@dataclass
class TemperatureModel:
    version: int
    coefficients: list[float]
    intercept: float
    horizon_minutes: int = 60
    features: list[str] = field(default_factory=lambda: list(FEATURE_NAMES))
    name: str = MODEL_NAME
    metrics: dict[str, Any] = field(default_factory=dict)
    trained_at_ms: int = 0
    dataset: str = ""

    def predict(self, rows: Sequence[tuple[float, int]]) -> list[float]:
        """Predict for (temperature_c, epoch_ms) pairs; returns temperatures in C."""
        out = []
        for temperature, epoch_ms in rows:
            x = feature_vector(temperature, epoch_ms)
            delta = self.intercept + sum(c * v for c, v in zip(self.coefficients, x, strict=True))
            out.append(temperature + delta)
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemperatureModel:
        if list(data.get("features", [])) != list(FEATURE_NAMES):
            raise ModelError(f"model features {data.get('features')} do not match {list(FEATURE_NAMES)}")
        if len(data.get("coefficients", [])) != len(FEATURE_NAMES):
            raise ModelError("model has the wrong number of coefficients")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def list_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in model_dir.iterdir() if (m := _FILE_RE.match(p.name)))


def model_path(model_dir: Path, version: int) -> Path:
    return model_dir / f"temperature-v{version}.json"


def current_version(model_dir: Path) -> int | None:
    pointer = model_dir / "CURRENT"
    if pointer.exists():
        return int(pointer.read_text().strip())
    versions = list_versions(model_dir)
    return versions[-1] if versions else None


def load_model(model_dir: Path, version: int | None = None) -> TemperatureModel:
    chosen = version if version is not None else current_version(model_dir)
    if chosen is None:
        raise ModelError(f"no model in {model_dir}: run the batch layer (python -m pipeline train) first")
    path = model_path(model_dir, chosen)
    try:
        return TemperatureModel.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ModelError(f"model version {chosen} not found at {path}") from None


def save_model(model_dir: Path, model: TemperatureModel, make_current: bool = True) -> Path:
    """Write the model as a new version file atomically, then move CURRENT to it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_path(model_dir, model.version)
    if path.exists():
        raise ModelError(f"model version {model.version} already exists at {path}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(model.to_json())
    os.replace(tmp, path)
    if make_current:
        pointer_tmp = model_dir / "CURRENT.tmp"
        pointer_tmp.write_text(f"{model.version}\n")
        os.replace(pointer_tmp, model_dir / "CURRENT")
    return path


def next_version(model_dir: Path) -> int:
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1
