#!/usr/bin/env bash
# Idempotent set-up: Debian packages if missing, then .venv with Gingham installed editable
# and its bytecode precompiled (PYTHONDONTWRITEBYTECODE is set on our machines).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 iputils-ping nftables libnftables1 iptables iperf3 socat
  containernetworking-plugins procps python3 python3-venv etcd-server openssl tcpdump
  gcc libc6-dev python3-dev  # the userspace tunnels' C loops (setup.py)
  bird2 frr  # Calico mode: BIRD on every node, FRR as a top-of-rack router
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.gingham-installed
# Reinstalled when the package's definition or its C source changes (the build is in place).
want=$(cat pyproject.toml setup.py src/gingham/dataplane/*.c | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" >"$stamp"
fi
# Precompile: the agent and CLI would otherwise pay for compiling on every start.
.venv/bin/python -m compileall -q -j 0 src .venv/lib >/dev/null
