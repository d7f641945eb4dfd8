//! Tests of the store as a whole: records round-trip, survive reopening, damage is an error, migrations, events, link codes.

use super::*;

/// Opens the store again in the same process: sled's flusher thread can
/// hold the file lock for a moment after the last handle is dropped.
pub(crate) fn reopen(dir: &Path) -> Result<Store, StoreError> {
    Store::open_when_released(dir, std::time::Duration::from_secs(5))
}

/// The console customer alice's current conversation, created if new.
fn alice_conversation(store: &Store) -> Conversation {
    let customer = store
        .customer_for_identity("console", "alice", None)
        .unwrap();
    store
        .current_conversation(customer.id, "console", "alice")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_flush_requests_share_one_database_flush_and_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let conversation = alice_conversation(&store);
    let made_before = store
        .flush_queue
        .made
        .load(std::sync::atomic::Ordering::Relaxed);
    // With a transaction held, the flusher waits, so every request made
    // meanwhile is settled by at most two flushes.
    let mut pending = Vec::new();
    {
        let _held = store.one_transaction();
        for index in 0..64 {
            store
                .append_message(conversation.id, Role::User, &format!("message {index}"))
                .unwrap();
            pending.push(store.flush_soon());
        }
    }
    for flush in &mut pending {
        flush.wait().await.unwrap();
        flush.wait().await.unwrap();
    }
    let made = store
        .flush_queue
        .made
        .load(std::sync::atomic::Ordering::Relaxed)
        - made_before;
    assert!((1..=2).contains(&made), "{made} flushes for 64 requests");
    // A request after the queue went idle starts a new flush.
    store.flush().await.unwrap();
    drop(pending);
    drop(store);
    let reopened = reopen(dir.path()).unwrap();
    assert_eq!(
        reopened
            .conversation_messages(conversation.id)
            .unwrap()
            .len(),
        64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_flushes_begin_a_window_apart_so_that_requests_share_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let made_before = store.database_flushes();
    let first_began = std::time::Instant::now();
    store.flush().await.unwrap();
    store.flush().await.unwrap();
    // The second could not begin sooner: the window is a floor, not a speed.
    assert!(first_began.elapsed() >= super::FLUSH_WINDOW);
    assert_eq!(store.database_flushes() - made_before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_nobody_waited_for_are_settled_without_a_new_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Nothing requested: settled at once.
    store.requested_flushes_settled().await.unwrap();
    let conversation = alice_conversation(&store);
    store
        .append_message(conversation.id, Role::Assistant, "the reply")
        .unwrap();
    drop(store.flush_soon());
    let requests = store.flush_count();
    store.requested_flushes_settled().await.unwrap();
    assert_eq!(store.flush_count(), requests, "no flush of its own");
    let ticket = store
        .flush_queue
        .requested
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(store.flush_queue.progress.borrow().durable_through >= ticket);
}

#[test]
fn a_flush_requested_outside_a_runtime_is_made_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut flush = store.flush_soon();
    assert!(
        !store
            .flush_queue
            .running
            .load(std::sync::atomic::Ordering::SeqCst),
        "made before flush_soon returned"
    );
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(flush.wait())
        .unwrap();
}

#[test]
fn customers_conversations_and_messages_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let alice = store
        .customer_for_identity("console", "alice", None)
        .unwrap();
    let again = store
        .customer_for_identity("console", "alice", None)
        .unwrap();
    assert_eq!(alice.id, again.id);
    let bob = store
        .customer_for_identity("telegram", "alice", None)
        .unwrap();
    assert_ne!(alice.id, bob.id, "identities are per platform");

    let first = store
        .current_conversation(alice.id, "console", "alice")
        .unwrap();
    store.append_message(first.id, Role::User, "hello").unwrap();
    store
        .append_message(first.id, Role::Assistant, "hi")
        .unwrap();
    assert_eq!(
        store
            .current_conversation(alice.id, "console", "alice")
            .unwrap(),
        first
    );
    let second = store
        .start_conversation(alice.id, "console", "alice")
        .unwrap();
    assert_ne!(first.id, second.id);
    store
        .append_message(second.id, Role::User, "again")
        .unwrap();

    let texts: Vec<String> = store
        .conversation_messages(first.id)
        .unwrap()
        .into_iter()
        .map(|message| message.text)
        .collect();
    assert_eq!(texts, ["hello", "hi"]);
    assert_eq!(store.recent_messages(first.id, 1).unwrap()[0].text, "hi");
    assert_eq!(
        store.customer_conversations(alice.id, None).unwrap().len(),
        2
    );
    assert!(store
        .customer_conversations(alice.id, Some("telegram"))
        .unwrap()
        .is_empty());
}

/// Stores one message of customer "u" in a store in `dir`, flushed and closed.
fn store_one_message(dir: &Path, text: &str) {
    let store = Store::open(dir).unwrap();
    let customer = store.customer_for_identity("console", "u", None).unwrap();
    let conversation = store
        .current_conversation(customer.id, "console", "u")
        .unwrap();
    store
        .append_message(conversation.id, Role::User, text)
        .unwrap();
    store.flush_blocking().unwrap();
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    store_one_message(dir.path(), "kept");
    let store = reopen(dir.path()).unwrap();
    let customer = store.find_customer("console", "u").unwrap().unwrap();
    let conversation = store
        .current_conversation(customer.id, "console", "u")
        .unwrap();
    assert_eq!(
        store.conversation_messages(conversation.id).unwrap()[0].text,
        "kept"
    );
}

#[test]
fn a_damaged_store_is_an_error_not_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    store_one_message(dir.path(), "precious");
    // Overwrite the start of the database file with garbage.
    let db_file = dir.path().join("store").join("db");
    let mut bytes = std::fs::read(&db_file).unwrap();
    for (index, byte) in bytes.iter_mut().take(4096).enumerate() {
        *byte = (index * 7 + 13) as u8;
    }
    std::fs::write(&db_file, bytes).unwrap();
    match reopen(dir.path()) {
        Err(StoreError::Corrupt { .. }) => {}
        Err(other) => panic!("unexpected error: {other}"),
        Ok(store) => {
            let customer = store.find_customer("console", "u").unwrap();
            panic!("a damaged store opened silently (customer: {customer:?})");
        }
    }
}

#[test]
fn a_store_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let meta = store.db.open_tree(TREE_META).unwrap();
    meta.insert(KEY_SCHEMA, &99u32.to_be_bytes()).unwrap();
    store.flush_blocking().unwrap();
    drop(store);
    drop(meta);
    match reopen(dir.path()) {
        Err(StoreError::TooNew { found: 99, .. }) => {}
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("opened a newer store"),
    }
}

pub(crate) fn plain_ticket(id: u64, customer_id: u64) -> Ticket {
    Ticket {
        v: RECORD_VERSION,
        id,
        customer_id,
        platform: "telegram".into(),
        chat_id: format!("chat{id}"),
        locale: Locale::En,
        category: crate::intent::Intent::Complaint,
        priority: Priority::High,
        summary: String::new(),
        transcript: Vec::new(),
        state: TicketState::Closed,
        transitions: Vec::new(),
        assignee: None,
        created_ms: 1,
        due_ms: 2,
        reminded: false,
        breached: false,
        agent_posts: Vec::new(),
        rating: None,
    }
}

#[test]
fn a_schema_1_store_gets_its_customer_ticket_index_and_tickets_follow_a_link() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let first = store.customer_for_identity("telegram", "1", None).unwrap();
        store.put_ticket(&plain_ticket(1, first.id)).unwrap();
        store.put_ticket(&plain_ticket(2, first.id)).unwrap();
        // As a schema 1 build left it: no index, version 1.
        store.customer_tickets.clear().unwrap();
        store.meta.insert(KEY_SCHEMA, &1u32.to_be_bytes()).unwrap();
        store.flush_blocking().unwrap();
    }
    let store = reopen(dir.path()).unwrap();
    let first = store.find_customer("telegram", "1").unwrap().unwrap();
    assert_eq!(store.customer_ticket_count(first.id).unwrap(), 2);

    let owner = store.customer_for_identity("discord", "9", None).unwrap();
    store
        .create_link_code("LINK-ABCDEF", owner.id, u64::MAX, ("discord", "9"))
        .unwrap();
    store
        .redeem_link_code("LINK-ABCDEF", "telegram", "1", 0)
        .unwrap();
    assert_eq!(store.customer_ticket_count(first.id).unwrap(), 0);
    assert_eq!(store.customer_ticket_count(owner.id).unwrap(), 2);
    assert_eq!(store.ticket(1).unwrap().unwrap().customer_id, owner.id);
}

#[test]
fn events_with_a_known_id_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let event = |id: Option<&str>, item: &str| Event {
        v: RECORD_VERSION,
        user: "u".into(),
        item: item.into(),
        kind: EventKind::View,
        ts_ms: 1,
        value: None,
        id: id.map(str::to_string),
    };
    let batch = [
        event(Some("a"), "I1"),
        event(Some("a"), "I1"),
        event(None, "I2"),
    ];
    assert_eq!(
        store.events_append(&batch).unwrap(),
        2,
        "a repeat inside the batch"
    );
    assert_eq!(
        store.events_append(&batch).unwrap(),
        1,
        "only the event without id again"
    );
    assert_eq!(store.user_events("u").unwrap().len(), 3);
    drop(store);
    // sled releases its lock from a background thread: wait for it.
    let store = reopen(dir.path()).unwrap();
    assert_eq!(
        store.events_append(&[event(Some("a"), "I1")]).unwrap(),
        0,
        "after a reopen"
    );
}

#[test]
fn a_link_code_joins_identities_once_and_moves_conversations_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let owner = store.customer_for_identity("telegram", "1", None).unwrap();
    let other = store.customer_for_identity("discord", "2", None).unwrap();
    let conversation = store
        .current_conversation(other.id, "discord", "dm")
        .unwrap();
    store
        .append_message(conversation.id, Role::User, "hello")
        .unwrap();
    store
        .events_append(&[Event {
            v: RECORD_VERSION,
            user: format!("customer:{}", other.id),
            item: "NW-1".into(),
            kind: EventKind::Like,
            ts_ms: 1,
            value: None,
            id: None,
        }])
        .unwrap();
    store
        .create_link_code(
            "LINK-ABCDEF",
            owner.id,
            now_ms() + 60_000,
            ("telegram", "1"),
        )
        .unwrap();
    store
        .create_link_code("LINK-OLDOLD", owner.id, 1, ("telegram", "1"))
        .unwrap();
    assert_eq!(
        store
            .redeem_link_code("LINK-OLDOLD", "discord", "2", now_ms())
            .unwrap(),
        LinkOutcome::Unknown,
        "expired codes are swept"
    );
    let outcome = store
        .redeem_link_code("LINK-ABCDEF", "discord", "2", now_ms())
        .unwrap();
    let LinkOutcome::Linked { from, into, code } = outcome else {
        panic!("not linked: {outcome:?}");
    };
    assert_eq!((from, into), (other.id, owner.id));
    assert_eq!(
        (code.platform.as_str(), code.chat_id.as_str()),
        ("telegram", "1"),
        "the code remembers where it was asked for"
    );
    assert_eq!(
        store
            .user_events(&Store::event_user(owner.id))
            .unwrap()
            .len(),
        1,
        "the event moved in the same transaction"
    );
    assert!(store
        .user_events(&Store::event_user(other.id))
        .unwrap()
        .is_empty());
    assert_eq!(
        store.find_customer("discord", "2").unwrap().unwrap().id,
        owner.id
    );
    assert!(store.customer(other.id).unwrap().is_none());
    let conversations = store
        .customer_conversations(owner.id, Some("discord"))
        .unwrap();
    assert_eq!(conversations.len(), 1);
    assert_eq!(
        store.conversation_messages(conversations[0].id).unwrap()[0].text,
        "hello"
    );
    assert_eq!(
        store
            .user_events(&format!("customer:{}", owner.id))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .redeem_link_code("LINK-ABCDEF", "discord", "2", now_ms())
            .unwrap(),
        LinkOutcome::Unknown,
        "a code works once"
    );
}

pub(crate) fn inbound(text: &str) -> concierge_adapter::Inbound {
    concierge_adapter::Inbound {
        conversation: concierge_adapter::ConversationRef {
            platform: "telegram".into(),
            chat_id: "7".into(),
        },
        chat: concierge_adapter::ChatKind::Private,
        sender: concierge_adapter::SenderRef {
            platform: "telegram".into(),
            user_id: "7".into(),
            display_name: None,
            language_hint: None,
        },
        content: concierge_adapter::InboundContent::Text(text.into()),
        message_id: Some("1".into()),
        delivery_id: None,
        in_reply_to: None,
        thread_parent: None,
        received_at: std::time::SystemTime::now(),
    }
}

#[test]
fn the_inbox_keeps_messages_in_order_across_a_reopen_until_they_are_done() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<IntakeId> = store
            .inbox_put(&[inbound("one"), inbound("two"), inbound("three")])
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect();
        store.inbox_done(ids[1]).unwrap();
        store.flush_blocking().unwrap();
        ids
    };
    let store = reopen(dir.path()).unwrap();
    let pending = store.inbox_pending().unwrap();
    let texts: Vec<_> = pending
        .iter()
        .map(|(_, message)| message.content.clone())
        .collect();
    assert_eq!(
        texts,
        [
            concierge_adapter::InboundContent::Text("one".into()),
            concierge_adapter::InboundContent::Text("three".into()),
        ]
    );
    assert_eq!(pending[0].0, ids[0]);
    assert!(ids[0] < ids[2]);
}

#[test]
fn a_delivery_taken_before_is_not_put_in_the_inbox_again_until_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let delivered = |text: &str, delivery: &str| concierge_adapter::Inbound {
        delivery_id: Some(delivery.into()),
        ..inbound(text)
    };
    let first = {
        let store = Store::open(dir.path()).unwrap();
        let ids = store
            .inbox_put(&[
                delivered("one", "message:7:1"),
                delivered("one", "message:7:1"),
            ])
            .unwrap();
        assert!(ids[0].is_some());
        assert_eq!(ids[1], None, "a repeat within one batch");
        store.flush_blocking().unwrap();
        ids[0].unwrap()
    };
    // After a restart the platform delivers it again, with a new message.
    let store = reopen(dir.path()).unwrap();
    let ids = store
        .inbox_put(&[
            delivered("one", "message:7:1"),
            delivered("two", "message:7:2"),
        ])
        .unwrap();
    assert_eq!(ids[0], None);
    assert!(ids[1].is_some_and(|id| id > first));
    // The same id on another platform is another delivery.
    let mut elsewhere = delivered("one", "message:7:1");
    elsewhere.conversation.platform = "discord".into();
    assert!(store.inbox_put(&[elsewhere]).unwrap()[0].is_some());
    // Without a delivery id nothing is recognised.
    assert!(store.inbox_put(&[inbound("one")]).unwrap()[0].is_some());
    assert_eq!(store.inbox_len(), 4);
    assert_eq!(store.forget_deliveries_taken_before(0).unwrap(), 0);
    assert_eq!(store.forget_deliveries_taken_before(u64::MAX).unwrap(), 3);
    assert!(store.inbox_put(&[delivered("one", "message:7:1")]).unwrap()[0].is_some());
}

#[test]
fn a_replayed_customer_message_is_stored_once_and_knows_whether_it_was_answered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let customer = store.customer_for_identity("telegram", "7", None).unwrap();
    let conversation = store
        .current_conversation(customer.id, "telegram", "7")
        .unwrap();
    store
        .append_message(conversation.id, Role::User, "earlier")
        .unwrap();
    let id = store.inbox_put(&[inbound("question")]).unwrap()[0].unwrap();
    let first = store
        .append_customer_message(conversation.id, "question", Some(id), 10)
        .unwrap();
    assert_eq!(first.replayed, None);
    assert_eq!(first.history.len(), 1);
    // Interrupted before the reply: the replay finds it, unanswered.
    let replay = store
        .append_customer_message(conversation.id, "question", Some(id), 10)
        .unwrap();
    assert_eq!(replay.replayed, Some(Replayed { answered: false }));
    assert_eq!(replay.history, first.history, "history before the message");
    store
        .append_message(conversation.id, Role::Assistant, "answer")
        .unwrap();
    let after_reply = store
        .append_customer_message(conversation.id, "question", Some(id), 10)
        .unwrap();
    assert_eq!(after_reply.replayed, Some(Replayed { answered: true }));
    let texts: Vec<_> = store
        .conversation_messages(conversation.id)
        .unwrap()
        .into_iter()
        .map(|message| message.text)
        .collect();
    assert_eq!(texts, ["earlier", "question", "answer"]);
    // Done: the intake's record goes with its inbox entry.
    store.inbox_done(id).unwrap();
    assert_eq!(store.inbox_len(), 0);
    let fresh = store
        .append_customer_message(conversation.id, "question", Some(id), 10)
        .unwrap();
    assert_eq!(fresh.replayed, None);
}

#[test]
fn ticket_records_keep_their_stored_role_and_category_names() {
    let line: TranscriptLine =
        serde_json::from_str(r#"{"ts_ms":1,"role":"undelivered","author":"ann","text":"hi"}"#)
            .unwrap();
    assert_eq!(line.role, TranscriptRole::Undelivered);
    let mut ticket = plain_ticket(3, 9);
    ticket.category = crate::intent::Intent::HumanRequest;
    let json = serde_json::to_value(&ticket).unwrap();
    assert_eq!(json["category"], "human_request");
    let back: Ticket = serde_json::from_value(json).unwrap();
    assert_eq!(back, ticket);
}
