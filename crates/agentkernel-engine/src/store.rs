//! The state store: `state.db` (SQLite, WAL). One row per persistent sandbox; every change is
//! one statement or transaction, so a crash leaves either the old or the new row. Every row
//! carries an authentication code over all its fields (`seal.rs`): a row that something other
//! than the engine wrote or changed is refused (`EngineError::Tampered`), never used.

use crate::error::{EngineError, Result};
use crate::seal::Seal;
use agentkernel_core::SandboxSpec;
pub use agentkernel_core::backend::RuntimeState;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};

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
    seal: Seal,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    name TEXT PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    runtime TEXT,
    mac TEXT
);
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL,
    mac TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);";

/// Bumped when `SCHEMA` changes. Version 1 had no `mac`: its rows are kept but not trusted.
/// Version 3 added `objects` (snapshots, sessions, pending captures).
const SCHEMA_VERSION: i64 = 3;

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

/// Makes a file of the state directory readable by its owner only.
pub(crate) fn private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(EngineError::io(format!("read {}", path.display())))?;
    if meta.permissions().mode() & 0o777 != crate::state_dir::FILE_MODE {
        std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(crate::state_dir::FILE_MODE),
        )
        .map_err(EngineError::io(format!(
            "make {} private (chmod 0600)",
            path.display()
        )))?;
    }
    Ok(())
}

impl Store {
    pub fn open(home: &Path) -> Result<Store> {
        let path = home.join("state.db");
        let err = |source| EngineError::Store {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        // SQLite creates the file 0644; its -wal and -shm files take the database's mode.
        private_file(&path)?;
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
            // A table made before `mac` existed gets it (asked of the table itself: an older
            // agentkernel that opened this database since may have set the version back).
            let has_mac = conn
                .prepare("SELECT 1 FROM pragma_table_info('sandboxes') WHERE name = 'mac'")
                .and_then(|mut q| q.exists([]))
                .map_err(err)?;
            if !has_mac {
                conn.execute_batch("ALTER TABLE sandboxes ADD COLUMN mac TEXT")
                    .map_err(err)?;
            }
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
        }
        let seal = Seal::open(home)?;
        Ok(Store { conn, path, seal })
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
        let mac = self.sign(&RawRow {
            name: rec.name.clone(),
            uuid: rec.uuid.clone(),
            spec: spec.clone(),
            created_at: rec.created_at.clone(),
            expires_at: rec.expires_at.clone(),
            runtime: runtime.clone(),
            mac: None,
        });
        let r = self.conn.execute(
            "INSERT INTO sandboxes (name, uuid, spec, created_at, expires_at, runtime, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![rec.name, rec.uuid, spec, rec.created_at, rec.expires_at, runtime, mac],
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
        self.raw("name", name)?
            .map(|raw| self.decode(raw))
            .transpose()
    }

    pub fn get_by_uuid(&self, uuid: &str) -> Result<Option<SandboxRecord>> {
        self.raw("uuid", uuid)?
            .map(|raw| self.decode(raw))
            .transpose()
    }

    fn raw(&self, column: &str, value: &str) -> Result<Option<RawRow>> {
        let sql = format!("{SELECT} WHERE {column} = ?1");
        self.conn
            .query_row(&sql, params![value], row_to_raw)
            .optional()
            .map_err(self.err())
    }

    /// Every sandbox whose record verifies, oldest first. Records that do not verify are left
    /// out (`untrusted` names them).
    pub fn list(&self) -> Result<Vec<SandboxRecord>> {
        Ok(self
            .all_raw()?
            .into_iter()
            .filter_map(|raw| self.decode(raw).ok())
            .collect())
    }

    /// Names of the records that do not verify (changed outside agentkernel, or written by a
    /// version without authentication codes).
    pub fn untrusted(&self) -> Result<Vec<String>> {
        Ok(self
            .all_raw()?
            .into_iter()
            .filter(|raw| !self.verifies(raw))
            .map(|raw| raw.name)
            .collect())
    }

    fn all_raw(&self) -> Result<Vec<RawRow>> {
        let mut stmt = self
            .conn
            .prepare(&format!("{SELECT} ORDER BY created_at, name"))
            .map_err(self.err())?;
        let rows = stmt.query_map([], row_to_raw).map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    pub fn set_runtime(&self, name: &str, runtime: Option<&RuntimeState>) -> Result<()> {
        let runtime = runtime
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| EngineError::io("encode runtime")(e.into()))?;
        self.update(name, |row| row.runtime = runtime)
    }

    /// Replaces the stored spec (metadata edits: labels, description).
    pub fn set_spec(&self, name: &str, spec: &SandboxSpec) -> Result<()> {
        let spec =
            serde_json::to_string(spec).map_err(|e| EngineError::io("encode spec")(e.into()))?;
        self.update(name, |row| row.spec = spec)
    }

    pub fn set_expires_at(&self, name: &str, expires_at: Option<&str>) -> Result<()> {
        let expires_at = expires_at.map(str::to_string);
        self.update(name, |row| row.expires_at = expires_at)
    }

    /// Changes one verified row and signs it again, in one transaction. A row that does not
    /// verify is not changed (so it cannot be laundered into a signed one).
    fn update(&self, name: &str, change: impl FnOnce(&mut RawRow)) -> Result<()> {
        let tx = self.write_transaction()?;
        let Some(mut row) = self.raw("name", name)? else {
            return Err(EngineError::NotFound(name.to_string()));
        };
        if !self.verifies(&row) {
            return Err(EngineError::Tampered(name.to_string()));
        }
        change(&mut row);
        let mac = self.sign(&row);
        tx.execute(
            "UPDATE sandboxes SET spec = ?2, expires_at = ?3, runtime = ?4, mac = ?5 WHERE name = ?1",
            params![row.name, row.spec, row.expires_at, row.runtime, mac],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    /// A transaction that reads, then writes: it takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so a concurrent writer makes it wait (the busy timeout) instead of failing
    /// with "database is locked" when a deferred read would have to become a write.
    fn write_transaction(&self) -> Result<rusqlite::Transaction<'_>> {
        rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)
            .map_err(self.err())
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM sandboxes WHERE name = ?1", params![name])
            .map_err(self.err())?;
        Ok(())
    }

    fn parts(row: &RawRow) -> [Option<&[u8]>; 6] {
        [
            Some(row.name.as_bytes()),
            Some(row.uuid.as_bytes()),
            Some(row.spec.as_bytes()),
            Some(row.created_at.as_bytes()),
            row.expires_at.as_deref().map(str::as_bytes),
            row.runtime.as_deref().map(str::as_bytes),
        ]
    }

    fn sign(&self, row: &RawRow) -> String {
        self.seal.sign(&Store::parts(row))
    }

    fn verifies(&self, row: &RawRow) -> bool {
        row.mac
            .as_deref()
            .is_some_and(|mac| self.seal.verify(&Store::parts(row), mac))
    }

    fn decode(&self, row: RawRow) -> Result<SandboxRecord> {
        if !self.verifies(&row) {
            return Err(EngineError::Tampered(row.name));
        }
        let name = row.name;
        let bad = |what: &str, e: serde_json::Error| {
            EngineError::io(format!(
                "sandbox {name}: stored {what} is unreadable (remove the sandbox and create it again)"
            ))(e.into())
        };
        let spec = serde_json::from_str(&row.spec).map_err(|e| bad("spec", e))?;
        let runtime = row
            .runtime
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| bad("runtime", e))?;
        Ok(SandboxRecord {
            name,
            uuid: row.uuid,
            spec,
            created_at: row.created_at,
            expires_at: row.expires_at,
            runtime,
        })
    }
}

/// What else the store keeps besides sandboxes, each a sealed JSON document under a kind and
/// a name: snapshots, sessions, template caches, and the captures in progress that `gc`
/// finishes or rolls back after a crash.
impl Store {
    /// Inserts a new object; a taken name of that kind is `Err(Conflict)` with `taken`.
    pub fn insert_object<T: serde::Serialize>(
        &self,
        kind: &str,
        name: &str,
        value: &T,
        taken: impl FnOnce() -> EngineError,
    ) -> Result<()> {
        let data = encode(value)?;
        let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mac = self.sign_object(kind, name, &data, &created_at);
        let r = self.conn.execute(
            "INSERT INTO objects (kind, name, data, created_at, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![kind, name, data, created_at, mac],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(taken())
            }
            Err(e) => Err(self.err()(e)),
        }
    }

    /// Replaces an object's document (it must exist and verify).
    pub fn update_object<T: serde::Serialize>(
        &self,
        kind: &str,
        name: &str,
        value: &T,
    ) -> Result<()> {
        let tx = self.write_transaction()?;
        let Some((_, created_at)) = self.object_raw(kind, name)? else {
            return Err(EngineError::NotFound(format!("{kind} {name}")));
        };
        let data = encode(value)?;
        let mac = self.sign_object(kind, name, &data, &created_at);
        tx.execute(
            "UPDATE objects SET data = ?3, mac = ?4 WHERE kind = ?1 AND name = ?2",
            params![kind, name, data, mac],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    /// One object, if it exists; one that does not verify is `Tampered`.
    pub fn get_object<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<T>> {
        match self.object_raw(kind, name)? {
            None => Ok(None),
            Some((data, _)) => decode_object(name, &data).map(Some),
        }
    }

    /// Every object of a kind that verifies, with its creation time, oldest first.
    pub fn list_objects<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
    ) -> Result<Vec<(String, String, T)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, data, created_at, mac FROM objects WHERE kind = ?1 ORDER BY created_at, name",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![kind], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .map_err(self.err())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .filter(|(name, data, created_at, mac)| {
                self.seal
                    .verify(&object_parts(kind, name, data, created_at), mac)
            })
            .filter_map(|(name, data, created_at, _)| {
                decode_object(&name, &data)
                    .ok()
                    .map(|v| (name, created_at, v))
            })
            .collect())
    }

    /// Deletes an object; returns whether there was one.
    pub fn delete_object(&self, kind: &str, name: &str) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "DELETE FROM objects WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// The document and creation time of a verified object.
    fn object_raw(&self, kind: &str, name: &str) -> Result<Option<(String, String)>> {
        let row: Option<(String, String, String)> = self
            .conn
            .query_row(
                "SELECT data, created_at, mac FROM objects WHERE kind = ?1 AND name = ?2",
                params![kind, name],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(self.err())?;
        match row {
            None => Ok(None),
            Some((data, created_at, mac)) => {
                if self
                    .seal
                    .verify(&object_parts(kind, name, &data, &created_at), &mac)
                {
                    Ok(Some((data, created_at)))
                } else {
                    Err(EngineError::Tampered(format!("{kind} {name}")))
                }
            }
        }
    }

    fn sign_object(&self, kind: &str, name: &str, data: &str, created_at: &str) -> String {
        self.seal.sign(&object_parts(kind, name, data, created_at))
    }
}

fn object_parts<'a>(
    kind: &'a str,
    name: &'a str,
    data: &'a str,
    created_at: &'a str,
) -> [Option<&'a [u8]>; 6] {
    [
        Some(b"object".as_slice()),
        Some(kind.as_bytes()),
        Some(name.as_bytes()),
        Some(data.as_bytes()),
        Some(created_at.as_bytes()),
        None,
    ]
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| EngineError::io("encode a stored record")(e.into()))
}

fn decode_object<T: serde::de::DeserializeOwned>(name: &str, data: &str) -> Result<T> {
    serde_json::from_str(data).map_err(|e| {
        EngineError::io(format!(
            "stored record {name:?} is unreadable (written by another agentkernel version?); delete it"
        ))(e.into())
    })
}

const SELECT: &str = "SELECT name, uuid, spec, created_at, expires_at, runtime, mac FROM sandboxes";

/// A row as stored.
struct RawRow {
    name: String,
    uuid: String,
    spec: String,
    created_at: String,
    expires_at: Option<String>,
    runtime: Option<String>,
    mac: Option<String>,
}

fn row_to_raw(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        name: row.get(0)?,
        uuid: row.get(1)?,
        spec: row.get(2)?,
        created_at: row.get(3)?,
        expires_at: row.get(4)?,
        runtime: row.get(5)?,
        mac: row.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database an older agentkernel made (no `mac`, version 1) is upgraded in place; its rows
    /// are kept but not trusted; and an older binary setting the version back does not break
    /// the next open.
    #[test]
    fn older_databases_are_upgraded_and_their_rows_not_trusted() {
        let home = tempfile::tempdir().expect("tempdir");
        let db = home.path().join("state.db");
        {
            let conn = Connection::open(&db).expect("open");
            conn.execute_batch(
                "CREATE TABLE sandboxes (name TEXT PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, spec TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT, runtime TEXT);
                 INSERT INTO sandboxes VALUES ('old', 'u1', '{}', '2026-01-01T00:00:00Z', NULL, NULL);
                 PRAGMA user_version = 1;",
            )
            .expect("an old database");
        }
        let store = Store::open(home.path()).expect("upgraded");
        assert!(store.list().expect("list").is_empty());
        assert_eq!(
            store.untrusted().expect("untrusted"),
            vec!["old".to_string()]
        );
        assert!(matches!(store.get("old"), Err(EngineError::Tampered(_))));
        drop(store);
        Connection::open(&db)
            .and_then(|c| c.pragma_update(None, "user_version", 1))
            .expect("an older binary sets the version back");
        let store = Store::open(home.path()).expect("opened again");
        store.delete("old").expect("removable");
        assert!(store.untrusted().expect("untrusted").is_empty());
    }

    /// Objects (snapshots, sessions, captures) round trip, keep their names unique per kind,
    /// and one changed outside the engine is refused, never used.
    #[test]
    fn objects_round_trip_and_refuse_tampering() {
        let home = tempfile::tempdir().expect("tempdir");
        let store = Store::open(home.path()).expect("open");
        let taken = || EngineError::NameTaken("a".into());
        store
            .insert_object("snapshot", "a", &vec![1, 2], taken)
            .expect("insert");
        assert!(matches!(
            store.insert_object("snapshot", "a", &vec![3], taken),
            Err(EngineError::NameTaken(_))
        ));
        store
            .insert_object("session", "a", &vec![9], taken)
            .expect("another kind, the same name");
        store
            .update_object("snapshot", "a", &vec![4])
            .expect("update");
        let got: Option<Vec<i32>> = store.get_object("snapshot", "a").expect("get");
        assert_eq!(got, Some(vec![4]));
        let all: Vec<(String, String, Vec<i32>)> = store.list_objects("snapshot").expect("list");
        assert_eq!(all.len(), 1);
        store
            .conn
            .execute(
                "UPDATE objects SET data = '[5]' WHERE kind = 'snapshot' AND name = 'a'",
                [],
            )
            .expect("tamper");
        assert!(matches!(
            store.get_object::<Vec<i32>>("snapshot", "a"),
            Err(EngineError::Tampered(_))
        ));
        assert!(
            store
                .list_objects::<Vec<i32>>("snapshot")
                .expect("list")
                .is_empty(),
            "a changed object is left out"
        );
        assert!(store.delete_object("snapshot", "a").expect("delete"));
        assert!(!store.delete_object("snapshot", "a").expect("gone"));
    }
}
