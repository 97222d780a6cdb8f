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
    /// The credential was removed for good (a purge, an expiry sweep); `version` was its last.
    Deleted = 2,
    /// The credential changed without a new current version (a soft delete, UNDELETE,
    /// DESTROY, STAGE, SET_POLICY): instances holding it read it again whole.
    State = 3,
}

impl ChangeKind {
    fn from_i16(value: i16) -> Result<ChangeKind, DbError> {
        match value {
            1 => Ok(ChangeKind::Written),
            2 => Ok(ChangeKind::Deleted),
            3 => Ok(ChangeKind::State),
            other => Err(DbError::Corrupt(format!("change kind {other}"))),
        }
    }
}

/// What a writer saw of a credential beside its current version, and decided a write on: the
/// write happens only if the database agrees on it too, so that an instance that has not
/// followed another's change never writes from its stale view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Base<'a> {
    /// Deleted (recoverably).
    pub deleted: bool,
    /// Its policy, encoded as on the wire (`None`: the defaults).
    pub policy: Option<&'a [u8]>,
    /// Its pending version (0: none).
    pub pending: i64,
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
    /// What a watcher is told (WATCH's change code: PUT or ROTATE).
    pub change: i16,
    /// The rest of what the writer saw.
    pub base: Base<'a>,
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
    /// Removes the credential and every kept version for good, if its current version is
    /// `base_version` (and, unless 0, its purge time is still `purge_at_ms`: a recovery
    /// window's end purges only the deletion it was set by; and, unless `None`, the rest is
    /// still `base`: a client's purge), and remembers its last version.
    Delete {
        id: &'a str,
        base_version: i64,
        at_ms: i64,
        /// What a watcher is told (PURGE or EXPIRE).
        change: i16,
        purge_at_ms: i64,
        base: Option<Base<'a>>,
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
/// instance did first, and a purged id only above its last version: every created id has a
/// row in `credshard_purged`, its last version before this life); version 0 purges it
/// (migration 4's trigger takes its kept versions, `credshard_purged` keeps its last version);
/// anything else moves it from its base version, deleted or not as the writer saw it, to the
/// new one (above any pending version, which it drops, as it drops a deletion) and drops kept
/// versions below `keep_from`. Each
/// write that happened appends its change-log entry, and returns `(id, seq)`; a write whose
/// base the database did not agree with changes nothing and returns nothing.
///
/// The `id = ANY($1)` conditions let every access use the primary keys; that the plan does
/// (a generic plan made while the tables were small chose to scan them) is the session's
/// `enable_seqscan = off` (see `Database::open`).
pub const COMMIT_ROUND: &str = "
    WITH input AS MATERIALIZED (
        SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[],
                             $6::int8[], $7::bytea[], $8::int8[], $9::int8[], $10::int2[], $11::int8[],
                             $12::bool[], $13::bytea[], $14::int8[], $15::bool[])
            AS i(id, base, version, owner, scope, expires_at_ms, record, keep_from, at_ms, change, purge_at_ms,
                 base_deleted, base_policy, base_pending, checked)
    ), gate AS (
        -- A create first claims its id's row of credshard_purged, which a purge writes too: so
        -- it waits for a purge committing at the same moment, and then judges by its last
        -- version (an upsert's condition reads the row as committed, not the snapshot). A
        -- create the snapshot already refuses takes no lock (an instance retrying a stale
        -- create of a purged id would otherwise hold the row and deadlock other rounds).
        INSERT INTO credshard_purged AS p (id, version)
        SELECT id, version - 1 FROM input i
        WHERE base = 0 AND NOT EXISTS (
            SELECT 1 FROM credshard_purged q WHERE q.id = i.id AND q.version >= i.version)
        ON CONFLICT (id) DO UPDATE SET version = p.version WHERE p.version < excluded.version + 1
        RETURNING id
    ), created AS (
        INSERT INTO credshard_credentials (id, version, owner, scope, expires_at_ms)
        SELECT i.id, i.version, i.owner, i.scope, i.expires_at_ms FROM input i JOIN gate g ON g.id = i.id
        ON CONFLICT (id) DO NOTHING
        RETURNING id
    ), updated AS (
        UPDATE credshard_credentials c
        SET version = i.version, owner = i.owner, scope = i.scope, expires_at_ms = i.expires_at_ms,
            deleted_at_ms = 0, purge_at_ms = 0, pending = NULL, pending_version = 0
        FROM input i
        WHERE c.id = ANY($1) AND c.id = i.id AND i.base <> 0 AND i.version <> 0 AND c.version = i.base
          AND c.pending_version < i.version AND (c.purge_at_ms <> 0) = i.base_deleted
          AND c.policy IS NOT DISTINCT FROM i.base_policy AND c.pending_version = i.base_pending
        RETURNING c.id
    ), claimed AS (
        -- A purge takes its id's credshard_purged row before the credential's, in the order a
        -- create takes them (the other order deadlocked with a create racing it).
        SELECT p.id FROM credshard_purged p JOIN input i ON i.id = p.id
        WHERE p.id = ANY($1) AND i.version = 0 FOR UPDATE OF p
    ), removed AS (
        DELETE FROM credshard_credentials c USING input i
        WHERE c.id = ANY($1) AND c.id = i.id AND i.version = 0 AND c.version = i.base
          AND (SELECT count(*) FROM claimed) >= 0
          AND (i.purge_at_ms = 0 OR c.purge_at_ms = i.purge_at_ms)
          AND (NOT i.checked OR ((c.purge_at_ms <> 0) = i.base_deleted
                                 AND c.policy IS NOT DISTINCT FROM i.base_policy
                                 AND c.pending_version = i.base_pending))
        RETURNING c.id, c.owner, c.scope, greatest(c.version, c.pending_version) AS last
    ), tombstones AS (
        INSERT INTO credshard_purged (id, version) SELECT id, last FROM removed
        ON CONFLICT (id) DO UPDATE SET version = greatest(credshard_purged.version, excluded.version)
    ), written AS (
        SELECT id FROM created UNION ALL SELECT id FROM updated
    ), kept AS (
        INSERT INTO credshard_versions (id, version, record)
        SELECT i.id, i.version, i.record FROM input i JOIN written w ON w.id = i.id
    ), trimmed AS (
        DELETE FROM credshard_versions v USING input i JOIN updated u ON u.id = i.id
        WHERE v.id = ANY($1) AND v.id = i.id AND v.version < i.keep_from
    )
    INSERT INTO credshard_changes (id, version, kind, change, owner, scope, at_ms)
    SELECT * FROM (
        SELECT i.id, i.version, 1::int2, i.change, i.owner, i.scope, i.at_ms
        FROM input i JOIN written w ON w.id = i.id
        UNION ALL
        SELECT i.id, r.last, 2::int2, i.change, r.owner, r.scope, i.at_ms
        FROM input i JOIN removed r ON r.id = i.id
    ) AS c ORDER BY 1
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
    let (mut bases, mut versions, mut expiries, mut keeps, mut times, mut purge_times) = (
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
    );
    let mut changes: Vec<i16> = Vec::with_capacity(count);
    let mut deleted: Vec<bool> = Vec::with_capacity(count);
    let mut policies: Vec<Option<&[u8]>> = Vec::with_capacity(count);
    let (mut pendings, mut checked): (Vec<i64>, Vec<bool>) =
        (Vec::with_capacity(count), Vec::with_capacity(count));
    let (mut owners, mut scopes) = (Vec::with_capacity(count), Vec::with_capacity(count));
    let mut records: Vec<&[u8]> = Vec::with_capacity(count);
    // In id order: every round then takes its rows' locks in one global order (per table, in
    // the statement's fixed order of tables), so rounds of several instances over the same
    // credentials queue behind each other instead of deadlocking.
    let mut in_order: Vec<&RowWrite<'_>> = writes.iter().collect();
    in_order.sort_unstable_by_key(|write| write.id());
    for write in in_order {
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
                changes.push(write.change);
                purge_times.push(0);
                deleted.push(write.base.deleted);
                policies.push(write.base.policy);
                pendings.push(write.base.pending);
                checked.push(true);
            }
            RowWrite::Delete { id, base_version, at_ms, change, purge_at_ms, base } => {
                ids.push(id);
                bases.push(base_version);
                versions.push(0);
                owners.push("");
                scopes.push("");
                expiries.push(0);
                records.push(&[]);
                keeps.push(0);
                times.push(at_ms);
                changes.push(change);
                purge_times.push(purge_at_ms);
                let seen = base.unwrap_or_default();
                deleted.push(seen.deleted);
                policies.push(seen.policy);
                pendings.push(seen.pending);
                checked.push(base.is_some());
            }
        }
    }
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), count, "a round writes each credential once");
    let statement = client.prepare_cached(COMMIT_ROUND).await?;
    let rows = client
        .query(
            &statement,
            &[
                &ids,
                &bases,
                &versions,
                &owners,
                &scopes,
                &expiries,
                &records,
                &keeps,
                &times,
                &changes,
                &purge_times,
                &deleted,
                &policies,
                &pendings,
                &checked,
            ],
        )
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

/// Purges a credential and its versions if its current version is `base_version` (a round
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
    let change = credshard_protocol::op::watch::Change::Purge as i16;
    let purge = RowWrite::Delete { id, base_version, at_ms, change, purge_at_ms: 0, base: None };
    Ok(commit(client, &[purge]).await?[0])
}

/// A change of a credential that is not a new current version, or PROMOTE (whose new
/// version was written before, as pending): one statement each ([`commit_state`]), as rare
/// as they are. Each is conditional on the current version the instance saw and on the state
/// it decided on (not deleted, deleted, the pending version it replaces), and appends its
/// change-log entry ([`ChangeKind::State`], or [`ChangeKind::Written`] for PROMOTE).
#[derive(Clone, Copy, Debug)]
pub struct StateWrite<'a> {
    pub id: &'a str,
    pub base_version: i64,
    /// The version the change-log entry names (what a watcher is told).
    pub version: i64,
    /// The owner and scope a watcher is told (the version's the change concerns).
    pub owner: &'a str,
    pub scope: &'a str,
    pub at_ms: i64,
    /// What a watcher is told (WATCH's change code).
    pub change: i16,
    /// The policy the writer checked the write against (encoded; `None`: the defaults): a
    /// soft delete, STAGE and PROMOTE happen only if the database has it too.
    pub base_policy: Option<&'a [u8]>,
    pub op: StateOp<'a>,
}

#[derive(Clone, Copy, Debug)]
pub enum StateOp<'a> {
    /// Kept, unreadable, until UNDELETE or `purge_at_ms`.
    SoftDelete { deleted_at_ms: i64, purge_at_ms: i64 },
    /// A deleted credential served again.
    Undelete,
    /// Kept version `version` replaced by its destroyed husk.
    Destroy { husk: &'a [u8] },
    /// `record` (version `version`) pending beside the current version, replacing the pending
    /// version `replaces` (0: none).
    Stage { record: &'a [u8], replaces: i64 },
    /// The pending version `version`, sealed again as `record`, made current; kept versions
    /// below `keep_from` dropped.
    Promote { record: &'a [u8], expires_at_ms: i64, keep_from: i64 },
    /// The policy replaced (`None`: the defaults); kept versions below `keep_from` dropped.
    Policy { policy: Option<&'a [u8]>, keep_from: i64 },
    /// Nothing changes, if the credential is still live at the base version (an UNDELETE of a
    /// live credential, a DESTROY of a destroyed version): no change-log entry.
    Unchanged,
}

/// Commits one [`StateWrite`] as one statement.
///
/// # Errors
/// Database errors.
pub async fn commit_state(client: &impl GenericClient, write: &StateWrite<'_>) -> Result<Outcome, DbError> {
    if let StateOp::Unchanged = write.op {
        // Live at the base version, with the version named still kept.
        let statement = client
            .prepare_cached(
                "SELECT 0::int8 FROM credshard_credentials c
                 WHERE c.id = $1 AND c.version = $2 AND c.purge_at_ms = 0
                   AND EXISTS (SELECT 1 FROM credshard_versions v WHERE v.id = $1 AND v.version = $3)",
            )
            .await?;
        let rows = client.query(&statement, &[&write.id, &write.base_version, &write.version]).await?;
        return Ok(if rows.is_empty() { Outcome::Stale } else { Outcome::Committed { seq: 0 } });
    }
    // Every statement's `changed` names the credential when its condition held; the
    // change-log entry follows from it.
    const LOGGED: &str = "
        INSERT INTO credshard_changes (id, version, kind, change, owner, scope, at_ms)
        SELECT $1::text, $3::int8, $4::int2, $5::int2, $6::text, $7::text, $8::int8 FROM changed
        RETURNING seq";
    let (changed, kind) = match write.op {
        StateOp::SoftDelete { .. } => (
            "UPDATE credshard_credentials SET deleted_at_ms = $9, purge_at_ms = $10
             WHERE id = $1 AND version = $2 AND purge_at_ms = 0 AND policy IS NOT DISTINCT FROM $11
             RETURNING id",
            ChangeKind::State,
        ),
        StateOp::Undelete => (
            "UPDATE credshard_credentials SET deleted_at_ms = 0, purge_at_ms = 0
             WHERE id = $1 AND version = $2 AND purge_at_ms <> 0 RETURNING id",
            ChangeKind::State,
        ),
        StateOp::Destroy { .. } => (
            // The credential's row is locked, as every other change of it locks it, so that its
            // changes commit (and take their change-log numbers) one after another.
            "UPDATE credshard_versions v SET record = $9
             WHERE v.id = $1 AND v.version = $3 AND EXISTS (
                 SELECT 1 FROM credshard_credentials c
                 WHERE c.id = $1 AND c.version = $2 AND c.purge_at_ms = 0 FOR NO KEY UPDATE)
             RETURNING v.id",
            ChangeKind::State,
        ),
        StateOp::Stage { .. } => (
            "UPDATE credshard_credentials SET pending = $9, pending_version = $3
             WHERE id = $1 AND version = $2 AND purge_at_ms = 0 AND pending_version = $10
               AND policy IS NOT DISTINCT FROM $11
             RETURNING id",
            ChangeKind::State,
        ),
        StateOp::Promote { .. } => (
            "UPDATE credshard_credentials
             SET version = $3, owner = $6, scope = $7, expires_at_ms = $10, pending = NULL, pending_version = 0
             WHERE id = $1 AND version = $2 AND purge_at_ms = 0 AND pending_version = $3
               AND policy IS NOT DISTINCT FROM $12
             RETURNING id
         ), kept AS (
             INSERT INTO credshard_versions (id, version, record) SELECT id, $3, $9 FROM changed
         ), trimmed AS (
             DELETE FROM credshard_versions v USING changed c WHERE v.id = c.id AND v.version < $11",
            ChangeKind::Written,
        ),
        StateOp::Policy { .. } => (
            "UPDATE credshard_credentials SET policy = $9
             WHERE id = $1 AND version = $2 AND purge_at_ms = 0 RETURNING id
         ), trimmed AS (
             DELETE FROM credshard_versions v USING changed c WHERE v.id = c.id AND v.version < $10",
            ChangeKind::State,
        ),
        StateOp::Unchanged => unreachable!("answered above"),
    };
    let sql = format!("WITH changed AS ({changed}) {LOGGED}");
    let statement = client.prepare_cached(&sql).await?;
    let kind = kind as i16;
    let common: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
        &write.id,
        &write.base_version,
        &write.version,
        &kind,
        &write.change,
        &write.owner,
        &write.scope,
        &write.at_ms,
    ];
    let rows = match &write.op {
        StateOp::SoftDelete { deleted_at_ms, purge_at_ms } => {
            let more: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [deleted_at_ms, purge_at_ms, &write.base_policy];
            client.query(&statement, &[&common[..], &more].concat()).await?
        }
        StateOp::Undelete => client.query(&statement, &common).await?,
        StateOp::Destroy { husk } => client.query(&statement, &[&common[..], &[husk]].concat()).await?,
        StateOp::Stage { record, replaces } => {
            let more: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [record, replaces, &write.base_policy];
            client.query(&statement, &[&common[..], &more].concat()).await?
        }
        StateOp::Promote { record, expires_at_ms, keep_from } => {
            let more: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [record, expires_at_ms, keep_from, &write.base_policy];
            client.query(&statement, &[&common[..], &more].concat()).await?
        }
        StateOp::Policy { policy, keep_from } => {
            client.query(&statement, &[&common[..], &[policy, keep_from]].concat()).await?
        }
        StateOp::Unchanged => unreachable!("answered above"),
    };
    Ok(rows.first().map_or(Outcome::Stale, |row| Outcome::Committed { seq: row.get(0) }))
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

/// What a credential has beside its kept versions, as the database holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateRow {
    /// 0: not deleted.
    pub deleted_at_ms: i64,
    pub purge_at_ms: i64,
    /// The pending version's archived record.
    pub pending: Option<Vec<u8>>,
    /// The policy, encoded as on the wire.
    pub policy: Option<Vec<u8>>,
    /// The last version of the id before it was purged (0: never purged).
    pub purged_version: i64,
}

/// One credential as the database holds it.
#[derive(Debug, Default)]
pub struct Fetched {
    pub id: String,
    /// Archived records of its kept versions, oldest first (empty: it does not exist).
    pub records: Vec<Vec<u8>>,
    pub state: StateRow,
}

/// The statement [`credentials`] and [`all_credentials`] run, over the rows `filter` picks:
/// a credential's kept versions (part 0), its state when it has any (part 1), and its last
/// version before this life (part 2: `credshard_purged` has a row for every id ever created;
/// with `tombstones` only), in one statement (so one snapshot).
fn fetch_statement(filter: &str, tombstones: bool) -> String {
    let tombstones = if tombstones { filter } else { "false" };
    format!(
        "SELECT id, 0::int2, version, record, 0::int8, 0::int8, NULL::bytea
         FROM credshard_versions WHERE {filter}
         UNION ALL
         SELECT id, 1::int2, pending_version, pending, deleted_at_ms, purge_at_ms, policy
         FROM credshard_credentials
         WHERE {filter} AND (purge_at_ms <> 0 OR pending IS NOT NULL OR policy IS NOT NULL)
         UNION ALL
         SELECT id, 2::int2, version, NULL::bytea, 0::int8, 0::int8, NULL::bytea
         FROM credshard_purged WHERE {tombstones}
         ORDER BY 1, 2, 3"
    )
}

/// Groups the rows of [`fetch_statement`] by credential.
fn fetched(rows: Vec<tokio_postgres::Row>) -> Vec<Fetched> {
    let mut all: Vec<Fetched> = Vec::new();
    for row in rows {
        let id: String = row.get(0);
        if all.last().is_none_or(|last| last.id != id) {
            all.push(Fetched { id, ..Fetched::default() });
        }
        let credential = all.last_mut().expect("pushed above");
        match row.get::<_, i16>(1) {
            0 => credential.records.push(row.get(3)),
            1 => {
                credential.state.pending = row.get(3);
                credential.state.deleted_at_ms = row.get(4);
                credential.state.purge_at_ms = row.get(5);
                credential.state.policy = row.get(6);
            }
            _ => credential.state.purged_version = row.get(2),
        }
    }
    all
}

/// Several credentials in one query: each one's kept versions and state (see [`Fetched`]);
/// an id the database knows nothing of is not in the answer.
///
/// # Errors
/// Database errors.
pub async fn credentials(client: &impl GenericClient, ids: &[String]) -> Result<Vec<Fetched>, DbError> {
    static STATEMENT: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| fetch_statement("id = ANY($1)", true));
    let statement = client.prepare_cached(&STATEMENT).await?;
    Ok(fetched(client.query(&statement, &[&ids]).await?))
}

/// Every credential (see [`Fetched`]) without the last versions of purged ids (a table of
/// every id ever created, which an instance needs only as a hint), in one snapshot.
///
/// # Errors
/// Database errors.
pub async fn all_credentials(client: &impl GenericClient) -> Result<Vec<Fetched>, DbError> {
    Ok(fetched(client.query(&fetch_statement("true", false), &[]).await?))
}

/// What changed of credentials an instance already holds: for each `(id, after)`, the kept
/// versions from `after` up, oldest first, the oldest version the database keeps (`None`:
/// the credential is gone), and its state, read in one snapshot. An instance that holds
/// version `after` reads only what is new instead of every kept version again; version
/// `after` itself comes too, so it can tell that what it holds is still what the database
/// has (a credential purged and created again by a build that restarted its versions has
/// different versions under the same numbers).
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
            "SELECT w.id, (SELECT min(k.version) FROM credshard_versions k WHERE k.id = w.id), v.record,
                    c.deleted_at_ms, c.purge_at_ms, c.pending, c.policy
             FROM unnest($1::text[], $2::int8[]) AS w(id, after)
             LEFT JOIN credshard_credentials c ON c.id = w.id
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
                state: StateRow {
                    deleted_at_ms: row.get::<_, Option<i64>>(3).unwrap_or(0),
                    purge_at_ms: row.get::<_, Option<i64>>(4).unwrap_or(0),
                    pending: row.get(5),
                    policy: row.get(6),
                    purged_version: 0,
                },
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
    pub state: StateRow,
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
/// `owner` is empty; live credentials only (not deleted, and no expiry or one after `now_ms`); up to `limit`
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
                   WHERE c.scope = $1 AND (c.expires_at_ms = 0 OR c.expires_at_ms > $2) AND c.purge_at_ms = 0
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
                     AND (c.expires_at_ms = 0 OR c.expires_at_ms > $3) AND c.purge_at_ms = 0
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

/// Up to `limit` deleted credentials whose recovery window has ended at `now_ms`, soonest
/// first: (id, current version, purge time).
///
/// # Errors
/// Database errors.
pub async fn due_purges(
    client: &impl GenericClient,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<(String, i64, i64)>, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT id, version, purge_at_ms FROM credshard_credentials
             WHERE purge_at_ms <> 0 AND purge_at_ms <= $1 ORDER BY purge_at_ms LIMIT $2",
        )
        .await?;
    let rows = client.query(&statement, &[&now_ms, &limit]).await?;
    Ok(rows.into_iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect())
}

/// One committed change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub id: String,
    pub version: i64,
    pub kind: ChangeKind,
    /// WATCH's change code (0 in entries written before migration 5).
    pub change: i16,
    pub owner: String,
    pub scope: String,
    pub at_ms: i64,
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
            "SELECT seq, id, version, kind, change, owner, scope, at_ms FROM credshard_changes
             WHERE seq > $1 ORDER BY seq LIMIT $2",
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
                change: row.get(4),
                owner: row.get(5),
                scope: row.get(6),
                at_ms: row.get(7),
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
