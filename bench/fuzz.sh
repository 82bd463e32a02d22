#!/usr/bin/env bash
# Every fuzz target with a million cases each (release build), one after another: the count
# and the time of each, and a non-zero exit when any target fails (a panic, a case over 5 s,
# or a hang, which the watchdog ends). The same tests run with 2,000 cases (300 for the
# targets that touch the disk) in every `cargo test`; docs/reliability.md says what each
# target feeds to which parser.
#
#   bash bench/fuzz.sh                                    # all targets, 1,000,000 cases each
#   AGENTKERNEL_FUZZ_CASES=100000 bash bench/fuzz.sh      # fewer cases
#   bash bench/fuzz.sh layer_tars oci_layouts             # only some targets (names below)
#   PROFILE=debug bash bench/fuzz.sh                      # the debug build (no release build)
#
# A failure prints the smallest input proptest found that fails the same way.
#   FUZZ_TMPFS=0 bash bench/fuzz.sh                      # temporary stores on the disk
#
# By default the script re-runs itself in a mount namespace of its own with a tmpfs as TMPDIR:
# the disk targets (oci_layouts, layer_tars, pipeline_files) then measure the parsers rather than
# the disk's syncfs, and a million temporary stores never touch the host's filesystem.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${FUZZ_TMPFS:-1}" = 1 ] && [ -z "${FUZZ_IN_NAMESPACE:-}" ]; then
  FUZZ_IN_NAMESPACE=1 exec unshare --mount --propagation private bash "$0" "$@"
fi
if [ -n "${FUZZ_IN_NAMESPACE:-}" ]; then
  fuzz_tmp="$(mktemp -d)"
  mount -t tmpfs -o size=4g,mode=0700 fuzz-tmp "$fuzz_tmp"
  export TMPDIR="$fuzz_tmp"
fi
source scripts/env.sh
export AGENTKERNEL_FUZZ_CASES="${AGENTKERNEL_FUZZ_CASES:-1000000}"
release=(--release)
[ "${PROFILE:-release}" = debug ] && release=()

# name  crate  test
TARGETS=(
  "image_references       agentkernel-core    fuzz::fuzz_image_references"
  "image_reference_json   agentkernel-core    fuzz::fuzz_image_reference_json"
  "config_files           agentkernel-core    fuzz::fuzz_config_files"
  "registry_references    agentkernel-image   fuzz::fuzz_registry_references"
  "oci_documents          agentkernel-image   fuzz::fuzz_oci_documents"
  "oci_layouts            agentkernel-image   fuzz::fuzz_oci_layouts"
  "layer_tars             agentkernel-image   fuzz::fuzz_layer_tars"
  "guest_protocol         agentkernel-proto   fuzz::fuzz_guest_protocol_frames"
  "template_files         agentkernel-engine  fuzz::fuzz_template_files"
  "pipeline_files         agentkernel-engine  fuzz::fuzz_pipeline_files"
  "http_request_bodies    agentkernel-server  fuzz::fuzz_http_request_bodies"
  "http_query_strings     agentkernel-server  fuzz::fuzz_http_query_strings"
  "mcp_tool_arguments     agentkernel-mcp     tools::fuzz::fuzz_mcp_tool_arguments"
)

wanted() { # NAME [TARGET...]: true if NAME is among the targets, or none is given
  local name="$1"; shift
  [ $# -eq 0 ] && return 0
  for w in "$@"; do [ "$w" = "$name" ] && return 0; done
  return 1
}

crates=()
for t in "${TARGETS[@]}"; do
  read -r name crate _ <<<"$t"
  if wanted "$name" "$@" && [[ " ${crates[*]} " != *" $crate "* ]]; then crates+=("$crate"); fi
done
[ ${#crates[@]} -gt 0 ] || { echo "no such target: $*" >&2; exit 2; }
# One crate at a time, as each target runs below (several -p at once would unify features
# differently and build the dependencies again).
for c in "${crates[@]}"; do
  cargo test "${release[@]}" --target "$HOST_TARGET" -p "$c" --lib --no-run
done

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
failed=0
printf '%-22s %12s %10s %12s  %s\n' target cases seconds cases/s result
for t in "${TARGETS[@]}"; do
  read -r name crate test <<<"$t"
  wanted "$name" "$@" || continue
  start=$(date +%s.%N)
  if cargo test -q "${release[@]}" --target "$HOST_TARGET" -p "$crate" --lib -- --exact "$test" \
      --nocapture >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    failed=1
  fi
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  # The test's own line: `fuzz NAME: N cases in S s` (without cargo's start-up).
  if line=$(grep -m1 -oE "fuzz $name: [0-9]+ cases in [0-9.]+ s" "$log"); then
    cases=$(echo "$line" | awk '{print $3}')
    secs=$(echo "$line" | awk '{print $6}')
  else
    cases=-
  fi
  rate=-
  [ "$cases" != - ] && rate=$(awk -v c="$cases" -v s="$secs" 'BEGIN { if (s > 0) printf "%d", c / s; else print "-" }')
  printf '%-22s %12s %10.1f %12s  %s\n' "$name" "$cases" "$secs" "$rate" "$result"
  if [ "$result" = FAILED ]; then
    sed -n '1,200p' "$log" >&2
  fi
done
exit "$failed"
