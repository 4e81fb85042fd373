#!/usr/bin/env bash
# Rewrite constraints.txt from the project's virtual environment after the suite passed on it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
{
  echo "# The exact set verified together (CPU, Python 3.11): \`make\` installs with \`-c constraints.txt\`."
  echo "# pyproject.toml declares ranges; this file pins what the tests ran on. Regenerate with scripts/freeze_constraints.sh."
  "$VENV/bin/python" -m pip freeze --exclude-editable | grep -v '^ftgrid\|@ file' | sed 's/+cpu$//'
} > constraints.txt
