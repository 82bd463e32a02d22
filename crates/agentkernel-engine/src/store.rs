//! The state store: `state.db` (SQLite, WAL). One row per persistent sandbox; every change is
//! one statement or transaction, so a crash leaves either the old or the new row.

use crate::error::{EngineError, Result};
use agentkernel_core::SandboxSpec;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a backend needs to find a started sandbox again from another process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeState {
    /// native: names the sandbox's cgroups and network pin, new at every start. docker,
    /// podman, gvisor: the container id.
    pub instance: String,
    /// The sandbox's init on this host (0 when the engine's processes are not visible here).
    pub pid: u32,
    pub start_time: u64,
    pub boot_id: String,
    /// A throwaway sandbox (`run`, warm pools): stopping it removes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    pub name: String,
    pub uuid: String,
    pub spec: SandboxSpec,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub runtime: Option<RuntimeState>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    name TEXT PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    runtime TEXT
);";

/// Bumped when `SCHEMA` changes.
const SCHEMA_VERSION: i64 = 1;

/// Keeps `state.db-wal` and `-shm` when the last connection closes. Otherwise SQLite deletes
/// them at every close and the next CLI call creates, sizes and locks them again (about a third
/// of what opening the store cost, measured with `agentkernel list`).
fn keep_wal_files(conn: &Connection) {
    const SQLITE_FCNTL_PERSIST_WAL: std::ffi::c_int = 10;
    let mut on: std::ffi::c_int = 1;
    // SAFETY: the handle is valid for the life of `conn`; this opcode reads and writes one int
    // through the pointer, which outlives the call.
    unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut std::ffi::c_int).cast(),
        );
    }
}

impl Store {
    pub fn open(home: &Path) -> Result<Store> {
        let path = home.join("state.db");
        let err = |source| EngineError::Store {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        keep_wal_files(&conn);
        // A checkpoint (with fsync) at every close would be paid by every CLI call, reads
        // included; SQLite's automatic checkpoint on commit keeps the WAL small instead.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        // Every CLI call opens the database: the schema is only set up when it is not there yet
        // (one header read, instead of parsing the DDL on every open).
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(err)?;
        if version != SCHEMA_VERSION {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(err)?;
            conn.execute_batch(SCHEMA).map_err(err)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
        }
        Ok(Store { conn, path })
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> EngineError + '_ {
        move |source| EngineError::Store {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Inserts a new sandbox; a taken name is `NameTaken`.
    pub fn insert(&self, rec: &SandboxRecord) -> Result<()> {
        let spec = serde_json::to_string(&rec.spec)
            .map_err(|e| EngineError::io("encode spec")(e.into()))?;
        let runtime = rec
            .runtime
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| EngineError::io("encode runtime")(e.into()))?;
        let r = self.conn.execute(
            "INSERT INTO sandboxes (name, uuid, spec, created_at, expires_at, runtime) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![rec.name, rec.uuid, spec, rec.created_at, rec.expires_at, runtime],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(EngineError::NameTaken(rec.name.clone()))
            }
            Err(e) => Err(self.err()(e)),
        }
    }

    pub fn get(&self, name: &str) -> Result<Option<SandboxRecord>> {
        self.conn
            .query_row(
                "SELECT name, uuid, spec, created_at, expires_at, runtime FROM sandboxes WHERE name = ?1",
                params![name],
                row_to_raw,
            )
            .optional()
            .map_err(self.err())?
            .map(decode)
            .transpose()
    }

    pub fn list(&self) -> Result<Vec<SandboxRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, uuid, spec, created_at, expires_at, runtime FROM sandboxes ORDER BY created_at, name")
            .map_err(self.err())?;
        let rows = stmt.query_map([], row_to_raw).map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode(row.map_err(self.err())?)?);
        }
        Ok(out)
    }

    pub fn set_runtime(&self, name: &str, runtime: Option<&RuntimeState>) -> Result<()> {
        let runtime = runtime
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| EngineError::io("encode runtime")(e.into()))?;
        self.conn
            .execute(
                "UPDATE sandboxes SET runtime = ?2 WHERE name = ?1",
                params![name, runtime],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Replaces the stored spec (metadata edits: labels, description).
    pub fn set_spec(&self, name: &str, spec: &SandboxSpec) -> Result<()> {
        let spec =
            serde_json::to_string(spec).map_err(|e| EngineError::io("encode spec")(e.into()))?;
        self.conn
            .execute(
                "UPDATE sandboxes SET spec = ?2 WHERE name = ?1",
                params![name, spec],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub fn set_expires_at(&self, name: &str, expires_at: Option<&str>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE sandboxes SET expires_at = ?2 WHERE name = ?1",
                params![name, expires_at],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub fn get_by_uuid(&self, uuid: &str) -> Result<Option<SandboxRecord>> {
        self.conn
            .query_row(
                "SELECT name, uuid, spec, created_at, expires_at, runtime FROM sandboxes WHERE uuid = ?1",
                params![uuid],
                row_to_raw,
            )
            .optional()
            .map_err(self.err())?
            .map(decode)
            .transpose()
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM sandboxes WHERE name = ?1", params![name])
            .map_err(self.err())?;
        Ok(())
    }
}

type RawRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

fn row_to_raw(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn decode((name, uuid, spec, created_at, expires_at, runtime): RawRow) -> Result<SandboxRecord> {
    let bad = |what: &str, e: serde_json::Error| {
        EngineError::io(format!(
            "sandbox {name}: stored {what} is unreadable (remove the sandbox and create it again)"
        ))(e.into())
    };
    let spec = serde_json::from_str(&spec).map_err(|e| bad("spec", e))?;
    let runtime = runtime
        .map(|r| serde_json::from_str(&r))
        .transpose()
        .map_err(|e| bad("runtime", e))?;
    Ok(SandboxRecord {
        name,
        uuid,
        spec,
        created_at,
        expires_at,
        runtime,
    })
}
