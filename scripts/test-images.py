#!/usr/bin/env python3
"""Turns a root directory into a one-layer OCI image layout (for scripts/test-registry.sh).

    test-images.py ROOTFS LAYOUT --tag TAG [--cmd ARG]... [--env K=V]...

Writes LAYOUT/oci-layout, LAYOUT/index.json (the manifest annotated with
org.opencontainers.image.ref.name=TAG, so `skopeo copy oci:LAYOUT:TAG ...` finds it) and
LAYOUT/blobs/sha256/ with the config, the manifest and one gzip layer. Python stdlib only.

The layer keeps modes, symlinks and hardlinks; owners are root (0:0) and mtimes are fixed, so the
same tree always gives the same digests. Device nodes, fifos and sockets are left out (images ship
an empty /dev; the runtime provides devices).
"""
import argparse
import gzip
import hashlib
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile

MTIME = 946684800  # 2000-01-01: fixed, so the layer digest depends only on the tree
ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class HashingWriter:
    """A file-like sink that hashes what passes through, then hands it on."""

    def __init__(self, sink):
        self.sink, self.sha, self.size = sink, hashlib.sha256(), 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.sink.write(data)

    def flush(self):
        self.sink.flush()


def normalize(info):
    """Root-owned, fixed mtime; None (leave out) for device nodes, fifos and sockets."""
    if info is None or info.ischr() or info.isblk() or info.isfifo():  # None: a socket
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = MTIME
    return info


def write_layer(rootfs, blobs):
    """Tars and gzips ROOTFS into blobs/; returns (digest, size, diff_id)."""
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".layer-")
    with os.fdopen(fd, "wb") as raw:
        gz_hash = HashingWriter(raw)
        # mtime=0 and no file name: gzip output depends only on the tar bytes.
        with gzip.GzipFile(fileobj=gz_hash, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
            tar_hash = HashingWriter(gz)
            with tarfile.open(fileobj=tar_hash, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for top, dirs, files in os.walk(rootfs):
                    dirs.sort()  # sorted walk: deterministic order
                    # os.walk lists symlinks to directories in dirs but does not descend them.
                    for name in sorted(dirs + files):
                        path = os.path.join(top, name)
                        arcname = os.path.relpath(path, rootfs)
                        # gettarinfo records hardlinks (same inode seen twice) as LNKTYPE.
                        info = normalize(tar.gettarinfo(path, arcname))
                        if info is None:
                            continue
                        if info.isreg():
                            with open(path, "rb") as f:
                                tar.addfile(info, f)
                        else:
                            tar.addfile(info)
    digest = gz_hash.sha.hexdigest()
    os.replace(tmp, os.path.join(blobs, digest))
    os.chmod(os.path.join(blobs, digest), 0o644)
    return "sha256:" + digest, gz_hash.size, "sha256:" + tar_hash.sha.hexdigest()


def write_blob(blobs, obj):
    """Writes a JSON blob; returns (digest, size)."""
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rootfs")
    p.add_argument("layout")
    p.add_argument("--tag", required=True, help="org.opencontainers.image.ref.name in index.json")
    p.add_argument("--cmd", action="append", default=[], help="one Cmd argument (repeat)")
    p.add_argument("--env", action="append", default=[], help="one K=V (repeat)")
    a = p.parse_args()

    machine = platform.machine()
    if machine not in ARCH:
        sys.exit(f"test-images.py: unsupported architecture {machine}")

    # Build into a sibling directory, then swap it in: a half-written layout is never left behind.
    layout = os.path.abspath(a.layout)
    tmp = layout + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = os.path.join(tmp, "blobs", "sha256")
    os.makedirs(blobs)

    layer_digest, layer_size, diff_id = write_layer(a.rootfs, blobs)
    config = {
        "architecture": ARCH[machine],
        "os": "linux",
        "created": "2000-01-01T00:00:00Z",
        "config": {"Env": a.env, "Cmd": a.cmd},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2000-01-01T00:00:00Z", "created_by": "scripts/test-images.py"}],
    }
    config_digest, config_size = write_blob(blobs, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = write_blob(blobs, manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": a.tag}}],
    }
    with open(os.path.join(tmp, "index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(tmp, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)

    shutil.rmtree(layout, ignore_errors=True)
    os.rename(tmp, layout)
    print(f"{layout}:{a.tag} {manifest_digest} layer {layer_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
