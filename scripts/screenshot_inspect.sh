#!/usr/bin/env bash
# Renders the shipped example pairs with `rlkd inspect --html` and screenshots the page in headless
# Chromium (Debian's package: apt-get install chromium) to docs/inspect.png.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
.venv/bin/rlkd score --pairs examples/pairs.jsonl --output "$tmp/scored.jsonl" --judge math
.venv/bin/rlkd inspect --pairs "$tmp/scored.jsonl" --html "$tmp/inspect.html"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$tmp/profile" --window-size=1200,1100 \
  --screenshot="$PWD/docs/inspect.png" "file://$tmp/inspect.html#lo=0.5" 2>/dev/null
echo "wrote docs/inspect.png"
