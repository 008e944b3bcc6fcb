"""Parses OpenMetrics text on stdin with Prometheus's own parser
(prometheus_client, installed into .venv by `make setup`), strictly: any
format error is an exception and a non-zero exit. Prints every sample as one
JSON object per line: {"name", "labels", "value"}.

    curl -s 127.0.0.1:9464/metrics | .venv/bin/python tests/clients/parse_metrics.py
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    for family in text_string_to_metric_families(sys.stdin.read()):
        for sample in family.samples:
            print(json.dumps({"name": sample.name, "labels": sample.labels, "value": sample.value}))


if __name__ == "__main__":
    main()
