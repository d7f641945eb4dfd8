//! Conversations and their messages: a customer's current conversation per chat, messages in order with the passages they used.

use super::*;

/// A customer's message as stored, with what preceded it.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomerTurn {
    /// The messages before it, oldest first.
    pub history: Vec<StoredMessage>,
    /// Set when the message was stored before, by a handling that a crash
    /// or a stop interrupted.
    pub replayed: Option<Replayed>,
}

/// What an interrupted handling of a message left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Something was stored after the message (its reply): it was answered.
    pub answered: bool,
}

/// One conversation of a customer in one chat; `/reset` starts a new one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Record schema version.
    pub v: u32,
    /// Store-wide id.
    pub id: u64,
    /// The customer.
    pub customer_id: u64,
    /// Platform of the chat.
    pub platform: String,
    /// The platform's chat id.
    pub chat_id: String,
    /// When it started (Unix milliseconds).
    pub started_ms: u64,
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The customer.
    User,
    /// The bot.
    Assistant,
}

/// One stored message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Record schema version.
    pub v: u32,
    /// When it was stored (Unix milliseconds).
    pub ts_ms: u64,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub text: String,
    /// Knowledge-base passages the answer was grounded in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceRef>,
}

/// A passage an answer used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// Document id.
    pub doc: String,
    /// Title of the passage.
    pub title: String,
    /// Index of the passage in the document.
    pub passage: usize,
}

impl Store {
    pub(super) fn active_key(customer_id: u64, platform: &str, chat_id: &str) -> Vec<u8> {
        let mut key = customer_id.to_be_bytes().to_vec();
        key.extend_from_slice(platform.as_bytes());
        key.push(0);
        key.extend_from_slice(chat_id.as_bytes());
        key
    }

    /// The customer's current conversation in a chat, started if none.
    pub fn current_conversation(
        &self,
        customer_id: u64,
        platform: &str,
        chat_id: &str,
    ) -> Result<Conversation, StoreError> {
        let key = Self::active_key(customer_id, platform, chat_id);
        if let Some(id) = self.active.get(&key).map_err(|err| self.err(err))? {
            if let Some(id) = decode_u64(&id) {
                if let Some(bytes) = self
                    .conversations
                    .get(id.to_be_bytes())
                    .map_err(|err| self.err(err))?
                {
                    return self.decode(TREE_CONVERSATIONS, &bytes);
                }
            }
        }
        self.start_conversation(customer_id, platform, chat_id)
    }

    /// Starts a new conversation in a chat; earlier ones stay in history.
    pub fn start_conversation(
        &self,
        customer_id: u64,
        platform: &str,
        chat_id: &str,
    ) -> Result<Conversation, StoreError> {
        let conversation = Conversation {
            v: RECORD_VERSION,
            id: self.next_id()?,
            customer_id,
            platform: platform.to_string(),
            chat_id: chat_id.to_string(),
            started_ms: now_ms(),
        };
        let id_bytes = conversation.id.to_be_bytes();
        let active_key = Self::active_key(customer_id, platform, chat_id);
        let mut index_key = customer_id.to_be_bytes().to_vec();
        index_key.extend_from_slice(&id_bytes);
        let record = Self::encode(&conversation);
        let _one = self.one_transaction();
        (
            &self.conversations,
            &self.active,
            &self.customer_conversations,
        )
            .transaction(|(conversations, active, index)| {
                conversations.insert(&id_bytes, record.as_slice())?;
                active.insert(active_key.as_slice(), &id_bytes)?;
                index.insert(index_key.as_slice(), &[])?;
                Ok(())
            })
            .map_err(|err| self.transaction_error(err))?;
        Ok(conversation)
    }

    /// Appends a message to a conversation. Call `flush` before telling
    /// anyone it is stored.
    pub fn append_message(
        &self,
        conversation_id: u64,
        role: Role,
        text: &str,
    ) -> Result<StoredMessage, StoreError> {
        self.append_message_with_sources(conversation_id, role, text, Vec::new())
    }

    /// Stores a customer's message and returns the `history_limit` messages
    /// before it. A message taken from the inbox as `intake` is stored once:
    /// when its handling is replayed after a crash, the message stored the
    /// first time is found instead, with whether anything came after it.
    pub fn append_customer_message(
        &self,
        conversation_id: u64,
        text: &str,
        intake: Option<IntakeId>,
        history_limit: usize,
    ) -> Result<CustomerTurn, StoreError> {
        let prefix = conversation_id.to_be_bytes();
        if let Some(IntakeId(id)) = intake {
            let stored = self
                .intake_messages
                .get(id.to_be_bytes())
                .map_err(|err| self.err(err))?;
            if let Some(key) = stored.filter(|key| key.starts_with(&prefix)) {
                let mut history = Vec::new();
                for entry in self
                    .messages
                    .range(prefix.to_vec()..key.to_vec())
                    .rev()
                    .take(history_limit)
                {
                    let (_, bytes) = entry.map_err(|err| self.err(err))?;
                    history.push(self.decode(TREE_MESSAGES, &bytes)?);
                }
                history.reverse();
                let later = self
                    .messages
                    .range(key.to_vec()..)
                    .nth(1)
                    .transpose()
                    .map_err(|err| self.err(err))?;
                let answered = later.is_some_and(|(later, _)| later.starts_with(&prefix));
                return Ok(CustomerTurn {
                    history,
                    replayed: Some(Replayed { answered }),
                });
            }
        }
        let history = self.recent_messages(conversation_id, history_limit)?;
        let sealed_by = self.conversation_key(conversation_id)?;
        let message = StoredMessage {
            v: RECORD_VERSION,
            ts_ms: now_ms(),
            role: Role::User,
            text: text.to_string(),
            sources: Vec::new(),
        };
        let mut key = prefix.to_vec();
        key.extend_from_slice(&self.next_id()?.to_be_bytes());
        let record = self.seal(sealed_by, &message)?;
        let _one = self.one_transaction();
        (&self.messages, &self.intake_messages)
            .transaction(|(messages, stored)| {
                messages.insert(key.as_slice(), record.as_slice())?;
                if let Some(IntakeId(id)) = intake {
                    stored.insert(&id.to_be_bytes(), key.as_slice())?;
                }
                Ok(())
            })
            .map_err(|err| self.transaction_error(err))?;
        Ok(CustomerTurn {
            history,
            replayed: None,
        })
    }

    /// Appends a message with the knowledge-base passages it used.
    pub fn append_message_with_sources(
        &self,
        conversation_id: u64,
        role: Role,
        text: &str,
        sources: Vec<SourceRef>,
    ) -> Result<StoredMessage, StoreError> {
        let message = StoredMessage {
            v: RECORD_VERSION,
            ts_ms: now_ms(),
            role,
            text: text.to_string(),
            sources,
        };
        let mut key = conversation_id.to_be_bytes().to_vec();
        key.extend_from_slice(&self.next_id()?.to_be_bytes());
        let record = self.seal(self.conversation_key(conversation_id)?, &message)?;
        self.messages
            .insert(key, record)
            .map_err(|err| self.err(err))?;
        Ok(message)
    }

    /// A conversation by id.
    pub fn conversation(&self, id: u64) -> Result<Option<Conversation>, StoreError> {
        self.record(&self.conversations, TREE_CONVERSATIONS, &id.to_be_bytes())
    }

    /// The data key a conversation's messages are sealed with: its
    /// customer's.
    pub(super) fn conversation_key(&self, conversation_id: u64) -> Result<KeyId, StoreError> {
        let conversation = self
            .conversation(conversation_id)?
            .ok_or_else(|| StoreError::NotFound(format!("conversation {conversation_id}")))?;
        self.sealing_key_of(conversation.customer_id)
    }

    /// Messages of one conversation, oldest first.
    pub fn conversation_messages(
        &self,
        conversation_id: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.messages
            .scan_prefix(conversation_id.to_be_bytes())
            .map(|entry| {
                let (_, bytes) = entry.map_err(|err| self.err(err))?;
                self.decode(TREE_MESSAGES, &bytes)
            })
            .collect()
    }

    /// The newest `limit` messages of a conversation, oldest first.
    pub fn recent_messages(
        &self,
        conversation_id: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut newest_first = Vec::with_capacity(limit.min(256));
        for entry in self
            .messages
            .scan_prefix(conversation_id.to_be_bytes())
            .rev()
            .take(limit)
        {
            let (_, bytes) = entry.map_err(|err| self.err(err))?;
            newest_first.push(self.decode(TREE_MESSAGES, &bytes)?);
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    /// Every conversation of a customer, oldest first, optionally on one platform.
    pub fn customer_conversations(
        &self,
        customer_id: u64,
        platform: Option<&str>,
    ) -> Result<Vec<Conversation>, StoreError> {
        Ok(self
            .indexed_conversations(customer_id)?
            .into_iter()
            .map(|(_, conversation)| conversation)
            .filter(|conversation| {
                platform.is_none_or(|platform| platform == conversation.platform)
            })
            .collect())
    }

    /// A customer's conversations with their keys in the customer's index.
    pub(super) fn indexed_conversations(
        &self,
        customer_id: u64,
    ) -> Result<Vec<(Vec<u8>, Conversation)>, StoreError> {
        let mut conversations = Vec::new();
        for entry in self
            .customer_conversations
            .scan_prefix(customer_id.to_be_bytes())
        {
            let (key, _) = entry.map_err(|err| self.err(err))?;
            let Some(id) = key.get(8..16).and_then(decode_u64) else {
                continue;
            };
            let Some(bytes) = self
                .conversations
                .get(id.to_be_bytes())
                .map_err(|err| self.err(err))?
            else {
                continue;
            };
            conversations.push((key.to_vec(), self.decode(TREE_CONVERSATIONS, &bytes)?));
        }
        Ok(conversations)
    }
}
