//! A fake Telegram Bot API on 127.0.0.1 that speaks the real wire protocol
//! (`POST /bot<token>/<Method>`, `{"ok":..,"result":..}` envelopes, long
//! polling with offsets), so teloxide talks to it unchanged. Tests script
//! inbound updates, read a record of every call, and inject faults:
//! `retry_after` answers, "message is too long", and outages during which
//! every connection is dropped. Supergroups can be forums: `getChat` says
//! so, `createForumTopic` opens topics, and messages carry their topic.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::Notify;

/// The fake bot's user id and username.
pub const BOT_ID: u64 = 4242;
pub const BOT_USERNAME: &str = "shop_bot";
/// A token shaped like a real one (teloxide hides tokens of this shape).
pub const TOKEN: &str = "4242:AAHfakeTokenForTestsOnly1234567890abc";
/// Telegram's message limit.
pub const MAX_CHARS: usize = 4096;

/// One call the bot made.
#[derive(Clone, Debug)]
pub struct Call {
    /// Method name, lowercased (`sendmessage`).
    pub method: String,
    /// The JSON body; for multipart bodies, their text fields as strings.
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

/// A fault to answer the next matching call with.
#[derive(Clone, Debug)]
pub enum Fault {
    /// 429 with `parameters.retry_after`.
    RetryAfter(u32),
    /// 400 "message is too long".
    TooLong,
    /// 401 "Unauthorized": the token was revoked.
    Unauthorized,
    /// 409: another process polls the same bot.
    Conflict,
    /// 403: the user never started a private chat with the bot.
    Forbidden,
}

#[derive(Default)]
struct Inner {
    updates: VecDeque<Value>,
    next_update_id: u64,
    /// Where the ids restarted last (see `restart_update_ids`).
    sequence_start: u64,
    next_message_id: i64,
    /// Ids of the customers' messages: like Telegram's, never repeated in a chat.
    next_incoming_id: i64,
    /// Every update queued so far, for `deliver_again`.
    issued: Vec<Value>,
    calls: Vec<Call>,
    faults: HashMap<String, VecDeque<Fault>>,
    /// Current text of every message the bot sent, by (chat, message id).
    texts: HashMap<(i64, i64), String>,
    /// Messages in the order they were sent: (chat, message id).
    sent_order: Vec<(i64, i64)>,
    /// The topic and the quoted message of each sent message, by (chat, id).
    placement: HashMap<(i64, i64), (Option<i64>, Option<i64>)>,
    /// Chats with topics enabled.
    forums: Vec<i64>,
    /// Topics created: (chat, thread id, name).
    topics: Vec<(i64, i64, String)>,
    outage_until: Option<Instant>,
    dropped_connections: usize,
    /// Files the bot sent, in order.
    documents: Vec<SentDocument>,
}

/// A file the bot sent with `sendDocument`.
#[derive(Clone, Debug)]
pub struct SentDocument {
    /// The chat.
    pub chat: i64,
    /// The file's name.
    pub file_name: String,
    /// Its content.
    pub bytes: Vec<u8>,
    /// The caption.
    pub caption: String,
}

/// The fake server.
#[derive(Clone)]
pub struct FakeTelegram {
    inner: Arc<Mutex<Inner>>,
    new_update: Arc<Notify>,
    /// Base URL for `telegram.api_url`.
    pub url: String,
}

impl FakeTelegram {
    /// Starts the fake on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = Self {
            inner: Arc::new(Mutex::new(Inner {
                next_update_id: 1000,
                next_message_id: 1,
                next_incoming_id: 100_000,
                ..Inner::default()
            })),
            new_update: Arc::new(Notify::new()),
            url,
        };
        let app = Router::new()
            .route("/{bot}/{method}", post(handle))
            .with_state(fake.clone());
        let listener = OutageListener {
            listener,
            fake: fake.clone(),
        };
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// Queues a text message from `user` in `chat` (`private` or `group`).
    pub fn push_message(&self, chat: i64, chat_type: &str, user: u64, text: &str) -> u64 {
        self.push_message_with(chat, chat_type, user, text, None)
    }

    /// Queues a text message that replies to the message `reply_to` (sent by the bot).
    pub fn push_message_with(
        &self,
        chat: i64,
        chat_type: &str,
        user: u64,
        text: &str,
        reply_to: Option<i64>,
    ) -> u64 {
        let chat_json = chat_json(chat, chat_type);
        let mut message = json!({
            "message_id": self.incoming_id(),
            "date": unix_now(),
            "chat": chat_json,
            "from": user_json(user),
            "text": text,
        });
        if let Some(reply_to) = reply_to {
            message["reply_to_message"] = json!({
                "message_id": reply_to,
                "date": unix_now(),
                "chat": chat_json,
                "from": bot_json(),
                "text": "…",
            });
        }
        self.push_update(|id| json!({"update_id": id, "message": message}))
    }

    /// Turns `chat` into a forum: a supergroup with topics enabled.
    pub fn make_forum(&self, chat: i64) {
        self.inner.lock().unwrap().forums.push(chat);
    }

    /// Topics the bot created: (chat, thread id, name).
    pub fn topics(&self) -> Vec<(i64, i64, String)> {
        self.inner.lock().unwrap().topics.clone()
    }

    /// Queues a message from `user` in topic `thread` of the forum `chat`.
    pub fn push_topic_message(&self, chat: i64, thread: i64, user: u64, text: &str) -> u64 {
        let mut chat_json = chat_json(chat, "supergroup");
        chat_json["is_forum"] = json!(true);
        let message = json!({
            "message_id": self.incoming_id(),
            "message_thread_id": thread,
            "is_topic_message": true,
            "date": unix_now(),
            "chat": chat_json,
            "from": user_json(user),
            "text": text,
            // In a topic, Telegram shows messages as replies to the topic's first message.
            "reply_to_message": {
                "message_id": thread,
                "message_thread_id": thread,
                "is_topic_message": true,
                "date": unix_now(),
                "chat": chat_json,
                "from": bot_json(),
                "forum_topic_created": {"name": "topic", "icon_color": 7322096},
            },
        });
        self.push_update(|id| json!({"update_id": id, "message": message}))
    }

    /// The text of every message sent into topic `thread` of `chat`, in order.
    pub fn messages_in_topic(&self, chat: i64, thread: i64) -> Vec<(i64, String)> {
        let inner = self.inner.lock().unwrap();
        inner
            .sent_order
            .iter()
            .filter(|key| {
                key.0 == chat
                    && inner
                        .placement
                        .get(key)
                        .is_some_and(|(topic, _)| *topic == Some(thread))
            })
            .map(|key| (key.1, inner.texts.get(key).cloned().unwrap_or_default()))
            .collect()
    }

    /// The message that sent message `id` in `chat` quotes, if any.
    pub fn quoted_by(&self, chat: i64, id: i64) -> Option<i64> {
        self.inner
            .lock()
            .unwrap()
            .placement
            .get(&(chat, id))
            .and_then(|(_, quoted)| *quoted)
    }

    /// Queues a press of the inline button with `data` under the bot's message `message_id`.
    pub fn push_callback(&self, chat: i64, user: u64, message_id: i64, data: &str) -> u64 {
        let message = json!({
            "message_id": message_id,
            "date": unix_now(),
            "chat": chat_json(chat, if chat > 0 { "private" } else { "group" }),
            "from": bot_json(),
            "text": "…",
        });
        self.push_update(|id| {
            json!({"update_id": id, "callback_query": {
                "id": format!("cb{id}"),
                "from": user_json(user),
                "message": message,
                "chat_instance": "ci1",
                "data": data,
            }})
        })
    }

    /// Restarts update ids at `next`, lower than before, as Telegram may after
    /// a week without updates. An offset beyond every id issued since then
    /// belongs to the old sequence and confirms nothing of the new one.
    pub fn restart_update_ids(&self, next: u64) {
        let mut inner = self.inner.lock().unwrap();
        inner.next_update_id = next;
        inner.sequence_start = next;
    }

    fn incoming_id(&self) -> i64 {
        let mut inner = self.inner.lock().unwrap();
        inner.next_incoming_id += 1;
        inner.next_incoming_id
    }

    /// Queues update `id` once more, unchanged, as Telegram does when the
    /// bot never confirmed it (it died before its next `getUpdates`).
    pub fn deliver_again(&self, id: u64) {
        {
            let mut inner = self.inner.lock().unwrap();
            let update = inner
                .issued
                .iter()
                .find(|update| update["update_id"].as_u64() == Some(id))
                .cloned()
                .expect("an update issued before");
            inner.updates.push_back(update);
        }
        self.new_update.notify_waiters();
    }

    fn push_update(&self, make: impl FnOnce(u64) -> Value) -> u64 {
        let id = {
            let mut inner = self.inner.lock().unwrap();
            let id = inner.next_update_id;
            inner.next_update_id += 1;
            let update = make(id);
            inner.issued.push(update.clone());
            inner.updates.push_back(update);
            id
        };
        self.new_update.notify_waiters();
        id
    }

    /// Answers the next `count` calls of `method` with `fault`.
    pub fn fail_next(&self, method: &str, fault: Fault, count: usize) {
        let mut inner = self.inner.lock().unwrap();
        let queue = inner.faults.entry(method.to_lowercase()).or_default();
        for _ in 0..count {
            queue.push_back(fault.clone());
        }
    }

    /// Drops every connection for `duration`, as an unreachable API would.
    pub fn outage(&self, duration: Duration) {
        self.inner.lock().unwrap().outage_until = Some(Instant::now() + duration);
        // Long polls in progress end now rather than after their timeout.
        self.new_update.notify_waiters();
    }

    /// Connections refused during outages so far.
    pub fn dropped_connections(&self) -> usize {
        self.inner.lock().unwrap().dropped_connections
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Calls of one method (case-insensitive).
    /// Whether the bot has confirmed update `id` (a `getUpdates` with a
    /// higher offset): it fetched it and handed it on.
    pub fn confirmed(&self, id: u64) -> bool {
        self.calls_of("getUpdates").iter().any(|call| {
            call.body["offset"]
                .as_u64()
                .is_some_and(|offset| offset > id)
        })
    }

    /// The files the bot sent, in order.
    pub fn documents(&self) -> Vec<SentDocument> {
        self.inner.lock().unwrap().documents.clone()
    }

    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        let method = method.to_lowercase();
        self.calls()
            .into_iter()
            .filter(|call| call.method == method)
            .collect()
    }

    /// The current text of every message sent to `chat`, in send order.
    pub fn messages_in(&self, chat: i64) -> Vec<(i64, String)> {
        let inner = self.inner.lock().unwrap();
        inner
            .sent_order
            .iter()
            .filter(|(message_chat, _)| *message_chat == chat)
            .map(|key| (key.1, inner.texts.get(key).cloned().unwrap_or_default()))
            .collect()
    }

    /// Updates not yet confirmed by a `getUpdates` offset.
    pub fn unconfirmed_updates(&self) -> usize {
        self.inner.lock().unwrap().updates.len()
    }

    fn in_outage(&self) -> bool {
        let inner = self.inner.lock().unwrap();
        inner
            .outage_until
            .is_some_and(|until| Instant::now() < until)
    }
}

/// Accepts connections, but drops them at once during an outage.
struct OutageListener {
    listener: tokio::net::TcpListener,
    fake: FakeTelegram,
}

impl axum::serve::Listener for OutageListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.listener.accept().await else {
                continue;
            };
            if self.fake.in_outage() {
                self.fake.inner.lock().unwrap().dropped_connections += 1;
                drop(stream);
                continue;
            }
            return (stream, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn chat_json(chat: i64, chat_type: &str) -> Value {
    if chat_type == "private" {
        json!({"id": chat, "type": "private", "first_name": "Customer"})
    } else {
        json!({"id": chat, "type": "supergroup", "title": "Shop community"})
    }
}

fn user_json(user: u64) -> Value {
    json!({"id": user, "is_bot": false, "first_name": "Customer", "last_name": format!("{user}"), "language_code": "en"})
}

fn bot_json() -> Value {
    json!({"id": BOT_ID, "is_bot": true, "first_name": "Shop", "username": BOT_USERNAME})
}

fn ok(result: Value) -> Response {
    (
        [(header::CONNECTION, "close")],
        axum::Json(json!({"ok": true, "result": result})),
    )
        .into_response()
}

fn error(status: StatusCode, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": status.as_u16(), "description": description});
    if let Some(parameters) = parameters {
        body["parameters"] = parameters;
    }
    (status, [(header::CONNECTION, "close")], axum::Json(body)).into_response()
}

async fn handle(
    State(fake): State<FakeTelegram>,
    Path((bot, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if bot != format!("bot{TOKEN}") {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized", None);
    }
    let method = method.to_lowercase();
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let parts = super::multipart::parse(content_type, &body).unwrap_or_default();
    let body: Value = if is_json {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    } else {
        Value::Object(
            parts
                .iter()
                .filter(|part| part.file_name.is_none())
                .map(|part| {
                    (
                        part.name.clone(),
                        Value::String(String::from_utf8_lossy(&part.bytes).into_owned()),
                    )
                })
                .collect(),
        )
    };
    let fault = {
        let mut inner = fake.inner.lock().unwrap();
        inner.calls.push(Call {
            method: method.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
        inner
            .faults
            .get_mut(&method)
            .and_then(|queue| queue.pop_front())
    };
    match fault {
        Some(Fault::RetryAfter(seconds)) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too Many Requests: retry after {seconds}"),
                Some(json!({"retry_after": seconds})),
            )
        }
        Some(Fault::TooLong) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Bad Request: message is too long",
                None,
            )
        }
        Some(Fault::Unauthorized) => return error(StatusCode::UNAUTHORIZED, "Unauthorized", None),
        Some(Fault::Conflict) => {
            return error(
                StatusCode::CONFLICT,
                "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
                None,
            )
        }
        Some(Fault::Forbidden) => {
            return error(
                StatusCode::FORBIDDEN,
                "Forbidden: bot can't initiate conversation with a user",
                None,
            )
        }
        None => {}
    }
    match method.as_str() {
        "getme" => ok(json!({
            "id": BOT_ID, "is_bot": true, "first_name": "Shop", "username": BOT_USERNAME,
            "can_join_groups": true, "can_read_all_group_messages": false,
            "supports_inline_queries": false, "has_main_web_app": false,
        })),
        "getwebhookinfo" => {
            ok(json!({"url": "", "has_custom_certificate": false, "pending_update_count": 0}))
        }
        "deletewebhook"
        | "setwebhook"
        | "setmycommands"
        | "sendchataction"
        | "answercallbackquery" => ok(json!(true)),
        "getupdates" => get_updates(&fake, &body).await,
        "getchat" => get_chat(&fake, &body),
        "createforumtopic" => create_forum_topic(&fake, &body),
        "sendmessage" => send_message(&fake, &body),
        "senddocument" => send_document(&fake, &body, &parts),
        "editmessagetext" => edit_message(&fake, &body),
        _ => error(StatusCode::NOT_FOUND, "Not Found: method not found", None),
    }
}

async fn get_updates(fake: &FakeTelegram, body: &Value) -> Response {
    let offset = body["offset"].as_i64().unwrap_or(0);
    let timeout = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0));
    let limit = body["limit"].as_u64().unwrap_or(100) as usize;
    let deadline = Instant::now() + timeout;
    loop {
        let notified = fake.new_update.notified();
        {
            let mut inner = fake.inner.lock().unwrap();
            // An offset confirms every update below it, as on Telegram; one
            // from before a restart of the ids confirms nothing after it.
            let stale = offset > inner.next_update_id as i64 && inner.sequence_start > 0;
            while !stale
                && inner
                    .updates
                    .front()
                    .is_some_and(|update| update["update_id"].as_i64().unwrap_or(0) < offset)
            {
                inner.updates.pop_front();
            }
            if !inner.updates.is_empty() {
                let batch: Vec<Value> = inner.updates.iter().take(limit).cloned().collect();
                return ok(Value::Array(batch));
            }
        }
        if fake.in_outage() {
            return ok(json!([]));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return ok(json!([]));
        }
        let _ = tokio::time::timeout(left, notified).await;
    }
}

fn message_json(chat: i64, id: i64, text: &str) -> Value {
    json!({
        "message_id": id,
        "date": unix_now(),
        "chat": chat_json(chat, if chat > 0 { "private" } else { "group" }),
        "from": bot_json(),
        "text": text,
    })
}

fn get_chat(fake: &FakeTelegram, body: &Value) -> Response {
    let chat = body["chat_id"].as_i64().unwrap_or(0);
    let forum = fake.inner.lock().unwrap().forums.contains(&chat);
    let mut info = chat_json(chat, if chat > 0 { "private" } else { "supergroup" });
    if forum {
        info["is_forum"] = json!(true);
    }
    info["accent_color_id"] = json!(0);
    info["max_reaction_count"] = json!(11);
    info["accepted_gift_types"] = json!({
        "unlimited_gifts": false, "limited_gifts": false,
        "unique_gifts": false, "premium_subscription": false,
    });
    ok(info)
}

fn create_forum_topic(fake: &FakeTelegram, body: &Value) -> Response {
    let chat = body["chat_id"].as_i64().unwrap_or(0);
    let name = body["name"].as_str().unwrap_or_default().to_string();
    let mut inner = fake.inner.lock().unwrap();
    if !inner.forums.contains(&chat) {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad Request: the chat is not a forum",
            None,
        );
    }
    if name.is_empty() || name.chars().count() > 128 {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad Request: TOPIC_NAME_INVALID",
            None,
        );
    }
    // A topic's id is the id of its first (service) message.
    let thread = inner.next_message_id;
    inner.next_message_id += 1;
    inner.topics.push((chat, thread, name.clone()));
    ok(json!({"message_thread_id": thread, "name": name, "icon_color": 7322096}))
}

fn send_message(fake: &FakeTelegram, body: &Value) -> Response {
    let chat = body["chat_id"].as_i64().unwrap_or(0);
    let text = body["text"].as_str().unwrap_or_default().to_string();
    if text.chars().count() > MAX_CHARS {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad Request: message is too long",
            None,
        );
    }
    if text.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad Request: message text is empty",
            None,
        );
    }
    let thread = body["message_thread_id"].as_i64();
    let quoted = body["reply_parameters"]["message_id"].as_i64();
    let mut inner = fake.inner.lock().unwrap();
    if let Some(thread) = thread {
        if !inner
            .topics
            .iter()
            .any(|(on, id, _)| *on == chat && *id == thread)
        {
            return error(
                StatusCode::BAD_REQUEST,
                "Bad Request: message thread not found",
                None,
            );
        }
    }
    let id = inner.next_message_id;
    inner.next_message_id += 1;
    inner.texts.insert((chat, id), text.clone());
    inner.sent_order.push((chat, id));
    inner.placement.insert((chat, id), (thread, quoted));
    let mut message = message_json(chat, id, &text);
    if let Some(thread) = thread {
        message["message_thread_id"] = json!(thread);
        message["is_topic_message"] = json!(true);
    }
    ok(message)
}

fn send_document(fake: &FakeTelegram, body: &Value, parts: &[super::multipart::Part]) -> Response {
    let chat = body["chat_id"]
        .as_str()
        .and_then(|chat| chat.parse::<i64>().ok())
        .unwrap_or(0);
    // The file is the part named `document`, or the part that
    // `document = "attach://<name>"` names.
    let wanted = body["document"]
        .as_str()
        .and_then(|value| value.strip_prefix("attach://"))
        .unwrap_or("document");
    let Some(file) = parts
        .iter()
        .find(|part| part.name == wanted && part.file_name.is_some())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad Request: there is no document in the request",
            None,
        );
    };
    let caption = body["caption"].as_str().unwrap_or_default().to_string();
    if caption.chars().count() > 1024 {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad Request: message caption is too long",
            None,
        );
    }
    let file_name = file.file_name.clone().unwrap_or_default();
    let mut inner = fake.inner.lock().unwrap();
    let id = inner.next_message_id;
    inner.next_message_id += 1;
    inner.sent_order.push((chat, id));
    inner.documents.push(SentDocument {
        chat,
        file_name: file_name.clone(),
        bytes: file.bytes.clone(),
        caption: caption.clone(),
    });
    ok(json!({
        "message_id": id,
        "date": unix_now(),
        "chat": chat_json(chat, if chat > 0 { "private" } else { "group" }),
        "from": bot_json(),
        "caption": caption,
        "document": {
            "file_id": format!("doc{id}"),
            "file_unique_id": format!("unique{id}"),
            "file_name": file_name,
            "mime_type": "application/json",
            "file_size": file.bytes.len(),
        },
    }))
}

fn edit_message(fake: &FakeTelegram, body: &Value) -> Response {
    let chat = body["chat_id"].as_i64().unwrap_or(0);
    let id = body["message_id"].as_i64().unwrap_or(0);
    let text = body["text"].as_str().unwrap_or_default().to_string();
    if text.chars().count() > MAX_CHARS {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad Request: MESSAGE_TOO_LONG",
            None,
        );
    }
    let mut inner = fake.inner.lock().unwrap();
    match inner.texts.get(&(chat, id)) {
        None => error(StatusCode::BAD_REQUEST, "Bad Request: message to edit not found", None),
        Some(current) if *current == text => error(
            StatusCode::BAD_REQUEST,
            "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
            None,
        ),
        Some(_) => {
            inner.texts.insert((chat, id), text.clone());
            ok(message_json(chat, id, &text))
        }
    }
}
