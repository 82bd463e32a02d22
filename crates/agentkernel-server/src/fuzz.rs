//! Fuzz tests of what an HTTP client sends: every request body type read from hostile JSON,
//! then put through the checks the handlers make before the engine sees it (durations, counts,
//! `KEY=VALUE` entries, unsupported fields); and query strings read as the handlers read them
//! (`?label=key:value` filters, `?stream=`, `?force=`). Each input must give a value or a 400,
//! never a panic, within the time limit (see `fuzz_support`).

#[path = "../../agentkernel-core/src/fuzz_support.rs"]
mod fuzz_support;

use crate::routes::parse_env;
use crate::routes::sandboxes::label_filter;
use crate::routes::snapshots::DeleteQuery;
use crate::types::*;
use crate::{bounds, extract::ApiQuery};
use fuzz_support::{check, json_bytes, soup};

const KEYS: &[&str] = &[
    "image",
    "command",
    "profile",
    "backend",
    "config",
    "cwd",
    "no_network",
    "compatibility_mode",
    "allow_hosts",
    "deny_hosts",
    "secrets",
    "env",
    "workdir",
    "memory_mb",
    "vcpus",
    "disk_mb",
    "host_env",
    "timeout_ms",
    "encoding",
    "output_encoding",
    "commands",
    "name",
    "ttl",
    "labels",
    "volumes",
    "source_url",
    "description",
    "network",
    "allow",
    "deny",
    "sudo",
    "path",
    "content",
    "files",
    "by",
    "fast",
    "output",
    "stream",
    "force",
];
const TOKENS: &[&str] = &[
    "python:3.12-alpine",
    "sh",
    "-c",
    "A=b",
    "=",
    "PATH",
    "1h",
    "30d",
    "999999d",
    "0s",
    "-1s",
    "1e9h",
    "base64",
    "utf8",
    "../",
    "/etc/passwd",
    "\0",
    "moderate",
    "native",
    "a:b",
];

fn body_checks(bytes: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<RunRequest>(bytes) {
        let _ = agentkernel_engine::require_command(&r.command);
        let _ = parse_env(r.env.as_ref());
    }
    if let Ok(b) = serde_json::from_slice::<BatchRequest>(bytes) {
        let _ = bounds::count("commands", b.commands.len(), bounds::MAX_BATCH);
    }
    if let Ok(c) = serde_json::from_slice::<CreateRequest>(bytes) {
        if let Some(url) = &c.source_url {
            let _ = agentkernel_core::source::Source::new(url, c.source_ref.as_deref());
        }
        for v in c.volumes.iter().flatten() {
            let _ = agentkernel_core::volume::parse_volume(v);
        }
        if let Some(t) = &c.ttl
            && let Ok(d) = bounds::duration("ttl", t)
        {
            assert!(d <= bounds::MAX_TTL, "ttl {t:?} is {d:?}, over the bound");
        }
        let _ = parse_env(c.env.as_ref());
    }
    let _ = serde_json::from_slice::<PatchRequest>(bytes);
    if let Ok(e) = serde_json::from_slice::<ExecRequest>(bytes) {
        let _ = agentkernel_engine::require_command(&e.command);
        let _ = parse_env(e.env.as_ref());
    }
    let _ = serde_json::from_slice::<WriteFileRequest>(bytes);
    if let Ok(f) = serde_json::from_slice::<WriteFilesRequest>(bytes) {
        let _ = bounds::count("files", f.files.len(), bounds::MAX_FILES);
    }
    if let Ok(x) = serde_json::from_slice::<ExtendRequest>(bytes)
        && let Ok(d) = bounds::duration("by", &x.by)
    {
        assert!(
            d <= bounds::MAX_TTL,
            "by {:?} is {d:?}, over the bound",
            x.by
        );
    }
    let _ = serde_json::from_slice::<SnapshotRequest>(bytes);
}

#[test]
fn fuzz_http_request_bodies() {
    check("http_request_bodies", json_bytes(KEYS, TOKENS), |bytes| {
        body_checks(&bytes);
    });
}

const QUERY_TOKENS: &[&str] = &[
    "label", "=", "&", ":", "%", "%3A", "%26", "%3D", "%00", "%ff", "%e9", "+", "stream", "stdout",
    "force", "true", "1", "?", "#", "[", "]", "key", "value", ";",
];

async fn query<T: serde::de::DeserializeOwned>(q: &str) -> Option<T> {
    let uri = format!("/x?{q}").parse::<axum::http::Uri>().ok()?;
    let (mut parts, ()) = axum::http::Request::builder()
        .uri(uri)
        .body(())
        .ok()?
        .into_parts();
    use axum::extract::FromRequestParts;
    ApiQuery::<T>::from_request_parts(&mut parts, &())
        .await
        .ok()
        .map(|ApiQuery(v)| v)
}

#[test]
fn fuzz_http_query_strings() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    check("http_query_strings", soup(QUERY_TOKENS, 16), |q| {
        rt.block_on(async {
            if let Some(pairs) = query::<Vec<(String, String)>>(&q).await
                && let Ok(labels) = label_filter(pairs)
            {
                assert!(labels.len() <= bounds::MAX_LABELS);
                assert!(labels.iter().all(|(k, _)| !k.is_empty()));
            }
            let _ = query::<LogsQuery>(&q).await;
            let _ = query::<DeleteQuery>(&q).await;
        });
    });
}
