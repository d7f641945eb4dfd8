//! The Discord channel end to end: `concierge serve` (in process, scripted
//! engine) against the fake REST API and gateway in
//! tests/support/fake_discord.rs, which serenity talks to unchanged.

#![cfg(feature = "discord")]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::fake_discord::{FakeDiscord, APPLICATION_ID, BOT_ID, TOKEN};
use support::{eventually, InProcessDaemon};

const WAIT: Duration = Duration::from_secs(30);
const CUSTOMER: u64 = 700_000_000_000_000_001;
const DM: u64 = 800_000_000_000_000_001;
const GUILD_CHANNEL: u64 = 800_000_000_000_000_002;
const LISTED_CHANNEL: u64 = 800_000_000_000_000_003;

const SCRIPT: &str = r#"
token_delay_ms = 0
default_reply = "You said: {last_user}"
[[rule]]
contains = "slowly"
reply = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
token_delay_ms = 150
"#;

fn discord_section(fake: &FakeDiscord) -> String {
    format!(
        "[discord]\nenabled = true\ntoken = {TOKEN:?}\napi_url = {url:?}\nchannels = [\"{LISTED_CHANNEL}\"]\n",
        url = fake.url
    )
}

fn texts_in(fake: &FakeDiscord, channel: u64) -> Vec<String> {
    fake.messages_in(channel)
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

async fn start(fake: &FakeDiscord, dir: &std::path::Path, script: &str) -> InProcessDaemon {
    let daemon = InProcessDaemon::start(dir, script, &discord_section(fake));
    assert!(
        eventually(WAIT, || fake.gateway_live()).await,
        "the gateway connects"
    );
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dm_gets_a_streamed_reply_with_paced_edits_and_typing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await;
    let daemon = start(&fake, dir.path(), SCRIPT).await;
    fake.push_message(DM, CUSTOMER, "please answer slowly", false, false);
    assert!(
        eventually(WAIT, || texts_in(&fake, DM)
            .last()
            .is_some_and(|text| text.ends_with("twenty")))
        .await,
        "{:?}",
        texts_in(&fake, DM)
    );
    daemon.stop().await;
    assert_eq!(fake.messages_in(DM).len(), 1);
    let path = format!("/channels/{DM}/messages");
    let sends = fake.calls_matching("POST", &path);
    let edits = fake.calls_matching("PATCH", &path);
    assert!(edits.len() >= 2, "{edits:?}");
    let mut previous = sends[0].at;
    for edit in &edits {
        let gap = edit.at.duration_since(previous);
        assert!(gap >= Duration::from_millis(950), "edits {gap:?} apart");
        previous = edit.at;
    }
    assert!(!fake
        .calls_matching("POST", &format!("/channels/{DM}/typing"))
        .is_empty());
    // The session asked for the message-content intent (1 << 15).
    let identify = fake.sessions()[0].identify.clone().expect("identified");
    let intents = identify["intents"].as_u64().unwrap();
    assert_ne!(intents & (1 << 15), 0, "intents {intents:b}");
    // /help and /reset were registered as slash commands, with Chinese descriptions.
    let registered =
        fake.calls_matching("PUT", &format!("/applications/{APPLICATION_ID}/commands"));
    let names: Vec<&str> = registered[0]
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["help", "reset"]);
    assert!(registered[0].body[0]["description_localizations"]["zh-CN"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guild_messages_need_a_mention_or_a_listed_channel() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await;
    let daemon = start(&fake, dir.path(), SCRIPT).await;
    fake.push_message(GUILD_CHANNEL, CUSTOMER, "talking to friends", true, false);
    fake.push_message(
        GUILD_CHANNEL,
        CUSTOMER,
        &format!("<@{BOT_ID}> where is my parcel?"),
        true,
        true,
    );
    fake.push_message(LISTED_CHANNEL, CUSTOMER, "is this in stock?", true, false);
    // A channel's messages are handled in order: once the later message's
    // reply is complete, an answer to the earlier one would have come first.
    assert!(
        eventually(WAIT, || texts_in(&fake, GUILD_CHANNEL).last()
            == Some(&"You said: where is my parcel?".to_string())
            && texts_in(&fake, LISTED_CHANNEL).last()
                == Some(&"You said: is this in stock?".to_string()))
        .await
    );
    daemon.stop().await;
    assert_eq!(
        texts_in(&fake, GUILD_CHANNEL),
        vec!["You said: where is my parcel?".to_string()]
    );
    assert_eq!(
        texts_in(&fake, LISTED_CHANNEL),
        vec!["You said: is this in stock?".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_6000_character_reply_is_split_at_2000() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await;
    let long_reply = support::long_reply();
    let script = support::long_reply_script(&long_reply);
    let daemon = start(&fake, dir.path(), &script).await;
    fake.push_message(DM, CUSTOMER, "a long answer please", false, false);
    assert!(
        eventually(WAIT, || support::holds_every_word(
            &texts_in(&fake, DM),
            &long_reply
        ))
        .await,
        "{:?}",
        texts_in(&fake, DM)
    );
    daemon.stop().await;
    let texts = texts_in(&fake, DM);
    assert!(
        texts.len() >= 4,
        "6,000 characters need at least four messages: {}",
        texts.len()
    );
    support::assert_split_on_sentences(&texts, &long_reply, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_on_an_edit_is_waited_out_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await;
    let daemon = start(&fake, dir.path(), SCRIPT).await;
    fake.rate_limit("PATCH", &format!("/channels/{DM}/messages/"), 2);
    fake.push_message(DM, CUSTOMER, "please answer slowly", false, false);
    assert!(
        eventually(WAIT, || texts_in(&fake, DM)
            .last()
            .is_some_and(|text| text.ends_with("twenty")))
        .await
    );
    daemon.stop().await;
    let edits = fake.calls_matching("PATCH", &format!("/channels/{DM}/messages/"));
    assert!(edits.len() >= 2);
    assert!(edits.len() >= 3);
    // Two 429s in a row: the retries wait 1 s, then 2 s (serenity does not
    // expose the body's retry_after through the proxy, so the wait backs off).
    let first = edits[1].at.duration_since(edits[0].at);
    let second = edits[2].at.duration_since(edits[1].at);
    assert!(
        first >= Duration::from_millis(950),
        "first retry after {first:?}"
    );
    assert!(
        second >= Duration::from_millis(1950),
        "second retry after {second:?}"
    );
    assert_eq!(
        edits[1].body["content"], edits[2].body["content"],
        "the same edit is retried"
    );
    assert_eq!(fake.messages_in(DM).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_gateway_reconnects_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await;
    let daemon = start(&fake, dir.path(), SCRIPT).await;
    fake.push_message(DM, CUSTOMER, "before the drop", false, false);
    assert!(eventually(WAIT, || texts_in(&fake, DM).len() == 1).await);
    fake.drop_gateway();
    assert!(
        eventually(WAIT, || fake.sessions().len() >= 2 && fake.gateway_live()).await,
        "{:?}",
        fake.sessions()
    );
    fake.push_message(DM, CUSTOMER, "after the drop", false, false);
    assert!(
        eventually(WAIT, || texts_in(&fake, DM).len() == 2).await,
        "{:?}",
        texts_in(&fake, DM)
    );
    daemon.stop().await;
    assert_eq!(texts_in(&fake, DM)[1], "You said: after the drop");
    // Shutdown closed the live gateway connection.
    assert!(eventually(WAIT, || !fake.gateway_live()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buttons_arrive_as_choices_and_slash_commands_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await;
    let daemon = start(&fake, dir.path(), SCRIPT).await;
    fake.push_message(DM, CUSTOMER, "/recommend", false, false);
    let path = format!("/channels/{DM}/messages");
    let with_buttons = || {
        fake.calls_matching("POST", &path).into_iter().find(|call| {
            call.body
                .get("components")
                .is_some_and(|c| !c.as_array().unwrap().is_empty())
        })
    };
    assert!(eventually(WAIT, || with_buttons().is_some()).await);
    let components = with_buttons().unwrap().body["components"].clone();
    let buttons: Vec<&Value> = components
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row["components"].as_array().unwrap())
        .collect();
    let like = buttons
        .iter()
        .find(|button| {
            button["custom_id"]
                .as_str()
                .unwrap()
                .starts_with("rec:like:")
        })
        .expect("a like button");
    let custom_id = like["custom_id"].as_str().unwrap().to_string();
    let (message_id, _) = fake.messages_in(DM).last().cloned().unwrap();
    let before = texts_in(&fake, DM).len();
    fake.push_button(DM, CUSTOMER, message_id, &custom_id);
    assert!(eventually(WAIT, || texts_in(&fake, DM).len() > before).await);

    fake.push_slash_command(DM, CUSTOMER, "help");
    let webhook = "/webhooks/";
    assert!(
        eventually(WAIT, || fake.calls_matching("PATCH", webhook).iter().any(
            |call| call.body["content"]
                .as_str()
                .unwrap_or_default()
                .contains("/reset")
        ))
        .await,
        "{:#?}",
        fake.calls()
            .iter()
            .map(|call| format!("{} {} {}", call.method, call.path, call.body))
            .collect::<Vec<_>>()
    );
    daemon.stop().await;
    assert!(!fake.calls_matching("POST", "/interactions/").is_empty());
    let store = support::reopen_store(&dir.path().join("data"));
    let customer = store
        .find_customer("discord", &CUSTOMER.to_string())
        .unwrap()
        .unwrap();
    let events = store
        .user_events(&concierge::pipeline::event_user(&customer))
        .unwrap();
    let item = custom_id.trim_start_matches("rec:like:");
    assert!(events.iter().any(|event| event.item == item), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_adapter_opens_a_thread_and_posts_into_it() {
    use concierge_adapter::{ConversationRef, Outbound, Outbox};
    let fake = FakeDiscord::start().await;
    let adapter = concierge_discord::DiscordAdapter::new(concierge_discord::DiscordSettings {
        token: TOKEN.into(),
        api_url: Some(fake.url.clone()),
        channels: Default::default(),
        respond_to: concierge_discord::RespondTo {
            mentions: true,
            dms: true,
            channels: true,
        },
        edit_interval: Duration::from_secs(1),
        commands: Vec::new(),
        agents_channel: None,
        shards: (0..1, 1),
    });
    let parent = ConversationRef {
        platform: "discord".into(),
        chat_id: GUILD_CHANNEL.to_string(),
    };
    let first = Outbound::text(parent.clone(), "Ticket T-000001: a customer needs help");
    let thread = adapter
        .create_thread(&parent, "T-000001 parcel damaged", first)
        .await
        .unwrap();
    assert_ne!(thread.chat_id, parent.chat_id);
    adapter
        .send(Outbound::text(thread.clone(), "An agent replies here"))
        .await
        .unwrap();
    let created = fake.calls_matching("POST", &format!("/channels/{GUILD_CHANNEL}/threads"));
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].body["name"], "T-000001 parcel damaged");
    let thread_id: u64 = thread.chat_id.parse().unwrap();
    assert_eq!(
        texts_in(&fake, thread_id),
        vec![
            "Ticket T-000001: a customer needs help".to_string(),
            "An agent replies here".to_string()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quick_messages_of_one_channel_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await;
    let daemon = start(&fake, dir.path(), SCRIPT).await;
    for n in 1..=6 {
        fake.push_message(DM, CUSTOMER, &format!("message {n}"), false, false);
    }
    assert!(eventually(WAIT, || texts_in(&fake, DM).len() == 6).await);
    daemon.stop().await;
    let expected: Vec<String> = (1..=6).map(|n| format!("You said: message {n}")).collect();
    assert_eq!(texts_in(&fake, DM), expected);
}

const AGENTS_CHANNEL: u64 = 800_000_000_000_000_009;
const AGENT: u64 = 700_000_000_000_000_007;
const STRANGER: u64 = 700_000_000_000_000_008;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_answer_a_ticket_from_its_thread_in_the_agents_channel() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await;
    let config = format!(
        "{}agents_channel_id = \"{AGENTS_CHANNEL}\"\n[escalation.agents]\nbo = [\"discord:{AGENT}\"]\n",
        discord_section(&fake)
    );
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &config);
    assert!(eventually(WAIT, || fake.gateway_live()).await);
    fake.push_message(
        DM,
        CUSTOMER,
        "I want to file a complaint, the refund never arrived",
        false,
        false,
    );
    assert!(eventually(WAIT, || texts_in(&fake, DM).len() == 1).await);
    assert!(
        texts_in(&fake, DM)[0].contains("T-000001"),
        "{:?}",
        texts_in(&fake, DM)
    );

    // One thread per ticket in the agents' channel, with the ticket in it.
    assert!(eventually(WAIT, || fake.threads().len() == 1).await);
    let (thread, parent, name) = fake.threads()[0].clone();
    assert_eq!(parent, AGENTS_CHANNEL);
    assert!(name.starts_with("T-000001"), "{name}");
    assert!(eventually(WAIT, || !texts_in(&fake, thread).is_empty()).await);
    assert!(texts_in(&fake, thread)[0].contains("the refund never arrived"));

    // The bot stays silent with the customer and relays to the thread.
    fake.push_message(DM, CUSTOMER, "it was order 778", false, false);
    assert!(
        eventually(WAIT, || texts_in(&fake, thread)
            .iter()
            .any(|text| text.contains("customer: it was order 778")))
        .await
    );
    assert_eq!(texts_in(&fake, DM).len(), 1);

    // A stranger's command is refused; the agent's words reach the customer.
    fake.push_message(thread, STRANGER, "/resolve", true, false);
    assert!(
        eventually(WAIT, || texts_in(&fake, thread)
            .iter()
            .any(|text| text.contains("/resolve is for the agents")))
        .await,
        "{:?}",
        texts_in(&fake, thread)
    );
    // Everything the bot posts is plain text: a customer's "@everyone" pings nobody.
    let relayed = fake
        .calls_matching("POST", &format!("/channels/{thread}/messages"))
        .into_iter()
        .last()
        .unwrap();
    assert_eq!(
        relayed.body["allowed_mentions"]["parse"],
        serde_json::json!([])
    );

    // After a restart the thread is still known as the ticket's (the
    // adapter asks Discord for the thread's parent).
    daemon.stop().await;
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &config);
    assert!(eventually(WAIT, || fake.sessions().len() >= 2 && fake.gateway_live()).await);
    fake.push_message(
        thread,
        AGENT,
        "The refund for order 778 went out today.",
        true,
        false,
    );
    assert!(eventually(WAIT, || texts_in(&fake, DM).len() == 2).await);
    assert_eq!(
        texts_in(&fake, DM)[1],
        "The refund for order 778 went out today."
    );
    assert!(!fake
        .calls_matching("GET", &format!("/channels/{thread}"))
        .is_empty());

    // Resolving brings the bot back with rating buttons.
    fake.push_message(thread, AGENT, "/resolve", true, false);
    assert!(eventually(WAIT, || texts_in(&fake, DM).len() == 3).await);
    let path = format!("/channels/{DM}/messages");
    let rating = fake
        .calls_matching("POST", &path)
        .into_iter()
        .last()
        .unwrap();
    let buttons: Vec<String> = rating.body["components"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row["components"].as_array().unwrap().clone())
        .map(|button| button["custom_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(buttons.len(), 5, "{buttons:?}");
    assert!(
        eventually(WAIT, || texts_in(&fake, thread)
            .iter()
            .any(|text| text.contains("resolved by bo")))
        .await
    );
    daemon.stop().await;
    let store = support::reopen_store(&dir.path().join("data"));
    let ticket = store.ticket(1).unwrap().unwrap();
    assert_eq!(ticket.state.label(), "resolved");
    assert_eq!(ticket.assignee.as_deref(), Some("bo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_guild_channel_a_hand_off_moves_to_the_customers_dm_and_others_are_still_answered() {
    const OTHER: u64 = 700_000_000_000_000_002;
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await;
    let daemon = start(&fake, dir.path(), SCRIPT).await;
    fake.push_message(LISTED_CHANNEL, CUSTOMER, "/human", true, false);
    assert!(eventually(WAIT, || fake.dm_channel_of(CUSTOMER).is_some()).await);
    let dm = fake.dm_channel_of(CUSTOMER).unwrap();
    assert!(eventually(WAIT, || texts_in(&fake, dm).len() == 1).await);
    assert!(texts_in(&fake, dm)[0].contains("T-000001"));
    assert!(eventually(WAIT, || texts_in(&fake, LISTED_CHANNEL).len() == 1).await);
    assert!(texts_in(&fake, LISTED_CHANNEL)[0].contains("private chat"));
    // Someone else in the channel is not part of that ticket.
    fake.push_message(LISTED_CHANNEL, OTHER, "what are your hours?", true, false);
    assert!(
        eventually(WAIT, || texts_in(&fake, LISTED_CHANNEL)
            .get(1)
            .is_some_and(|text| text == "You said: what are your hours?"))
        .await,
        "{:?}",
        texts_in(&fake, LISTED_CHANNEL)
    );
    daemon.stop().await;
    let store = support::reopen_store(&dir.path().join("data"));
    assert_eq!(store.ticket(1).unwrap().unwrap().chat_id, dm.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_of_two_shards_each_get_only_their_own_guilds_messages() {
    // Discord sends a guild's events to shard (guild id >> 22) % shards.
    const GUILD_ON_SHARD_0: u64 = 2 << 22;
    const GUILD_ON_SHARD_1: u64 = 3 << 22;
    const CHANNEL_0: u64 = 800_000_000_000_000_010;
    const CHANNEL_1: u64 = 800_000_000_000_000_011;
    const DM_CHANNEL: u64 = 800_000_000_000_000_012;
    const USER_0: u64 = 700_000_000_000_000_010;
    const USER_1: u64 = 700_000_000_000_000_011;
    const USER_DM: u64 = 700_000_000_000_000_012;
    let fake = FakeDiscord::start().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut daemons = Vec::new();
    for (shard, dir) in dirs.iter().enumerate() {
        daemons.push(InProcessDaemon::start(
            dir.path(),
            SCRIPT,
            &format!(
                "{}shards = 2\nshard_ids = [{shard}]\n",
                discord_section(&fake)
            ),
        ));
    }
    let shards = || -> Vec<(u64, u64)> {
        let mut shards: Vec<(u64, u64)> = fake
            .sessions()
            .into_iter()
            .filter_map(|session| session.shard)
            .collect();
        shards.sort();
        shards
    };
    assert!(
        eventually(WAIT, || shards() == [(0, 2), (1, 2)]).await,
        "{:?}",
        shards()
    );
    fake.push_guild_message(GUILD_ON_SHARD_0, CHANNEL_0, USER_0, "hello from guild zero");
    fake.push_guild_message(GUILD_ON_SHARD_1, CHANNEL_1, USER_1, "hello from guild one");
    fake.push_message(DM_CHANNEL, USER_DM, "hello in a DM", false, false);
    for (channel, text) in [
        (CHANNEL_0, "You said: hello from guild zero"),
        (CHANNEL_1, "You said: hello from guild one"),
        (DM_CHANNEL, "You said: hello in a DM"),
    ] {
        assert!(
            eventually(WAIT, || texts_in(&fake, channel)
                .iter()
                .any(|reply| reply == text))
            .await,
            "{channel}: {:?}",
            texts_in(&fake, channel)
        );
    }
    for daemon in daemons {
        daemon.stop().await;
    }
    // Each daemon stored only the customers of its own shard; DMs are shard 0's.
    let knows = |dir: &tempfile::TempDir, user: u64| {
        support::reopen_store(&dir.path().join("data"))
            .find_customer("discord", &user.to_string())
            .unwrap()
            .is_some()
    };
    assert!(knows(&dirs[0], USER_0) && knows(&dirs[0], USER_DM) && !knows(&dirs[0], USER_1));
    assert!(knows(&dirs[1], USER_1) && !knows(&dirs[1], USER_0) && !knows(&dirs[1], USER_DM));
}
