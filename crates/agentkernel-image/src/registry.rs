//! Registry images (`python:3.12-alpine`, `ghcr.io/org/img:tag`, `name@sha256:…`).
//!
//! A pulled image lives in the store as an OCI layout: its manifest, config and layers are
//! blobs under `blobs/sha256/` of the store root (so each is kept once, whichever images share
//! it), and `refs/` remembers which manifest a reference last resolved to. Resolving a reference
//! that has been pulled touches no network, as `docker run` uses a local image when it has one;
//! `pull` (the `images pull` command) asks the registry again.

use crate::pull::{self, PullTarget};
use crate::record;
use crate::{ImageError, Rootfs, UnpackLimits};
use oci_client::Reference;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// Where Docker Hub's images are fetched from when no mirror is set.
const DOCKER_HUB: &str = "docker.io";

/// Registry settings: the environment's `AGENTKERNEL_REGISTRY_MIRROR` over the config's
/// `[images]` section.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// Tried in order for Docker Hub (`docker.io`) images before Docker Hub itself, as
    /// Docker's `registry-mirrors` are: `host[:port]`, with whether it speaks plain HTTP.
    pub mirrors: Vec<(String, bool)>,
    /// Registries that may be reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
}

impl RegistrySettings {
    /// `AGENTKERNEL_REGISTRY_MIRROR` (`http://host:port`, `https://host`, or `host[:port]`),
    /// else `mirrors` (`[images] mirrors`); `insecure` is `[images] insecure_registries`.
    pub fn new(mirrors: &[String], insecure: &[String]) -> Result<RegistrySettings, ImageError> {
        let env = std::env::var("AGENTKERNEL_REGISTRY_MIRROR")
            .ok()
            .filter(|v| !v.is_empty());
        let mirrors = match env {
            Some(value) => vec![parse_mirror(&value)?],
            None => mirrors
                .iter()
                .map(|m| parse_mirror(m))
                .collect::<Result<_, _>>()?,
        };
        Ok(RegistrySettings {
            mirrors,
            insecure: insecure.to_vec(),
        })
    }
}

impl RegistrySettings {
    /// Where Docker Hub names are fetched from, in the order pulls try them: for each, a label
    /// (`http://127.0.0.1:5000`, `docker.io`) and the `host:port` to connect to.
    pub fn docker_hub_sources(&self) -> Vec<(String, String)> {
        let mut sources: Vec<(String, String)> = self
            .mirrors
            .iter()
            .map(|(host, plain)| {
                let scheme = if *plain { "http" } else { "https" };
                let has_port = host
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()));
                let addr = if has_port {
                    host.clone()
                } else {
                    format!("{host}:{}", if *plain { 80 } else { 443 })
                };
                (format!("{scheme}://{host}"), addr)
            })
            .collect();
        sources.push((
            DOCKER_HUB.to_string(),
            "registry-1.docker.io:443".to_string(),
        ));
        sources
    }
}

fn parse_mirror(value: &str) -> Result<(String, bool), ImageError> {
    let bad = |reason: &str| ImageError::BadMirror {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let (host, plain_http) = match value.split_once("://") {
        Some(("http", rest)) => (rest, true),
        Some(("https", rest)) => (rest, false),
        Some(_) => return Err(bad("use http:// or https://")),
        None => (value, false),
    };
    let host = host.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(bad(
            "give a registry host, e.g. http://127.0.0.1:5000 (a path is not supported)",
        ));
    }
    Ok((host.to_string(), plain_http))
}

/// Whether `host[:port]` is a loopback address, where plain HTTP is allowed without asking.
fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How a store pulls: where from, the unpack caps, whether to draw progress.
pub(crate) struct PullSettings<'a> {
    pub(crate) registries: &'a RegistrySettings,
    pub(crate) limits: UnpackLimits,
    pub(crate) progress: bool,
}

/// What a reference means: the name it is known by and where it is fetched from.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// `docker.io/library/python:3.12-alpine`: the key of `refs/`.
    pub(crate) canonical: String,
    /// Where to fetch it from, in order: the mirrors (Docker Hub names), then its registry.
    pub(crate) targets: Vec<PullTarget>,
}

/// A reference split the way Docker normalises names: no registry means Docker Hub, and a
/// one-component Docker Hub name lives under `library/`. Hand-written rather than
/// `oci_client::Reference::from_str`, whose regular expression costs ~25 ms to build in every
/// process, on the path of every `run` of a pulled image; the syntax was already checked by
/// `ImageRef::parse`.
#[derive(Debug, PartialEq, Eq)]
struct Name {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

fn split_name(reference: &str) -> Result<Name, ImageError> {
    let bad = |reason: &str| ImageError::BadReference {
        reference: reference.to_string(),
        reason: reason.to_string(),
    };
    let (name_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d.to_string())),
        None => (reference, None),
    };
    if let Some(d) = &digest {
        let hex = d
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("only sha256 digests are supported"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("a sha256 digest is 64 lowercase hex digits"));
        }
    }
    let last_slash = name_tag.rfind('/');
    let (name, tag) = match name_tag.rfind(':') {
        Some(i) if last_slash.is_none_or(|s| i > s) => {
            (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
        }
        _ => (name_tag, None),
    };
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let registry = match registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => registry,
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    if repository.is_empty() {
        return Err(bad("it names no repository"));
    }
    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_string()),
        _ => tag,
    };
    Ok(Name {
        registry,
        repository,
        tag,
        digest,
    })
}

pub(crate) fn parse(reference: &str, settings: &RegistrySettings) -> Result<Resolved, ImageError> {
    let name = split_name(reference)?;
    let mut canonical = format!("{}/{}", name.registry, name.repository);
    if let Some(t) = &name.tag {
        canonical.push(':');
        canonical.push_str(t);
    }
    if let Some(d) = &name.digest {
        canonical.push('@');
        canonical.push_str(d);
    }
    // Docker Hub names go to each mirror in turn, then to Docker Hub itself.
    let mut sources: Vec<(String, bool)> = Vec::new();
    if name.registry == DOCKER_HUB {
        sources.extend(settings.mirrors.iter().cloned());
    }
    sources.push((name.registry.clone(), false));
    let mut targets = Vec::with_capacity(sources.len());
    for (fetch_from, plain_http) in sources {
        let insecure_listed = settings.insecure.contains(&fetch_from);
        if plain_http && !is_loopback(&fetch_from) && !insecure_listed {
            return Err(ImageError::InsecureRegistry {
                registry: fetch_from,
            });
        }
        let plain_http = plain_http
            || insecure_listed
            || (is_loopback(&fetch_from) && fetch_from == name.registry);
        let fetch = match (&name.digest, &name.tag) {
            (Some(d), _) => {
                Reference::with_digest(fetch_from.clone(), name.repository.clone(), d.clone())
            }
            (None, t) => Reference::with_tag(
                fetch_from.clone(),
                name.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".to_string()),
            ),
        };
        targets.push(PullTarget {
            reference: fetch,
            registry: fetch_from,
            plain_http,
            original: reference.to_string(),
        });
    }
    Ok(Resolved { canonical, targets })
}

/// The image for `reference`: from the store when it has been pulled, else pulled now.
pub(crate) fn resolve(
    store: &Path,
    reference: &str,
    settings: &PullSettings<'_>,
) -> Result<Rootfs, ImageError> {
    let resolved = parse(reference, settings.registries)?;
    if let Some(hex) = load_ref(store, &resolved.canonical)
        && let Some(rootfs) = record::load(store, &hex)
    {
        return Ok(rootfs);
    }
    // A digest names content, whichever repository it came from: an image already prepared
    // under that manifest digest is the one asked for (`receipt replay` pins images so).
    if let Some((_, digest)) = resolved.canonical.rsplit_once("@sha256:")
        && let Some(rootfs) = record::load(store, digest)
    {
        return Ok(rootfs);
    }
    pull_resolved(store, &resolved, settings)
}

/// Pulls `reference` again from its registry (or mirror), even when it is in the store.
pub(crate) fn pull(
    store: &Path,
    reference: &str,
    settings: &PullSettings<'_>,
) -> Result<Rootfs, ImageError> {
    pull_resolved(store, &parse(reference, settings.registries)?, settings)
}

fn pull_resolved(
    store: &Path,
    resolved: &Resolved,
    settings: &PullSettings<'_>,
) -> Result<Rootfs, ImageError> {
    // The first source that delivers wins; when none does, the first one's error is the one
    // to show (a configured mirror says more than Docker Hub behind it).
    let mut first_error = None;
    let mut fetched = None;
    for target in &resolved.targets {
        match pull::fetch(store, target, settings.progress) {
            Ok(manifest) => {
                fetched = Some(manifest);
                break;
            }
            // Asked to stop: no other source either.
            Err(e @ ImageError::Interrupted { .. }) => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let manifest = match (fetched, first_error) {
        (Some(m), _) => m,
        (None, Some(e)) => return Err(e),
        (None, None) => {
            return Err(ImageError::BadReference {
                reference: resolved.canonical.clone(),
                reason: "no registry to pull it from".to_string(),
            });
        }
    };
    let blobs = crate::blob::LayoutDir::open(store)?;
    let rootfs = crate::layout::prepare(store, &blobs, &manifest, settings.limits)?;
    let hex = crate::blob::sha256_hex(store, &manifest)?;
    save_ref(store, &resolved.canonical, hex)?;
    Ok(rootfs)
}

#[derive(Serialize, Deserialize)]
pub(crate) struct RefEntry {
    pub(crate) reference: String,
    pub(crate) manifest: String,
}

/// Every readable entry of `refs/`, with its file.
pub(crate) fn ref_entries(store: &Path) -> Vec<(PathBuf, RefEntry)> {
    let Ok(entries) = std::fs::read_dir(store.join("refs")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| {
            let entry = serde_json::from_slice::<RefEntry>(&std::fs::read(e.path()).ok()?).ok()?;
            Some((e.path(), entry))
        })
        .collect()
}

/// The name a reference is stored under: `python` → `docker.io/library/python:latest`.
pub fn canonical_name(reference: &str) -> Result<String, ImageError> {
    Ok(parse(reference, &RegistrySettings::default())?.canonical)
}

pub(crate) fn ref_path(store: &Path, canonical: &str) -> PathBuf {
    let key = hex::encode(Sha256::digest(canonical.as_bytes()));
    store.join("refs").join(format!("{key}.json"))
}

/// The manifest hex a reference resolved to when it was last pulled.
fn load_ref(store: &Path, canonical: &str) -> Option<String> {
    let entry: RefEntry =
        serde_json::from_slice(&std::fs::read(ref_path(store, canonical)).ok()?).ok()?;
    let hex = entry.manifest.strip_prefix("sha256:")?;
    (entry.reference == canonical && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_string())
}

fn save_ref(store: &Path, canonical: &str, hex: &str) -> Result<(), ImageError> {
    let path = ref_path(store, canonical);
    let dir = store.join("refs");
    std::fs::create_dir_all(&dir).map_err(ImageError::io("create", &dir))?;
    let entry = RefEntry {
        reference: canonical.to_string(),
        manifest: format!("sha256:{hex}"),
    };
    let bytes = serde_json::to_vec(&entry).map_err(|e| ImageError::Io {
        action: "encode image reference",
        path: path.clone(),
        source: e.into(),
    })?;
    crate::staging::write_file(&path, &bytes, "write image reference")
}

/// A pulled image as `images list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageSummary {
    /// `docker.io/library/python:3.12-alpine`.
    pub reference: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest: String,
    pub layers: usize,
    /// Compressed size of its layers as stored (shared layers count in every image).
    pub size_bytes: u64,
}

/// Every reference pulled into the store whose image is still prepared.
pub(crate) fn list(store: &Path, all: bool) -> Vec<ImageSummary> {
    let summary = |reference: String, hex: &str| -> Option<ImageSummary> {
        let rootfs = record::load(store, hex)?;
        // Stored blob sizes (layers of local layouts have none here: they count as 0).
        let size_bytes = rootfs
            .lower_dirs
            .iter()
            .filter_map(|d| {
                d.file_name()
                    .map(|n| n.to_string_lossy().replace("sha256-", ""))
            })
            .filter_map(|layer| std::fs::metadata(crate::blob::blob_path(store, &layer)).ok())
            .map(|m| m.len())
            .sum();
        Some(ImageSummary {
            reference,
            manifest: format!("sha256:{hex}"),
            layers: rootfs.lower_dirs.len(),
            size_bytes,
        })
    };
    let mut out: Vec<ImageSummary> = ref_entries(store)
        .into_iter()
        .filter_map(|(_, entry)| summary(entry.reference, entry.manifest.strip_prefix("sha256:")?))
        .collect();
    out.sort_by(|a, b| a.reference.cmp(&b.reference));
    if all {
        // Prepared images no reference names: unpacked from `oci:` layouts, or left by `rm`.
        let named: std::collections::HashSet<String> =
            out.iter().map(|i| i.manifest.clone()).collect();
        if let Ok(entries) = std::fs::read_dir(store.join("oci")) {
            let mut unnamed: Vec<ImageSummary> = entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".json")
                        .map(str::to_string)
                })
                .filter(|hex| !hex.starts_with('.') && !named.contains(&format!("sha256:{hex}")))
                .filter_map(|hex| summary("<none>".to_string(), &hex))
                .collect();
            unnamed.sort_by(|a, b| a.manifest.cmp(&b.manifest));
            out.extend(unnamed);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(m: &str) -> RegistrySettings {
        RegistrySettings {
            mirrors: vec![parse_mirror(m).expect("mirror")],
            insecure: Vec::new(),
        }
    }

    #[test]
    fn docker_hub_names_go_through_the_mirror() {
        let r = parse("python:3.12-alpine", &mirror("http://127.0.0.1:5000")).expect("parse");
        assert_eq!(r.canonical, "docker.io/library/python:3.12-alpine");
        let order: Vec<&str> = r.targets.iter().map(|t| t.registry.as_str()).collect();
        assert_eq!(
            order,
            ["127.0.0.1:5000", "docker.io"],
            "the mirror, then Docker Hub"
        );
        assert_eq!(r.targets[0].reference.repository(), "library/python");
        assert!(r.targets[0].plain_http && !r.targets[1].plain_http);
        let r = parse("ghcr.io/org/img:1", &mirror("http://127.0.0.1:5000")).expect("parse");
        assert_eq!(r.targets.len(), 1, "only Docker Hub is mirrored");
        assert_eq!(r.targets[0].registry, "ghcr.io");
        assert!(!r.targets[0].plain_http);
        let two = RegistrySettings {
            mirrors: vec![
                parse_mirror("http://127.0.0.1:1").expect("mirror"),
                parse_mirror("https://m.example").expect("mirror"),
            ],
            insecure: Vec::new(),
        };
        let r = parse("busybox", &two).expect("parse");
        let order: Vec<&str> = r.targets.iter().map(|t| t.registry.as_str()).collect();
        assert_eq!(
            order,
            ["127.0.0.1:1", "m.example", "docker.io"],
            "mirrors in order, then Docker Hub"
        );
    }

    #[test]
    fn plain_http_only_for_loopback_or_listed_registries() {
        assert!(matches!(
            parse("alpine", &mirror("http://10.1.2.3:5000")),
            Err(ImageError::InsecureRegistry { .. })
        ));
        let mut s = mirror("http://10.1.2.3:5000");
        s.insecure.push("10.1.2.3:5000".into());
        assert!(parse("alpine", &s).expect("listed").targets[0].plain_http);
        assert!(
            parse("localhost:5000/x:1", &RegistrySettings::default())
                .expect("loopback")
                .targets[0]
                .plain_http
        );
        assert!(parse_mirror("ftp://x").is_err() && parse_mirror("http://h/path").is_err());
    }

    #[test]
    fn names_are_normalised_as_docker_does() {
        let n = |r: &str| split_name(r).expect(r);
        assert_eq!(n("python").repository, "library/python");
        assert_eq!(n("python").tag.as_deref(), Some("latest"));
        assert_eq!(n("org/img:1").repository, "org/img");
        assert_eq!(n("org/img:1").registry, "docker.io");
        assert_eq!(n("ghcr.io/org/img").registry, "ghcr.io");
        assert_eq!(n("localhost:5000/img:2").registry, "localhost:5000");
        assert_eq!(n("localhost:5000/img:2").tag.as_deref(), Some("2"));
        assert_eq!(n("index.docker.io/busybox").repository, "library/busybox");
        let d = format!("sha256:{}", "0".repeat(64));
        let with_digest = n(&format!("127.0.0.1:5000/x@{d}"));
        assert_eq!(
            (with_digest.tag, with_digest.digest.as_deref()),
            (None, Some(d.as_str()))
        );
        assert!(split_name("x@sha256:zz").is_err());
    }

    #[test]
    fn digests_and_default_tags() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("busybox@{d}"), &RegistrySettings::default()).expect("parse");
        assert_eq!(r.targets[0].reference.digest(), Some(d.as_str()));
        let r = parse("busybox", &RegistrySettings::default()).expect("parse");
        assert_eq!(r.targets[0].reference.tag(), Some("latest"));
        assert_eq!(r.canonical, "docker.io/library/busybox:latest");
    }
}
