//! A fake Discord on 127.0.0.1: the REST API under `/api/v10` (reached
//! through serenity's proxy setting) and a gateway websocket that speaks the
//! real protocol (HELLO, IDENTIFY, READY, heartbeats, RESUME, dispatches),
//! so serenity talks to it unchanged. Tests script gateway events, read a
//! record of every REST call and gateway session, and inject faults: 429 on
//! a route, and a dropped gateway connection.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;

pub const BOT_ID: u64 = 900_000_000_000_000_001;
pub const APPLICATION_ID: u64 = 900_000_000_000_000_002;
pub const GUILD_ID: u64 = 900_000_000_000_000_003;
/// A token shaped like a real one.
pub const TOKEN: &str = "OTAwMDAwMDAwMDAwMDAwMDAx.GfAkEt.fake-token-for-tests-only_1234567";
/// Discord's message limit.
pub const MAX_CHARS: usize = 2000;

/// One REST call.
#[derive(Clone, Debug)]
pub struct Call {
    /// `GET`, `POST`, `PATCH`, …
    pub method: String,
    /// Path without `/api/v10`, e.g. `/channels/5/messages`.
    pub path: String,
    /// The JSON body (`Null` if none).
    pub body: Value,
    /// The `Authorization` header.
    pub authorization: String,
    /// When it arrived.
    pub at: Instant,
}

/// What the gateway saw in one connection.
#[derive(Clone, Debug, Default)]
pub struct GatewaySession {
    /// The IDENTIFY payload, if the client identified.
    pub identify: Option<Value>,
    /// Whether the client resumed instead.
    pub resumed: bool,
    /// Whether the client closed the connection itself.
    pub closed_by_client: bool,
    /// The shard it runs and of how many (`[0, 1]` when it did not say).
    pub shard: Option<(u64, u64)>,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    /// 429 answers still to give, by "METHOD path-prefix".
    rate_limits: Vec<(String, String, usize)>,
    next_id: u64,
    /// Current text of each message the bot sent, by (channel, id).
    texts: HashMap<(u64, u64), String>,
    sent_order: Vec<(u64, u64)>,
    sessions: Vec<GatewaySession>,
    /// The live gateway connections, one per shard.
    live: Vec<LiveShard>,
    /// Dispatches waiting for their shard's connection.
    backlog: VecDeque<(String, Value)>,
    /// The channel of each interaction, by its token.
    interaction_channels: HashMap<String, u64>,
    /// Threads created: (thread, parent channel, name).
    threads: Vec<(u64, u64, String)>,
    /// The DM channel opened with each user.
    dm_channels: HashMap<u64, u64>,
    /// Files the bot attached to messages, in order.
    attachments: Vec<SentAttachment>,
}

/// A file the bot attached to a message.
#[derive(Clone, Debug)]
pub struct SentAttachment {
    /// The channel.
    pub channel: u64,
    /// The file's name.
    pub file_name: String,
    /// Its content.
    pub bytes: Vec<u8>,
}

/// A live connection and the shard it runs.
struct LiveShard {
    shard: u64,
    of: u64,
    control: mpsc::UnboundedSender<Control>,
}

/// The shard Discord sends an event to: a guild's by its id, DMs to shard 0.
fn shard_of(data: &Value, shards: u64) -> u64 {
    data["guild_id"]
        .as_str()
        .and_then(|id| id.parse::<u64>().ok())
        .map_or(0, |guild| (guild >> 22) % shards.max(1))
}

enum Control {
    Dispatch(String, Value),
    Drop,
}

/// The fake Discord.
#[derive(Clone)]
pub struct FakeDiscord {
    inner: Arc<Mutex<Inner>>,
    /// Base URL for `discord.api_url`.
    pub url: String,
    gateway_url: String,
}

impl FakeDiscord {
    /// Starts the REST API and the gateway on free ports of 127.0.0.1.
    pub async fn start() -> Self {
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Self {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 1_000_000_000_000_000_000,
                ..Inner::default()
            })),
            url: format!("http://{}", rest.local_addr().unwrap()),
            gateway_url: format!("ws://{}", gateway.local_addr().unwrap()),
        };
        let app = Router::new()
            .route("/api/v10/{*path}", axum::routing::any(handle))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(rest, app).await });
        let gateway_fake = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = gateway.accept().await {
                tokio::spawn(gateway_fake.clone().session(stream));
            }
        });
        fake
    }

    fn next_id(&self) -> u64 {
        let mut inner = self.inner.lock().unwrap();
        inner.next_id += 1;
        inner.next_id
    }

    /// Sends a dispatch to the live connection of its shard (or when one is
    /// up): a guild's events by the guild id, everything else to shard 0.
    pub fn dispatch(&self, event: &str, data: Value) {
        let mut inner = self.inner.lock().unwrap();
        inner.live.retain(|live| !live.control.is_closed());
        let shards = inner.live.first().map_or(1, |live| live.of);
        let shard = shard_of(&data, shards);
        match inner.live.iter().find(|live| live.shard == shard) {
            Some(live) => {
                let _ = live.control.send(Control::Dispatch(event.into(), data));
            }
            None => inner.backlog.push_back((event.into(), data)),
        }
    }

    /// A message in a channel of the guild `guild` that mentions the bot.
    pub fn push_guild_message(&self, guild: u64, channel: u64, user: u64, content: &str) {
        let mut message = message_json(self.next_id(), channel, &user_json(user, false), content);
        message["guild_id"] = json!(guild.to_string());
        message["mentions"] = json!([user_json(BOT_ID, true)]);
        self.dispatch("MESSAGE_CREATE", message);
    }

    /// A customer's message: a DM when `guild` is false.
    pub fn push_message(
        &self,
        channel: u64,
        user: u64,
        content: &str,
        guild: bool,
        mention_bot: bool,
    ) {
        let mut message = message_json(self.next_id(), channel, &user_json(user, false), content);
        if guild {
            message["guild_id"] = json!(GUILD_ID.to_string());
        }
        if mention_bot {
            message["mentions"] = json!([user_json(BOT_ID, true)]);
        }
        self.dispatch("MESSAGE_CREATE", message);
    }

    /// The DM channel the bot opened with `user`, if it did.
    pub fn dm_channel_of(&self, user: u64) -> Option<u64> {
        self.inner.lock().unwrap().dm_channels.get(&user).copied()
    }

    /// Threads the bot created: (thread, parent channel, name).
    pub fn threads(&self) -> Vec<(u64, u64, String)> {
        self.inner.lock().unwrap().threads.clone()
    }

    /// A press of the button `custom_id` under the bot's message `message_id`.
    pub fn push_button(&self, channel: u64, user: u64, message_id: u64, custom_id: &str) {
        let interaction_id = self.next_id();
        let data = json!({
            "id": interaction_id.to_string(),
            "application_id": APPLICATION_ID.to_string(),
            "type": 3,
            "data": {"custom_id": custom_id, "component_type": 2},
            "channel_id": channel.to_string(),
            "user": user_json(user, false),
            "token": format!("interaction-token-{interaction_id}"),
            "version": 1,
            "message": message_json(message_id, channel, &user_json(BOT_ID, true), "…"),
            "app_permissions": "0",
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": 8_388_608,
        });
        self.dispatch("INTERACTION_CREATE", data);
    }

    /// A slash command `/name` used in `channel`.
    pub fn push_slash_command(&self, channel: u64, user: u64, name: &str) {
        let interaction_id = self.next_id();
        self.inner
            .lock()
            .unwrap()
            .interaction_channels
            .insert(format!("interaction-token-{interaction_id}"), channel);
        let data = json!({
            "id": interaction_id.to_string(),
            "application_id": APPLICATION_ID.to_string(),
            "type": 2,
            "data": {"id": "1", "name": name, "type": 1},
            "channel_id": channel.to_string(),
            "user": user_json(user, false),
            "token": format!("interaction-token-{interaction_id}"),
            "version": 1,
            "app_permissions": "0",
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": 8_388_608,
        });
        self.dispatch("INTERACTION_CREATE", data);
    }

    /// Drops the live gateway connections without a close frame.
    pub fn drop_gateway(&self) {
        for live in self.inner.lock().unwrap().live.drain(..) {
            let _ = live.control.send(Control::Drop);
        }
    }

    /// Answers the next `count` calls of `method` on paths starting with
    /// `path_prefix` with 429.
    pub fn rate_limit(&self, method: &str, path_prefix: &str, count: usize) {
        self.inner.lock().unwrap().rate_limits.push((
            method.to_uppercase(),
            path_prefix.to_string(),
            count,
        ));
    }

    /// The files the bot attached, in order.
    pub fn attachments(&self) -> Vec<SentAttachment> {
        self.inner.lock().unwrap().attachments.clone()
    }

    /// Every REST call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// REST calls with `method` whose path starts with `prefix`.
    pub fn calls_matching(&self, method: &str, prefix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|call| call.method == method && call.path.starts_with(prefix))
            .collect()
    }

    /// Gateway connections so far.
    pub fn sessions(&self) -> Vec<GatewaySession> {
        self.inner.lock().unwrap().sessions.clone()
    }

    /// Whether a gateway connection is up and identified or resumed.
    pub fn gateway_live(&self) -> bool {
        self.inner
            .lock()
            .unwrap()
            .live
            .iter()
            .any(|live| !live.control.is_closed())
    }

    /// The current text of every message the bot sent to `channel`, in order.
    pub fn messages_in(&self, channel: u64) -> Vec<(u64, String)> {
        let inner = self.inner.lock().unwrap();
        inner
            .sent_order
            .iter()
            .filter(|(message_channel, _)| *message_channel == channel)
            .map(|key| (key.1, inner.texts.get(key).cloned().unwrap_or_default()))
            .collect()
    }

    async fn session(self, stream: tokio::net::TcpStream) {
        let Ok(socket) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        let (mut write, mut read) = socket.split();
        let index = {
            let mut inner = self.inner.lock().unwrap();
            inner.sessions.push(GatewaySession::default());
            inner.sessions.len() - 1
        };
        let hello = json!({"op": 10, "d": {"heartbeat_interval": 41_250}, "s": null, "t": null});
        if write.send(Frame::text(hello.to_string())).await.is_err() {
            return;
        }
        let (control, mut controls) = mpsc::unbounded_channel();
        let mut sequence = 0u64;
        loop {
            tokio::select! {
                frame = read.next() => {
                    let Some(Ok(frame)) = frame else { return };
                    let payload: Value = match frame {
                        Frame::Text(text) => serde_json::from_str(text.as_str()).unwrap_or(Value::Null),
                        Frame::Close(_) => {
                            self.inner.lock().unwrap().sessions[index].closed_by_client = true;
                            return;
                        }
                        _ => continue,
                    };
                    match payload["op"].as_u64() {
                        Some(1) => {
                            let ack = json!({"op": 11, "d": null, "s": null, "t": null});
                            if write.send(Frame::text(ack.to_string())).await.is_err() { return; }
                        }
                        Some(2) => {
                            sequence += 1;
                            let ready = json!({"op": 0, "s": sequence, "t": "READY", "d": {
                                "v": 10,
                                "user": user_json(BOT_ID, true),
                                "guilds": [],
                                "session_id": format!("session-{index}"),
                                "resume_gateway_url": self.gateway_url,
                                "application": {"id": APPLICATION_ID.to_string(), "flags": 0},
                            }});
                            if write.send(Frame::text(ready.to_string())).await.is_err() { return; }
                            self.go_live(index, Some(payload["d"].clone()), false, None, &control);
                        }
                        Some(6) => {
                            sequence = payload["d"]["seq"].as_u64().unwrap_or(sequence) + 1;
                            let resumed = json!({"op": 0, "s": sequence, "t": "RESUMED", "d": {}});
                            if write.send(Frame::text(resumed.to_string())).await.is_err() { return; }
                            let earlier = payload["d"]["session_id"]
                                .as_str()
                                .and_then(|id| id.strip_prefix("session-"))
                                .and_then(|index| index.parse().ok());
                            self.go_live(index, None, true, earlier, &control);
                        }
                        _ => {}
                    }
                }
                command = controls.recv() => match command {
                    Some(Control::Dispatch(event, data)) => {
                        sequence += 1;
                        let frame = json!({"op": 0, "s": sequence, "t": event, "d": data});
                        if write.send(Frame::text(frame.to_string())).await.is_err() { return; }
                    }
                    Some(Control::Drop) | None => return,
                }
            }
        }
    }

    fn go_live(
        &self,
        index: usize,
        identify: Option<Value>,
        resumed: bool,
        resumed_from: Option<usize>,
        control: &mpsc::UnboundedSender<Control>,
    ) {
        let mut inner = self.inner.lock().unwrap();
        // A resumed session runs the shard of the session it resumes.
        let shard = match &identify {
            Some(identify) => {
                let pair = &identify["shard"];
                Some((pair[0].as_u64().unwrap_or(0), pair[1].as_u64().unwrap_or(1)))
            }
            None => resumed_from.and_then(|earlier| inner.sessions[earlier].shard),
        }
        .unwrap_or((0, 1));
        inner.sessions[index].identify = identify;
        inner.sessions[index].resumed = resumed;
        inner.sessions[index].shard = Some(shard);
        inner
            .live
            .retain(|live| live.shard != shard.0 && !live.control.is_closed());
        inner.live.push(LiveShard {
            shard: shard.0,
            of: shard.1,
            control: control.clone(),
        });
        let waiting: Vec<(String, Value)> = inner.backlog.drain(..).collect();
        for (event, data) in waiting {
            if shard_of(&data, shard.1) == shard.0 {
                let _ = control.send(Control::Dispatch(event, data));
            } else {
                inner.backlog.push_back((event, data));
            }
        }
    }
}

pub fn user_json(id: u64, bot: bool) -> Value {
    json!({
        "id": id.to_string(),
        "username": if bot { "shop-bot".to_string() } else { format!("customer{id}") },
        "discriminator": "0",
        "global_name": if bot { "Shop".to_string() } else { format!("Customer {id}") },
        "avatar": null,
        "bot": bot,
    })
}

fn message_json(id: u64, channel: u64, author: &Value, content: &str) -> Value {
    json!({
        "id": id.to_string(),
        "channel_id": channel.to_string(),
        "author": author,
        "content": content,
        "timestamp": "2026-11-29T10:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0,
    })
}

fn thread_json(thread: u64, parent: u64, name: &str) -> Value {
    json!({
        "id": thread.to_string(),
        "type": 11,
        "guild_id": GUILD_ID.to_string(),
        "parent_id": parent.to_string(),
        "name": name,
        "owner_id": BOT_ID.to_string(),
        "thread_metadata": {"archived": false, "auto_archive_duration": 1440, "archive_timestamp": "2026-11-29T10:00:00.000000+00:00", "locked": false},
        "message_count": 0, "member_count": 1, "rate_limit_per_user": 0,
        "position": 0, "permission_overwrites": [], "nsfw": false,
    })
}

fn json_error(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn handle(
    State(fake): State<FakeDiscord>,
    method: Method,
    uri: Uri,
    Path(path): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let _ = uri;
    let path = format!("/{path}");
    // Messages with files come as a form: `payload_json` and `files[n]`.
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let (body, files): (Value, Vec<super::multipart::Part>) =
        match super::multipart::parse(content_type, &body) {
            Some(parts) => {
                let payload = parts
                    .iter()
                    .find(|part| part.name == "payload_json")
                    .and_then(|part| serde_json::from_slice(&part.bytes).ok())
                    .unwrap_or(Value::Null);
                let files = parts
                    .into_iter()
                    .filter(|part| part.name.starts_with("files[") && part.file_name.is_some())
                    .collect();
                (payload, files)
            }
            None => (
                serde_json::from_slice(&body).unwrap_or(Value::Null),
                Vec::new(),
            ),
        };
    let authorization = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let method_name = method.as_str().to_string();
    {
        let mut inner = fake.inner.lock().unwrap();
        inner.calls.push(Call {
            method: method_name.clone(),
            path: path.clone(),
            body: body.clone(),
            authorization: authorization.clone(),
            at: Instant::now(),
        });
        if let Some(limit) = inner.rate_limits.iter_mut().find(|(m, prefix, left)| {
            *m == method_name && path.starts_with(prefix.as_str()) && *left > 0
        }) {
            limit.2 -= 1;
            return json_error(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"message": "You are being rate limited.", "retry_after": 1.0, "global": false}),
            );
        }
    }
    if authorization != format!("Bot {TOKEN}") {
        return json_error(
            StatusCode::UNAUTHORIZED,
            json!({"message": "401: Unauthorized", "code": 0}),
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["gateway"]) => axum::Json(json!({"url": fake.gateway_url})).into_response(),
        ("GET", ["gateway", "bot"]) => axum::Json(json!({
            "url": fake.gateway_url, "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
        }))
        .into_response(),
        ("GET", ["users", "@me"]) => axum::Json(user_json(BOT_ID, true)).into_response(),
        ("PUT", ["applications", _, "commands"]) => {
            let commands: Vec<Value> = body
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(index, command)| {
                    json!({
                        "id": (index + 1).to_string(),
                        "application_id": APPLICATION_ID.to_string(),
                        "type": 1,
                        "name": command["name"],
                        "description": command["description"],
                        "version": "1",
                        "default_member_permissions": null,
                    })
                })
                .collect();
            axum::Json(Value::Array(commands)).into_response()
        }
        ("POST", ["channels", channel, "typing"]) => {
            let _ = channel;
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["channels", channel, "messages"]) => {
            let channel: u64 = channel.parse().unwrap_or(0);
            create_message(&fake, channel, &body, &files)
        }
        ("PATCH", ["channels", channel, "messages", id]) => {
            let channel: u64 = channel.parse().unwrap_or(0);
            let id: u64 = id.parse().unwrap_or(0);
            edit_message(&fake, channel, id, &body)
        }
        ("POST", ["users", "@me", "channels"]) => {
            // One DM channel per user, the same one every time.
            let user: u64 = body["recipient_id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .unwrap_or(0);
            let channel = {
                let next = fake.next_id();
                *fake
                    .inner
                    .lock()
                    .unwrap()
                    .dm_channels
                    .entry(user)
                    .or_insert(next)
            };
            axum::Json(json!({
                "id": channel.to_string(), "type": 1, "last_message_id": null,
                "recipients": [user_json(user, false)],
            }))
            .into_response()
        }
        ("POST", ["channels", channel, "threads"]) => {
            let parent: u64 = channel.parse().unwrap_or(0);
            let thread = fake.next_id();
            let name = body["name"].as_str().unwrap_or_default().to_string();
            fake.inner
                .lock()
                .unwrap()
                .threads
                .push((thread, parent, name.clone()));
            axum::Json(thread_json(thread, parent, &name)).into_response()
        }
        ("GET", ["channels", channel]) => {
            let channel: u64 = channel.parse().unwrap_or(0);
            let thread = fake
                .inner
                .lock()
                .unwrap()
                .threads
                .iter()
                .find(|(id, _, _)| *id == channel)
                .cloned();
            match thread {
                Some((id, parent, name)) => axum::Json(thread_json(id, parent, &name)).into_response(),
                None => axum::Json(json!({
                    "id": channel.to_string(), "type": 0, "guild_id": GUILD_ID.to_string(),
                    "name": "general", "position": 0, "permission_overwrites": [],
                    "nsfw": false, "rate_limit_per_user": 0, "parent_id": null,
                }))
                .into_response(),
            }
        }
        ("POST", ["interactions", _, _, "callback"]) => StatusCode::NO_CONTENT.into_response(),
        ("PATCH", ["webhooks", _, token, "messages", "@original"]) => {
            // The reply to a slash command, shown in the command's channel.
            let channel = fake
                .inner
                .lock()
                .unwrap()
                .interaction_channels
                .get(*token)
                .copied()
                .unwrap_or(0);
            create_message(&fake, channel, &body, &files)
        }
        _ => json_error(StatusCode::NOT_FOUND, json!({"message": "404: Not Found", "code": 0})),
    }
}

fn create_message(
    fake: &FakeDiscord,
    channel: u64,
    body: &Value,
    files: &[super::multipart::Part],
) -> Response {
    let content = body["content"].as_str().unwrap_or_default().to_string();
    if content.chars().count() > MAX_CHARS {
        return json_error(
            StatusCode::BAD_REQUEST,
            json!({"message": "Invalid Form Body", "code": 50035, "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}}}),
        );
    }
    let id = fake.next_id();
    let mut attachments = Vec::new();
    {
        let mut inner = fake.inner.lock().unwrap();
        inner.texts.insert((channel, id), content.clone());
        inner.sent_order.push((channel, id));
        for file in files {
            let name = file.file_name.clone().unwrap_or_default();
            inner.attachments.push(SentAttachment {
                channel,
                file_name: name.clone(),
                bytes: file.bytes.clone(),
            });
            attachments.push(json!({
                "id": (id + attachments.len() as u64 + 1).to_string(),
                "filename": name,
                "size": file.bytes.len(),
                "url": format!("https://cdn.example.invalid/{id}/{name}"),
                "proxy_url": format!("https://media.example.invalid/{id}/{name}"),
            }));
        }
    }
    let mut message = message_json(id, channel, &user_json(BOT_ID, true), &content);
    message["attachments"] = Value::Array(attachments);
    if let Some(components) = body.get("components") {
        message["components"] = components.clone();
    }
    axum::Json(message).into_response()
}

fn edit_message(fake: &FakeDiscord, channel: u64, id: u64, body: &Value) -> Response {
    let content = body["content"].as_str().unwrap_or_default().to_string();
    if content.chars().count() > MAX_CHARS {
        return json_error(
            StatusCode::BAD_REQUEST,
            json!({"message": "Invalid Form Body", "code": 50035}),
        );
    }
    let mut inner = fake.inner.lock().unwrap();
    if !inner.texts.contains_key(&(channel, id)) {
        return json_error(
            StatusCode::NOT_FOUND,
            json!({"message": "Unknown Message", "code": 10008}),
        );
    }
    inner.texts.insert((channel, id), content.clone());
    drop(inner);
    axum::Json(message_json(
        id,
        channel,
        &user_json(BOT_ID, true),
        &content,
    ))
    .into_response()
}
