//! Hand-off to people end to end over the fake Telegram: a complaint opens a
//! ticket, the customer is told, the bot stays silent while agents answer
//! through `concierge tickets` (the operator API), and resolving brings the
//! bot back with rating buttons.

#![cfg(feature = "telegram")]

mod support;

use std::process::Command;
use std::time::Duration;

use support::fake_telegram::{FakeTelegram, Fault, TOKEN};
use support::{binary, eventually, free_port, InProcessDaemon};

const WAIT: Duration = Duration::from_secs(30);
const CHAT: i64 = 555;
const SCRIPT: &str = "token_delay_ms = 0\ndefault_reply = \"You said: {last_user}\"\n\
[[rule]]\ncontains = \"support agent\"\nreply = \"The parcel arrived smashed and nobody answers the emails.\"\n";
const OPERATOR_TOKEN: &str = "desk-token-123";

fn texts(fake: &FakeTelegram) -> Vec<String> {
    fake.messages_in(CHAT)
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

fn tickets_cli(
    dir: &std::path::Path,
    port: u16,
    token: &str,
    args: &[&str],
) -> std::process::Output {
    let config = dir.join("cli.toml");
    std::fs::write(
        &config,
        format!("[operator]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    Command::new(binary())
        .arg("--config")
        .arg(&config)
        .arg("tickets")
        .args(args)
        .env("CONCIERGE_OPERATOR_TOKEN", token)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_complaint_goes_to_a_person_and_comes_back_with_a_rating() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let (daemon, cli) = desk_daemon(dir.path(), &fake);
    fake.push_message(CHAT, "private", 555, "hello");
    assert!(eventually(WAIT, || texts(&fake).len() == 1).await);
    fake.push_message(
        CHAT,
        "private",
        555,
        "This is unacceptable, my parcel arrived smashed and nobody answers my emails",
    );
    assert!(eventually(WAIT, || texts(&fake).len() == 2).await);
    assert!(texts(&fake)[1].contains("T-000001"), "{:?}", texts(&fake));

    // The bot stays silent while the ticket is with people (checked once
    // the message is in the ticket, below).
    fake.push_message(CHAT, "private", 555, "hello? anyone there?");

    // Listed until the last message is in the ticket (it was handled).
    let deadline = std::time::Instant::now() + WAIT;
    let ticket: serde_json::Value = loop {
        let listed = cli(OPERATOR_TOKEN, args(&["list", "--state", "open"]))
            .await
            .unwrap();
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let listed = String::from_utf8_lossy(&listed.stdout).to_string();
        let ticket: serde_json::Value =
            serde_json::from_str(listed.lines().next().unwrap()).unwrap();
        if ticket.to_string().contains("hello? anyone there?")
            || std::time::Instant::now() > deadline
        {
            break ticket;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ticket["ticket"], "T-000001");
    assert_eq!(ticket["category"], "complaint");
    assert_eq!(ticket["state"], "open");
    // The engine wrote the summary, and it stuck to the transcript.
    assert_eq!(
        ticket["summary"],
        "The parcel arrived smashed and nobody answers the emails."
    );
    let transcript: Vec<&str> = ticket["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["text"].as_str().unwrap())
        .collect();
    assert!(
        transcript.contains(&"hello? anyone there?"),
        "{transcript:?}"
    );
    assert_eq!(texts(&fake).len(), 2, "{:?}", texts(&fake));

    let refused = cli(
        "wrong-token",
        args(&["reply", "T-000001", "--agent", "ann", "hi"]),
    )
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));

    // Telegram refuses the answer: the agent is told, the customer got
    // nothing, and the ticket still waits for an answer (its SLA runs on).
    fake.fail_next("sendMessage", Fault::Unauthorized, 1);
    let undelivered = cli(
        OPERATOR_TOKEN,
        args(&["reply", "T-000001", "--agent", "ann", "This one is lost."]),
    )
    .await
    .unwrap();
    assert!(!undelivered.status.success());
    assert!(
        String::from_utf8_lossy(&undelivered.stderr).contains("could not be delivered"),
        "{}",
        String::from_utf8_lossy(&undelivered.stderr)
    );
    assert_eq!(texts(&fake).len(), 2, "{:?}", texts(&fake));
    let listed = cli(OPERATOR_TOKEN, args(&["list", "--state", "open"]))
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let ticket: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    let roles: Vec<&str> = ticket["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["role"].as_str().unwrap())
        .collect();
    assert!(
        roles.contains(&"undelivered") && !roles.contains(&"agent"),
        "{roles:?}"
    );

    let replied = cli(
        OPERATOR_TOKEN,
        args(&[
            "reply",
            "T-000001",
            "--agent",
            "ann",
            "Sorry about that, a new parcel leaves today.",
        ]),
    )
    .await
    .unwrap();
    assert!(
        replied.status.success(),
        "{}",
        String::from_utf8_lossy(&replied.stderr)
    );
    assert!(eventually(WAIT, || texts(&fake).len() == 3).await);
    assert_eq!(
        texts(&fake)[2],
        "Sorry about that, a new parcel leaves today."
    );

    let noted = cli(
        OPERATOR_TOKEN,
        args(&["note", "T-000001", "--agent", "ann", "courier called"]),
    )
    .await
    .unwrap();
    assert!(
        noted.status.success(),
        "{}",
        String::from_utf8_lossy(&noted.stderr)
    );

    let resolved = cli(
        OPERATOR_TOKEN,
        args(&["resolve", "T-000001", "--agent", "ann"]),
    )
    .await
    .unwrap();
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    assert!(eventually(WAIT, || texts(&fake).len() == 4).await);
    let rating_message = fake.calls_of("sendMessage").into_iter().last().unwrap();
    let buttons: Vec<String> = rating_message.body["reply_markup"]["inline_keyboard"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|button| button["callback_data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(buttons.len(), 5);
    let (message_id, _) = fake.messages_in(CHAT).last().cloned().unwrap();
    fake.push_callback(CHAT, 555, message_id, &buttons[4]);
    assert!(eventually(WAIT, || texts(&fake).len() == 5).await);

    // The bot is back.
    fake.push_message(CHAT, "private", 555, "one more question");
    assert!(
        eventually(WAIT, || texts(&fake)
            .get(5)
            .is_some_and(|text| text == "You said: one more question"))
        .await,
        "{:?}",
        texts(&fake)
    );
    daemon.stop().await;

    // Everything survived the restart: state, transitions and the rating.
    let store = support::reopen_store(&dir.path().join("data"));
    let ticket = store.ticket(1).unwrap().unwrap();
    assert_eq!(ticket.rating, Some(5));
    let states: Vec<&str> = ticket.transitions.iter().map(|t| t.to.label()).collect();
    assert_eq!(states, ["open", "assigned", "resolved", "closed"]);
    assert_eq!(ticket.transitions[1].actor, "ann");
    assert_eq!(ticket.transitions[3].actor, "customer");
    // The note stayed internal.
    assert!(ticket
        .transcript
        .iter()
        .any(|line| line.role == concierge::store::TranscriptRole::Note
            && line.text == "courier called"));
    assert!(!texts(&fake).iter().any(|text| text.contains("courier")));
}

const FORUM: i64 = -1_001_000;
const GROUP: i64 = -1_002_000;
const AGENT: u64 = 7001;
const STRANGER: u64 = 7002;

/// `[telegram]` with the agents' group, `[escalation]` with one agent and a
/// deadline short enough to see its reminder.
fn agents_config(fake: &FakeTelegram, agents_chat: i64) -> String {
    format!(
        "[telegram]\nenabled = true\ntoken = {TOKEN:?}\napi_url = {:?}\npoll_timeout_secs = 1\n\
         agents_chat_id = {agents_chat}\n\
         [escalation]\nsla_urgent_minutes = 1\nsla_high_minutes = 1\nsla_remind_at = 0.05\nsla_check_secs = 1\n\
         [escalation.agents]\nalice = [\"telegram:{AGENT}\"]\n",
        fake.url
    )
}

fn topic_texts(fake: &FakeTelegram, chat: i64, topic: i64) -> Vec<String> {
    fake.messages_in_topic(chat, topic)
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

fn any_contains(texts: &[String], needle: &str) -> bool {
    texts.iter().any(|text| text.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_answer_from_a_topic_of_the_telegram_agents_group() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    fake.make_forum(FORUM);
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &agents_config(&fake, FORUM));
    fake.push_message(
        CHAT,
        "private",
        555,
        "This is unacceptable, my parcel arrived smashed and nobody answers my emails",
    );
    assert!(eventually(WAIT, || texts(&fake).len() == 1).await);
    assert!(texts(&fake)[0].contains("T-000001"), "{:?}", texts(&fake));

    // The agents' group gets a topic for the ticket, with the ticket in it.
    assert!(eventually(WAIT, || fake.topics().len() == 1).await);
    let (chat, topic, name) = fake.topics()[0].clone();
    assert_eq!(chat, FORUM);
    assert!(name.starts_with("T-000001 · complaint"), "{name}");
    assert!(eventually(WAIT, || !topic_texts(&fake, FORUM, topic).is_empty()).await);
    let post = &topic_texts(&fake, FORUM, topic)[0];
    assert!(post.contains("New ticket T-000001"), "{post}");
    assert!(post.contains("parcel arrived smashed"), "{post}");

    // Nobody answered: the deadline's reminder comes to the topic.
    assert!(
        eventually(WAIT, || any_contains(
            &topic_texts(&fake, FORUM, topic),
            "Reminder: T-000001"
        ))
        .await,
        "{:?}",
        topic_texts(&fake, FORUM, topic)
    );

    // The bot stays silent with the customer and relays to the agents.
    fake.push_message(CHAT, "private", 555, "hello? anyone there?");
    assert!(
        eventually(WAIT, || any_contains(
            &topic_texts(&fake, FORUM, topic),
            "customer: hello? anyone there?"
        ))
        .await
    );
    assert_eq!(texts(&fake).len(), 1, "{:?}", texts(&fake));

    // Someone who is not an agent is refused, and nothing reaches the customer.
    fake.push_topic_message(FORUM, topic, STRANGER, "I can sort this out");
    fake.push_topic_message(FORUM, topic, STRANGER, "/resolve");
    assert!(
        eventually(WAIT, || topic_texts(&fake, FORUM, topic)
            .iter()
            .filter(|text| text.contains("not one of them"))
            .count()
            == 2)
        .await,
        "{:?}",
        topic_texts(&fake, FORUM, topic)
    );
    assert_eq!(texts(&fake).len(), 1, "{:?}", texts(&fake));

    // The agent's words reach the customer; a note does not.
    fake.push_topic_message(FORUM, topic, AGENT, "/note checked the courier's photos");
    fake.push_topic_message(
        FORUM,
        topic,
        AGENT,
        "Sorry about that, a new parcel leaves today.",
    );
    assert!(eventually(WAIT, || texts(&fake).len() == 2).await);
    assert_eq!(
        texts(&fake)[1],
        "Sorry about that, a new parcel leaves today."
    );
    assert!(any_contains(
        &topic_texts(&fake, FORUM, topic),
        "internal note by alice"
    ));

    // Resolving brings the bot back, which asks for a rating.
    fake.push_topic_message(FORUM, topic, AGENT, "/resolve");
    assert!(eventually(WAIT, || texts(&fake).len() == 3).await);
    assert!(texts(&fake)[2].contains("rate"), "{:?}", texts(&fake));
    let rating_message = fake
        .calls_of("sendMessage")
        .into_iter()
        .rfind(|call| call.body["chat_id"] == CHAT)
        .unwrap();
    let buttons = rating_message.body["reply_markup"]["inline_keyboard"][0]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(buttons, 5);
    assert!(
        eventually(WAIT, || any_contains(
            &topic_texts(&fake, FORUM, topic),
            "resolved by alice"
        ))
        .await
    );
    let (message_id, _) = fake.messages_in(CHAT).last().cloned().unwrap();
    let data = rating_message.body["reply_markup"]["inline_keyboard"][0][3]["callback_data"]
        .as_str()
        .unwrap()
        .to_string();
    fake.push_callback(CHAT, 555, message_id, &data);
    assert!(
        eventually(WAIT, || any_contains(
            &topic_texts(&fake, FORUM, topic),
            "rated the help 4/5"
        ))
        .await
    );
    daemon.stop().await;

    let store = support::reopen_store(&dir.path().join("data"));
    let ticket = store.ticket(1).unwrap().unwrap();
    assert_eq!(ticket.rating, Some(4));
    let moves: Vec<(&str, &str)> = ticket
        .transitions
        .iter()
        .map(|t| (t.to.label(), t.actor.as_str()))
        .collect();
    assert_eq!(
        moves,
        [
            ("open", "bot"),
            ("assigned", "alice"),
            ("resolved", "alice"),
            ("closed", "customer")
        ]
    );
    assert!(ticket.reminded);
    let note = ticket
        .transcript
        .iter()
        .find(|line| line.role == concierge::store::TranscriptRole::Note)
        .unwrap();
    assert_eq!(note.text, "checked the courier's photos");
    assert_eq!(note.author.as_deref(), Some("alice"));
    assert!(!ticket
        .transcript
        .iter()
        .any(|line| line.text.contains("I can sort this out")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_group_without_topics_agents_answer_by_replying_to_the_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &agents_config(&fake, GROUP));
    fake.push_message(CHAT, "private", 555, "/human");
    assert!(eventually(WAIT, || texts(&fake).len() == 1).await);
    assert!(eventually(WAIT, || !fake.messages_in(GROUP).is_empty()).await);
    let (post_id, post) = fake.messages_in(GROUP)[0].clone();
    assert!(
        post.contains("New ticket T-000001 · human_request"),
        "{post}"
    );
    assert!(fake.topics().is_empty());

    // The customer's next words come to the group as a reply to the ticket.
    fake.push_message(CHAT, "private", 555, "it is about order 1234");
    assert!(eventually(WAIT, || fake.messages_in(GROUP).len() >= 2).await);
    let (relayed_id, relayed) = fake.messages_in(GROUP)[1].clone();
    assert!(
        relayed.contains("customer: it is about order 1234"),
        "{relayed}"
    );
    assert_eq!(fake.quoted_by(GROUP, relayed_id), Some(post_id));

    // Agents chatting in the group outside a ticket are left alone.
    fake.push_message(GROUP, "group", AGENT, "coffee anyone?");
    // A reply to any message of the ticket answers the customer.
    fake.push_message_with(
        GROUP,
        "group",
        AGENT,
        "Order 1234 left the warehouse this morning.",
        Some(relayed_id),
    );
    assert!(eventually(WAIT, || texts(&fake).len() == 2).await);
    assert_eq!(
        texts(&fake)[1],
        "Order 1234 left the warehouse this morning."
    );
    // `/assign` with the ticket named works anywhere in the group.
    fake.push_message(GROUP, "group", AGENT, "/assign@shop_bot T-000001");
    assert!(
        eventually(WAIT, || fake
            .messages_in(GROUP)
            .iter()
            .any(|(_, text)| text.contains("T-000001 is assigned to alice")))
        .await
    );
    daemon.stop().await;
    let group: Vec<String> = fake
        .messages_in(GROUP)
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    assert!(
        !group.iter().any(|text| text.contains("coffee")),
        "{group:?}"
    );
    assert_eq!(texts(&fake).len(), 2, "{:?}", texts(&fake));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_using_an_agent_command_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &agents_config(&fake, GROUP));
    fake.push_message(CHAT, "private", 555, "/resolve T-000001");
    assert!(eventually(WAIT, || texts(&fake).len() == 1).await);
    assert!(
        texts(&fake)[0].contains("/resolve is for the agents"),
        "{:?}",
        texts(&fake)
    );
    daemon.stop().await;
}

const SHARED_GROUP: i64 = -1_003_000;
const ANN: u64 = 8001;
const BEN: u64 = 8002;

fn texts_of(fake: &FakeTelegram, chat: i64) -> Vec<String> {
    fake.messages_in(chat)
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

/// A daemon with the operator API, and a CLI for its tickets (with a token).
fn desk_daemon(
    dir: &std::path::Path,
    fake: &FakeTelegram,
) -> (
    InProcessDaemon,
    impl Fn(&'static str, Vec<String>) -> tokio::task::JoinHandle<std::process::Output>,
) {
    let port = free_port();
    let section = format!(
        "[telegram]\nenabled = true\ntoken = {TOKEN:?}\napi_url = {:?}\npoll_timeout_secs = 1\n",
        fake.url
    );
    let listen = format!("127.0.0.1:{port}");
    let daemon = InProcessDaemon::start_with_env(
        dir,
        SCRIPT,
        &section,
        &[
            ("CONCIERGE_OPERATOR_ENABLED", "true"),
            ("CONCIERGE_OPERATOR_LISTEN", &listen),
            ("CONCIERGE_OPERATOR_TOKEN", OPERATOR_TOKEN),
        ],
    );
    let dir = dir.to_path_buf();
    let cli = move |token: &'static str, args: Vec<String>| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tickets_cli(&dir, port, token, &args)
        })
    };
    (daemon, cli)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|arg| arg.to_string()).collect()
}

/// Presses a rating button of `chat`'s last message as `user`.
fn press_rating(fake: &FakeTelegram, chat: i64, user: u64, stars: usize) {
    let rating_message = fake
        .calls_of("sendMessage")
        .into_iter()
        .rev()
        .find(|call| call.body["reply_markup"]["inline_keyboard"].is_array())
        .unwrap();
    let data = rating_message.body["reply_markup"]["inline_keyboard"][0][stars - 1]
        ["callback_data"]
        .as_str()
        .unwrap()
        .to_string();
    let (message_id, _) = fake.messages_in(chat).last().cloned().unwrap();
    fake.push_callback(chat, user, message_id, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_group_each_customer_has_their_own_ticket_answered_privately() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let (daemon, cli) = desk_daemon(dir.path(), &fake);
    fake.push_message(SHARED_GROUP, "group", ANN, "/human");
    assert!(eventually(WAIT, || texts_of(&fake, ANN as i64).len() == 1).await);
    assert!(texts_of(&fake, ANN as i64)[0].contains("T-000001"));
    assert!(eventually(WAIT, || texts_of(&fake, SHARED_GROUP).len() == 1).await);
    assert!(
        texts_of(&fake, SHARED_GROUP)[0].contains("private chat"),
        "{:?}",
        texts_of(&fake, SHARED_GROUP)
    );

    // Ben, in the same group, is still answered by the bot.
    fake.push_message(
        SHARED_GROUP,
        "group",
        BEN,
        "@shop_bot when do you open on sundays?",
    );
    // Streamed by edits: wait for the whole reply.
    assert!(
        eventually(WAIT, || texts_of(&fake, SHARED_GROUP).get(1).is_some_and(
            |text| text == "You said: when do you open on sundays?"
        ))
        .await,
        "{:?}",
        texts_of(&fake, SHARED_GROUP)
    );

    // The agent's answer reaches Ann alone.
    let replied = cli(
        OPERATOR_TOKEN,
        args(&[
            "reply",
            "T-000001",
            "--agent",
            "ann",
            "Hello, how can I help?",
        ]),
    )
    .await
    .unwrap();
    assert!(replied.status.success(), "{replied:?}");
    assert!(eventually(WAIT, || texts_of(&fake, ANN as i64).len() == 2).await);
    assert_eq!(texts_of(&fake, ANN as i64)[1], "Hello, how can I help?");
    // Ann answers privately: relayed to the ticket, the bot stays silent.
    fake.push_message(ANN as i64, "private", ANN, "my order 123 is late");
    let relayed = support::wait_for(WAIT, || {
        let shown = std::process::Command::new(binary())
            .arg("--config")
            .arg(dir.path().join("cli.toml"))
            .args(["tickets", "show", "T-000001"])
            .env("CONCIERGE_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .output()
            .ok()?;
        let shown = String::from_utf8_lossy(&shown.stdout).to_string();
        shown.contains("my order 123 is late").then_some(shown)
    });
    assert!(relayed.is_some(), "Ann's message is in her ticket");
    assert_eq!(texts_of(&fake, ANN as i64).len(), 2);
    assert!(!texts_of(&fake, SHARED_GROUP)
        .iter()
        .any(|text| text.contains("Hello, how can I help?")));

    let resolved = cli(
        OPERATOR_TOKEN,
        args(&["resolve", "T-000001", "--agent", "ann"]),
    )
    .await
    .unwrap();
    assert!(resolved.status.success(), "{resolved:?}");
    assert!(eventually(WAIT, || texts_of(&fake, ANN as i64).len() == 3).await);
    // Ben's press of Ann's rating is ignored; Ann's counts.
    press_rating(&fake, ANN as i64, BEN, 1);
    press_rating(&fake, ANN as i64, ANN, 5);
    assert!(eventually(WAIT, || texts_of(&fake, ANN as i64).len() == 4).await);
    daemon.stop().await;
    let store = support::reopen_store(&dir.path().join("data"));
    let ticket = store.ticket(1).unwrap().unwrap();
    assert_eq!(ticket.rating, Some(5));
    assert_eq!(
        texts_of(&fake, BEN as i64).len(),
        0,
        "Ben got nothing privately"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_customer_the_bot_cannot_write_to_keeps_a_ticket_of_their_own_in_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let (daemon, cli) = desk_daemon(dir.path(), &fake);
    // Ann never started the bot: Telegram refuses the private message.
    fake.fail_next("sendMessage", Fault::Forbidden, 1);
    fake.push_message(SHARED_GROUP, "group", ANN, "/human");
    assert!(eventually(WAIT, || texts_of(&fake, SHARED_GROUP).len() == 1).await);
    assert!(texts_of(&fake, SHARED_GROUP)[0].contains("T-000001"));
    assert!(!texts_of(&fake, SHARED_GROUP)[0].contains("private chat"));
    // Ben's question is his own, not a line of Ann's ticket.
    fake.push_message(
        SHARED_GROUP,
        "group",
        BEN,
        "@shop_bot do you ship to Spain?",
    );
    // Streamed by edits: wait for the whole reply.
    assert!(
        eventually(WAIT, || texts_of(&fake, SHARED_GROUP)
            .get(1)
            .is_some_and(|text| text == "You said: do you ship to Spain?"))
        .await,
        "{:?}",
        texts_of(&fake, SHARED_GROUP)
    );
    let resolved = cli(
        OPERATOR_TOKEN,
        args(&["resolve", "T-000001", "--agent", "ann"]),
    )
    .await
    .unwrap();
    assert!(resolved.status.success(), "{resolved:?}");
    assert!(eventually(WAIT, || texts_of(&fake, SHARED_GROUP).len() == 3).await);
    press_rating(&fake, SHARED_GROUP, BEN, 1);
    press_rating(&fake, SHARED_GROUP, ANN, 4);
    assert!(eventually(WAIT, || texts_of(&fake, SHARED_GROUP).len() == 4).await);
    daemon.stop().await;
    let store = support::reopen_store(&dir.path().join("data"));
    let ticket = store.ticket(1).unwrap().unwrap();
    assert_eq!(ticket.rating, Some(4));
    assert_eq!(ticket.chat_id, SHARED_GROUP.to_string());
    assert!(!ticket
        .transcript
        .iter()
        .any(|line| line.text.contains("Spain")));
}
