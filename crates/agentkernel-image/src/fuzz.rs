//! Fuzz tests of what a registry or an image layout hands us: image references, OCI image
//! indexes, manifests and configs (parsed alone, and as whole layouts resolved into a temporary
//! store), and layer tar streams extracted into a temporary directory. Each input must give
//! `Ok` or `Err`, never a panic or a hang (see `fuzz_support`), and a layer may write nothing
//! outside the directory it is extracted into.

#[path = "../../agentkernel-core/src/fuzz_support.rs"]
mod fuzz_support;

use crate::UnpackLimits;
use crate::limits::Budget;
use crate::registry::{self, RegistrySettings};
use fuzz_support::{check, check_on_disk, json, json_bytes, soup};
use oci_spec::image::{ImageIndex, ImageManifest};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;

const LONG: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

const REFERENCE_TOKENS: &[&str] = &[
    "/",
    ":",
    "@",
    "@sha256:",
    "sha256:",
    HEX,
    "sha512:",
    "docker.io/",
    "index.docker.io/",
    "registry-1.docker.io/",
    "localhost",
    "localhost:5000/",
    "127.0.0.1:5000/",
    "[::1]:5000/",
    "ghcr.io/",
    "library/",
    "python",
    "3.12-alpine",
    "latest",
    ".",
    "..",
    "//",
    "-",
    "_",
    "\0",
    " ",
    "é",
    "A",
    LONG,
];

#[test]
fn fuzz_registry_references() {
    let settings = RegistrySettings {
        mirrors: vec![
            ("127.0.0.1:5000".to_string(), true),
            ("mirror.example".to_string(), false),
        ],
        insecure: vec!["10.0.0.5:5000".to_string()],
    };
    check("registry_references", soup(REFERENCE_TOKENS, 10), |text| {
        if let Ok(resolved) = registry::parse(&text, &settings) {
            assert!(
                !resolved.targets.is_empty(),
                "{text:?}: nowhere to pull from"
            );
            assert!(
                registry::canonical_name(&resolved.canonical).is_ok(),
                "{text:?}: its canonical name {:?} does not parse",
                resolved.canonical
            );
        }
    });
}

const OCI_KEYS: &[&str] = &[
    "schemaVersion",
    "mediaType",
    "manifests",
    "layers",
    "config",
    "digest",
    "size",
    "platform",
    "os",
    "architecture",
    "variant",
    "annotations",
    "urls",
    "artifactType",
    "subject",
    "Env",
    "WorkingDir",
    "Entrypoint",
    "Cmd",
    "User",
    "rootfs",
    "diff_ids",
    "org.opencontainers.image.ref.name",
];
const OCI_TOKENS: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "sha256:",
    HEX,
    "linux",
    "amd64",
    "arm64",
    "PATH=/bin",
];

#[test]
fn fuzz_oci_documents() {
    check("oci_documents", json_bytes(OCI_KEYS, OCI_TOKENS), |bytes| {
        if let Ok(index) = serde_json::from_slice::<ImageIndex>(&bytes) {
            for d in index.manifests() {
                let _ = crate::layout::matches_host(d);
                let _ = crate::blob::sha256_hex(Path::new("/layout"), d);
            }
        }
        if let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&bytes) {
            for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
                let _ = crate::blob::sha256_hex(Path::new("/layout"), d);
            }
        }
    });
}

// ---- layer tar streams -------------------------------------------------------------------

/// Marks a path that must stay outside the extraction root; replaced per case by an absolute
/// path next to the root.
const OUT: &str = "@OUT@";

const SEGMENTS: &[&str] = &[
    "a",
    "b",
    "dir",
    "etc",
    "passwd",
    "l",
    "..",
    ".",
    "",
    ".wh.a",
    ".wh.dir",
    ".wh..wh..opq",
    ".wh..wh.plnk",
    ".wh.",
    ".wh..",
    OUT,
    "é",
    LONG,
];

fn tar_path() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec(prop::sample::select(SEGMENTS), 1..5),
        any::<bool>(),
    )
        .prop_map(|(absolute, segs, trailing)| {
            let mut p = segs.join("/");
            if absolute {
                p.insert(0, '/');
            }
            if trailing {
                p.push('/');
            }
            p
        })
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    kind: u8,
    link: Option<String>,
    data: Vec<u8>,
    mode: u32,
    owner: (u64, u64),
    size: Option<u64>,
    device: (u32, u32),
    pax: Vec<(&'static str, String)>,
    bad_checksum: bool,
}

const PAX_KEYS: &[&str] = &[
    "path",
    "linkpath",
    "size",
    "mtime",
    "uid",
    "gid",
    "uname",
    "SCHILY.xattr.user.a",
    "SCHILY.xattr.trusted.overlay.opaque",
    "SCHILY.xattr.security.capability",
    "LIBARCHIVE.xattr.user.b",
    "GNU.sparse.size",
    "GNU.sparse.map",
    "GNU.sparse.major",
];

fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![
        4 => prop::sample::select(&b"0\x0012345677LKxgS"[..]),
        1 => any::<u8>(),
    ];
    let pax_value = prop_oneof![
        tar_path(),
        "-?[0-9]{1,20}(\\.[0-9]{0,12})?",
        soup(SEGMENTS, 3),
    ];
    (
        (tar_path(), kind, prop::option::of(tar_path())),
        prop::collection::vec(any::<u8>(), 0..48),
        (any::<u32>(), (0u64..70000, 0u64..70000)),
        prop::option::weighted(
            0.1,
            prop_oneof![0u64..2048, Just(u64::MAX >> 2), any::<u64>()],
        ),
        (0u32..4, 0u32..4),
        prop::collection::vec((prop::sample::select(PAX_KEYS), pax_value), 0..3),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |((path, kind, link), data, (mode, owner), size, device, pax, bad_checksum)| Entry {
                path,
                kind,
                link,
                data,
                mode,
                owner,
                size,
                device,
                pax,
                bad_checksum,
            },
        )
}

/// A layer: entries, then raw byte edits of the archive (`(at, byte)`) and how it ends.
#[derive(Debug, Clone)]
struct LayerCase {
    entries: Vec<Entry>,
    edits: Vec<(usize, u8)>,
    cut: Option<usize>,
    gzip: bool,
}

fn layer_case() -> impl Strategy<Value = LayerCase> {
    (
        prop::collection::vec(entry(), 0..10),
        prop_oneof![
            4 => Just(Vec::new()),
            1 => prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ],
        prop::option::weighted(0.1, any::<usize>()),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(entries, edits, cut, gzip)| LayerCase {
            entries,
            edits,
            cut,
            gzip,
        })
}

fn pax_records(records: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}").len() + body.len() != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    out
}

fn append_raw(b: &mut tar::Builder<Vec<u8>>, kind: u8, name: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(data.len() as u64);
    let field = &mut h.as_old_mut().name;
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
    h.set_cksum();
    b.append(&h, data).expect("append to a Vec");
}

/// The archive bytes of `case`, with [`OUT`] replaced by `out`.
fn layer_bytes(case: &LayerCase, out: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in &case.entries {
        let path = e.path.replace(OUT, out);
        let link = e.link.as_ref().map(|l| l.replace(OUT, out));
        if !e.pax.is_empty() {
            let pax: Vec<(&str, String)> = e
                .pax
                .iter()
                .map(|(k, v)| (*k, v.replace(OUT, out)))
                .collect();
            append_raw(&mut b, b'x', b"pax", &pax_records(&pax));
        }
        if path.len() > 100 {
            append_raw(
                &mut b,
                b'L',
                b"././@LongLink",
                &[path.as_bytes(), b"\0"].concat(),
            );
        }
        if let Some(l) = link.as_ref().filter(|l| l.len() > 100) {
            append_raw(
                &mut b,
                b'K',
                b"././@LongLink",
                &[l.as_bytes(), b"\0"].concat(),
            );
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(e.kind));
        h.set_mode(e.mode);
        h.set_uid(e.owner.0);
        h.set_gid(e.owner.1);
        h.set_mtime(1_700_000_000);
        h.set_size(e.size.unwrap_or(e.data.len() as u64));
        let _ = h.set_device_major(e.device.0);
        let _ = h.set_device_minor(e.device.1);
        let field = &mut h.as_old_mut().name;
        let n = path.len().min(field.len());
        field[..n].copy_from_slice(&path.as_bytes()[..n]);
        if let Some(l) = &link {
            let field = &mut h.as_old_mut().linkname;
            let n = l.len().min(field.len());
            field[..n].copy_from_slice(&l.as_bytes()[..n]);
        }
        h.set_cksum();
        if e.bad_checksum {
            h.as_old_mut().cksum[0] ^= 1;
        }
        b.append(&h, e.data.as_slice()).expect("append to a Vec");
    }
    let mut bytes = b.into_inner().expect("finish a Vec");
    for &(at, byte) in &case.edits {
        let n = bytes.len();
        if n > 0 {
            bytes[at % n] = byte;
        }
    }
    if let Some(cut) = case.cut {
        let n = bytes.len();
        bytes.truncate(cut % (n + 1));
    }
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("write to a Vec");
    gz.finish().expect("finish a Vec")
}

/// The names in directory `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .expect("read the case directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// Small caps, so that a case cannot fill the disk.
const LIMITS: UnpackLimits = UnpackLimits {
    layer_mb: 4,
    image_mb: 8,
};

#[test]
fn fuzz_layer_tars() {
    check_on_disk("layer_tars", layer_case(), |case| {
        // base/l1/l2/root: `..` climbing out of root, and absolute paths naming base/l1/l2/out,
        // would leave something beside `root`, `l2` or `l1`.
        let base = tempfile::tempdir().expect("tempdir");
        let l2 = base.path().join("l1/l2");
        let root = l2.join("root");
        std::fs::create_dir_all(&root).expect("create root");
        let out = l2.join("out");
        let bytes = layer_bytes(&case, &out.to_string_lossy());
        let fd = crate::staging::open_dir(&root).expect("open root");
        let mut budget = Budget::new(LIMITS);
        let _ = if case.gzip {
            crate::extract::extract(
                flate2::read::MultiGzDecoder::new(gzip(&bytes).as_slice()),
                std::os::fd::AsFd::as_fd(&fd),
                &root,
                "sha256:fuzz",
                &mut budget,
            )
        } else {
            crate::extract::extract(
                bytes.as_slice(),
                std::os::fd::AsFd::as_fd(&fd),
                &root,
                "sha256:fuzz",
                &mut budget,
            )
        };
        assert_eq!(names(base.path()), ["l1"], "something escaped to the base");
        assert_eq!(
            names(&base.path().join("l1")),
            ["l2"],
            "something escaped to l1"
        );
        assert_eq!(names(&l2), ["root"], "something escaped beside the root");
    });
}

// ---- whole layouts -----------------------------------------------------------------------

/// A layout: its config, layers and the documents that name them, each possibly wrong.
#[derive(Debug, Clone)]
struct LayoutCase {
    config: Value,
    config_type: &'static str,
    layers: Vec<(LayerCase, &'static str)>,
    manifest_type: &'static str,
    /// Wrap the manifest in an index (platform `(os, arch)`) this many times.
    nesting: Vec<(&'static str, &'static str)>,
    index_tag: Option<&'static str>,
    tag: Option<&'static str>,
    wrong_digest: Option<usize>,
    wrong_size: Option<(usize, i64)>,
    index_edits: Vec<u8>,
    extra_entry: bool,
}

const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
    "application/octet-stream",
];
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "text/plain",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/json",
];
const PLATFORMS: &[(&str, &str)] = &[("linux", "amd64"), ("linux", "arm64"), ("windows", "amd64")];

fn layout_case() -> impl Strategy<Value = LayoutCase> {
    let config = prop_oneof![
        json(OCI_KEYS, OCI_TOKENS),
        Just(json!({"config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/w"}})),
    ];
    (
        (config, prop::sample::select(CONFIG_TYPES)),
        prop::collection::vec((layer_case(), prop::sample::select(LAYER_TYPES)), 0..3),
        prop::sample::select(MANIFEST_TYPES),
        prop::collection::vec(prop::sample::select(PLATFORMS), 0..3),
        (
            prop::option::of(prop::sample::select(&["latest", "v1"][..])),
            prop::option::of(prop::sample::select(&["latest", "v2"][..])),
        ),
        prop::option::weighted(0.1, any::<usize>()),
        prop::option::weighted(0.1, (any::<usize>(), -2i64..3)),
        prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..4)],
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(
                (config, config_type),
                layers,
                manifest_type,
                nesting,
                (index_tag, tag),
                wrong_digest,
                wrong_size,
                index_edits,
                extra_entry,
            )| LayoutCase {
                config,
                config_type,
                layers,
                manifest_type,
                nesting,
                index_tag,
                tag,
                wrong_digest,
                wrong_size,
                index_edits,
                extra_entry,
            },
        )
}

/// Writes blob number `n` of a case; its descriptor, with the digest or the size wrong when
/// the case says so for that number.
fn put(dir: &Path, media_type: &str, bytes: &[u8], n: &mut usize, case: &LayoutCase) -> Value {
    let digest = crate::blob::digest_of(bytes);
    std::fs::write(dir.join("blobs/sha256").join(&digest[7..]), bytes).expect("write blob");
    let mut size = bytes.len() as i64;
    let mut digest_v = json!(digest);
    if case.wrong_digest.is_some_and(|w| w % 8 == *n) {
        digest_v = json!(format!("sha256:{HEX}"));
    }
    if let Some((w, delta)) = case.wrong_size
        && w % 8 == *n
    {
        size += delta;
    }
    *n += 1;
    json!({ "mediaType": media_type, "digest": digest_v, "size": size })
}

#[test]
fn fuzz_oci_layouts() {
    check_on_disk("oci_layouts", layout_case(), |case| {
        let base = tempfile::tempdir().expect("tempdir");
        let layout = base.path().join("layout");
        let store = base.path().join("store");
        std::fs::create_dir_all(layout.join("blobs/sha256")).expect("create layout");
        std::fs::create_dir_all(&store).expect("create store");
        std::fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("write oci-layout");
        let mut n = 0;
        let config = put(
            &layout,
            case.config_type,
            case.config.to_string().as_bytes(),
            &mut n,
            &case,
        );
        let mut layers = Vec::new();
        for (layer, media_type) in &case.layers {
            let mut bytes = layer_bytes(layer, "/nonexistent-fuzz-out");
            if media_type.ends_with("gzip") {
                bytes = gzip(&bytes);
            }
            layers.push(put(&layout, media_type, &bytes, &mut n, &case));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": case.manifest_type,
            "config": config,
            "layers": layers,
        });
        let mut desc = put(
            &layout,
            case.manifest_type,
            manifest.to_string().as_bytes(),
            &mut n,
            &case,
        );
        for (os, arch) in &case.nesting {
            desc["platform"] = json!({ "os": os, "architecture": arch });
            let index = json!({ "schemaVersion": 2, "manifests": [desc] });
            desc = put(
                &layout,
                "application/vnd.oci.image.index.v1+json",
                index.to_string().as_bytes(),
                &mut n,
                &case,
            );
        }
        if let Some(tag) = case.index_tag {
            desc["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        }
        let mut entries = vec![desc.clone()];
        if case.extra_entry {
            entries.push(desc);
        }
        let mut index = json!({ "schemaVersion": 2, "manifests": entries })
            .to_string()
            .into_bytes();
        for (i, b) in case.index_edits.iter().enumerate() {
            let len = index.len();
            index[(usize::from(*b) * 7 + i) % len] = *b;
        }
        std::fs::write(layout.join("index.json"), index).expect("write index");

        if let Ok(rootfs) = crate::layout::resolve(&store, &layout, case.tag, LIMITS) {
            for dir in &rootfs.lower_dirs {
                assert!(
                    dir.starts_with(&store),
                    "a layer outside the store: {dir:?}"
                );
            }
        }
        assert_eq!(
            names(base.path()),
            ["layout", "store"],
            "something escaped the store"
        );
    });
}
