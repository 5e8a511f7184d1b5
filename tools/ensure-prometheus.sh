#!/usr/bin/env bash
# Makes sure promtool and prometheus (Debian's prometheus package) are installed: the tests run
# `promtool check metrics`, `promtool test rules`, and a real Prometheus on 127.0.0.1.
set -euo pipefail
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's prometheus package (promtool, prometheus)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  exit 0
fi
echo "warning: promtool/prometheus are missing and cannot be installed here (needs root and" \
     "apt-get): install Debian's prometheus package; the tests that need them are skipped" >&2
