#!/usr/bin/env bash
# What `make test` needs beyond the Python environment: tmux, for the test that watches a run in a real terminal
# (tests/e2e/test_resume.py), from the distribution's packages when it is missing.
set -euo pipefail
command -v tmux >/dev/null && exit 0
echo "setup: installing tmux from the distribution's packages"
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
if command -v apt-get >/dev/null; then
  $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq tmux >/dev/null
elif command -v dnf >/dev/null; then
  $sudo dnf install -y -q tmux
else
  echo "setup: install tmux (the terminal test needs it)" >&2; exit 1
fi
