//! One contract, two implementations: the in-memory store must behave like PostgreSQL.
//! Every check runs against both (PostgreSQL: a fresh database on JAM_TEST_DATABASE_URL's
//! server). The bus's contract is in shared/tests/contract.rs.

use std::sync::Arc;

use jam_worker::model::{
    Attendance, ChatMessage, ConnRef, ContactsChange, DirectMessage, InboxChange, Notification,
    OnlineUser, ParticipantRecord, Role, SessionRecord, SessionStatus,
};
use jam_worker::store::memory::MemoryStore;
use jam_worker::store::postgres::PgStore;
use jam_worker::store::{Batch, Fence, ParticipantChange, RowChange, Store, StoreError};

fn record(id: &str, tenant: &str) -> SessionRecord {
    SessionRecord {
        tenant: tenant.into(),
        id: id.into(),
        name: "n".into(),
        description: String::new(),
        host_id: "h".into(),
        is_private: false,
        password_hash: Some("$argon2id$x".into()),
        max_participants: 5,
        participants: vec![ParticipantRecord::new("h", "H", Role::Host, 1, vec![])],
        removed: vec![],
        fresh: true,
        status: SessionStatus::Active,
        created_at: 1,
        expires_at: 2,
        last_seq: 3,
        playback: None,
        current_track: None,
        queue: vec![],
        last_check_at: 0,
        managed: false,
        index: Default::default(),
        online: 0,
    }
}

fn msg(tenant: &str, sid: &str, seq: i64) -> ChatMessage {
    ChatMessage {
        id: format!("{sid}-{seq}"),
        tenant: tenant.into(),
        session_id: sid.into(),
        user_id: "u".into(),
        user_name: "U".into(),
        message: format!("text {seq}"),
        created_at: seq,
        seq,
    }
}

/// A batch committed under `partition`'s claim, nothing in it yet.
fn fenced(partition: u32, token: i64) -> Batch {
    Batch {
        fence: Some(Fence {
            partition,
            token,
            applied: None,
        }),
        ..Default::default()
    }
}

fn dm(tenant: &str, id: &str, from: &str, to: &str, at: i64) -> DirectMessage {
    DirectMessage {
        id: id.into(),
        tenant: tenant.into(),
        sender_id: from.into(),
        sender_name: from.to_uppercase(),
        receiver_id: to.into(),
        content: format!("{id} {from}->{to}"),
        created_at: at,
    }
}

async fn store_contract(store: Arc<dyn Store>) {
    let claim = store.claim_partition(3).await.unwrap();
    assert_eq!(claim.applied, None);
    let fence = |applied: &str| {
        Some(Fence {
            partition: 3,
            token: claim.token,
            applied: Some(applied.into()),
        })
    };
    let mut batch = Batch {
        fence: fence("5-0"),
        upserts: vec![record("AAAA", "t1"), record("AAAA", "t2")],
        ..Default::default()
    };
    batch.messages = (1..=7).map(|s| msg("t1", "AAAA", s)).collect();
    batch.direct = vec![DirectMessage {
        id: "d1".into(),
        tenant: "t1".into(),
        sender_id: "a".into(),
        sender_name: "A".into(),
        receiver_id: "b".into(),
        content: "hi".into(),
        created_at: 10,
    }];
    store.commit(&batch).await.unwrap();
    // A replayed batch changes nothing (messages are keyed by their own id).
    store.commit(&batch).await.unwrap();

    let mut loaded = store.load_sessions(3).await.unwrap();
    loaded.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].password_hash.as_deref(), Some("$argon2id$x"));
    // The row says 3; its messages go up to 7: chat does not rewrite the session.
    assert_eq!(loaded[0].last_seq, 7);
    assert_eq!(loaded[1].last_seq, 3);
    assert!(store.load_sessions(4).await.unwrap().is_empty());
    assert_eq!(store.list_sessions("t1", None, 10).await.unwrap().len(), 1);

    // History: newest page first, returned oldest first; tenants apart; `since` cuts.
    let page = store.history("t1", "AAAA", 0, None, 3).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 6, 7]);
    assert_eq!(
        store
            .history("t1", "AAAA", 0, None, 30)
            .await
            .unwrap()
            .len(),
        7
    );
    let page = store.history("t1", "AAAA", 0, Some(5), 3).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3, 4]);
    let page = store.history("t1", "AAAA", 6, None, 30).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [6, 7]);
    assert!(store
        .history("t2", "AAAA", 0, None, 10)
        .await
        .unwrap()
        .is_empty());

    assert_eq!(
        store
            .direct_history("t1", "b", "a", None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store
        .direct_history("t2", "a", "b", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .direct_history("t1", "a", "c", None, 10)
        .await
        .unwrap()
        .is_empty());

    // A newer claim fences the old owner: its batch is refused whole.
    let newer = store.claim_partition(3).await.unwrap();
    assert!(newer.token > claim.token);
    assert_eq!(newer.applied.as_deref(), Some("5-0"));
    let stale = Batch {
        fence: fence("9-0"),
        upserts: vec![record("BBBB", "t1")],
        messages: vec![msg("t1", "AAAA", 8)],
        ..Default::default()
    };
    assert!(matches!(
        store.commit(&stale).await,
        Err(StoreError::Fenced(3))
    ));
    assert_eq!(
        store.load_sessions(3).await.unwrap().len(),
        2,
        "nothing of a fenced batch is kept"
    );
    assert_eq!(
        store
            .history("t1", "AAAA", 0, None, 30)
            .await
            .unwrap()
            .len(),
        7
    );
    assert_eq!(
        store.claim_partition(3).await.unwrap().applied.as_deref(),
        Some("5-0")
    );

    // Ending a session keeps its messages; only the retention purge deletes them.
    store
        .commit(&Batch {
            deletes: vec![("t1".into(), "AAAA".into())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .history("t1", "AAAA", 0, None, 10)
            .await
            .unwrap()
            .len(),
        7
    );
    assert_eq!(store.load_sessions(3).await.unwrap().len(), 1);
    assert_eq!(store.purge_messages(4).await.unwrap(), 3);
    let left = store.history("t1", "AAAA", 0, None, 10).await.unwrap();
    assert_eq!(left.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5, 6, 7]);
    assert_eq!(
        store.purge_messages(11).await.unwrap(),
        5,
        "4 chat + 1 direct"
    );
    attendance_contract(&*store).await;
    inbox_contract(&*store).await;
    people_contract(&*store).await;
    group_contract(&*store).await;
    chat_group_contract(&*store).await;
    participants_contract(&*store).await;
    direct_contract(&*store).await;
    reused_id_contract(&*store).await;
    listing_contract(&*store).await;
    store.ping().await.unwrap();
}

/// A session made again under the id of one that ended (a code drawn again while the old
/// one's messages are kept): its messages start again at seq 1, are kept beside the old
/// ones, and each session's history and seq are its own.
/// Listings: a tenant's public, active sessions only, newest first by (createdAt, id),
/// paged from a cursor inside a millisecond without a gap.
async fn listing_contract(store: &dyn Store) {
    let part = 31;
    let token = store.claim_partition(part).await.unwrap().token;
    let at = |id: &str, tenant: &str, created: i64| SessionRecord {
        created_at: created,
        ..record(id, tenant)
    };
    let private = SessionRecord {
        is_private: true,
        ..at("P1", "tl", 30)
    };
    let ended = SessionRecord {
        status: SessionStatus::Ended,
        ..at("E1", "tl", 40)
    };
    let batch = Batch {
        upserts: vec![
            at("L1", "tl", 10),
            at("L2", "tl", 20),
            at("L3", "tl", 20),
            private,
            ended,
            at("X1", "tx", 50),
        ],
        ..fenced(part, token)
    };
    store.commit(&batch).await.unwrap();
    let ids =
        |page: Vec<(SessionRecord, usize)>| page.into_iter().map(|(s, _)| s.id).collect::<Vec<_>>();
    let all = store.list_sessions("tl", None, 10).await.unwrap();
    assert_eq!(ids(all), ["L3", "L2", "L1"]);
    let first = store.list_sessions("tl", None, 2).await.unwrap();
    assert_eq!(ids(first), ["L3", "L2"]);
    let next = store
        .list_sessions("tl", Some((20, "L2")), 2)
        .await
        .unwrap();
    assert_eq!(ids(next), ["L1"]);
    let older = store.list_sessions("tl", Some((20, "")), 5).await.unwrap();
    assert_eq!(ids(older), ["L1"]);
}

async fn reused_id_contract(store: &dyn Store) {
    let part = 24;
    let token = store.claim_partition(part).await.unwrap().token;
    let said = |id: &str, seq: i64, at: i64| ChatMessage {
        id: id.into(),
        created_at: at,
        ..msg("tr", "REUSED", seq)
    };
    let commit = |messages: Vec<ChatMessage>, upserts: Vec<SessionRecord>| Batch {
        messages,
        upserts,
        ..fenced(part, token)
    };
    let old = vec![
        said("o1", 1, 1_000),
        said("o2", 2, 1_001),
        said("o3", 3, 1_002),
    ];
    store.commit(&commit(old, vec![])).await.unwrap();
    let again = SessionRecord {
        created_at: 5_000,
        last_seq: 0,
        ..record("REUSED", "tr")
    };
    let new = commit(
        vec![said("n1", 1, 5_001), said("n2", 2, 5_002)],
        vec![again],
    );
    store.commit(&new).await.unwrap();
    store.commit(&new).await.unwrap();
    let ids = |page: Vec<ChatMessage>| page.into_iter().map(|m| m.id).collect::<Vec<_>>();
    let page = store
        .history("tr", "REUSED", 5_000, None, 10)
        .await
        .unwrap();
    assert_eq!(
        ids(page),
        ["n1", "n2"],
        "the new session's messages, each once"
    );
    let page = store
        .history("tr", "REUSED", 5_000, Some(2), 10)
        .await
        .unwrap();
    assert_eq!(ids(page), ["n1"]);
    let loaded = store.load_sessions(part).await.unwrap();
    let rec = loaded.iter().find(|r| r.id == "REUSED").unwrap();
    assert_eq!(rec.last_seq, 2, "the new session's seq, not the old one's");
}

/// Direct messages: one conversation whichever side asks, paged newest first by (time,
/// id) whatever order they were committed in, each stored once.
async fn direct_contract(store: &dyn Store) {
    let part = 23;
    let token = store.claim_partition(part).await.unwrap().token;
    let commit = |direct: Vec<DirectMessage>| Batch {
        direct,
        ..fenced(part, token)
    };
    let later = vec![
        dm("td", "x3", "ann", "ben", 300),
        dm("td", "x5", "ben", "ann", 400),
    ];
    let earlier = vec![
        dm("td", "x1", "ben", "ann", 100),
        dm("td", "x4", "ann", "ben", 400),
        dm("td", "x2", "ann", "ben", 200),
        dm("td", "y1", "ann", "cy", 250),
        dm("te", "z1", "ann", "ben", 250),
    ];
    store.commit(&commit(later.clone())).await.unwrap();
    store.commit(&commit(earlier)).await.unwrap();
    store.commit(&commit(later)).await.unwrap();
    let ids = |page: Vec<DirectMessage>| page.into_iter().map(|m| m.id).collect::<Vec<_>>();
    let all = store.direct_history("td", "ben", "ann", None, 50).await;
    assert_eq!(
        ids(all.unwrap()),
        ["x1", "x2", "x3", "x4", "x5"],
        "each once"
    );
    let newest = store.direct_history("td", "ann", "ben", None, 2).await;
    assert_eq!(ids(newest.unwrap()), ["x4", "x5"]);
    let older = store
        .direct_history("td", "ann", "ben", Some((400, "")), 2)
        .await;
    assert_eq!(ids(older.unwrap()), ["x2", "x3"]);
    // A page boundary inside a millisecond: the cursor (time, id) of the page's first
    // message leaves out what was shown and nothing else.
    let one = store.direct_history("td", "ann", "ben", None, 1).await;
    assert_eq!(ids(one.unwrap()), ["x5"]);
    let next = store
        .direct_history("td", "ann", "ben", Some((400, "x5")), 1)
        .await;
    assert_eq!(ids(next.unwrap()), ["x4"]);
    let next = store
        .direct_history("td", "ann", "ben", Some((400, "x4")), 1)
        .await;
    assert_eq!(ids(next.unwrap()), ["x3"]);
    let page = store.direct_history("td", "cy", "ann", None, 10).await;
    assert_eq!(ids(page.unwrap()), ["y1"]);
    let page = store.direct_history("te", "ben", "ann", None, 10).await;
    assert_eq!(ids(page.unwrap()), ["z1"]);
    let m = &store
        .direct_history("td", "ann", "ben", Some((150, "")), 1)
        .await
        .unwrap()[0];
    assert_eq!(
        (
            m.sender_id.as_str(),
            m.sender_name.as_str(),
            m.receiver_id.as_str()
        ),
        ("ben", "BEN", "ann")
    );
    assert_eq!((m.content.as_str(), m.created_at), ("x1 ben->ann", 100));
}

/// Participants have rows of their own: written one by one as they change, read back in
/// the order they joined, gone with their session or when the id is reused.
async fn participants_contract(store: &dyn Store) {
    let part = 21;
    let token = store.claim_partition(part).await.unwrap().token;
    let fence = Some(Fence {
        partition: part,
        token,
        applied: None,
    });
    let person =
        |id: &str, joined: i64| ParticipantRecord::new(id, id, Role::Participant, joined, vec![]);
    let change = |row| ParticipantChange {
        tenant: "tp".into(),
        session_id: "PPPP".into(),
        row,
    };
    let up = |p: ParticipantRecord| change(RowChange::Upsert(Box::new(p)));
    let commit = |upserts: Vec<SessionRecord>, participants: Vec<ParticipantChange>, deletes| {
        let batch = Batch {
            fence: fence.clone(),
            upserts,
            participants,
            deletes,
            ..Default::default()
        };
        async move { store.commit(&batch).await.unwrap() }
    };
    let loaded = || async {
        let all = store.load_sessions(part).await.unwrap();
        let rec = all.into_iter().find(|r| r.tenant == "tp" && r.id == "PPPP");
        rec.map(|r| {
            r.participants
                .iter()
                .map(|p| (p.id.clone(), p.offset_ms))
                .collect::<Vec<_>>()
        })
    };
    let mut row = record("PPPP", "tp");
    row.participants.clear();
    let named = |v: &[(&str, f64)]| Some(v.iter().map(|(a, b)| (a.to_string(), *b)).collect());

    commit(
        vec![row.clone()],
        vec![
            up(person("carol", 30)),
            up(person("h", 10)),
            up(person("bob", 20)),
        ],
        vec![],
    )
    .await;
    assert_eq!(
        loaded().await,
        named(&[("h", 0.0), ("bob", 0.0), ("carol", 0.0)])
    );
    let listed = store.list_sessions("tp", None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1, 3, "the listing counts participants");

    // One participant changes, one leaves: the others' rows are left alone.
    let mut bob = person("bob", 20);
    bob.offset_ms = 250.0;
    let gone = change(RowChange::Delete("carol".into()));
    commit(vec![], vec![up(bob), gone], vec![]).await;
    assert_eq!(loaded().await, named(&[("h", 0.0), ("bob", 250.0)]));

    // The id made again: the earlier session's participants go, the new one's stay,
    // whatever the order of the changes.
    let clear = || change(RowChange::Clear);
    commit(
        vec![row.clone()],
        vec![up(person("dave", 40)), clear()],
        vec![],
    )
    .await;
    assert_eq!(loaded().await, named(&[("dave", 0.0)]));

    // Deleted: no rows left behind for a later session of the same id.
    commit(vec![], vec![clear()], vec![("tp".into(), "PPPP".into())]).await;
    assert_eq!(loaded().await, None);
    commit(vec![row], vec![], vec![]).await;
    assert_eq!(loaded().await, named(&[]));
}

/// A group commit (several partitions' batches in one transaction) is all or nothing:
/// one stale fence keeps every batch of the group out and names its partition.
/// Groups of chat messages alone (PostgreSQL commits them in one statement): a stale fence
/// refuses the whole group, messages and high-water marks alike; a retried message is
/// kept once; a batch with nothing but its high-water mark moves it.
async fn chat_group_contract(store: &dyn Store) {
    let (a, b) = (13, 14);
    let ta = store.claim_partition(a).await.unwrap().token;
    let tb = store.claim_partition(b).await.unwrap().token;
    let chat = |p: u32, token: i64, sid: &str, seqs: &[i64], applied: &str| Batch {
        fence: Some(Fence {
            partition: p,
            token,
            applied: Some(applied.into()),
        }),
        messages: seqs.iter().map(|&s| msg("tc", sid, s)).collect(),
        ..Default::default()
    };
    let history = |sid: &'static str| async move {
        let h = store.history("tc", sid, 0, None, 10).await.unwrap();
        h.into_iter().map(|m| m.seq).collect::<Vec<_>>()
    };
    let fresh = chat(a, ta, "CA01", &[1, 2], "1-0");
    let stale = chat(b, tb - 1, "CB01", &[1], "1-0");
    assert!(matches!(
        store.commit_group(&[&fresh, &stale]).await,
        Err(StoreError::Fenced(14))
    ));
    assert!(
        history("CA01").await.is_empty(),
        "nothing of the group is kept"
    );
    assert!(history("CB01").await.is_empty());

    let claim = store.claim_partition(a).await.unwrap();
    assert_eq!(claim.applied, None, "the refused group moved no mark");
    let ta = claim.token;
    let one = chat(a, ta, "CA01", &[1, 2], "2-0");
    let two = chat(b, tb, "CB01", &[1], "3-0");
    store.commit_group(&[&one, &two]).await.unwrap();
    // A redelivered batch (the same messages again) and a batch that only moves its mark.
    let again = chat(a, ta, "CA01", &[2, 3], "4-0");
    let mark = chat(b, tb, "CB01", &[], "5-0");
    store.commit_group(&[&again, &mark]).await.unwrap();
    assert_eq!(history("CA01").await, [1, 2, 3]);
    assert_eq!(history("CB01").await, [1]);
    let ta = store.claim_partition(a).await.unwrap();
    assert_eq!(ta.applied.as_deref(), Some("4-0"));
    let tb = store.claim_partition(b).await.unwrap();
    assert_eq!(tb.applied.as_deref(), Some("5-0"));
}

async fn group_contract(store: &dyn Store) {
    let (a, b) = (11, 12);
    let ta = store.claim_partition(a).await.unwrap().token;
    let tb = store.claim_partition(b).await.unwrap().token;
    let batch = |p: u32, token: i64, sid: &str, applied: &str| Batch {
        fence: Some(Fence {
            partition: p,
            token,
            applied: Some(applied.into()),
        }),
        upserts: vec![record(sid, "tg")],
        messages: vec![msg("tg", sid, 1)],
        ..Default::default()
    };
    let fresh = batch(a, ta, "GA01", "1-0");
    let stale = batch(b, tb - 1, "GB01", "1-0");
    assert!(matches!(
        store.commit_group(&[&fresh, &stale]).await,
        Err(StoreError::Fenced(12))
    ));
    assert!(store.load_sessions(a).await.unwrap().is_empty());
    assert!(store
        .history("tg", "GA01", 0, None, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.claim_partition(a).await.unwrap().applied, None);

    // Without the stale batch (and with fresh tokens: the claim above fenced `fresh`).
    let ta = store.claim_partition(a).await.unwrap().token;
    let one = batch(a, ta, "GA01", "2-0");
    let two = batch(b, tb, "GB01", "3-0");
    store.commit_group(&[&one, &two]).await.unwrap();
    for (p, sid) in [(a, "GA01"), (b, "GB01")] {
        let ids: Vec<String> = store
            .load_sessions(p)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [sid]);
        assert_eq!(
            store.history("tg", sid, 0, None, 10).await.unwrap().len(),
            1
        );
    }
    assert_eq!(
        store.claim_partition(b).await.unwrap().applied.as_deref(),
        Some("3-0")
    );
}

fn seen(tenant: &str, user: &str, at: i64, out: Option<i64>) -> Attendance {
    Attendance {
        tenant: tenant.into(),
        session_id: "SHOW1".into(),
        user_id: user.into(),
        user_name: user.to_uppercase(),
        host: user == "h",
        checked_in_at: at,
        checked_out_at: out,
    }
}

/// Attendance is upserted: the first check-in stays, the check-out is the latest change
/// in batch order, a return clears it; tenants apart.
async fn attendance_contract(store: &dyn Store) {
    let commit = |attendance: Vec<Attendance>| Batch {
        attendance,
        ..Default::default()
    };
    store
        .commit(&commit(vec![
            seen("t1", "h", 10, None),
            seen("t1", "a", 11, None),
        ]))
        .await
        .unwrap();
    // a leaves and comes back in one batch; h leaves; b joins and leaves at once.
    store
        .commit(&commit(vec![
            seen("t1", "a", 20, Some(21)),
            seen("t1", "a", 22, None),
            seen("t1", "h", 10, Some(30)),
            seen("t1", "b", 31, None),
            seen("t1", "b", 31, Some(32)),
        ]))
        .await
        .unwrap();
    store
        .commit(&commit(vec![seen("t2", "x", 5, None)]))
        .await
        .unwrap();
    let rows = store.attendance("t1", "SHOW1", None, 10).await.unwrap();
    let got: Vec<(&str, i64, Option<i64>, bool)> = rows
        .iter()
        .map(|r| {
            (
                r.user_id.as_str(),
                r.checked_in_at,
                r.checked_out_at,
                r.host,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("h", 10, Some(30), true),
            ("a", 11, None, false),
            ("b", 31, Some(32), false)
        ]
    );
    assert_eq!(
        store
            .attendance("t2", "SHOW1", None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store
        .attendance("t3", "SHOW1", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.hosted("t1", "SHOW1", "h").await.unwrap());
    assert!(!store.hosted("t1", "SHOW1", "a").await.unwrap());
    assert!(!store.hosted("t2", "SHOW1", "h").await.unwrap());

    // Pages in check-in order, a cursor inside a millisecond leaving no one out.
    store
        .commit(&commit(vec![
            seen("t4", "p", 50, None),
            seen("t4", "q", 50, None),
            seen("t4", "o", 50, None),
            seen("t4", "n", 40, None),
        ]))
        .await
        .unwrap();
    let users = |rows: Vec<Attendance>| rows.into_iter().map(|r| r.user_id).collect::<Vec<_>>();
    let first = store.attendance("t4", "SHOW1", None, 2).await.unwrap();
    assert_eq!(users(first), ["n", "o"]);
    let next = store.attendance("t4", "SHOW1", Some((50, "o")), 2).await;
    assert_eq!(users(next.unwrap()), ["p", "q"]);
    let later = store.attendance("t4", "SHOW1", Some((50, "")), 10).await;
    assert_eq!(users(later.unwrap()), ["o", "p", "q"]);
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    store_contract(Arc::new(MemoryStore::new())).await;
}

/// In memory, where nothing is on disk, each session's chat and each conversation keep
/// their newest messages only (`JAM_MEMORY_HISTORY`), and pages end where they end.
#[tokio::test]
async fn memory_store_keeps_the_newest_messages_within_its_bound() {
    let store = MemoryStore::with_history_limit(Some(3));
    let token = store.claim_partition(2).await.unwrap().token;
    let batch = |messages: Vec<ChatMessage>, direct: Vec<DirectMessage>| Batch {
        messages,
        direct,
        ..fenced(2, token)
    };
    let first = (1..=4).map(|q| msg("t", "S", q)).collect();
    let (ann, ben) = ("ann", "ben");
    let dms = (1..=5)
        .map(|at| {
            let (from, to) = if at % 2 == 0 { (ann, ben) } else { (ben, ann) };
            dm("t", &format!("d{at}"), from, to, at)
        })
        .collect();
    store.commit(&batch(first, dms)).await.unwrap();
    // Another session's messages are not counted against this one's.
    let other = vec![msg("t", "O", 1), msg("t", "O", 2)];
    store.commit(&batch(other, vec![])).await.unwrap();
    store
        .commit(&batch(vec![msg("t", "S", 5)], vec![]))
        .await
        .unwrap();
    let seqs = |page: Vec<ChatMessage>| page.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    let all = store.history("t", "S", 0, None, 50).await.unwrap();
    assert_eq!(seqs(all), [3, 4, 5], "the oldest went first");
    let before = store.history("t", "S", 0, Some(3), 50).await.unwrap();
    assert!(before.is_empty(), "nothing is left before the bound");
    let other = store.history("t", "O", 0, None, 50).await.unwrap();
    assert_eq!(seqs(other), [1, 2]);
    let ids = |page: Vec<DirectMessage>| page.into_iter().map(|m| m.id).collect::<Vec<_>>();
    let direct = store.direct_history("t", "ben", "ann", None, 50).await;
    assert_eq!(ids(direct.unwrap()), ["d3", "d4", "d5"]);
    // Unbounded, as before: every message stays.
    let all = MemoryStore::with_history_limit(None);
    let token = all.claim_partition(2).await.unwrap().token;
    let six = Batch {
        messages: (1..=6).map(|q| msg("t", "S", q)).collect(),
        ..fenced(2, token)
    };
    all.commit(&six).await.unwrap();
    assert_eq!(all.history("t", "S", 0, None, 50).await.unwrap().len(), 6);
}

#[tokio::test]
async fn postgres_store_meets_the_contract() {
    let admin = std::env::var("JAM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let client = sql(&admin).await;
    let db = ScratchDb {
        name: format!("jam_contract_{}", &jam_shared::ids::unique()[..10]),
        admin: admin.clone(),
    };
    client
        .batch_execute(&format!("CREATE DATABASE {}", db.name))
        .await
        .unwrap();
    let url = format!("{}/{}", admin.rsplit_once('/').unwrap().0, db.name);
    {
        let store = PgStore::connect(&url, 4).await.unwrap();
        // Migrations are idempotent.
        PgStore::connect(&url, 4).await.unwrap();
        refused_data(&store, &url).await;
        store_contract(Arc::new(store)).await;
    }
    statements_are_bounded(&url).await;
}

/// A plain connection to `url` for the test's own statements (its driver spawned).
async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// The contract's database, dropped however the test ends (a failed assertion included).
struct ScratchDb {
    name: String,
    admin: String,
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::process::Command::new("psql")
            .args([&self.admin, "-q", "-c", &drop])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Data PostgreSQL cannot hold (U+0000 in text; the gateways refuse it, decision 32) is a
/// refusal, which no retry can help, not an outage; and the group is not committed.
async fn refused_data(store: &PgStore, url: &str) {
    let part = 29;
    let token = store.claim_partition(part).await.unwrap().token;
    let mut bad = msg("tz", "NUL01", 1);
    bad.message = "a\0b".into();
    let batch = Batch {
        messages: vec![bad],
        fence: Some(Fence {
            partition: part,
            token,
            applied: Some("9-0".into()),
        }),
        ..Default::default()
    };
    let e = store.commit(&batch).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Refused { code, .. } if code.starts_with("22")),
        "{e}"
    );
    assert!(!e.retryable(), "{e}");
    // PostgreSQL's error is kept as the source, and its message shows in the log line.
    assert!(std::error::Error::source(&e).is_some(), "{e}");
    assert!(e.to_string().contains("0x00"), "{e}");
    let h = store.history("tz", "NUL01", 0, None, 10).await.unwrap();
    assert!(h.is_empty());
    let mark = store.claim_partition(part).await.unwrap().applied;
    assert_eq!(mark, None, "the refused batch moved no mark");

    // A constraint's refusal names the constraint, not the row: PostgreSQL's DETAIL
    // ("Failing row contains (...)") would put users' text in the worker's log.
    let admin = sql(url).await;
    admin
        .batch_execute("ALTER TABLE jam_messages ADD CONSTRAINT jam_contract_no_secrets CHECK (message <> 'secret words')")
        .await
        .unwrap();
    let token = store.claim_partition(part).await.unwrap().token;
    let mut secret = msg("tz", "SECRET", 1);
    secret.message = "secret words".into();
    let batch = Batch {
        messages: vec![secret],
        ..fenced(part, token)
    };
    let e = store.commit(&batch).await.unwrap_err();
    let shown = e.to_string();
    assert!(
        matches!(&e, StoreError::Refused { code, .. } if code == "23514"),
        "{e}"
    );
    assert!(shown.contains("jam_contract_no_secrets"), "{shown}");
    assert!(!shown.contains("secret words"), "{shown}");
    admin
        .batch_execute("ALTER TABLE jam_messages DROP CONSTRAINT jam_contract_no_secrets")
        .await
        .unwrap();
}

/// A statement stuck behind a lock fails after the statement timeout instead of waiting
/// for good (the URL's own `statement_timeout` overrides the default of 30 s).
async fn statements_are_bounded(url: &str) {
    let store = PgStore::connect(&format!("{url}?options=-c%20statement_timeout%3D300"), 2)
        .await
        .unwrap();
    let locker = sql(url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE jam_sessions IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        store.list_sessions("t", None, 10),
    )
    .await
    .expect("the server ends the statement; the call does not hang");
    assert!(read.is_err(), "a statement past its timeout is an error");
    locker.batch_execute("ROLLBACK").await.unwrap();
    store.list_sessions("t", None, 10).await.unwrap();
}

fn note(tenant: &str, id: i64) -> InboxChange {
    InboxChange::Insert(Notification {
        id,
        tenant: tenant.into(),
        user_id: "u".into(),
        kind: "job_assigned".into(),
        priority: "HIGH".into(),
        title: format!("n{id}"),
        message: String::new(),
        data: serde_json::json!({"jobId": id}),
        created_at: 100 + id,
        read_at: None,
    })
}

/// Inbox changes of one batch commute (the engine folds same-batch ones); pages are
/// newest first by id; tenants apart.
async fn inbox_contract(store: &dyn Store) {
    let commit = |inbox: Vec<InboxChange>| Batch {
        inbox,
        ..Default::default()
    };
    let (t, u) = ("t1".to_string(), "u".to_string());
    store
        .commit(&commit(vec![
            note("t1", 1),
            note("t1", 2),
            note("t1", 3),
            note("t2", 1),
        ]))
        .await
        .unwrap();
    store
        .commit(&commit(vec![
            InboxChange::Read {
                tenant: t.clone(),
                user_id: u.clone(),
                id: 2,
                at: 500,
            },
            InboxChange::Delete {
                tenant: t.clone(),
                user_id: u.clone(),
                id: 3,
            },
            note("t1", 4),
        ]))
        .await
        .unwrap();
    let mut state = store.inboxes(&users(&[("t1", "u")])).await.unwrap();
    state[0].sort();
    assert_eq!(state, [vec![(1, false), (2, true), (4, false)]]);
    let page = store
        .notifications("t1", "u", None, 2, false)
        .await
        .unwrap();
    assert_eq!(page.iter().map(|n| n.id).collect::<Vec<_>>(), [4, 2]);
    assert_eq!(page[1].read_at, Some(500));
    assert_eq!(page[0].data["jobId"], 4);
    let unread = store
        .notifications("t1", "u", Some(4), 10, true)
        .await
        .unwrap();
    assert_eq!(unread.iter().map(|n| n.id).collect::<Vec<_>>(), [1]);
    store
        .commit(&commit(vec![InboxChange::ReadAll {
            tenant: t,
            user_id: u,
            at: 600,
        }]))
        .await
        .unwrap();
    let state = store
        .inboxes(&users(&[("t2", "u"), ("t1", "nobody"), ("t1", "u")]))
        .await
        .unwrap();
    assert_eq!(state.len(), 3, "one inbox per user asked, in order");
    assert_eq!(state[0], [(1, false)], "tenants apart");
    assert!(state[1].is_empty());
    assert_eq!(state[2].len(), 3);
    assert!(state[2].iter().all(|(_, read)| *read));
}

/// (tenant, user) pairs, as the batched reads take them.
fn users(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(t, u)| (t.to_string(), u.to_string()))
        .collect()
}

fn online(tenant: &str, user: &str, conns: &[&str]) -> OnlineUser {
    OnlineUser {
        tenant: tenant.into(),
        user_id: user.into(),
        conns: conns
            .iter()
            .map(|c| ConnRef {
                conn: c.to_string(),
                gateway: "gw#1".into(),
            })
            .collect(),
        watchers: vec![],
    }
}

/// Contacts: a direct message makes both watch each other, a backend list replaces the
/// earlier backend list only; who is online is per partition, with fresh watchers.
async fn people_contract(store: &dyn Store) {
    let claim = store.claim_partition(5).await.unwrap();
    let commit = |online: Vec<OnlineUser>, contacts: Vec<ContactsChange>| Batch {
        online,
        contacts,
        ..fenced(5, claim.token)
    };
    let set = |user: &str, list: &[&str]| ContactsChange::Set {
        tenant: "t1".into(),
        user_id: user.into(),
        contacts: list.iter().map(|s| s.to_string()).collect(),
    };
    let dm = ContactsChange::Direct {
        tenant: "t1".into(),
        a: "ann".into(),
        b: "ben".into(),
    };
    store
        .commit(&commit(
            vec![online("t1", "ben", &["c1"]), online("t1", "cy", &["c2"])],
            vec![dm, set("ann", &["cy", "ben"])],
        ))
        .await
        .unwrap();
    store
        .commit(&commit(
            vec![online("t1", "cy", &[])],
            vec![set("ann", &["cy"]), set("zed", &["cy", "ann"])],
        ))
        .await
        .unwrap();
    let asked = users(&[("t1", "ben"), ("t2", "ben"), ("t1", "cy"), ("t1", "ann")]);
    let w = store.watchers(&asked).await.unwrap();
    assert_eq!(
        w[0],
        ["ann"],
        "the message's contact stays when the backend list drops ben"
    );
    assert!(w[1].is_empty(), "tenants apart");
    assert_eq!(w[2], ["ann", "zed"], "every watcher, once, sorted");
    assert_eq!(w[3], ["ben", "zed"]);
    assert_eq!(w.len(), 4);
    assert!(store.watchers(&[]).await.unwrap().is_empty());
    let ids: Vec<String> = ["ben", "cy", "zed"].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        store.contacts_online("t1", "ann", &ids).await.unwrap(),
        [("ben".to_string(), true), ("cy".to_string(), false)]
    );
    let loaded = store.load_online(5).await.unwrap();
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert_eq!(
        (loaded[0].user_id.as_str(), loaded[0].watchers.clone()),
        ("ben", vec!["ann".to_string()])
    );
    assert_eq!(loaded[0].conns[0].conn, "c1");
    assert!(store.load_online(6).await.unwrap().is_empty());
}
