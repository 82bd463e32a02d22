#!/usr/bin/env bash
# Installs the published clients the tests drive against our server — the Python SDK
# (agentkernel-sdk), schemathesis and the official MCP SDK (mcp) from PyPI, the Node SDK (agentkernel) from npm — into a
# cache directory, once; later runs reuse it. Prints the env file the tests read.
#   scripts/test-clients.sh          install if needed, print the path of clients.env
set -euo pipefail
cd "$(dirname "$0")/.."
PY_SDK=0.21.0
NPM_SDK=0.18.1
SCHEMATHESIS=4.32.5
MCP=1.30.0
# The OpenCode plugin `plugin install opencode` writes is type-checked against the published
# plugin API.
TYPESCRIPT=5.9
OPENCODE_PLUGIN=1.18.33
dir="${AGENTKERNEL_TEST_CLIENTS:-${HOME:-/root}/.cache/agentkernel-test-clients}"
stamp="py-$PY_SDK npm-$NPM_SDK st-$SCHEMATHESIS mcp-$MCP ts-$TYPESCRIPT oc-$OPENCODE_PLUGIN"
mkdir -p "$dir"
if [ "$(cat "$dir/stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "test-clients: installing agentkernel-sdk $PY_SDK, schemathesis $SCHEMATHESIS, mcp $MCP, agentkernel (npm) $NPM_SDK into $dir" >&2
  rm -rf "$dir/venv" "$dir/node"
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install -q --disable-pip-version-check \
    "agentkernel-sdk==$PY_SDK" "schemathesis==$SCHEMATHESIS" "mcp==$MCP" >&2
  mkdir -p "$dir/node"
  (cd "$dir/node" && echo '{"name":"ak-test-clients","private":true,"type":"module"}' >package.json &&
    npm install --silent --no-audit --no-fund "agentkernel@$NPM_SDK" \
      "typescript@$TYPESCRIPT" "@opencode-ai/plugin@$OPENCODE_PLUGIN" "@types/node@20" >&2)
  echo "$stamp" >"$dir/stamp"
fi
cat >"$dir/clients.env" <<ENV
AGENTKERNEL_TEST_PYTHON=$dir/venv/bin/python
AGENTKERNEL_TEST_SCHEMATHESIS=$dir/venv/bin/schemathesis
AGENTKERNEL_TEST_NODE_MODULES=$dir/node/node_modules
ENV
echo "$dir/clients.env"
