//! The tables, and the versioned migrations that create them. credshard applies them itself
//! at start, in one transaction under an advisory lock: instances that start together wait for
//! each other, and each migration is applied exactly once.

use deadpool_postgres::Client;

use super::DbError;

/// The advisory lock taken while migrating ("cred" in ASCII).
const MIGRATION_LOCK: i64 = 0x6372_6564;

/// Every migration, in order; a migration is never edited once released, only followed.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "credentials, kept versions, change log, key ring",
        "
    CREATE TABLE credshard_keyring (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        generation bigint NOT NULL,
        ring bytea NOT NULL
    );
    -- One row per credential: its current version and the columns LIST and expiry use.
    CREATE TABLE credshard_credentials (
        id text PRIMARY KEY,
        version bigint NOT NULL CHECK (version > 0),
        owner text NOT NULL,
        scope text NOT NULL,
        expires_at_ms bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX credshard_credentials_owner ON credshard_credentials (owner, id);
    CREATE INDEX credshard_credentials_scope ON credshard_credentials (scope text_pattern_ops, id);
    CREATE INDEX credshard_credentials_expiry ON credshard_credentials (expires_at_ms)
        WHERE expires_at_ms <> 0;
    -- One row per kept version: the archived record, verbatim (ciphertext only).
    CREATE TABLE credshard_versions (
        id text NOT NULL REFERENCES credshard_credentials (id) ON DELETE CASCADE,
        version bigint NOT NULL,
        record bytea NOT NULL,
        PRIMARY KEY (id, version)
    );
    -- Every committed change, in the transaction that made it; instances follow it.
    CREATE TABLE credshard_changes (
        seq bigserial PRIMARY KEY,
        id text NOT NULL,
        version bigint NOT NULL,
        kind smallint NOT NULL,
        at_ms bigint NOT NULL
    );
    CREATE INDEX credshard_changes_at ON credshard_changes (at_ms);
    ",
    ),
    (
        2,
        "change log trimmed by sequence, without an index on its time",
        "
    -- Every write maintained this index only for the trimming once a minute; the trim now
    -- walks the primary key from the oldest entry instead.
    DROP INDEX credshard_changes_at;
    ",
    ),
    (
        3,
        "LIST pages in byte order from the indexes",
        r#"
    -- LIST sorts by (scope, id) within an owner and by id within a scope, in byte order (as
    -- the shards' own indexes do), and pages with a cursor: indexes in exactly that order.
    DROP INDEX credshard_credentials_owner;
    DROP INDEX credshard_credentials_scope;
    CREATE INDEX credshard_credentials_owner_list
        ON credshard_credentials (owner, scope COLLATE "C", id COLLATE "C");
    CREATE INDEX credshard_credentials_scope_list
        ON credshard_credentials (scope, id COLLATE "C");
    "#,
    ),
    (
        4,
        "a round of writes is one statement: no foreign key trigger per kept version",
        "
    -- The key checked every inserted version against its credential with a trigger query
    -- (a tenth of the database's time per write, profiled). Its cascade is kept, once per
    -- statement instead of once per row: whatever deletes credentials (a round, the
    -- sweeper, an instance of a build older than this migration, an operator) takes their
    -- versions with them.
    ALTER TABLE credshard_versions DROP CONSTRAINT IF EXISTS credshard_versions_id_fkey;
    CREATE FUNCTION credshard_drop_deleted_versions() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM credshard_versions v USING deleted d WHERE v.id = d.id;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER credshard_credentials_deleted AFTER DELETE ON credshard_credentials
        REFERENCING OLD TABLE AS deleted
        FOR EACH STATEMENT EXECUTE FUNCTION credshard_drop_deleted_versions();
    ",
    ),
    (
        5,
        "recoverable deletes, pending versions, policies, tombstones; the change log says what happened",
        "
    -- A deleted credential stays (unreadable) until its purge time; a pending version (STAGE)
    -- and a policy (SET_POLICY) live beside the current version. None of them is a version.
    ALTER TABLE credshard_credentials
        ADD COLUMN deleted_at_ms bigint NOT NULL DEFAULT 0,
        ADD COLUMN purge_at_ms bigint NOT NULL DEFAULT 0,
        ADD COLUMN pending bytea,
        ADD COLUMN pending_version bigint NOT NULL DEFAULT 0,
        ADD COLUMN policy bytea;
    CREATE INDEX credshard_credentials_purge ON credshard_credentials (purge_at_ms)
        WHERE purge_at_ms <> 0;
    -- The last version of every purged id, so that one written again continues after it.
    CREATE TABLE credshard_purged (
        id text PRIMARY KEY,
        version bigint NOT NULL
    );
    -- What a watcher is told: the change (WATCH's code; 0 in entries older than this
    -- migration), and the credential's owner and scope for its filters and its token's reach.
    ALTER TABLE credshard_changes
        ADD COLUMN change smallint NOT NULL DEFAULT 0,
        ADD COLUMN owner text NOT NULL DEFAULT '',
        ADD COLUMN scope text NOT NULL DEFAULT '';
    ",
    ),
];

/// Applies the migrations the database does not have yet; returns how many it applied.
///
/// # Errors
/// Database errors; [`DbError::Corrupt`] when the database has a migration this build does
/// not know (a newer credshard migrated it: refuse rather than misread it).
pub async fn migrate(client: &mut Client) -> Result<usize, DbError> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS credshard_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let applied: i32 = transaction
        .query_one("SELECT coalesce(max(version), 0) FROM credshard_migrations", &[])
        .await?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |(version, _, _)| *version);
    if applied > known {
        return Err(DbError::Corrupt(format!(
            "the database is at schema version {applied}, newer than this credshard knows ({known}): upgrade credshard"
        )));
    }
    let mut count = 0;
    for (version, name, sql) in MIGRATIONS.iter().filter(|(version, _, _)| *version > applied) {
        transaction.batch_execute(sql).await?;
        transaction
            .execute("INSERT INTO credshard_migrations (version, name) VALUES ($1, $2)", &[version, name])
            .await?;
        tracing::info!(version, name, "applied a database migration");
        count += 1;
    }
    transaction.commit().await?;
    Ok(count)
}
