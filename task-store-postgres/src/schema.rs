//! The store's schema: its DDL by version, and the migration run on
//! connect.
//!
//! The schema records its version in `<schema>.schema_version`. On connect
//! the store reads it: at this build's [`SCHEMA_VERSION`] nothing is done
//! (no lock, no DDL, so a role without DDL rights can use a schema made by
//! another); below it, the missing steps run in one transaction under an
//! advisory lock on the schema's name, so that processes starting together
//! migrate once; above it, the store refuses to open, since this build does
//! not know what the newer version changed.

use deadpool_postgres::Object;
use task_store::ThreadStoreError;

use crate::error::{Failure, Fault};

/// The schema version this build writes and reads.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// The DDL of each version, in order: `MIGRATIONS[n - 1]` takes a schema
/// from version `n - 1` to `n` (from nothing, for version 1).
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [include_str!("schema.sql")];

/// Whether the schema `$1` has its version table. Read from the catalog
/// tables with the statement's snapshot, so that it sees a migration that
/// committed while this session waited for the migration lock (name lookups
/// such as `to_regclass` may answer from a cache that has not seen it yet).
const VERSION_TABLE_EXISTS: &str = "\
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1::text AND c.relname = 'schema_version')";

/// A schema name as an SQL identifier. The name was checked by
/// `validate_schema` (plain lowercase identifier characters), so quoting
/// it cannot change its meaning; the quotes keep keywords usable.
pub(crate) fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// SQL text with the schema put in for `{s}`.
pub(crate) fn in_schema(sql: &str, schema: &str) -> String {
    sql.replace("{s}", &quoted(schema))
}

/// Brings `schema` to [`SCHEMA_VERSION`], or refuses a newer one. Checks
/// first that the database stores text as UTF-8.
pub(crate) async fn migrate(client: &mut Object, schema: &str) -> Result<(), ThreadStoreError> {
    let version_table = format!("{}.schema_version", quoted(schema));
    let row = client
        .query_one(
            &format!("SELECT current_setting('server_encoding'), ({VERSION_TABLE_EXISTS})"),
            &[&schema],
        )
        .await
        .map_err(|e| Failure::general(Fault::Pg(e)))?;
    let encoding: String = row.get(0);
    if encoding != "UTF8" {
        return Err(ThreadStoreError::Unsupported {
            reason: format!(
                "the database's encoding is {encoding}; task-store-postgres stores any Unicode \
                 text and needs a UTF8 database (CREATE DATABASE … ENCODING 'UTF8')"
            ),
        });
    }
    let exists: bool = row.get(1);
    if exists && stored_version(client, schema).await? == Some(SCHEMA_VERSION) {
        return Ok(());
    }

    let tx = client
        .transaction()
        .await
        .map_err(|e| Failure::general(Fault::Pg(e)))?;
    let pg = |e| Failure::general(Fault::Pg(e));
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('task-store-postgres:' || $1::text))",
        &[&schema],
    )
    .await
    .map_err(pg)?;
    // Another process may have migrated while this one waited for the lock.
    let exists: bool = tx
        .query_one(
            "SELECT to_regclass($1::text) IS NOT NULL",
            &[&version_table],
        )
        .await
        .map_err(pg)?
        .get(0);
    let current = if exists {
        tx.query_opt(
            &format!("SELECT version FROM {version_table} WHERE singleton"),
            &[],
        )
        .await
        .map_err(pg)?
        .map_or(0, |row| row.get::<_, i32>(0))
    } else {
        0
    };
    check_not_newer(schema, current)?;
    for step in current..SCHEMA_VERSION {
        let index = usize::try_from(step).map_err(|_| {
            ThreadStoreError::backend(format!("schema {schema}: invalid version {step}"))
        })?;
        tx.batch_execute(&in_schema(MIGRATIONS[index], schema))
            .await
            .map_err(|e| migration_failed(schema, step + 1, e))?;
    }
    tx.execute(
        &format!(
            "INSERT INTO {version_table} (singleton, version) VALUES (true, $1) \
             ON CONFLICT (singleton) DO UPDATE SET version = $1, migrated_at = now()"
        ),
        &[&SCHEMA_VERSION],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)
}

/// The version recorded in the schema, refusing a newer one.
async fn stored_version(client: &Object, schema: &str) -> Result<Option<i32>, ThreadStoreError> {
    let version = client
        .query_opt(
            &format!(
                "SELECT version FROM {}.schema_version WHERE singleton",
                quoted(schema)
            ),
            &[],
        )
        .await
        .map_err(|e| Failure::general(Fault::Pg(e)))?
        .map(|row| row.get::<_, i32>(0));
    if let Some(version) = version {
        check_not_newer(schema, version)?;
    }
    Ok(version)
}

fn check_not_newer(schema: &str, version: i32) -> Result<(), ThreadStoreError> {
    if version > SCHEMA_VERSION {
        return Err(ThreadStoreError::Unsupported {
            reason: format!(
                "schema \"{schema}\" is at version {version}, newer than the version \
                 {SCHEMA_VERSION} this build of task-store-postgres knows; upgrade \
                 task-store-postgres, or use another schema"
            ),
        });
    }
    Ok(())
}

fn migration_failed(schema: &str, version: i32, error: tokio_postgres::Error) -> ThreadStoreError {
    let mapped = Failure::general(Fault::Pg(error));
    match mapped {
        ThreadStoreError::Backend { message, source } => ThreadStoreError::Backend {
            message: format!(
                "migrating schema \"{schema}\" to version {version} failed: {message} (use a \
                 schema of its own for the store: it creates tables named threads, messages \
                 and schema_version)"
            ),
            source,
        },
        other => other,
    }
}
