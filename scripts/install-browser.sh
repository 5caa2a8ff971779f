#!/usr/bin/env bash
# Make sure a headless-capable Chromium is available for the web chat page's browser test.
# Idempotent: does nothing when /usr/bin/chromium is already installed; otherwise installs Debian's
# `chromium` package with apt-get (Playwright drives it; `playwright install` is never used).
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: $CHROMIUM is missing and apt-get is not available; install Chromium yourself" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser: installing Chromium needs root (or sudo)" >&2
        exit 1
    fi
fi

echo "install-browser: installing Debian's chromium package" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium

if [ ! -x "$CHROMIUM" ]; then
    echo "install-browser: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
