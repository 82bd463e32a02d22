#!/usr/bin/env bash
# The peer of `agentkernel images pull` in bench/run.sh: skopeo copies the image from the
# registry into an OCI layout, then tar unpacks each layer, bottom first (whiteouts are not
# applied, so this does less than agentkernel does).
#   skopeo-pull.sh REGISTRY/REPO:TAG DEST
set -euo pipefail
src="$1" dest="$2"
rm -rf "$dest" && mkdir -p "$dest/rootfs"
skopeo copy -q --src-tls-verify=false "docker://$src" "oci:$dest/layout:img" >/dev/null
manifest="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"].split(":")[1])' "$dest/layout/index.json")"
for layer in $(python3 -c 'import json,sys; print(" ".join(l["digest"].split(":")[1] for l in json.load(open(sys.argv[1]))["layers"]))' "$dest/layout/blobs/sha256/$manifest"); do
  tar -xzf "$dest/layout/blobs/sha256/$layer" -C "$dest/rootfs"
done
