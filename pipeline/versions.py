"""Version checks of the parts that must agree: pyspark's Python code and its Spark jars.

`apache-airflow-providers-apache-spark` pulls in `pyspark-client`, which
installs over pyspark's Python files; if the two versions differ, the Python
side no longer matches the JVM side and jobs fail in obscure ways. Set-up
runs this check (`python -m pipeline.versions`), and so does every Spark submit.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path


class VersionMismatch(RuntimeError):
    """Installed components that must share a version do not."""


def spark_jars_version() -> str:
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    for jar in jars.glob("spark-core_*.jar"):
        match = re.search(r"spark-core_[\d.]+-(\d+\.\d+\.\d+)", jar.name)
        if match:
            return match.group(1)
    raise VersionMismatch(f"no spark-core jar in {jars}: is the full pyspark package installed?")


def check_spark_versions() -> str:
    """Return the Spark version, or raise if pyspark, pyspark-client and the jars disagree."""
    import pyspark

    python_side = pyspark.__version__
    jars = spark_jars_version()
    found = {"pyspark (Python)": python_side, "Spark jars": jars}
    for dist in ("pyspark", "pyspark-client"):
        try:
            found[f"{dist} (installed)"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if len(set(found.values())) != 1:
        listing = ", ".join(f"{k}={v}" for k, v in found.items())
        raise VersionMismatch(
            f"Spark versions disagree ({listing}); pin pyspark and pyspark-client to one version "
            "in requirements.txt and reinstall"
        )
    return jars


if __name__ == "__main__":
    try:
        print(f"Spark {check_spark_versions()}: pyspark, pyspark-client and jars agree")
    except VersionMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
