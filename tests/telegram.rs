//! The Telegram channel end to end: `concierge serve` (in process, scripted
//! engine) against the fake Bot API in tests/support/fake_telegram.rs, which
//! teloxide talks to unchanged.

#![cfg(feature = "telegram")]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::fake_telegram::{FakeTelegram, Fault, TOKEN};
use support::{eventually, InProcessDaemon};

const WAIT: Duration = Duration::from_secs(30);
const CUSTOMER: u64 = 555;
const CHAT: i64 = 555;
const GROUP: i64 = -100_777;

fn telegram_section(fake: &FakeTelegram) -> String {
    format!(
        "[telegram]\nenabled = true\ntoken = {TOKEN:?}\napi_url = {url:?}\npoll_timeout_secs = 1\n",
        url = fake.url
    )
}

const SCRIPT: &str = r#"
token_delay_ms = 0
default_reply = "You said: {last_user}"
[[rule]]
contains = "slowly"
reply = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
token_delay_ms = 150
"#;

fn texts_in(fake: &FakeTelegram, chat: i64) -> Vec<String> {
    fake.messages_in(chat)
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_message_gets_a_streamed_reply_with_paced_edits_and_a_typing_action() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &telegram_section(&fake));
    fake.push_message(CHAT, "private", CUSTOMER, "please answer slowly");
    let expected = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty";
    assert!(
        eventually(WAIT, || texts_in(&fake, CHAT)
            .last()
            .is_some_and(|text| text == expected))
        .await,
        "reply: {:?}",
        texts_in(&fake, CHAT)
    );
    daemon.stop().await;

    // One message, grown by edits, never more than one edit per second.
    assert_eq!(fake.messages_in(CHAT).len(), 1);
    let edits = fake.calls_of("editMessageText");
    assert!(edits.len() >= 2, "the reply grew by edits: {edits:?}");
    let sends = fake.calls_of("sendMessage");
    let mut previous = sends[0].at;
    for edit in &edits {
        let gap = edit.at.duration_since(previous);
        assert!(gap >= Duration::from_millis(950), "edits {gap:?} apart");
        previous = edit.at;
    }
    assert!(!fake.calls_of("sendChatAction").is_empty(), "typing shown");
    assert_eq!(fake.calls_of("sendChatAction")[0].body["action"], "typing");
    // Commands were registered in English and Chinese; plain text, no parse mode.
    let commands = fake.calls_of("setMyCommands");
    assert_eq!(commands.len(), 2);
    assert!(commands
        .iter()
        .any(|call| call.body["language_code"] == "zh"));
    assert!(commands[0].body["commands"]
        .as_array()
        .unwrap()
        .iter()
        .any(|command| command["command"] == "link"));
    assert!(sends[0].body.get("parse_mode").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_are_answered_only_on_a_mention_a_reply_or_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &telegram_section(&fake));
    fake.push_message(GROUP, "group", CUSTOMER, "just chatting among ourselves");
    fake.push_message(GROUP, "group", CUSTOMER, "/help@other_bot");
    fake.push_message(GROUP, "group", CUSTOMER, "@shop_bot first question");
    assert!(eventually(WAIT, || texts_in(&fake, GROUP).len() == 1).await);
    let (bot_message, _) = fake.messages_in(GROUP)[0].clone();
    fake.push_message_with(
        GROUP,
        "group",
        CUSTOMER,
        "second question",
        Some(bot_message),
    );
    let last = fake.push_message(GROUP, "group", CUSTOMER, "/help@shop_bot");
    assert!(eventually(WAIT, || texts_in(&fake, GROUP).len() == 3).await);
    // Every update was fetched, and stopping drains the queues: nothing else
    // arrives for the messages that had no trigger.
    assert!(eventually(WAIT, || fake.confirmed(last)).await);
    daemon.stop().await;
    let texts = texts_in(&fake, GROUP);
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert_eq!(texts[0], "You said: first question");
    assert_eq!(texts[1], "You said: second question");
    assert!(texts[2].contains("/reset"), "help text: {}", texts[2]);
    // Group answers quote the customer's message.
    let group_sends: Vec<_> = fake
        .calls_of("sendMessage")
        .into_iter()
        .filter(|call| call.body["chat_id"] == GROUP)
        .collect();
    assert!(group_sends
        .iter()
        .all(|call| call.body["reply_parameters"]["message_id"].is_i64()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_6000_character_reply_is_split_below_the_limit_on_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let long_reply = support::long_reply();
    let script = support::long_reply_script(&long_reply);
    let daemon = InProcessDaemon::start(dir.path(), &script, &telegram_section(&fake));
    fake.push_message(CHAT, "private", CUSTOMER, "a long answer please");
    assert!(
        eventually(WAIT, || support::holds_every_word(
            &texts_in(&fake, CHAT),
            &long_reply
        ))
        .await,
        "{:?}",
        texts_in(&fake, CHAT)
    );
    daemon.stop().await;
    let texts = texts_in(&fake, CHAT);
    assert_eq!(texts.len(), 2, "6,000 characters need two messages");
    support::assert_split_on_sentences(&texts, &long_reply, 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_on_an_edit_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &telegram_section(&fake));
    fake.fail_next("editMessageText", Fault::RetryAfter(2), 1);
    fake.push_message(CHAT, "private", CUSTOMER, "please answer slowly");
    assert!(
        eventually(WAIT, || texts_in(&fake, CHAT)
            .last()
            .is_some_and(|text| text.ends_with("twenty")))
        .await
    );
    daemon.stop().await;
    let edits = fake.calls_of("editMessageText");
    assert!(edits.len() >= 2, "{edits:?}");
    // The call after the 429 waited the 2 seconds Telegram asked for.
    let gap = edits[1].at.duration_since(edits[0].at);
    assert!(gap >= Duration::from_millis(1950), "retried after {gap:?}");
    assert_eq!(
        fake.messages_in(CHAT).len(),
        1,
        "the reply still grows in one message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_loses_and_duplicates_no_update_and_a_restart_resumes_after_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let section = telegram_section(&fake);
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &section);
    fake.push_message(CHAT, "private", CUSTOMER, "message 1");
    fake.push_message(CHAT, "private", CUSTOMER, "message 2");
    assert!(eventually(WAIT, || texts_in(&fake, CHAT).len() == 2).await);

    fake.outage(Duration::from_secs(4));
    // The daemon has met the outage: its poll was refused.
    assert!(eventually(WAIT, || fake.dropped_connections() > 0).await);
    for n in 3..=5 {
        fake.push_message(CHAT, "private", CUSTOMER, &format!("message {n}"));
    }
    assert!(
        eventually(WAIT, || texts_in(&fake, CHAT).len() == 5).await,
        "{:?}",
        texts_in(&fake, CHAT)
    );
    assert!(
        fake.dropped_connections() > 0,
        "the outage refused connections"
    );
    daemon.stop().await;

    // Restart on the same data: the handled updates are not handled again.
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &section);
    let last = fake.push_message(CHAT, "private", CUSTOMER, "message 6");
    assert!(eventually(WAIT, || texts_in(&fake, CHAT).len() == 6).await);
    assert!(eventually(WAIT, || fake.confirmed(last)).await);
    daemon.stop().await;
    let texts = texts_in(&fake, CHAT);
    let expected: Vec<String> = (1..=6).map(|n| format!("You said: message {n}")).collect();
    assert_eq!(texts, expected);
    let offset = std::fs::read_to_string(dir.path().join("data/telegram/last_update_id")).unwrap();
    assert_eq!(offset.trim(), "1005");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_ids_that_restart_lower_are_read_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let section = telegram_section(&fake);
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &section);
    fake.push_message(CHAT, "private", CUSTOMER, "message 1");
    fake.push_message(CHAT, "private", CUSTOMER, "message 2");
    assert!(eventually(WAIT, || texts_in(&fake, CHAT).len() == 2).await);
    // A week later Telegram picks a new, lower starting id.
    fake.restart_update_ids(17);
    fake.push_message(CHAT, "private", CUSTOMER, "message 3");
    fake.push_message(CHAT, "private", CUSTOMER, "message 4");
    assert!(
        eventually(WAIT, || texts_in(&fake, CHAT).len() == 4).await,
        "{:?}",
        texts_in(&fake, CHAT)
    );
    daemon.stop().await;
    // A restart resumes after the new sequence and repeats nothing.
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &section);
    fake.push_message(CHAT, "private", CUSTOMER, "message 5");
    assert!(eventually(WAIT, || texts_in(&fake, CHAT).len() == 5).await);
    daemon.stop().await;
    let expected: Vec<String> = (1..=5).map(|n| format!("You said: message {n}")).collect();
    assert_eq!(texts_in(&fake, CHAT), expected);
    let offset = std::fs::read_to_string(dir.path().join("data/telegram/last_update_id")).unwrap();
    assert_eq!(offset.trim(), "19");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_delivered_again_after_a_crash_before_its_offset_was_saved_is_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let section = telegram_section(&fake);
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &section);
    let first = fake.push_message(CHAT, "private", CUSTOMER, "message 1");
    assert!(eventually(WAIT, || texts_in(&fake, CHAT).len() == 1).await);
    daemon.stop().await;
    // The process died after storing the update and before saving its
    // offset: the file still names the update before it, and Telegram,
    // never told, delivers the update again.
    let offset_file = dir.path().join("data/telegram/last_update_id");
    std::fs::write(&offset_file, format!("{}\n", first - 1)).unwrap();
    fake.deliver_again(first);
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &section);
    fake.push_message(CHAT, "private", CUSTOMER, "message 2");
    assert!(eventually(WAIT, || texts_in(&fake, CHAT).len() >= 2).await);
    daemon.stop().await;
    assert_eq!(
        texts_in(&fake, CHAT),
        ["You said: message 1", "You said: message 2"]
    );
    let store = support::reopen_store(&dir.path().join("data"));
    let customer = store
        .find_customer("telegram", &CUSTOMER.to_string())
        .unwrap()
        .unwrap();
    let conversation = store
        .current_conversation(customer.id, "telegram", &CHAT.to_string())
        .unwrap();
    let said: Vec<String> = store
        .conversation_messages(conversation.id)
        .unwrap()
        .into_iter()
        .map(|message| message.text)
        .collect();
    assert_eq!(
        said,
        [
            "message 1",
            "You said: message 1",
            "message 2",
            "You said: message 2"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_gets_the_burst_and_one_notice_and_others_are_still_answered() {
    const OTHER: i64 = 556;
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let limits =
        "[moderation]\nmessages_per_minute = 1\nmessage_burst = 5\nnotice_window_secs = 600\n";
    let section = format!("{}{limits}", telegram_section(&fake));
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &section);
    // Up and polling before the flood.
    fake.push_message(OTHER, "private", OTHER as u64, "warm up");
    assert!(eventually(WAIT, || texts_in(&fake, OTHER).len() == 1).await);
    let rss_before = concierge::bench::rss_mib();
    for n in 0..300 {
        fake.push_message(CHAT, "private", CUSTOMER, "/help");
        if n == 150 {
            fake.push_message(OTHER, "private", OTHER as u64, "where is my parcel?");
        }
    }
    assert!(
        eventually(WAIT, || texts_in(&fake, OTHER)
            .get(1)
            .is_some_and(|text| text == "You said: where is my parcel?"))
        .await,
        "the other customer is answered during the flood: {:?}",
        texts_in(&fake, OTHER)
    );
    // Stopping drains every queue, so the count below is final.
    daemon.stop().await;
    let rss_after = concierge::bench::rss_mib();
    eprintln!(
        "resident memory around the flood: {rss_before:.1} MiB before, {rss_after:.1} MiB after"
    );
    let texts = texts_in(&fake, CHAT);
    let notices: Vec<&String> = texts
        .iter()
        .filter(|text| text.contains("faster than I can read"))
        .collect();
    assert_eq!(notices.len(), 1, "{texts:?}");
    assert_eq!(
        texts.len(),
        5 + 1,
        "the burst of 5 answers and one notice: {texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inline_buttons_come_back_as_choices() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &telegram_section(&fake));
    fake.push_message(CHAT, "private", CUSTOMER, "/recommend");
    let keyboard = || {
        fake.calls_of("sendMessage")
            .into_iter()
            .find_map(|call| call.body.get("reply_markup").cloned())
    };
    assert!(eventually(WAIT, || keyboard().is_some()).await);
    let markup = keyboard().unwrap();
    let buttons: Vec<&Value> = markup["inline_keyboard"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .collect();
    let details = buttons
        .iter()
        .find(|button| {
            button["callback_data"]
                .as_str()
                .unwrap()
                .starts_with("rec:details:")
        })
        .expect("a details button");
    let data = details["callback_data"].as_str().unwrap().to_string();
    let (message_id, _) = fake.messages_in(CHAT).last().cloned().unwrap();
    let before = texts_in(&fake, CHAT).len();
    fake.push_callback(CHAT, CUSTOMER, message_id, &data);
    assert!(eventually(WAIT, || texts_in(&fake, CHAT).len() > before).await);
    daemon.stop().await;
    assert_eq!(fake.calls_of("answerCallbackQuery").len(), 1);
    let item = data.trim_start_matches("rec:details:");
    let store = support::reopen_store(&dir.path().join("data"));
    let customer = store
        .find_customer("telegram", &CUSTOMER.to_string())
        .unwrap()
        .unwrap();
    let events = store
        .user_events(&concierge::pipeline::event_user(&customer))
        .unwrap();
    assert!(
        events.iter().any(|event| event.item == item),
        "the press was stored as an event on {item}: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_mode_checks_the_secret_and_skips_redeliveries() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let port = support::free_port();
    let section = format!(
        "{}mode = \"webhook\"\nwebhook_url = \"https://shop.example/telegram/hook\"\nlisten = \"127.0.0.1:{port}\"\nsecret_token = \"s3cret-Value_1\"\n",
        telegram_section(&fake)
    );
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &section);
    assert!(eventually(WAIT, || !fake.calls_of("setWebhook").is_empty()).await);
    let update = |id: u64, text: &str| {
        serde_json::json!({"update_id": id, "message": {
            "message_id": id, "date": 1_700_000_000,
            "chat": {"id": CHAT, "type": "private", "first_name": "Customer"},
            "from": {"id": CUSTOMER, "is_bot": false, "first_name": "Customer"},
            "text": text,
        }})
        .to_string()
    };
    let post = |body: String, secret: Option<&str>| {
        let secret = secret.map(|secret| format!("X-Telegram-Bot-Api-Secret-Token: {secret}\r\n"));
        raw_post(
            port,
            "/telegram/hook",
            &body,
            secret.as_deref().unwrap_or(""),
        )
    };
    let ready = eventually(WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(ready, "the webhook listens");
    assert_eq!(post(update(1, "no secret"), None), 401);
    assert_eq!(post(update(2, "wrong secret"), Some("nope")), 401);
    assert_eq!(post(update(3, "hello hook"), Some("s3cret-Value_1")), 200);
    assert_eq!(post(update(3, "hello hook"), Some("s3cret-Value_1")), 200);
    assert!(eventually(WAIT, || !texts_in(&fake, CHAT).is_empty()).await);
    // The redelivery was answered 200 after being skipped or queued, and
    // stopping drains the queues, so a double would show below.
    daemon.stop().await;
    assert_eq!(
        texts_in(&fake, CHAT),
        vec!["You said: hello hook".to_string()]
    );
}

fn raw_post(port: u16, path: &str, body: &str, extra_headers: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_reply_blocks_no_other_chat_and_one_chat_stays_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &telegram_section(&fake));
    const OTHER: i64 = 556;
    fake.push_message(CHAT, "private", CUSTOMER, "please answer slowly");
    fake.push_message(CHAT, "private", CUSTOMER, "and then my parcel");
    fake.push_message(OTHER, "private", OTHER as u64, "quick one");
    assert!(eventually(WAIT, || !texts_in(&fake, OTHER).is_empty()).await);
    // The other chat was answered while the slow reply was still growing.
    let slow_so_far = texts_in(&fake, CHAT);
    assert!(
        slow_so_far
            .first()
            .is_none_or(|text| !text.ends_with("twenty")),
        "{slow_so_far:?}"
    );
    assert!(eventually(WAIT, || texts_in(&fake, CHAT).len() == 2).await);
    daemon.stop().await;
    let texts = texts_in(&fake, CHAT);
    assert!(texts[0].ends_with("twenty"), "{texts:?}");
    assert_eq!(texts[1], "You said: and then my parcel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_code_asked_for_in_a_group_is_sent_only_privately() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &telegram_section(&fake));
    fake.push_message(GROUP, "group", CUSTOMER, "/link");
    assert!(eventually(WAIT, || texts_in(&fake, GROUP).len() == 1).await);
    assert!(eventually(WAIT, || texts_in(&fake, CHAT).len() == 1).await);
    let private = texts_in(&fake, CHAT)[0].clone();
    assert!(private.contains("LINK-"), "{private}");
    let in_group = texts_in(&fake, GROUP)[0].clone();
    assert!(!in_group.contains("LINK-"), "{in_group}");
    assert!(in_group.contains("private chat"), "{in_group}");

    // Someone the bot cannot write to privately gets no code at all.
    fake.fail_next("sendMessage", Fault::Forbidden, 1);
    fake.push_message(GROUP, "group", 556, "/link");
    assert!(eventually(WAIT, || texts_in(&fake, GROUP).len() == 2).await);
    let refused = texts_in(&fake, GROUP)[1].clone();
    assert!(!refused.contains("LINK-"), "{refused}");
    assert!(refused.contains("private chat"), "{refused}");
    assert!(texts_in(&fake, 556).is_empty());
    daemon.stop().await;
}

/// A grounded answer is shown as it is verified: the customer sees its
/// first checked sentence while the model is still writing the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grounded_answer_grows_sentence_by_sentence_as_it_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let first = "Standard delivery costs €4.95.";
    let second = "Standard delivery is free for orders of €60 or more.";
    let script = format!(
        "[[rule]]\ncontains = \"DHL\"\nreply = {:?}\ntoken_delay_ms = 100\n",
        format!("{first} {second}")
    );
    let daemon = InProcessDaemon::start_with_env(
        dir.path(),
        &script,
        &telegram_section(&fake),
        &[("CONCIERGE_KNOWLEDGE_DEMO", "true")],
    );
    fake.push_message(
        CHAT,
        "private",
        CUSTOMER,
        "My parcel goes to Hamburg: what does standard DHL delivery cost?",
    );
    assert!(
        eventually(WAIT, || texts_in(&fake, CHAT)
            .last()
            .is_some_and(|text| text.contains("Source:")))
        .await,
        "reply: {:?}",
        texts_in(&fake, CHAT)
    );
    daemon.stop().await;
    let final_text = texts_in(&fake, CHAT).pop().unwrap();
    assert!(
        final_text.starts_with(&format!("{first} {second}")),
        "{final_text}"
    );
    let shown: Vec<String> = fake
        .calls_of("sendMessage")
        .into_iter()
        .chain(fake.calls_of("editMessageText"))
        .map(|call| call.body["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        shown.iter().any(|text| text.trim() == first),
        "the first verified sentence was shown on its own first: {shown:?}"
    );
    assert!(
        shown
            .iter()
            .all(|text| first.starts_with(text.trim()) || text.starts_with(first)),
        "only whole verified sentences were shown: {shown:?}"
    );
}
