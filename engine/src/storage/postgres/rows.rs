//! The statements the store runs. Each write is one statement (a data-modifying CTE), so it
//! is atomic and costs one round trip, and each is conditional on the version the writer
//! based it on: of several instances writing one credential at once exactly one wins each
//! version, and the others learn that their view was stale.

use deadpool_postgres::GenericClient;

use super::DbError;

/// What a change-log entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new version was written (PUT, ROTATE).
    Written = 1,
    /// The credential was removed (DELETE, expiry sweep).
    Deleted = 2,
}

impl ChangeKind {
    fn from_i16(value: i16) -> Result<ChangeKind, DbError> {
        match value {
            1 => Ok(ChangeKind::Written),
            2 => Ok(ChangeKind::Deleted),
            other => Err(DbError::Corrupt(format!("change kind {other}"))),
        }
    }
}

/// One new version of a credential, and what it replaces.
#[derive(Clone, Copy, Debug)]
pub struct VersionWrite<'a> {
    pub id: &'a str,
    /// The current version the writer saw (0: the credential did not exist). The write
    /// happens only if the database agrees.
    pub base_version: i64,
    pub version: i64,
    pub owner: &'a str,
    pub scope: &'a str,
    /// 0: never.
    pub expires_at_ms: i64,
    /// The archived record, verbatim.
    pub record: &'a [u8],
    /// Kept versions below this one are dropped in the same statement.
    pub keep_from_version: i64,
    pub at_ms: i64,
}

/// How a conditional write or delete ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed, as change-log entry `seq`.
    Committed { seq: i64 },
    /// The database's current version was not the base version: nothing was written.
    Stale,
}

const INSERT_NEW: &str = "
    WITH head AS (
        INSERT INTO credshard_credentials (id, version, owner, scope, expires_at_ms)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (id) DO NOTHING
        RETURNING id
    ), kept AS (
        INSERT INTO credshard_versions (id, version, record) SELECT id, $2, $6 FROM head RETURNING id
    )
    INSERT INTO credshard_changes (id, version, kind, at_ms) SELECT id, $2, 1, $7 FROM kept
    RETURNING seq";

const UPDATE_EXISTING: &str = "
    WITH head AS (
        UPDATE credshard_credentials
        SET version = $2, owner = $3, scope = $4, expires_at_ms = $5
        WHERE id = $1 AND version = $8
        RETURNING id
    ), kept AS (
        INSERT INTO credshard_versions (id, version, record) SELECT id, $2, $6 FROM head RETURNING id
    ), dropped AS (
        DELETE FROM credshard_versions v USING head WHERE v.id = head.id AND v.version < $9
    )
    INSERT INTO credshard_changes (id, version, kind, at_ms) SELECT id, $2, 1, $7 FROM kept
    RETURNING seq";

const DELETE: &str = "
    WITH gone AS (
        DELETE FROM credshard_credentials WHERE id = $1 AND version = $2 RETURNING id, version
    )
    INSERT INTO credshard_changes (id, version, kind, at_ms) SELECT id, version, 2, $3 FROM gone
    RETURNING seq";

/// Prepares (once per connection) every statement a write may use, so that a pipeline of
/// writes sends each on its first poll.
///
/// # Errors
/// Database errors.
pub async fn prepare_writes(client: &impl GenericClient) -> Result<(), DbError> {
    for statement in [INSERT_NEW, UPDATE_EXISTING, DELETE] {
        client.prepare_cached(statement).await?;
    }
    Ok(())
}

fn outcome(row: Option<tokio_postgres::Row>) -> Outcome {
    row.map_or(Outcome::Stale, |row| Outcome::Committed { seq: row.get(0) })
}

/// Writes a new version if the database's current version is `write.base_version`.
///
/// # Errors
/// Database errors (the write may or may not have committed when the connection broke).
pub async fn write_version(
    client: &impl GenericClient,
    write: &VersionWrite<'_>,
) -> Result<Outcome, DbError> {
    assert!(write.version > write.base_version, "versions of a credential are strictly increasing");
    // $1..$7 in every statement; $8 the base version and $9 the trim, where used.
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
        &write.id,
        &write.version,
        &write.owner,
        &write.scope,
        &write.expires_at_ms,
        &write.record,
        &write.at_ms,
        &write.base_version,
        &write.keep_from_version,
    ];
    let (sql, used) = match write.base_version {
        0 => (INSERT_NEW, 7),
        _ => (UPDATE_EXISTING, 9),
    };
    let statement = client.prepare_cached(sql).await?;
    let row = client.query_opt(&statement, &parameters[..used]).await?;
    Ok(outcome(row))
}

/// Removes a credential and its versions if its current version is `base_version`.
///
/// # Errors
/// Database errors.
pub async fn delete(
    client: &impl GenericClient,
    id: &str,
    base_version: i64,
    at_ms: i64,
) -> Result<Outcome, DbError> {
    let statement = client.prepare_cached(DELETE).await?;
    Ok(outcome(client.query_opt(&statement, &[&id, &base_version, &at_ms]).await?))
}

/// The kept versions of one credential, oldest first: (version, archived record).
///
/// # Errors
/// Database errors.
pub async fn credential(client: &impl GenericClient, id: &str) -> Result<Vec<(i64, Vec<u8>)>, DbError> {
    let statement = client
        .prepare_cached("SELECT version, record FROM credshard_versions WHERE id = $1 ORDER BY version")
        .await?;
    let rows = client.query(&statement, &[&id]).await?;
    Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// The kept versions of several credentials in one query, each credential's oldest first:
/// (id, archived record).
///
/// # Errors
/// Database errors.
pub async fn credentials(
    client: &impl GenericClient,
    ids: &[String],
) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    let statement = client
        .prepare_cached("SELECT id, record FROM credshard_versions WHERE id = ANY($1) ORDER BY id, version")
        .await?;
    let rows = client.query(&statement, &[&ids]).await?;
    Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Every kept version of every credential, each credential's oldest first: (id, archived
/// record).
///
/// # Errors
/// Database errors.
pub async fn all_versions(client: &impl GenericClient) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    let rows = client.query("SELECT id, record FROM credshard_versions ORDER BY id, version", &[]).await?;
    Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// How many credentials the database holds.
///
/// # Errors
/// Database errors.
pub async fn credential_count(client: &impl GenericClient) -> Result<i64, DbError> {
    Ok(client.query_one("SELECT count(*) FROM credshard_credentials", &[]).await?.get(0))
}

/// One LIST page from the credentials' indexes, in the order the shards' indexes give:
/// by (scope, id) within `owner` (any scope, or only `scope`), or by id within `scope` when
/// `owner` is empty; live credentials only (no expiry, or one after `now_ms`); up to `limit`
/// rows after the sort key `after`. Each row: (scope, id, archived current record).
///
/// # Errors
/// Database errors.
pub async fn list_page(
    client: &impl GenericClient,
    owner: &str,
    scope: &str,
    after: Option<(&str, &str)>,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<(String, String, Vec<u8>)>, DbError> {
    let (after_first, after_second) = after.unwrap_or(("", ""));
    let first_page = after.is_none();
    let rows = if owner.is_empty() {
        let statement = client
            .prepare_cached(
                r#"SELECT c.scope, c.id, v.record FROM credshard_credentials c
                   JOIN credshard_versions v ON v.id = c.id AND v.version = c.version
                   WHERE c.scope = $1 AND (c.expires_at_ms = 0 OR c.expires_at_ms > $2)
                     AND ($3 OR c.id COLLATE "C" > $4)
                   ORDER BY c.id COLLATE "C" LIMIT $5"#,
            )
            .await?;
        client.query(&statement, &[&scope, &now_ms, &first_page, &after_first, &limit]).await?
    } else {
        let statement = client
            .prepare_cached(
                r#"SELECT c.scope, c.id, v.record FROM credshard_credentials c
                   JOIN credshard_versions v ON v.id = c.id AND v.version = c.version
                   WHERE c.owner = $1 AND ($2 = '' OR c.scope = $2)
                     AND (c.expires_at_ms = 0 OR c.expires_at_ms > $3)
                     AND ($4 OR (c.scope COLLATE "C", c.id COLLATE "C") > ($5, $6))
                   ORDER BY c.scope COLLATE "C", c.id COLLATE "C" LIMIT $7"#,
            )
            .await?;
        client
            .query(&statement, &[&owner, &scope, &now_ms, &first_page, &after_first, &after_second, &limit])
            .await?
    };
    Ok(rows.into_iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect())
}

/// Up to `limit` credentials whose expiry is at or before `now_ms`, soonest first: (id,
/// current version).
///
/// # Errors
/// Database errors.
pub async fn expired(
    client: &impl GenericClient,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<(String, i64)>, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT id, version FROM credshard_credentials
             WHERE expires_at_ms <> 0 AND expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2",
        )
        .await?;
    let rows = client.query(&statement, &[&now_ms, &limit]).await?;
    Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// One committed change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub id: String,
    pub version: i64,
    pub kind: ChangeKind,
}

/// Up to `limit` changes after `after`, in sequence order.
///
/// # Errors
/// Database errors, or an unknown change kind.
pub async fn changes_after(
    client: &impl GenericClient,
    after: i64,
    limit: i64,
) -> Result<Vec<Change>, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT seq, id, version, kind FROM credshard_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .await?;
    client
        .query(&statement, &[&after, &limit])
        .await?
        .into_iter()
        .map(|row| {
            Ok(Change {
                seq: row.get(0),
                id: row.get(1),
                version: row.get(2),
                kind: ChangeKind::from_i16(row.get(3))?,
            })
        })
        .collect()
}

/// The newest change's sequence number (0 for none).
///
/// # Errors
/// Database errors.
pub async fn last_change(client: &impl GenericClient) -> Result<i64, DbError> {
    Ok(client.query_one("SELECT coalesce(max(seq), 0) FROM credshard_changes", &[]).await?.get(0))
}

/// Removes the change-log entries before the first one written at or after `before_ms`
/// (walking the primary key from the oldest entry, so that no index on the time is needed);
/// returns how many.
///
/// # Errors
/// Database errors.
pub async fn trim_changes(client: &impl GenericClient, before_ms: i64) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM credshard_changes WHERE seq < coalesce(
                 (SELECT seq FROM credshard_changes WHERE at_ms >= $1 ORDER BY seq LIMIT 1),
                 (SELECT max(seq) + 1 FROM credshard_changes))",
            &[&before_ms],
        )
        .await?)
}

/// The key ring row: (generation, sealed ring bytes), if the database has one.
///
/// # Errors
/// Database errors.
pub async fn ring(client: &impl GenericClient) -> Result<Option<(i64, Vec<u8>)>, DbError> {
    let row = client.query_opt("SELECT generation, ring FROM credshard_keyring", &[]).await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// Stores `bytes` as the key ring if its generation is still `generation` (`None`: if there
/// is no ring yet); returns whether it was stored (false: another instance changed it first,
/// read it again).
///
/// # Errors
/// Database errors.
pub async fn replace_ring(
    client: &impl GenericClient,
    generation: Option<i64>,
    bytes: &[u8],
) -> Result<bool, DbError> {
    let changed = match generation {
        None => {
            client
                .execute(
                    "INSERT INTO credshard_keyring (generation, ring) VALUES (1, $1) ON CONFLICT DO NOTHING",
                    &[&bytes],
                )
                .await?
        }
        Some(generation) => client
            .execute(
                "UPDATE credshard_keyring SET ring = $2, generation = generation + 1 WHERE generation = $1",
                &[&generation, &bytes],
            )
            .await?,
    };
    Ok(changed == 1)
}
