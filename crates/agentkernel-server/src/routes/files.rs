//! Files of a running sandbox. A path without a leading `/` is taken from the sandbox's
//! working directory (`/sandboxes/x/files/a.txt` is `/workspace/a.txt`); an absolute one is
//! sent with a second slash (`/sandboxes/x/files//etc/hostname`). Either way the path is
//! resolved inside the sandbox's root: `..` and symlinks cannot lead out of it.

use super::blocking;
use crate::bounds;
use crate::envelope::{ApiError, ErrorAnswers, Ok, ok};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::types::{
    FileContent, FileRemoved, FileWritten, FilesWritten, WriteFileRequest, WriteFilesRequest,
};
use axum::Json;
use axum::extract::State;
use base64::Engine as _;

/// Reads a file: UTF-8 text as is, anything else base64-encoded.
#[utoipa::path(get, path = "/sandboxes/{name}/files/{path}", tag = "files",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name"),
           ("path" = String, Path, description = "File path inside the sandbox")),
    responses((status = 200, body = Ok<FileContent>), ErrorAnswers))]
pub async fn read(
    State(st): State<AppState>,
    ApiPath((name, path)): ApiPath<(String, String)>,
) -> Result<Json<Ok<FileContent>>, ApiError> {
    let data = blocking(&st, move |engine| engine.read_file(&name, &path)).await?;
    let size = data.len() as u64;
    let (content, encoding) = match String::from_utf8(data) {
        Result::Ok(text) => (text, "utf8"),
        Err(e) => (
            base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
            "base64",
        ),
    };
    Ok(ok(FileContent {
        content,
        encoding: encoding.to_string(),
        size,
    }))
}

/// Creates or replaces a file (and missing parent directories).
#[utoipa::path(put, path = "/sandboxes/{name}/files/{path}", tag = "files", request_body = WriteFileRequest,
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name"),
           ("path" = String, Path, description = "File path inside the sandbox")),
    responses((status = 200, body = Ok<FileWritten>), ErrorAnswers))]
pub async fn write(
    State(st): State<AppState>,
    ApiPath((name, path)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<WriteFileRequest>,
) -> Result<Json<Ok<FileWritten>>, ApiError> {
    let data = decode(&req.content, req.encoding.as_deref())?;
    let size = data.len() as u64;
    let path = blocking(&st, move |engine| engine.write_file(&name, &path, &data)).await?;
    Ok(ok(FileWritten { path, size }))
}

/// Removes a file, a symlink or an empty directory.
#[utoipa::path(delete, path = "/sandboxes/{name}/files/{path}", tag = "files",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name"),
           ("path" = String, Path, description = "File path inside the sandbox")),
    responses((status = 200, body = Ok<FileRemoved>), ErrorAnswers))]
pub async fn remove(
    State(st): State<AppState>,
    ApiPath((name, path)): ApiPath<(String, String)>,
) -> Result<Json<Ok<FileRemoved>>, ApiError> {
    let shown = path.clone();
    blocking(&st, move |engine| engine.remove_file(&name, &path)).await?;
    Ok(ok(FileRemoved {
        path: shown,
        removed: true,
    }))
}

/// Writes several UTF-8 files at once. Every path is checked before anything is written.
#[utoipa::path(post, path = "/sandboxes/{name}/files", tag = "files", request_body = WriteFilesRequest,
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, body = Ok<FilesWritten>), ErrorAnswers))]
pub async fn write_many(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<WriteFilesRequest>,
) -> Result<Json<Ok<FilesWritten>>, ApiError> {
    bounds::count("files", req.files.len(), bounds::MAX_FILES)?;
    let paths = blocking(&st, move |engine| {
        let files: Vec<(&str, &[u8])> = req
            .files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_bytes()))
            .collect();
        engine.write_files(&name, &files)
    })
    .await?;
    Ok(ok(FilesWritten {
        written: paths.len(),
        paths,
    }))
}

fn decode(content: &str, encoding: Option<&str>) -> Result<Vec<u8>, ApiError> {
    match encoding.unwrap_or("utf8") {
        "utf8" | "utf-8" | "text" => Result::Ok(content.as_bytes().to_vec()),
        // Lenient about the unused bits of the last character, as most encoders are.
        "base64" => base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        )
        .decode(content.trim())
        .map_err(|e| ApiError::bad_request(format!("content is not valid base64: {e}"))),
        other => Err(ApiError::bad_request(format!(
            "unknown encoding {other:?}: use utf8 or base64"
        ))),
    }
}
