# Entry points. The README's commands are `make run`, `make airflow` and `make test`;
# each does every set-up step first (idempotent, skipped when already done).

PYTHON_BOOT ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
JARS        ?= .state/jars
STAMP_PY    := $(VENV)/.installed
STAMP_JARS  := $(JARS)/.fetched

# `cli` is phony so a moved checkout rewrites its paths.
.PHONY: cli setup image-setup system-deps run demo airflow test unit integration lint format clean down

setup: system-deps $(STAMP_PY) $(STAMP_JARS) cli

# What the container image needs (Dockerfile): Python packages, JVM jars, the commands. The
# Debian packages of system-deps are for this machine's tests and local monitoring only.
image-setup: $(STAMP_PY) $(STAMP_JARS) cli

# Java 17+ and Maven come with the machine image; install them from Debian if absent.
# The PostgreSQL server (initdb, pg_ctl, postgres) is for the results store's integration
# test, which starts a throwaway cluster; Debian keeps the binaries in /usr/lib/postgresql/*/bin.
# Chromium is the browser of the Airflow UI test: Playwright drives /usr/bin/chromium and
# never downloads a browser of its own. Prometheus (with promtool) and the node exporter are
# the monitoring of the local backend; the stack runs them as its own processes when asked to.
system-deps:
	@command -v java >/dev/null && command -v mvn >/dev/null || { \
	  echo "installing Java 17 and Maven from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing the PostgreSQL server from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }
	@test -x /usr/bin/chromium || { \
	  echo "installing Chromium from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@command -v prometheus >/dev/null && command -v promtool >/dev/null \
	  && command -v prometheus-node-exporter >/dev/null || { \
	  echo "installing Prometheus and its node exporter from Debian packages (no service is started)"; \
	  apt-get update -qq && include/setup/apt-install-no-start prometheus prometheus-node-exporter; }

$(STAMP_PY): requirements.txt constraints.txt
	@command -v $(PYTHON_BOOT) >/dev/null || { echo "error: $(PYTHON_BOOT) not found (Python 3.11 is required)"; exit 1; }
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pipeline.versions
	touch $@

# The repository and its plugins folder on the venv's path, the benchmark_system command
# and wb-airflow (`airflow` with the repository's environment).
cli: $(STAMP_PY)
	@printf '%s\n%s\n' "$(abspath .)" "$(abspath plugins)" \
	  > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/weatherbench.pth
	@printf '#!/bin/sh\nexec "%s" -m weatherbench "$$@"\n' "$(abspath $(PY))" > $(VENV)/bin/benchmark_system
	@chmod +x $(VENV)/bin/benchmark_system
	@printf '#!/bin/sh\nexec "%s" -m weatherbench_airflow "$$@"\n' "$(abspath $(PY))" > $(VENV)/bin/wb-airflow
	@chmod +x $(VENV)/bin/wb-airflow

# JVM dependencies from Maven Central: the Kafka broker and tools, the Prometheus JMX exporter
# agent the brokers run with, and Spark's Kafka connector (only the jars pyspark does not ship).
$(STAMP_JARS): include/jvm/kafka/pom.xml include/jvm/jmx-exporter/pom.xml include/jvm/spark-kafka/pom.xml
	mvn -q -B -f include/jvm/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=$(abspath $(JARS))/kafka
	mvn -q -B -f include/jvm/jmx-exporter/pom.xml dependency:copy-dependencies \
	  -DoutputDirectory=$(abspath $(JARS))/jmx-exporter
	mvn -q -B -f include/jvm/spark-kafka/pom.xml dependency:copy-dependencies \
	  -DoutputDirectory=$(abspath $(JARS))/spark-kafka \
	  -DincludeArtifactIds=spark-sql-kafka-0-10_2.13,spark-token-provider-kafka-0-10_2.13,kafka-clients,commons-pool2
	touch $@

# The main job: the nightly benchmark DAG, run once here at the quick profile (airflow dags test);
# the PDF report lands in reports/ and its e-mail in reports/mail/ (the local SMTP sink).
run: setup
	$(PY) -m weatherbench_airflow run weather_benchmark_nightly

demo: setup
	$(PY) -m pipeline demo

# The Airflow UI on http://127.0.0.1:8080 with the DAGs loaded, until Ctrl-C.
airflow: setup
	$(VENV)/bin/wb-airflow ui

test: setup
	$(PY) -m pytest tests

unit: setup
	$(PY) -m pytest tests/unit

integration: setup
	$(PY) -m pytest tests/integration

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

down:
	$(PY) -m pipeline down

clean: down
	rm -rf .state/pids .state/logs .state/kafka .state/spark .state/checkpoints .state/api
