"""Writes to the API server, from its Prometheus metrics (apiserver_request_total).

  api_writes.py count < metrics                     "<resource[/subresource]> <VERB>\t<count>" lines
  api_writes.py per-source BEFORE AFTER SOURCES     "<total per source>\t<kind per source, ...>"
"""

import re
import sys

WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY"}
LABEL = re.compile(r'(\w+)="([^"]*)"')


def count(lines):
    totals = {}
    for line in lines:
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(LABEL.findall(line.split("}", 1)[0]))
        if labels.get("verb") not in WRITE_VERBS:
            continue
        resource = "/".join(x for x in (labels.get("resource"), labels.get("subresource")) if x)
        kind = f"{resource} {labels['verb']}"
        totals[kind] = totals.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def load(path):
    with open(path) as f:
        return {k: float(v) for k, v in (line.rstrip("\n").split("\t") for line in f if line.strip())}


def main():
    if sys.argv[1] == "count":
        for kind, n in sorted(count(sys.stdin).items()):
            print(f"{kind}\t{n:.0f}")
    elif sys.argv[1] == "per-source":
        before, after, sources = load(sys.argv[2]), load(sys.argv[3]), int(sys.argv[4])
        delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}
        total = sum(delta.values()) / sources
        parts = [f"{k} {v / sources:.2f}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v / sources >= 0.01]
        print(f"{total:.2f}\t{', '.join(parts)}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
