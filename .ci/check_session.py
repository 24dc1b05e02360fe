"""CI: a GPU-session summary where every piece is ok, or skipped with its reason stated, and
the pieces named by --ran actually ran."""

import argparse
import json
import sys

parser = argparse.ArgumentParser()
parser.add_argument("summary")
parser.add_argument("--ran", nargs="*", default=[], help="pieces that must be ok, not skipped")
args = parser.parse_args()
with open(args.summary) as f:
    summary = json.load(f)
bad = []
for piece in summary["pieces"]:
    line = f"{piece['name']}: {piece['status']} {piece['reason'] or ''}".strip()
    print(line + (f" ({piece['note']})" if piece.get("note") else ""))
    if piece["status"] == "failed" or (piece["status"] == "skipped" and not piece["reason"]):
        bad.append(line)
    if piece["name"] in args.ran and piece["status"] != "ok":
        bad.append(f"{piece['name']} had to run: {line}")
if not summary.get("finished"):
    bad.append("the summary is not finished")
if bad:
    sys.exit("GPU session summary not clean:\n  " + "\n  ".join(bad))
print(f"GPU session summary clean ({summary['total_s']} s)")
