"""Print the one ```bash block under a README heading, exactly as written (CI runs it).

usage: python3 .ci/readme_block.py README.md "Quick start"
"""

import re
import sys


def block_under(text: str, heading: str) -> str:
    match = re.search(rf"^##+ {re.escape(heading)}\b.*?$(.*?)(?=^##+ |\Z)", text, re.M | re.S)
    if not match:
        sys.exit(f"readme_block: no heading {heading!r}")
    blocks = re.findall(r"^```bash\n(.*?)^```", match.group(1), re.M | re.S)
    if len(blocks) != 1:
        sys.exit(f"readme_block: {len(blocks)} bash blocks under {heading!r}, expected 1")
    return blocks[0]


if __name__ == "__main__":
    path, heading = sys.argv[1:3]
    with open(path, encoding="utf-8") as f:
        sys.stdout.write(block_under(f.read(), heading))
