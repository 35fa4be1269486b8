//! The PostgreSQL store (deadpool-postgres). Migrations run at connect under an
//! advisory lock, so several workers starting together apply them once.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use super::{Batch, Claim, Fence, RowChange, Store, StoreError};
use crate::model::{
    Attendance, ChatMessage, ConnRef, ContactsChange, DirectMessage, InboxChange, Notification,
    OnlineUser, ParticipantRecord, SessionRecord,
};

/// Applied in order, each once; never edit one that has shipped, add the next.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jam_sessions (
    tenant      text        NOT NULL,
    id          text        NOT NULL,
    state       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);
CREATE TABLE jam_messages (
    tenant      text   NOT NULL,
    session_id  text   NOT NULL,
    seq         bigint NOT NULL,
    id          text   NOT NULL,
    user_id     text   NOT NULL,
    user_name   text   NOT NULL,
    message     text   NOT NULL,
    created_at  bigint NOT NULL,
    PRIMARY KEY (tenant, session_id, seq)
);
CREATE TABLE jam_commands (
    id          text        PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"#,
    r#"
CREATE TABLE jam_direct_messages (
    tenant       text   NOT NULL,
    id           text   NOT NULL,
    sender_id    text   NOT NULL,
    sender_name  text   NOT NULL,
    receiver_id  text   NOT NULL,
    content      text   NOT NULL,
    created_at   bigint NOT NULL,
    PRIMARY KEY (tenant, id)
);
-- One index serves both directions: the pair is stored as given and queried with OR.
CREATE INDEX jam_direct_messages_pair ON jam_direct_messages (tenant, sender_id, receiver_id, created_at);
"#,
    // Partitions with fencing tokens and high-water marks replace the applied-id table;
    // sessions record their partition; messages outlive their session (retention purge
    // only), so a message is keyed by its own id and read back from its session's creation.
    r#"
CREATE TABLE jam_partitions (
    part     int    PRIMARY KEY,
    fence    bigint NOT NULL,
    applied  text
);
-- -1: stored before partitions were recorded; every owner loads and filters those.
ALTER TABLE jam_sessions ADD COLUMN part int NOT NULL DEFAULT -1;
CREATE INDEX jam_sessions_part ON jam_sessions (part);
DROP TABLE jam_commands;
ALTER TABLE jam_messages DROP CONSTRAINT jam_messages_pkey;
ALTER TABLE jam_messages ADD PRIMARY KEY (tenant, session_id, id);
CREATE INDEX jam_messages_seq ON jam_messages (tenant, session_id, seq);
CREATE INDEX jam_messages_created ON jam_messages (created_at);
CREATE INDEX jam_direct_messages_created ON jam_direct_messages (created_at);
"#,
    // Attendance (show-chat's ShowCheckin): outlives the session, like its messages.
    r#"
CREATE TABLE jam_attendance (
    tenant          text    NOT NULL,
    session_id      text    NOT NULL,
    user_id         text    NOT NULL,
    user_name       text    NOT NULL,
    host            boolean NOT NULL,
    checked_in_at   bigint  NOT NULL,
    checked_out_at  bigint,
    PRIMARY KEY (tenant, session_id, user_id)
);
"#,
    // Notification inboxes (dj-system's notifications): ids count per user.
    r#"
CREATE TABLE jam_notifications (
    tenant      text   NOT NULL,
    user_id     text   NOT NULL,
    id          bigint NOT NULL,
    type        text   NOT NULL,
    priority    text   NOT NULL,
    title       text   NOT NULL,
    message     text   NOT NULL,
    data        jsonb  NOT NULL,
    created_at  bigint NOT NULL,
    read_at     bigint,
    PRIMARY KEY (tenant, user_id, id)
);
"#,
    // Contacts (who watches whom) and who is online, for ws-chat-server's presence.
    r#"
CREATE TABLE jam_contacts (
    tenant      text NOT NULL,
    user_id     text NOT NULL,
    contact_id  text NOT NULL,
    source      text NOT NULL,
    PRIMARY KEY (tenant, user_id, contact_id, source)
);
CREATE INDEX jam_contacts_watchers ON jam_contacts (tenant, contact_id);
CREATE TABLE jam_online (
    tenant   text  NOT NULL,
    user_id  text  NOT NULL,
    part     int   NOT NULL,
    conns    jsonb NOT NULL,
    PRIMARY KEY (tenant, user_id)
);
CREATE INDEX jam_online_part ON jam_online (part);
"#,
    // Participants get rows of their own, written when they change (issue 8): the
    // session's row stops carrying them.
    r#"
CREATE TABLE jam_participants (
    tenant      text  NOT NULL,
    session_id  text  NOT NULL,
    user_id     text  NOT NULL,
    state       jsonb NOT NULL,
    PRIMARY KEY (tenant, session_id, user_id)
);
INSERT INTO jam_participants (tenant, session_id, user_id, state)
    SELECT s.tenant, s.id, p->>'id', p
    FROM jam_sessions s, jsonb_array_elements(coalesce(s.state->'participants', '[]'::jsonb)) AS p
    ON CONFLICT DO NOTHING;
UPDATE jam_sessions SET state = state - 'participants' WHERE state ? 'participants';
"#,
    // The chat path commits in one statement (`CHAT_SQL`): a stale fence has to undo the
    // whole statement, so it raises, naming the partition.
    r#"
CREATE FUNCTION jam_fenced(part int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'partition % is fenced', part USING ERRCODE = 'JAMFN', DETAIL = part::text;
END $$;
"#,
    // Listings read a page of a tenant's public, active sessions from an index instead of
    // every row of the tenant (`LIST_SESSIONS_SQL`).
    r#"
ALTER TABLE jam_sessions
    ADD COLUMN listed boolean GENERATED ALWAYS AS
        (state->>'status' = 'active' AND (state->>'is_private') = 'false') STORED,
    ADD COLUMN created_at bigint GENERATED ALWAYS AS ((state->>'created_at')::bigint) STORED;
CREATE INDEX jam_sessions_listed ON jam_sessions (tenant, created_at DESC, id COLLATE "C" DESC)
    WHERE listed;
"#,
    // Attendance lists are read in pages, in check-in order (`ATTENDANCE_PAGE_SQL`).
    r#"
CREATE INDEX jam_attendance_order
    ON jam_attendance (tenant, session_id, checked_in_at, user_id COLLATE "C");
"#,
];

/// How long a transaction may sit idle (its client paused or gone) before the server ends it.
const STALLED_TX: Duration = Duration::from_secs(3);
/// The longest any statement may run: the server cancels it after that (the caller sees an
/// error and retries with back-off). The hot path's statements take milliseconds; the
/// migrations and the retention purge, which may take long on large tables, lift it for
/// their own transaction.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// A server that stops answering (host down, network cut) is noticed by the kernel within
/// about this long, for idle connections through keepalives and for unacknowledged writes
/// through TCP_USER_TIMEOUT; the connection then fails instead of waiting for good.
const DEAD_PEER: Duration = Duration::from_secs(30);

/// Lift [`STATEMENT_TIMEOUT`] for the rest of `tx`.
async fn unbounded(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(db)
}

fn db(e: tokio_postgres::Error) -> StoreError {
    metrics::counter!("jam_pg_errors_total").increment(1);
    let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
    if code.starts_with("22") || code.starts_with("23") {
        return StoreError::Refused { code, source: e };
    }
    StoreError::Db(e)
}

/// The fences first in meaning: they lock the partitions' rows, so a claim cannot slip in
/// between; a partition not returned means another owner claimed it. Parameters $1–$3.
macro_rules! fence_sql {
    () => {
        "UPDATE jam_partitions p SET applied = coalesce(u.applied, p.applied)
     FROM UNNEST($1::int[], $2::bigint[], $3::text[]) AS u(part, fence, applied)
     WHERE p.part = u.part AND p.fence = u.fence
     RETURNING p.part"
    };
}
/// A group's chat messages, appended; the eight parameters' numbers are given (tenant,
/// session, seq, id, user, name, message, created).
macro_rules! messages_sql {
    ($t:literal, $s:literal, $q:literal, $i:literal, $u:literal, $n:literal, $m:literal, $c:literal) => {
        concat!(
            "INSERT INTO jam_messages (tenant, session_id, seq, id, user_id, user_name, message, created_at)
     SELECT * FROM UNNEST($", $t, "::text[], $", $s, "::text[], $", $q, "::bigint[], $", $i,
            "::text[], $", $u, "::text[], $", $n, "::text[], $", $m, "::text[], $", $c, "::bigint[])
     ON CONFLICT DO NOTHING"
        )
    };
}
const FENCE_SQL: &str = fence_sql!();
/// A group that holds only fences and chat messages (the hot path) in one statement, run
/// on its own (autocommit): one round trip instead of BEGIN, the statements and COMMIT.
/// The fences lock their rows first, as in `FENCE_SQL`; a partition whose fence did not
/// match raises `FENCED_SQLSTATE` (`jam_fenced`), which undoes the statement whole.
const CHAT_SQL: &str = concat!(
    "WITH f AS (",
    fence_sql!(),
    "), m AS (",
    messages_sql!(4, 5, 6, 7, 8, 9, 10, 11),
    ") SELECT jam_fenced(w) FROM unnest($1::int[]) AS w WHERE w NOT IN (SELECT part FROM f)"
);
/// What `jam_fenced` raises; its detail is the partition.
const FENCED_SQLSTATE: &str = "JAMFN";
const UPSERT_SQL: &str = "INSERT INTO jam_sessions (tenant, id, state, part)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::jsonb[], $4::int[])
     ON CONFLICT (tenant, id) DO UPDATE SET state = excluded.state, part = excluded.part, updated_at = now()";
const MESSAGES_SQL: &str = messages_sql!(1, 2, 3, 4, 5, 6, 7, 8);
const PARTICIPANTS_SQL: &str = "INSERT INTO jam_participants (tenant, session_id, user_id, state)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[])
     ON CONFLICT (tenant, session_id, user_id) DO UPDATE SET state = excluded.state";
/// Participants gone ($1–$3), and every row of the sessions in $4–$5 but the ones this
/// group upserts ($6–$8): whatever order the statements run in, the result is the same.
const PARTICIPANTS_GONE_SQL: &str = "DELETE FROM jam_participants p
     WHERE (p.tenant, p.session_id, p.user_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]))
        OR ((p.tenant, p.session_id) IN (SELECT * FROM UNNEST($4::text[], $5::text[]))
            AND (p.tenant, p.session_id, p.user_id) NOT IN (SELECT * FROM UNNEST($6::text[], $7::text[], $8::text[])))";
const DELETE_SQL: &str = "DELETE FROM jam_sessions
     WHERE (tenant, id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))";
const DIRECT_SQL: &str = "INSERT INTO jam_direct_messages (tenant, id, sender_id, sender_name, receiver_id, content, created_at)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
     ON CONFLICT DO NOTHING";

/// One row per (tenant, session, user) in the batch: the last change of each (see
/// `last_per_user`), so one statement applies them in order.
const ATTENDANCE_SQL: &str = "INSERT INTO jam_attendance (tenant, session_id, user_id, user_name, host, checked_in_at, checked_out_at)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::bigint[], $7::bigint[])
     ON CONFLICT (tenant, session_id, user_id) DO UPDATE
     SET checked_out_at = excluded.checked_out_at, user_name = excluded.user_name";

const NOTIFY_SQL: &str = "INSERT INTO jam_notifications (tenant, user_id, id, type, priority, title, message, data, created_at, read_at)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::bigint[], $10::bigint[])
     ON CONFLICT DO NOTHING";
const READ_SQL: &str = "UPDATE jam_notifications n SET read_at = u.at
     FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS u(t, usr, i, at)
     WHERE n.tenant = u.t AND n.user_id = u.usr AND n.id = u.i AND n.read_at IS NULL";
const READ_ALL_SQL: &str = "UPDATE jam_notifications n SET read_at = u.at
     FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS u(t, usr, at)
     WHERE n.tenant = u.t AND n.user_id = u.usr AND n.read_at IS NULL";
const UNNOTIFY_SQL: &str = "DELETE FROM jam_notifications
     WHERE (tenant, user_id, id) IN (SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]))";

const NOTIFICATIONS_SQL: &str =
    "SELECT id, type, priority, title, message, data, created_at, read_at FROM jam_notifications
     WHERE tenant = $1 AND user_id = $2 AND id < $3 AND (NOT $5 OR read_at IS NULL)
     ORDER BY id DESC LIMIT $4";
/// A page of a session's attendance, first check-in first (`jam_attendance_order`). The
/// first page starts after (i64::MIN, ''), which every row sorts after.
const ATTENDANCE_PAGE_SQL: &str = "SELECT user_id, user_name, host, checked_in_at, checked_out_at FROM jam_attendance
     WHERE tenant = $1 AND session_id = $2 AND (checked_in_at, user_id COLLATE \"C\") > ($3, $4::text COLLATE \"C\")
     ORDER BY checked_in_at, user_id COLLATE \"C\" LIMIT $5";
/// A page of a tenant's listed sessions (the partial index `jam_sessions_listed`), newest first.
const LIST_SESSIONS_SQL: &str = "SELECT s.state, (SELECT count(*) FROM jam_participants p
                              WHERE p.tenant = s.tenant AND p.session_id = s.id)
     FROM jam_sessions s
     WHERE s.tenant = $1 AND s.listed AND (s.created_at, s.id COLLATE \"C\") < ($2, $3::text COLLATE \"C\")
     ORDER BY s.created_at DESC, s.id COLLATE \"C\" DESC LIMIT $4";
const DIRECT_HISTORY_SQL: &str = "SELECT id, sender_id, sender_name, receiver_id, content, created_at FROM jam_direct_messages
     WHERE tenant = $1 AND ((sender_id = $2 AND receiver_id = $3) OR (sender_id = $3 AND receiver_id = $2))
       AND (created_at, id COLLATE \"C\") < ($4, $6::text COLLATE \"C\")
     ORDER BY created_at DESC, id COLLATE \"C\" DESC LIMIT $5";
/// The watchers of many users at once: row `i` (from 1) answers the `i`-th user asked.
const WATCHERS_SQL: &str = "SELECT u.i, w.user_id
     FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS u(tenant, user_id, i)
     JOIN jam_contacts w ON w.tenant = u.tenant AND w.contact_id = u.user_id
     GROUP BY u.i, w.user_id ORDER BY u.i, w.user_id COLLATE \"C\"";
/// The inboxes of many users at once, numbered as in `WATCHERS_SQL`.
const INBOXES_SQL: &str = "SELECT u.i, n.id, n.read_at IS NOT NULL
     FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS u(tenant, user_id, i)
     JOIN jam_notifications n ON n.tenant = u.tenant AND n.user_id = u.user_id";

/// A read through a statement prepared once per connection: no Parse round trip and no
/// parsing and planning from scratch on every call.
async fn read(
    c: &deadpool_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(db)?;
    c.query(&st, params).await.map_err(db)
}

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

/// The pool of a store: its sessions' settings (time limits, keep-alives) and a queue
/// that hands out the connection returned last.
fn pool(url: &str, max_size: usize) -> Result<Pool, StoreError> {
    let mut cfg = tokio_postgres::Config::from_str(url).map_err(db)?;
    cfg.connect_timeout(Duration::from_secs(5));
    // A worker paused or cut off inside a transaction must not hold its locks (the
    // partition row above all) until it wakes: the server aborts such a transaction
    // after a few idle seconds, so a new owner's claim waits that long at most.
    //
    // Prepared statements keep one generic plan: with a group of one message, the chat
    // commit's arrays make a custom plan look cheaper than the generic one, and PostgreSQL
    // then planned it again at every commit (a quarter of its CPU at 500 msgs/s; decision
    // 29). Every statement here is a key lookup, an insert or a join on unnested arrays,
    // whose plan does not depend on the values; the retention purge asks for custom plans.
    let ours = format!(
        "-c idle_in_transaction_session_timeout={} -c statement_timeout={} -c plan_cache_mode=force_generic_plan",
        STALLED_TX.as_millis(),
        STATEMENT_TIMEOUT.as_millis()
    );
    // Options given in the URL (`?options=-c%20statement_timeout%3D5000`) come after
    // ours, so an operator's setting wins.
    let options = match cfg.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{ours} {theirs}"),
        _ => ours,
    };
    cfg.options(options);
    cfg.keepalives(true)
        .keepalives_idle(DEAD_PEER / 3)
        .keepalives_interval(DEAD_PEER / 6)
        .keepalives_retries(4)
        .tcp_user_timeout(DEAD_PEER);
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(max_size)
        // The connection returned last is handed out next: the committer, which takes
        // one per group, keeps reusing one warm backend instead of waking each idle one
        // in turn (deadpool's default is FIFO).
        .queue_mode(QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Pool(Box::new(e)))
}

impl PgStore {
    pub async fn connect(url: &str, max_size: usize) -> Result<Self, StoreError> {
        let store = Self {
            pool: pool(url, max_size)?,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// One read for many users (`WATCHERS_SQL`, `INBOXES_SQL`): each row's first column
    /// numbers the user it answers; `row` takes the rest. The answers in `users`' order.
    async fn per_user<T>(
        &self,
        op: &'static str,
        sql: &str,
        users: &[(String, String)],
        row: fn(&tokio_postgres::Row) -> T,
    ) -> Result<Vec<Vec<T>>, StoreError> {
        let mut out: Vec<Vec<T>> = users.iter().map(|_| Vec::new()).collect();
        if users.is_empty() {
            return Ok(out);
        }
        let t = Instant::now();
        let c = self.conn().await?;
        let (tenants, ids): (Vec<&str>, Vec<&str>) =
            users.iter().map(|(t, u)| (t.as_str(), u.as_str())).unzip();
        for r in read(&c, sql, &[&tenants, &ids]).await? {
            let i = usize::try_from(r.get::<_, i64>(0) - 1).unwrap_or(usize::MAX);
            if let Some(answer) = out.get_mut(i) {
                answer.push(row(&r));
            }
        }
        observe(op, t);
        Ok(out)
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let t = Instant::now();
        let c = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(Box::new(e)));
        let waited = t.elapsed().as_secs_f64();
        jam_shared::telemetry::observe("jam_pg_pool_wait_seconds", None, waited);
        c
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        // A migration may rewrite a large table, and a second worker waits here for the
        // first one's: neither is bound by the statement timeout.
        unbounded(&tx).await?;
        tx.execute("SELECT pg_advisory_xact_lock(7362831)", &[])
            .await
            .map_err(db)?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS jam_migrations (version int PRIMARY KEY)",
            &[],
        )
        .await
        .map_err(db)?;
        let row = tx
            .query_one("SELECT coalesce(max(version), 0) FROM jam_migrations", &[])
            .await
            .map_err(db)?;
        let applied: i32 = row.get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            tx.batch_execute(sql).await.map_err(db)?;
            tx.execute(
                "INSERT INTO jam_migrations (version) VALUES ($1)",
                &[&(i as i32 + 1)],
            )
            .await
            .map_err(db)?;
            tracing::info!(version = i + 1, "applied migration");
        }
        tx.commit().await.map_err(db)
    }
}

fn observe(op: &'static str, t: Instant) {
    let secs = t.elapsed().as_secs_f64();
    jam_shared::telemetry::observe("jam_pg_query_duration_seconds", Some(("op", op)), secs);
}

#[async_trait]
impl Store for PgStore {
    async fn claim_partition(&self, partition: u32) -> Result<Claim, StoreError> {
        let t = Instant::now();
        let c = self.conn().await?;
        let row = c
            .query_one(
                "INSERT INTO jam_partitions (part, fence) VALUES ($1, 1)
                 ON CONFLICT (part) DO UPDATE SET fence = jam_partitions.fence + 1
                 RETURNING fence, applied",
                &[&(partition as i32)],
            )
            .await
            .map_err(db)?;
        observe("claim_partition", t);
        Ok(Claim {
            token: row.get(0),
            applied: row.get(1),
        })
    }

    async fn load_sessions(&self, partition: u32) -> Result<Vec<SessionRecord>, StoreError> {
        let t = Instant::now();
        let c = self.conn().await?;
        let rows = read(
            &c,
            "SELECT s.state, (SELECT max(m.seq) FROM jam_messages m
                                  WHERE m.tenant = s.tenant AND m.session_id = s.id
                                    AND m.created_at >= (s.state->>'created_at')::bigint)
                 FROM jam_sessions s WHERE s.part = $1 OR s.part < 0",
            &[&(partition as i32)],
        )
        .await?;
        let prows = read(
            &c,
            "SELECT p.tenant, p.session_id, p.state FROM jam_participants p
                 JOIN jam_sessions s ON s.tenant = p.tenant AND s.id = p.session_id
                 WHERE s.part = $1 OR s.part < 0
                 ORDER BY p.tenant, p.session_id, (p.state->>'joined_at')::bigint, p.user_id",
            &[&(partition as i32)],
        )
        .await?;
        observe("load_sessions", t);
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        let mut participants: HashMap<(String, String), Vec<ParticipantRecord>> = HashMap::new();
        for r in prows {
            let p: ParticipantRecord = serde_json::from_value(r.get(2)).map_err(corrupt)?;
            participants
                .entry((r.get(0), r.get(1)))
                .or_default()
                .push(p);
        }
        rows.into_iter()
            .map(|r| {
                let v: serde_json::Value = r.get(0);
                let max_seq: Option<i64> = r.get(1);
                let mut rec: SessionRecord = serde_json::from_value(v).map_err(corrupt)?;
                rec.last_seq = rec.last_seq.max(max_seq.unwrap_or(0));
                let key = (rec.tenant.clone(), rec.id.clone());
                rec.participants = participants.remove(&key).unwrap_or_default();
                Ok(rec)
            })
            .collect()
    }

    async fn list_sessions(
        &self,
        tenant: &str,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<(SessionRecord, usize)>, StoreError> {
        let t = Instant::now();
        let c = self.conn().await?;
        let (at, id) = before.unwrap_or((i64::MAX, ""));
        let limit = limit as i64;
        let rows = read(&c, LIST_SESSIONS_SQL, &[&tenant, &at, &id, &limit]).await?;
        observe("list_sessions", t);
        rows.into_iter()
            .map(|r| {
                let v: serde_json::Value = r.get(0);
                let n: i64 = r.get(1);
                let rec =
                    serde_json::from_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((rec, n as usize))
            })
            .collect()
    }

    async fn commit_group(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        let mut batches: Vec<&Batch> = batches.iter().copied().filter(|b| !b.is_empty()).collect();
        if batches.is_empty() {
            return Ok(());
        }
        // Partition order: two workers that both write a partition during a hand-over
        // take its rows' locks in the same order.
        batches.sort_by_key(|b| b.fence.as_ref().map(|f| f.partition));
        let rows = GroupRows::of(&batches)?;
        let t = Instant::now();
        let mut c = self.conn().await?;
        if rows.chat_only(&batches) {
            rows.write_chat(&c).await?;
            observe("commit", t);
            return Ok(());
        }
        let tx = c.transaction().await.map_err(db)?;
        // One statement per kind of row for the whole group, each prepared once per
        // connection, all of them sent together (tokio-postgres pipelines concurrent
        // queries): one round trip, then the commit. The fences are checked before
        // committing; if one is stale, dropping the transaction rolls back the rest.
        let fenced = rows.write(&tx, &batches).await.map_err(db)?;
        let stale = batches
            .iter()
            .filter_map(|b| b.fence.as_ref())
            .find(|f| !fenced.contains(&(f.partition as i32)));
        if let Some(f) = stale {
            return Err(StoreError::Fenced(f.partition));
        }
        tx.commit().await.map_err(db)?;
        observe("commit", t);
        Ok(())
    }

    async fn history(
        &self,
        tenant: &str,
        session_id: &str,
        since: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let t = Instant::now();
        let c = self.conn().await?;
        let rows = read(
            &c,
            "SELECT id, session_id, user_id, user_name, message, created_at, seq FROM jam_messages
                 WHERE tenant = $1 AND session_id = $2 AND seq < $3 AND created_at >= $5
                 ORDER BY seq DESC LIMIT $4",
            &[
                &tenant,
                &session_id,
                &before.unwrap_or(i64::MAX),
                &(limit as i64),
                &since,
            ],
        )
        .await?;
        observe("history", t);
        let mut out: Vec<ChatMessage> = rows
            .into_iter()
            .map(|r| ChatMessage {
                id: r.get(0),
                tenant: tenant.to_string(),
                session_id: r.get(1),
                user_id: r.get(2),
                user_name: r.get(3),
                message: r.get(4),
                created_at: r.get(5),
                seq: r.get(6),
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn direct_history(
        &self,
        tenant: &str,
        a: &str,
        b: &str,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<DirectMessage>, StoreError> {
        let t = Instant::now();
        let c = self.conn().await?;
        let (at, id) = before.unwrap_or((i64::MAX, ""));
        let limit = limit as i64;
        let rows = read(&c, DIRECT_HISTORY_SQL, &[&tenant, &a, &b, &at, &limit, &id]).await?;
        observe("direct_history", t);
        let mut out: Vec<DirectMessage> = rows
            .into_iter()
            .map(|r| DirectMessage {
                id: r.get(0),
                tenant: tenant.to_string(),
                sender_id: r.get(1),
                sender_name: r.get(2),
                receiver_id: r.get(3),
                content: r.get(4),
                created_at: r.get(5),
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn hosted(
        &self,
        tenant: &str,
        session_id: &str,
        user_id: &str,
    ) -> Result<bool, StoreError> {
        let t = Instant::now();
        let c = self.conn().await?;
        let rows = read(
            &c,
            "SELECT host FROM jam_attendance WHERE tenant = $1 AND session_id = $2 AND user_id = $3",
            &[&tenant, &session_id, &user_id],
        )
        .await?;
        observe("hosted", t);
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    async fn attendance(
        &self,
        tenant: &str,
        session_id: &str,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<Attendance>, StoreError> {
        let t = Instant::now();
        let c = self.conn().await?;
        let (at, user) = after.unwrap_or((i64::MIN, ""));
        let limit = limit as i64;
        let rows = read(
            &c,
            ATTENDANCE_PAGE_SQL,
            &[&tenant, &session_id, &at, &user, &limit],
        )
        .await?;
        observe("attendance", t);
        Ok(rows
            .into_iter()
            .map(|r| Attendance {
                tenant: tenant.to_string(),
                session_id: session_id.to_string(),
                user_id: r.get(0),
                user_name: r.get(1),
                host: r.get(2),
                checked_in_at: r.get(3),
                checked_out_at: r.get(4),
            })
            .collect())
    }

    async fn inboxes(
        &self,
        users: &[(String, String)],
    ) -> Result<Vec<Vec<(i64, bool)>>, StoreError> {
        self.per_user("inbox", INBOXES_SQL, users, |r| (r.get(1), r.get(2)))
            .await
    }

    async fn notifications(
        &self,
        tenant: &str,
        user_id: &str,
        before: Option<i64>,
        limit: usize,
        unread_only: bool,
    ) -> Result<Vec<Notification>, StoreError> {
        let t = Instant::now();
        let c = self.conn().await?;
        let before = before.unwrap_or(i64::MAX);
        let limit = limit as i64;
        let params: [&(dyn ToSql + Sync); 5] = [&tenant, &user_id, &before, &limit, &unread_only];
        let rows = read(&c, NOTIFICATIONS_SQL, &params).await?;
        observe("notifications", t);
        Ok(rows
            .into_iter()
            .map(|r| Notification {
                id: r.get(0),
                tenant: tenant.to_string(),
                user_id: user_id.to_string(),
                kind: r.get(1),
                priority: r.get(2),
                title: r.get(3),
                message: r.get(4),
                data: r.get(5),
                created_at: r.get(6),
                read_at: r.get(7),
            })
            .collect())
    }

    async fn load_online(&self, partition: u32) -> Result<Vec<OnlineUser>, StoreError> {
        let c = self.conn().await?;
        let rows = read(
            &c,
            "SELECT o.tenant, o.user_id, o.conns,
                        coalesce((SELECT array_agg(DISTINCT w.user_id) FROM jam_contacts w
                                  WHERE w.tenant = o.tenant AND w.contact_id = o.user_id), '{}')
                 FROM jam_online o WHERE o.part = $1",
            &[&(partition as i32)],
        )
        .await?;
        rows.into_iter()
            .map(|r| {
                let conns: serde_json::Value = r.get(2);
                Ok(OnlineUser {
                    tenant: r.get(0),
                    user_id: r.get(1),
                    conns: serde_json::from_value::<Vec<ConnRef>>(conns)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    watchers: r.get(3),
                })
            })
            .collect()
    }

    async fn watchers(&self, users: &[(String, String)]) -> Result<Vec<Vec<String>>, StoreError> {
        self.per_user("watchers", WATCHERS_SQL, users, |r| r.get(1))
            .await
    }

    async fn contacts_online(
        &self,
        tenant: &str,
        user_id: &str,
        ids: &[String],
    ) -> Result<Vec<(String, bool)>, StoreError> {
        let c = self.conn().await?;
        let rows = read(
            &c,
            "SELECT DISTINCT c.contact_id, o.user_id IS NOT NULL FROM jam_contacts c
                 LEFT JOIN jam_online o ON o.tenant = c.tenant AND o.user_id = c.contact_id
                 WHERE c.tenant = $1 AND c.user_id = $2 AND c.contact_id = ANY($3)
                 ORDER BY 1",
            &[&tenant, &user_id, &ids],
        )
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn purge_messages(&self, before: i64) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        // The first purge after a long pause may delete many rows: not bound by the
        // statement timeout (nothing waits on it; it holds no lock the hot path needs).
        unbounded(&tx).await?;
        // How many rows are older than `before` decides between the index and a scan:
        // planned for the value, not generically (the session's default, see `pool`).
        tx.batch_execute("SET LOCAL plan_cache_mode = auto")
            .await
            .map_err(db)?;
        let a = tx
            .execute("DELETE FROM jam_messages WHERE created_at < $1", &[&before])
            .await
            .map_err(db)?;
        let b = tx
            .execute(
                "DELETE FROM jam_direct_messages WHERE created_at < $1",
                &[&before],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(a + b)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.simple_query("SELECT 1").await.map_err(db)?;
        Ok(())
    }
}

/// A group's rows, column by column (one array per column, one statement per table).
struct GroupRows<'a> {
    fence_parts: Vec<i32>,
    fence_tokens: Vec<i64>,
    fence_applied: Vec<Option<&'a str>>,
    upsert_tenants: Vec<&'a str>,
    upsert_ids: Vec<&'a str>,
    upsert_states: Vec<serde_json::Value>,
    upsert_parts: Vec<i32>,
    participants: ParticipantRows<'a>,
    messages: Vec<&'a ChatMessage>,
    deletes: Vec<&'a (String, String)>,
    direct: Vec<&'a DirectMessage>,
    attendance: Vec<Attendance>,
}

/// A group's participant rows: upserts, and deletes (users gone, sessions cleared).
#[derive(Default)]
struct ParticipantRows<'a> {
    up: [Vec<&'a str>; 3],
    up_states: Vec<serde_json::Value>,
    gone: [Vec<&'a str>; 3],
    cleared: [Vec<&'a str>; 2],
}

impl<'a> ParticipantRows<'a> {
    fn is_empty(&self) -> bool {
        self.up_states.is_empty() && self.gone[0].is_empty() && self.cleared[0].is_empty()
    }

    fn of(batches: &[&'a Batch]) -> Result<Self, StoreError> {
        let mut rows = Self::default();
        for c in batches.iter().flat_map(|b| &b.participants) {
            let (t, sid) = (c.tenant.as_str(), c.session_id.as_str());
            match &c.row {
                RowChange::Upsert(p) => {
                    rows.up[0].push(t);
                    rows.up[1].push(sid);
                    rows.up[2].push(&p.id);
                    let state =
                        serde_json::to_value(p).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    rows.up_states.push(state);
                }
                RowChange::Delete(user_id) => {
                    rows.gone[0].push(t);
                    rows.gone[1].push(sid);
                    rows.gone[2].push(user_id);
                }
                RowChange::Clear => {
                    rows.cleared[0].push(t);
                    rows.cleared[1].push(sid);
                }
            }
        }
        Ok(rows)
    }

    async fn write(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        let up = async {
            if self.up_states.is_empty() {
                return Ok(0);
            }
            let st = tx.prepare_cached(PARTICIPANTS_SQL).await?;
            let [t, s, u] = &self.up;
            tx.execute(&st, &[t, s, u, &self.up_states]).await
        };
        let gone = async {
            if self.gone[0].is_empty() && self.cleared[0].is_empty() {
                return Ok(0);
            }
            let st = tx.prepare_cached(PARTICIPANTS_GONE_SQL).await?;
            let ([gt, gs, gu], [ct, cs], [ut, us, uu]) = (&self.gone, &self.cleared, &self.up);
            tx.execute(&st, &[gt, gs, gu, ct, cs, ut, us, uu]).await
        };
        let (a, b) = futures::try_join!(up, gone)?;
        Ok(a + b)
    }
}

/// One text column of a group's rows.
fn texts<'a, T: 'a>(rows: impl IntoIterator<Item = &'a T>, f: fn(&T) -> &str) -> Vec<&'a str> {
    rows.into_iter().map(f).collect()
}

fn part_of(b: &Batch) -> i32 {
    b.fence.as_ref().map_or(-1, |f| f.partition as i32)
}

/// A group's chat messages as the columns `MESSAGES_SQL` and `CHAT_SQL` take.
struct MessageColumns<'a> {
    text: [Vec<&'a str>; 6],
    seqs: Vec<i64>,
    created: Vec<i64>,
}

impl<'a> MessageColumns<'a> {
    fn of(m: &[&'a ChatMessage]) -> Self {
        let col = |f: fn(&ChatMessage) -> &str| texts(m.iter().copied(), f);
        Self {
            text: [
                col(|x| &x.tenant),
                col(|x| &x.session_id),
                col(|x| &x.id),
                col(|x| &x.user_id),
                col(|x| &x.user_name),
                col(|x| &x.message),
            ],
            seqs: m.iter().map(|x| x.seq).collect(),
            created: m.iter().map(|x| x.created_at).collect(),
        }
    }

    /// In `MESSAGES_SQL`'s order: tenant, session, seq, id, user, name, message, created.
    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        let [tenant, session, id, user, name, message] = &self.text;
        [
            tenant,
            session,
            &self.seqs,
            id,
            user,
            name,
            message,
            &self.created,
        ]
    }
}

/// A stale fence in `CHAT_SQL` is `Fenced`, with its partition; anything else a store error.
fn fenced_or_db(e: tokio_postgres::Error) -> StoreError {
    let fenced = e
        .as_db_error()
        .filter(|d| d.code().code() == FENCED_SQLSTATE)
        .and_then(|d| d.detail()?.parse().ok());
    match fenced {
        Some(p) => StoreError::Fenced(p),
        None => db(e),
    }
}

impl<'a> GroupRows<'a> {
    /// Whether the group writes fences and chat messages only: the hot path, one statement.
    fn chat_only(&self, batches: &[&Batch]) -> bool {
        !self.fence_parts.is_empty()
            && self.upsert_ids.is_empty()
            && self.participants.is_empty()
            && self.deletes.is_empty()
            && self.direct.is_empty()
            && self.attendance.is_empty()
            && batches
                .iter()
                .all(|b| b.inbox.is_empty() && b.online.is_empty() && b.contacts.is_empty())
    }

    /// `FENCE_SQL`'s parameters ($1–$3 of `CHAT_SQL` too).
    fn fence_params(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.fence_parts, &self.fence_tokens, &self.fence_applied]
    }

    /// Commit a chat-only group in one autocommit statement ([`CHAT_SQL`]).
    async fn write_chat(&self, c: &deadpool_postgres::Client) -> Result<(), StoreError> {
        let cols = MessageColumns::of(&self.messages);
        let st = c.prepare_cached(CHAT_SQL).await.map_err(db)?;
        let params: Vec<_> = self
            .fence_params()
            .into_iter()
            .chain(cols.params())
            .collect();
        c.execute(&st, &params).await.map_err(fenced_or_db)?;
        Ok(())
    }

    fn of(batches: &[&'a Batch]) -> Result<Self, StoreError> {
        let fences: Vec<&Fence> = batches.iter().filter_map(|b| b.fence.as_ref()).collect();
        let upserts = || batches.iter().flat_map(|b| b.upserts.iter());
        Ok(Self {
            fence_parts: fences.iter().map(|f| f.partition as i32).collect(),
            fence_tokens: fences.iter().map(|f| f.token).collect(),
            fence_applied: fences.iter().map(|f| f.applied.as_deref()).collect(),
            upsert_tenants: upserts().map(|r| r.tenant.as_str()).collect(),
            upsert_ids: upserts().map(|r| r.id.as_str()).collect(),
            upsert_states: upserts()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            upsert_parts: batches
                .iter()
                .flat_map(|b| b.upserts.iter().map(|_| part_of(b)))
                .collect(),
            participants: ParticipantRows::of(batches)?,
            messages: batches.iter().flat_map(|b| &b.messages).collect(),
            deletes: batches.iter().flat_map(|b| &b.deletes).collect(),
            direct: batches.iter().flat_map(|b| &b.direct).collect(),
            // Per batch: a session's check-ins all come from its own partition.
            attendance: batches
                .iter()
                .flat_map(|b| last_per_user(&b.attendance))
                .collect(),
        })
    }

    /// Run the group's statements, pipelined on the transaction's connection; the
    /// partitions whose fence matched.
    async fn write(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        batches: &[&Batch],
    ) -> Result<Vec<i32>, tokio_postgres::Error> {
        // Inboxes, online users and contacts: per batch (rarer, several statements each).
        let people = futures::future::try_join_all(batches.iter().map(|b| async move {
            let inbox = inbox_changes(tx, &b.inbox).await?;
            let online = online_and_contacts(tx, &b.online, &b.contacts, part_of(b)).await?;
            Ok::<_, tokio_postgres::Error>(inbox + online)
        }));
        let (fenced, ..) = futures::try_join!(
            self.fence(tx),
            self.upsert_sessions(tx),
            self.participants.write(tx),
            self.insert_messages(tx),
            self.delete_sessions(tx),
            self.insert_direct(tx),
            self.upsert_attendance(tx),
            people
        )?;
        Ok(fenced)
    }

    async fn fence(&self, tx: &Tx<'_>) -> Result<Vec<i32>, tokio_postgres::Error> {
        if self.fence_parts.is_empty() {
            return Ok(Vec::new());
        }
        let st = tx.prepare_cached(FENCE_SQL).await?;
        let rows = tx.query(&st, &self.fence_params()).await?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0)).collect())
    }

    async fn upsert_sessions(&self, tx: &Tx<'_>) -> Result<u64, tokio_postgres::Error> {
        if self.upsert_ids.is_empty() {
            return Ok(0);
        }
        let st = tx.prepare_cached(UPSERT_SQL).await?;
        let params: [&(dyn ToSql + Sync); 4] = [
            &self.upsert_tenants,
            &self.upsert_ids,
            &self.upsert_states,
            &self.upsert_parts,
        ];
        tx.execute(&st, &params).await
    }

    async fn insert_messages(&self, tx: &Tx<'_>) -> Result<u64, tokio_postgres::Error> {
        if self.messages.is_empty() {
            return Ok(0);
        }
        let cols = MessageColumns::of(&self.messages);
        let st = tx.prepare_cached(MESSAGES_SQL).await?;
        tx.execute(&st, &cols.params()).await
    }

    async fn delete_sessions(&self, tx: &Tx<'_>) -> Result<u64, tokio_postgres::Error> {
        if self.deletes.is_empty() {
            return Ok(0);
        }
        let tenants: Vec<&str> = self.deletes.iter().map(|d| d.0.as_str()).collect();
        let ids: Vec<&str> = self.deletes.iter().map(|d| d.1.as_str()).collect();
        let st = tx.prepare_cached(DELETE_SQL).await?;
        tx.execute(&st, &[&tenants, &ids]).await
    }

    async fn insert_direct(&self, tx: &Tx<'_>) -> Result<u64, tokio_postgres::Error> {
        let d = &self.direct;
        if d.is_empty() {
            return Ok(0);
        }
        let col = |f: fn(&DirectMessage) -> &str| texts(d.iter().copied(), f);
        let created: Vec<i64> = d.iter().map(|x| x.created_at).collect();
        let st = tx.prepare_cached(DIRECT_SQL).await?;
        tx.execute(
            &st,
            &[
                &col(|x| &x.tenant),
                &col(|x| &x.id),
                &col(|x| &x.sender_id),
                &col(|x| &x.sender_name),
                &col(|x| &x.receiver_id),
                &col(|x| &x.content),
                &created,
            ],
        )
        .await
    }

    async fn upsert_attendance(&self, tx: &Tx<'_>) -> Result<u64, tokio_postgres::Error> {
        let a = &self.attendance;
        if a.is_empty() {
            return Ok(0);
        }
        let col = |f: fn(&Attendance) -> &str| texts(a, f);
        let hosts: Vec<bool> = a.iter().map(|x| x.host).collect();
        let ins: Vec<i64> = a.iter().map(|x| x.checked_in_at).collect();
        let outs: Vec<Option<i64>> = a.iter().map(|x| x.checked_out_at).collect();
        let st = tx.prepare_cached(ATTENDANCE_SQL).await?;
        tx.execute(
            &st,
            &[
                &col(|x| &x.tenant),
                &col(|x| &x.session_id),
                &col(|x| &x.user_id),
                &col(|x| &x.user_name),
                &hosts,
                &ins,
                &outs,
            ],
        )
        .await
    }
}

type Tx<'t> = deadpool_postgres::Transaction<'t>;

/// The last change of each (tenant, session, user) in a batch, keeping its first check-in:
/// a join and a leave in one batch end checked out, a leave and a rejoin checked in.
fn last_per_user(changes: &[Attendance]) -> Vec<Attendance> {
    let mut out: Vec<Attendance> = Vec::new();
    for a in changes {
        match out.iter_mut().find(|x| {
            x.tenant == a.tenant && x.session_id == a.session_id && x.user_id == a.user_id
        }) {
            Some(x) => {
                x.checked_out_at = a.checked_out_at;
                x.user_name = a.user_name.clone();
            }
            None => out.push(a.clone()),
        }
    }
    out
}

/// An inbox's changes in one batch: inserts, reads, read-alls and deletes (they commute:
/// the engine folds changes to a notification created in the batch into its insert).
async fn inbox_changes(
    tx: &deadpool_postgres::Transaction<'_>,
    changes: &[InboxChange],
) -> Result<u64, tokio_postgres::Error> {
    if changes.is_empty() {
        return Ok(0);
    }
    let inserts: Vec<&Notification> = changes
        .iter()
        .filter_map(|c| match c {
            InboxChange::Insert(n) => Some(n),
            _ => None,
        })
        .collect();
    let (mut rt, mut ru, mut ri, mut ra) = (vec![], vec![], vec![], vec![]);
    let (mut at, mut au, mut aa) = (vec![], vec![], vec![]);
    let (mut dt, mut du, mut di) = (vec![], vec![], vec![]);
    for c in changes {
        match c {
            InboxChange::Insert(_) => {}
            InboxChange::Read {
                tenant,
                user_id,
                id,
                at: when,
            } => {
                rt.push(tenant.as_str());
                ru.push(user_id.as_str());
                ri.push(*id);
                ra.push(*when);
            }
            InboxChange::ReadAll {
                tenant,
                user_id,
                at: when,
            } => {
                at.push(tenant.as_str());
                au.push(user_id.as_str());
                aa.push(*when);
            }
            InboxChange::Delete {
                tenant,
                user_id,
                id,
            } => {
                dt.push(tenant.as_str());
                du.push(user_id.as_str());
                di.push(*id);
            }
        }
    }
    let mut n = 0;
    if !inserts.is_empty() {
        let col =
            |f: fn(&Notification) -> String| inserts.iter().map(|x| f(x)).collect::<Vec<String>>();
        let ids: Vec<i64> = inserts.iter().map(|x| x.id).collect();
        let data: Vec<&serde_json::Value> = inserts.iter().map(|x| &x.data).collect();
        let created: Vec<i64> = inserts.iter().map(|x| x.created_at).collect();
        let read: Vec<Option<i64>> = inserts.iter().map(|x| x.read_at).collect();
        let st = tx.prepare_cached(NOTIFY_SQL).await?;
        n += tx
            .execute(
                &st,
                &[
                    &col(|x| x.tenant.clone()),
                    &col(|x| x.user_id.clone()),
                    &ids,
                    &col(|x| x.kind.clone()),
                    &col(|x| x.priority.clone()),
                    &col(|x| x.title.clone()),
                    &col(|x| x.message.clone()),
                    &data,
                    &created,
                    &read,
                ],
            )
            .await?;
    }
    if !rt.is_empty() {
        let st = tx.prepare_cached(READ_SQL).await?;
        n += tx.execute(&st, &[&rt, &ru, &ri, &ra]).await?;
    }
    if !at.is_empty() {
        let st = tx.prepare_cached(READ_ALL_SQL).await?;
        n += tx.execute(&st, &[&at, &au, &aa]).await?;
    }
    if !dt.is_empty() {
        let st = tx.prepare_cached(UNNOTIFY_SQL).await?;
        n += tx.execute(&st, &[&dt, &du, &di]).await?;
    }
    Ok(n)
}

/// Who is online (upserted, or deleted when offline) and who watches whom.
async fn online_and_contacts(
    tx: &deadpool_postgres::Transaction<'_>,
    online: &[OnlineUser],
    contacts: &[ContactsChange],
    part: i32,
) -> Result<u64, tokio_postgres::Error> {
    let mut n = 0;
    let (on, off): (Vec<&OnlineUser>, Vec<&OnlineUser>) =
        online.iter().partition(|u| !u.conns.is_empty());
    if !on.is_empty() {
        let tenants: Vec<&str> = on.iter().map(|u| u.tenant.as_str()).collect();
        let users: Vec<&str> = on.iter().map(|u| u.user_id.as_str()).collect();
        let conns: Vec<serde_json::Value> = on
            .iter()
            .map(|u| serde_json::to_value(&u.conns).expect("conns serialize"))
            .collect();
        n += tx
            .execute(
                "INSERT INTO jam_online (tenant, user_id, part, conns)
                 SELECT t, u, $4, c FROM UNNEST($1::text[], $2::text[], $3::jsonb[]) AS x(t, u, c)
                 ON CONFLICT (tenant, user_id) DO UPDATE SET conns = excluded.conns, part = excluded.part",
                &[&tenants, &users, &conns, &part],
            )
            .await?;
    }
    if !off.is_empty() {
        let tenants: Vec<&str> = off.iter().map(|u| u.tenant.as_str()).collect();
        let users: Vec<&str> = off.iter().map(|u| u.user_id.as_str()).collect();
        n += tx
            .execute(
                "DELETE FROM jam_online WHERE (tenant, user_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
                &[&tenants, &users],
            )
            .await?;
    }
    for c in contacts {
        n += match c {
            ContactsChange::Direct { tenant, a, b } => {
                tx.execute(
                    "INSERT INTO jam_contacts (tenant, user_id, contact_id, source)
                     VALUES ($1, $2, $3, 'dm'), ($1, $3, $2, 'dm') ON CONFLICT DO NOTHING",
                    &[tenant, a, b],
                )
                .await?
            }
            ContactsChange::Set {
                tenant,
                user_id,
                contacts,
            } => {
                tx.execute(
                    "DELETE FROM jam_contacts WHERE tenant = $1 AND user_id = $2 AND source = 'backend'",
                    &[tenant, user_id],
                )
                .await?;
                tx.execute(
                    "INSERT INTO jam_contacts (tenant, user_id, contact_id, source)
                     SELECT $1, $2, c, 'backend' FROM UNNEST($3::text[]) AS c ON CONFLICT DO NOTHING",
                    &[tenant, user_id, contacts],
                )
                .await?
            }
        };
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    fn admin_url() -> String {
        std::env::var("JAM_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    async fn backend(c: &deadpool_postgres::Object) -> i32 {
        let row = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap();
        row.get(0)
    }

    /// Every pooled session plans a prepared statement once (decision 29); an operator's
    /// URL options still come after ours and win.
    #[tokio::test]
    async fn pooled_sessions_keep_generic_plans() {
        let url = admin_url();
        let mode = |c: deadpool_postgres::Object| async move {
            let row = c.query_one("SHOW plan_cache_mode", &[]).await.unwrap();
            row.get::<_, String>(0)
        };
        let pool = super::pool(&url, 1).unwrap();
        assert_eq!(mode(pool.get().await.unwrap()).await, "force_generic_plan");
        let theirs = format!("{url}?options=-c%20plan_cache_mode%3Dauto");
        let pool = super::pool(&theirs, 1).unwrap();
        assert_eq!(mode(pool.get().await.unwrap()).await, "auto");
    }

    /// The committer takes a connection per group: handed the one returned last, it keeps
    /// one backend warm (with FIFO it would wake every idle backend of the pool in turn:
    /// a fifth more of PostgreSQL's CPU in the cluster, docs/benchmarks.md 2026-12-07).
    #[tokio::test]
    async fn the_pool_hands_out_the_connection_returned_last() {
        let url = admin_url();
        let pool = super::pool(&url, 4).unwrap();
        let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        let (first, second) = (backend(&a).await, backend(&b).await);
        assert_ne!(first, second);
        drop(a);
        drop(b);
        let c = pool.get().await.unwrap();
        assert_eq!(
            backend(&c).await,
            second,
            "the last returned comes back first"
        );
        let d = pool.get().await.unwrap();
        assert_eq!(backend(&d).await, first);
        drop(c);
        drop(d);
        let e = pool.get().await.unwrap();
        assert_eq!(backend(&e).await, first);
    }
}
