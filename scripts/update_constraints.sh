#!/usr/bin/env bash
# Rewrite constraints.txt from what .venv holds now.
# After changing a dependency in pyproject.toml or agent/pyproject.toml: install the new version into .venv
# (.venv/bin/pip install 'package==X' -c constraints.txt, dropping the old pin from constraints.txt first if it
# conflicts), run the tests, then run this script and commit constraints.txt with the change.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pip ] || { echo "update_constraints: no .venv here; run scripts/setup.sh first" >&2; exit 2; }
.venv/bin/pip check >&2 || { echo "update_constraints: .venv has broken requirements; fix them before pinning" >&2; exit 2; }
tmp=$(mktemp)
{
    sed -n '/^#/p' constraints.txt
    # torch's local label (+cpu) is dropped: the pin is the version, the index decides the build.
    .venv/bin/pip freeze --exclude-editable --disable-pip-version-check |
        grep -v -E '^(nnflash|nnflash-agent)==' | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > "$tmp"
mv "$tmp" constraints.txt
echo "update_constraints: $(grep -c '==' constraints.txt) pins written to constraints.txt" >&2
