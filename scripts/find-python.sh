#!/usr/bin/env bash
# Print the first Python >= 3.11 on PATH (python3, then versioned names), or explain and fail.
for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
  [ -n "$candidate" ] || continue
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    command -v "$candidate"
    exit 0
  fi
done
echo "error: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2
exit 1
