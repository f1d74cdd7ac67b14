"""Validation of raw observations in Spark SQL: the streaming job's form of schema.validate_raw.

Owns the split of the Kafka source rows into typed good rows and dead-letter
rows. The rules, ranges and reason codes are read from pipeline.schema (the
Python reference), so a field or range is defined once; the parity unit test
(tests/unit/test_streaming_validation.py) checks that both forms give the same
reason for every crafted payload.

Given a far-late limit, a row that passes every other rule but whose event time is
older than its Kafka append time minus the limit is rejected as `late:event_time`
(schema.validate_raw with `received_ms` = the append time). Its window closed long
ago: without the rule the watermark would drop it, leaving only a count in the progress.

Only built-in column expressions are used: a Python UDF would ship every row
to a Python worker, which costs more than the whole aggregation on 2 cores.

How JSON is read: `try_parse_json` builds a VARIANT, which keeps the JSON type
of each value (`schema_of_variant` says BIGINT, DECIMAL(p,s), DOUBLE, STRING,
BOOLEAN, VOID for null, OBJECT<...>, ARRAY<...>), so a number written as a
string ("12.5") is told apart from a number. Where Spark's parser and Python's
`json.loads` differ, the text is adjusted or checked first:

- Python accepts the tokens NaN / Infinity / -Infinity as numbers; Jackson does
  not. If a payload fails to parse, those tokens (outside strings, in value
  position) are replaced by +-1e308 and it is parsed again: 1e308 is outside
  every range and not an integer, exactly like NaN and infinity in Python.
- Jackson stops after the first JSON value and ignores what follows
  (`{"a":1} xyz`); Python rejects trailing data. The text with string literals
  blanked out must be a single balanced `{...}` (checked with regexes).
- Duplicate keys: Python keeps the last value; so does VARIANT with
  `spark.sql.variant.allowDuplicateKeys=true` (REQUIRED_SQL_CONF, set by
  `split_valid`), without it the payload would not parse at all.
- Kafka values are bytes: invalid UTF-8 is malformed (Python: UnicodeDecodeError),
  a leading UTF-8 byte-order mark is skipped (Python decodes bytes with utf-8-sig).

Known divergences, all outside anything a JSON producer emits (RFC 8259 JSON over
Kafka is UTF-8): integers above 2**63-1 in seq/event_time/ingestion_time are
mistyped here (Python ints are unbounded, Spark longs are not); UTF-16/32-encoded
payloads, lone UTF-16 surrogate escapes ("\\ud800"), number literals over 1000
digits and objects nested deeper than MAX_NESTING are malformed here but parse
in Python.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipeline.schema import (
    ID_FIELDS,
    MAX_MESSAGE_BYTES,
    MAX_STATION_ID_LENGTH,
    OPTIONAL_STAMPS,
    REASON_LATE,
    REASON_MALFORMED,
    REASON_MISSING,
    REASON_MISTYPED,
    REASON_OUT_OF_RANGE,
    REASON_OVERSIZE,
    WEATHER_FIELDS,
    Rejection,
)

# Session settings the expressions below rely on.
REQUIRED_SQL_CONF = {"spark.sql.variant.allowDuplicateKeys": "true"}

# Deepest object/array nesting the trailing-data check resolves (our messages are flat).
MAX_NESTING = 16

# The dead-letter record keeps at most this many characters of the raw payload, so an
# oversize input (up to the broker's 1 MB) cannot make the dead-letter write fail.
MAX_RAW_CHARS = MAX_MESSAGE_BYTES

_WS = r"[ \t\n\r]"  # JSON whitespace, the only whitespace json.loads skips
# A JSON string literal; possessive quantifiers keep Java's regex engine from
# recursing once per character on long strings.
_STRING_LITERAL = r'"(?:[^"\\]++|\\.)*+"'
_FLAT_OBJECT = r"^\{[^{}\[\]]*\}$"
_INNERMOST_CONTAINER = r"\{[^{}\[\]]*\}|\[[^{}\[\]]*\]"
_NON_FINITE = "(?<p>[:\\[,]" + _WS + "*)"

# Integer kinds of ID_FIELDS; every other kind must be a string.
_INTEGER_KINDS = ("integer", "epoch_ms")

GOOD_COLUMNS = (
    *ID_FIELDS,
    *WEATHER_FIELDS,
    *OPTIONAL_STAMPS,
    "kafka_time",  # broker timestamp of the raw record, epoch ms
    "topic",
    "partition",
    "offset",
)
DEADLETTER_COLUMNS = (
    "reason",
    "raw",
    "raw_bytes",
    "source_topic",
    "partition",
    "offset",
    "kafka_time",
    "detected_time",
)


def _reason(reason: str, field: str | None = None) -> Column:
    # str(Rejection) is the reason format of the Python reference and of the dead-letter topic.
    return F.lit(str(Rejection(reason, field)))


def _replace_non_finite(text: Column) -> Column:
    """Python's NaN / Infinity / -Infinity value tokens -> +-1e308 (out of every range, not integral)."""
    negative = F.regexp_replace(text, _NON_FINITE + "-Infinity", "${p}-1e308")
    return F.regexp_replace(negative, _NON_FINITE + "(?:NaN|Infinity)", "${p}1e308")


def _single_object(text: Column) -> Column:
    """True when the (parseable) text is one JSON object and nothing after it.

    Jackson has already accepted a JSON value at the start of `text`. With string
    literals blanked and whitespace removed, that value ends at the first bracket
    that closes the outermost one; anything after it is trailing data. A flat
    object is one regex; nested containers are reduced innermost-first.
    """
    bare = F.regexp_replace(F.regexp_replace(text, _STRING_LITERAL, '""'), _WS + "+", "")
    reduced = bare
    for _ in range(MAX_NESTING):
        reduced = F.regexp_replace(reduced, _INNERMOST_CONTAINER, "0")
    return F.when(bare.rlike(_FLAT_OBJECT), F.lit(True)).otherwise(
        bare.startswith("{") & (reduced == F.lit("0"))
    )


def _sql_type(name: str) -> str:
    """SQL type of a field's value in good_df: ID kinds, weather numbers, optional epoch stamps."""
    if name in WEATHER_FIELDS:
        return "double"
    if name in ID_FIELDS and ID_FIELDS[name] not in _INTEGER_KINDS:
        return "string"
    return "bigint"


def _wall_clock_ms() -> Column:
    """Executor wall clock in epoch ms, evaluated per row.

    Not current_timestamp(): a stream turns it into a literal of the batch time,
    which changes the generated code of this (large) stage every micro-batch and
    costs a fresh Janino compile (0.5 s on our machines) per batch. `reflect` is
    evaluated through a reference, so the code stays cacheable.
    """
    return F.expr("reflect('java.lang.System', 'currentTimeMillis')").cast("bigint")


def _field(variant: Column, name: str) -> Column:
    # The variant value of a top-level key: SQL NULL if absent, variant null if JSON null.
    return F.try_variant_get(variant, f"$.{name}", "variant")


def with_validation(source: DataFrame, late_limit_ms: int | None = None) -> DataFrame:
    """Add `_reason` (NULL when valid, else str(schema.Rejection)) to the source rows.

    `late_limit_ms` (None: no lateness rule) rejects valid rows whose event time is older
    than the Kafka append time (`timestamp`) minus the limit, as schema.validate_raw does.

    Also adds the intermediate columns split_valid reads: `_v` (the parsed VARIANT),
    and per field `_f_<name>` (its variant), `_t_<name>` (its JSON type) and
    `_x_<name>` (its value as the field's SQL type). Each step is its own
    projection so the parse runs once per row (the optimizer does not inline
    expensive expressions that are referenced more than once).
    """
    size = F.octet_length(F.col("value"))
    # Invalid UTF-8 is left as NULL text: malformed, like Python's UnicodeDecodeError.
    text = F.when(
        F.is_valid_utf8(F.col("value")),
        F.regexp_replace(F.col("value").cast("string"), "^\ufeff", ""),
    )
    staged = source.withColumn("_size", size).withColumn("_text", text)
    # Oversize rows are never parsed: the first failed rule wins and parsing 1 MB costs.
    staged = staged.withColumn(
        "_v1", F.when(F.col("_size") <= MAX_MESSAGE_BYTES, F.try_parse_json(F.col("_text")))
    )
    # Second chance only for unparseable text that contains a non-finite token Python would accept.
    staged = staged.withColumn(
        "_ptext",
        F.when(F.col("_v1").isNotNull(), F.col("_text")).when(
            (F.col("_size") <= MAX_MESSAGE_BYTES) & F.col("_text").rlike("NaN|Infinity"),
            _replace_non_finite(F.col("_text")),
        ),
    )
    staged = staged.withColumn(
        "_v",
        F.coalesce(
            F.col("_v1"),
            F.when(F.col("_ptext").isNotNull(), F.try_parse_json(F.col("_ptext"))),
        ),
    )
    fields = (*ID_FIELDS, *WEATHER_FIELDS)
    extracted = (*fields, *OPTIONAL_STAMPS)
    staged = staged.select(
        "*",
        F.when(F.col("_v").isNotNull(), _single_object(F.col("_ptext"))).alias("_object"),
        *[_field(F.col("_v"), name).alias(f"_f_{name}") for name in extracted],
    )
    # Each field's JSON type and its value in the one SQL type it may have, extracted once
    # from the small field variant: the checks below and good_df both read these columns.
    staged = staged.select(
        "*",
        *[F.schema_of_variant(F.col(f"_f_{name}")).alias(f"_t_{name}") for name in extracted],
        *[
            F.try_variant_get(F.col(f"_f_{name}"), "$", _sql_type(name)).alias(f"_x_{name}")
            for name in extracted
        ],
    )

    def present(name: str) -> Column:
        return F.col(f"_f_{name}").isNotNull() & ~F.is_variant_null(F.col(f"_f_{name}"))

    def well_typed(name: str, kind: str) -> Column:
        kind_type, value = F.col(f"_t_{name}"), F.col(f"_x_{name}")
        if kind in _INTEGER_KINDS:
            # BIGINT is the variant type of an integer literal that fits a long; 5.0 is a DECIMAL.
            return (kind_type == "BIGINT") & (value >= 0)
        length = F.char_length(value)
        return (kind_type == "STRING") & (length > 0) & (length <= MAX_STATION_ID_LENGTH)

    def is_number(name: str) -> Column:
        kind_type = F.col(f"_t_{name}")
        return kind_type.isin("BIGINT", "DOUBLE", "FLOAT") | kind_type.startswith("DECIMAL(")

    def in_range(name: str, low: float, high: float) -> Column:
        number = F.col(f"_x_{name}")
        # NOT(low <= x <= high) is also true for NaN, like Python's chained comparison.
        return (number >= F.lit(low)) & (number <= F.lit(high))

    def fails(passes: Column) -> Column:
        # A rule whose test is NULL (value of another type) fails: CASE WHEN treats NULL as false.
        return ~F.coalesce(passes, F.lit(False))

    # CASE WHEN takes the first true branch: the order below is validate_raw's order.
    reason = F.when(F.col("_size") > MAX_MESSAGE_BYTES, _reason(REASON_OVERSIZE)).when(
        F.col("_v").isNull() | fails(F.col("_object")), _reason(REASON_MALFORMED)
    )
    for name in fields:
        reason = reason.when(~present(name), _reason(REASON_MISSING, name))
    for name, kind in ID_FIELDS.items():
        reason = reason.when(fails(well_typed(name, kind)), _reason(REASON_MISTYPED, name))
    for name in WEATHER_FIELDS:
        reason = reason.when(fails(is_number(name)), _reason(REASON_MISTYPED, name))
    for name, (low, high) in WEATHER_FIELDS.items():
        reason = reason.when(fails(in_range(name, low, high)), _reason(REASON_OUT_OF_RANGE, name))
    if late_limit_ms is not None:
        oldest_on_time = F.unix_millis(F.col("timestamp")) - F.lit(late_limit_ms)
        reason = reason.when(F.col("_x_event_time") < oldest_on_time, _reason(REASON_LATE, "event_time"))
    return staged.withColumn("_reason", reason)


def split_valid(source: DataFrame, late_limit_ms: int | None = None) -> tuple[DataFrame, DataFrame]:
    """Split Kafka source rows into (good_df, bad_df); `late_limit_ms` as in with_validation.

    `source` has the Kafka source columns: value (binary), topic, partition,
    offset, timestamp. good_df columns: GOOD_COLUMNS, typed (station_id string,
    seq/event_time/ingestion_time/intended_time/kafka_time bigint epoch ms,
    weather fields double; intended_time NULL unless an integer). bad_df columns:
    DEADLETTER_COLUMNS (reason as str(schema.Rejection), raw text cut to
    MAX_RAW_CHARS characters, raw_bytes the payload size, kafka_time and
    detected_time epoch ms; detected_time is when the row was validated).
    """
    session = source.sparkSession
    for key, value in REQUIRED_SQL_CONF.items():
        session.conf.set(key, value)
    checked = with_validation(source, late_limit_ms)
    kafka_time = F.unix_millis(F.col("timestamp"))

    # Values of a valid row have their SQL type (checked above); read the extracted columns.
    good_columns: list[Column] = [F.col(f"_x_{name}").alias(name) for name in (*ID_FIELDS, *WEATHER_FIELDS)]
    good_columns += [
        F.when(F.col(f"_t_{stamp}") == "BIGINT", F.col(f"_x_{stamp}")).alias(stamp)
        for stamp in OPTIONAL_STAMPS
    ]
    good_columns += [kafka_time.alias("kafka_time"), F.col("topic"), F.col("partition"), F.col("offset")]
    good = checked.where(F.col("_reason").isNull()).select(*good_columns)

    raw = F.make_valid_utf8(F.col("value"))
    bad = checked.where(F.col("_reason").isNotNull()).select(
        F.col("_reason").alias("reason"),
        F.substring(raw, 1, MAX_RAW_CHARS).alias("raw"),
        F.coalesce(F.octet_length(F.col("value")), F.lit(0)).alias("raw_bytes"),
        F.col("topic").alias("source_topic"),
        F.col("partition"),
        F.col("offset"),
        kafka_time.alias("kafka_time"),
        _wall_clock_ms().alias("detected_time"),
    )
    return good, bad
