//! The statements the store runs. A round of writes is one statement (a data-modifying CTE
//! over arrays), so it is atomic and costs one round trip and one commit, and each write in
//! it is conditional on the version the writer based it on: of several instances writing one credential at once exactly one wins each
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

/// One change of a round: a new version, or a delete.
#[derive(Clone, Copy, Debug)]
pub enum RowWrite<'a> {
    Version(VersionWrite<'a>),
    /// Removes the credential and every kept version, if its current version is
    /// `base_version`.
    Delete {
        id: &'a str,
        base_version: i64,
        at_ms: i64,
    },
}

impl RowWrite<'_> {
    fn id(&self) -> &str {
        match self {
            RowWrite::Version(write) => write.id,
            RowWrite::Delete { id, .. } => id,
        }
    }
}

/// A whole round of writes of distinct credentials as one statement (so one transaction and
/// one commit, with no BEGIN and COMMIT round trips): each row of the input arrays is one
/// write, conditional on its base version. Base 0 creates the credential (if no other
/// instance did first); version 0 deletes it (migration 4's trigger takes its kept versions);
/// anything else moves it from its base version to the new one and drops kept versions below
/// `keep_from`. Each write that happened appends its change-log entry, and returns
/// `(id, seq)`; a write whose base the database did not agree with changes nothing and
/// returns nothing.
///
/// The `id = ANY($1)` conditions let every access use the primary keys; that the plan does
/// (a generic plan made while the tables were small chose to scan them) is the session's
/// `enable_seqscan = off` (see `Database::open`).
pub const COMMIT_ROUND: &str = "
    WITH input AS MATERIALIZED (
        SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[],
                             $6::int8[], $7::bytea[], $8::int8[], $9::int8[])
            AS i(id, base, version, owner, scope, expires_at_ms, record, keep_from, at_ms)
    ), created AS (
        INSERT INTO credshard_credentials (id, version, owner, scope, expires_at_ms)
        SELECT id, version, owner, scope, expires_at_ms FROM input WHERE base = 0
        ON CONFLICT (id) DO NOTHING
        RETURNING id
    ), updated AS (
        UPDATE credshard_credentials c
        SET version = i.version, owner = i.owner, scope = i.scope, expires_at_ms = i.expires_at_ms
        FROM input i
        WHERE c.id = ANY($1) AND c.id = i.id AND i.base <> 0 AND i.version <> 0 AND c.version = i.base
        RETURNING c.id
    ), removed AS (
        DELETE FROM credshard_credentials c USING input i
        WHERE c.id = ANY($1) AND c.id = i.id AND i.version = 0 AND c.version = i.base
        RETURNING c.id
    ), written AS (
        SELECT id FROM created UNION ALL SELECT id FROM updated
    ), kept AS (
        INSERT INTO credshard_versions (id, version, record)
        SELECT i.id, i.version, i.record FROM input i JOIN written w ON w.id = i.id
    ), trimmed AS (
        DELETE FROM credshard_versions v USING input i JOIN updated u ON u.id = i.id
        WHERE v.id = ANY($1) AND v.id = i.id AND v.version < i.keep_from
    )
    INSERT INTO credshard_changes (id, version, kind, at_ms)
    SELECT i.id, CASE WHEN i.version = 0 THEN i.base ELSE i.version END,
           CASE WHEN i.version = 0 THEN 2 ELSE 1 END, i.at_ms
    FROM input i WHERE i.id IN (SELECT id FROM written UNION ALL SELECT id FROM removed)
    ORDER BY i.id
    RETURNING id, seq";

/// Commits `writes` (distinct credentials) as one statement; returns each one's outcome, in
/// order. A statement that fails changes nothing (it is its own transaction), unless the
/// connection broke while it committed.
///
/// # Errors
/// Database errors.
///
/// # Panics
/// If two writes name one credential, or a version does not follow its base.
pub async fn commit(client: &impl GenericClient, writes: &[RowWrite<'_>]) -> Result<Vec<Outcome>, DbError> {
    let count = writes.len();
    let mut ids = Vec::with_capacity(count);
    let (mut bases, mut versions, mut expiries, mut keeps, mut times) = (
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
    );
    let (mut owners, mut scopes) = (Vec::with_capacity(count), Vec::with_capacity(count));
    let mut records: Vec<&[u8]> = Vec::with_capacity(count);
    for write in writes {
        match *write {
            RowWrite::Version(write) => {
                assert!(
                    write.version > write.base_version,
                    "versions of a credential are strictly increasing"
                );
                ids.push(write.id);
                bases.push(write.base_version);
                versions.push(write.version);
                owners.push(write.owner);
                scopes.push(write.scope);
                expiries.push(write.expires_at_ms);
                records.push(write.record);
                keeps.push(write.keep_from_version);
                times.push(write.at_ms);
            }
            RowWrite::Delete { id, base_version, at_ms } => {
                ids.push(id);
                bases.push(base_version);
                versions.push(0);
                owners.push("");
                scopes.push("");
                expiries.push(0);
                records.push(&[]);
                keeps.push(0);
                times.push(at_ms);
            }
        }
    }
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), count, "a round writes each credential once");
    let statement = client.prepare_cached(COMMIT_ROUND).await?;
    let rows = client
        .query(&statement, &[&ids, &bases, &versions, &owners, &scopes, &expiries, &records, &keeps, &times])
        .await?;
    let committed: std::collections::HashMap<String, i64> =
        rows.into_iter().map(|row| (row.get(0), row.get(1))).collect();
    Ok(writes
        .iter()
        .map(|write| committed.get(write.id()).map_or(Outcome::Stale, |&seq| Outcome::Committed { seq }))
        .collect())
}

/// Writes a new version if the database's current version is `write.base_version` (a round
/// of one).
///
/// # Errors
/// Database errors.
pub async fn write_version(
    client: &impl GenericClient,
    write: &VersionWrite<'_>,
) -> Result<Outcome, DbError> {
    Ok(commit(client, &[RowWrite::Version(*write)]).await?[0])
}

/// Removes a credential and its versions if its current version is `base_version` (a round
/// of one).
///
/// # Errors
/// Database errors.
pub async fn delete(
    client: &impl GenericClient,
    id: &str,
    base_version: i64,
    at_ms: i64,
) -> Result<Outcome, DbError> {
    Ok(commit(client, &[RowWrite::Delete { id, base_version, at_ms }]).await?[0])
}

/// Whether a failed statement lost a race with another transaction (a deadlock, or a
/// serialization failure as CockroachDB reports contention): it changed nothing, and trying
/// again is right.
pub fn lost_a_race(error: &DbError) -> bool {
    let DbError::Query(error) = error else { return false };
    error.code().is_some_and(|code| {
        *code == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
            || *code == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
    })
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

/// What changed of credentials an instance already holds: for each `(id, after)`, the kept
/// versions from `after` up, oldest first, and the oldest version the database keeps
/// (`None`: the credential is gone), read in one snapshot. An instance that holds version
/// `after` reads only what is new instead of every kept version again; version `after`
/// itself comes too, so it can tell that what it holds is still what the database has (a
/// credential deleted and created again has different versions under the same numbers).
///
/// # Errors
/// Database errors.
pub async fn newer_versions(
    client: &impl GenericClient,
    ids: &[String],
    after: &[i64],
) -> Result<Vec<NewerVersions>, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT w.id, (SELECT min(k.version) FROM credshard_versions k WHERE k.id = w.id), v.record
             FROM unnest($1::text[], $2::int8[]) AS w(id, after)
             LEFT JOIN credshard_versions v ON v.id = w.id AND v.version >= w.after
             ORDER BY w.id, v.version",
        )
        .await?;
    let mut newer: Vec<NewerVersions> = Vec::with_capacity(ids.len());
    for row in client.query(&statement, &[&ids, &after]).await? {
        let id: String = row.get(0);
        let record: Option<Vec<u8>> = row.get(2);
        match newer.last_mut() {
            Some(last) if last.id == id => last.records.extend(record),
            _ => newer.push(NewerVersions {
                id,
                oldest_kept: row.get(1),
                records: record.into_iter().collect(),
            }),
        }
    }
    Ok(newer)
}

/// One credential's answer to [`newer_versions`].
#[derive(Debug)]
pub struct NewerVersions {
    pub id: String,
    /// The oldest version the database keeps; `None` when the credential is gone.
    pub oldest_kept: Option<i64>,
    /// Archived records of the versions from the one asked from up, oldest first.
    pub records: Vec<Vec<u8>>,
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
