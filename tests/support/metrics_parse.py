"""Parses a /metrics exposition with the Prometheus project's Python client
(PyPI prometheus-client), independently of the Rust code that wrote it.

Reads the text on stdin; parses it with the OpenMetrics parser (strict: the
format portcullis serves) and with the classic Prometheus text parser; prints
one JSON object: {"families": {name: {"type", "samples": [[name, labels,
value], ...]}}, "classic_types": {name: type}}. Exits 1 with the parser's
error when either refuses the text.
"""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic

text = sys.stdin.read()
try:
    families = {
        f.name: {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
        for f in openmetrics(text)
    }
    classic_types = {f.name: f.type for f in classic(text)}
except Exception as e:  # the parsers raise ValueError and friends
    print(f"unparsable: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
json.dump({"families": families, "classic_types": classic_types}, sys.stdout)
