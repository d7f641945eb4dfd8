//! Handling one customer message end to end: identify the customer, detect
//! the language, then either run a command (`/start`, `/help`, `/reset`) or
//! answer with the engine, streaming the reply through the channel, and
//! record both sides durably.
//!
//! Architecture invariant: the customer's message is in the store before the
//! engine is asked, and flushed before any reply reaches the channel (the
//! flush runs while the engine starts); the reply is stored once delivered,
//! and its flush requested right after the channel is told the reply is
//! over (waited for by `drained`, not by the conversation's next message).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use concierge_adapter::{DeltaStream, Inbound, InboundContent, Outbound, Outbox};
use tokio_util::sync::CancellationToken;

use crate::buttons::Button;
use crate::engine::Llm;
use crate::handlers;
use crate::knowledge::KnowledgeBase;
use crate::prompts::{Locale, Prompts, Template};
use crate::recommend::ranker::SharedRanker;
use crate::route::{self, Message, Route};
use crate::store::{Customer, Event, EventKind, IntakeId, Store};
use crate::telemetry;
use crate::understand::{understand, Command, Understood};

pub use crate::handlers::event_user;
/// What the ticket handlers use (`Pipeline::tickets`).
pub use crate::handlers::handoff::Tickets;
/// Settings of the pipeline, from `[engine]` and `[chat]`.
pub use crate::handlers::Settings as PipelineSettings;

/// Everything a message handler needs. Shared by all conversations.
pub struct Pipeline {
    /// The store.
    pub store: Store,
    /// The engine.
    pub llm: Arc<dyn Llm>,
    /// Templates.
    pub prompts: Prompts,
    /// Channels by platform name.
    pub adapters: HashMap<String, Arc<dyn Outbox>>,
    /// Settings.
    pub settings: PipelineSettings,
    /// Fires when in-flight replies must stop (shutdown deadline).
    pub cancel: CancellationToken,
    /// The knowledge base answers are grounded in, if any.
    pub knowledge: Option<Arc<KnowledgeBase>>,
    /// The recommender, if a catalog is loaded.
    pub recommender: Option<Arc<SharedRanker>>,
    /// Intent and escalation of each message.
    pub classifier: Option<Arc<crate::intent::Classifier>>,
    /// Tickets, when hand-off to people is enabled.
    pub escalation: Option<crate::escalation::Escalation>,
    /// The agents' spaces and who may act there.
    pub desk: crate::agents::AgentDesk,
    /// Failed link-code redemptions, limited per sender and per code.
    pub link_guard: crate::link_guard::LinkGuard,
    /// How often the model's grounded sentences pass the check, per language.
    pub fluency: handlers::answer::Fluency,
}

/// One message being handled: what a handler needs besides the customer.
#[derive(Clone, Copy)]
struct Turn<'a> {
    inbound: &'a Inbound,
    intake: Option<IntakeId>,
    adapter: &'a dyn Outbox,
    started: Instant,
    /// Set when a reply was stored that the pipeline flushes once the
    /// channel was told the reply is over.
    reply_to_flush: &'a std::sync::atomic::AtomicBool,
}

/// The channel as seen while answering one inbound message: every message
/// sent names that inbound message as the one it answers.
struct InReplyTo {
    adapter: Arc<dyn Outbox>,
    reply_to: Option<String>,
}

#[async_trait::async_trait]
impl Outbox for InReplyTo {
    fn platform(&self) -> &str {
        self.adapter.platform()
    }
    fn capabilities(&self) -> concierge_adapter::Capabilities {
        self.adapter.capabilities()
    }
    async fn send(
        &self,
        mut message: Outbound,
    ) -> Result<concierge_adapter::SentMessage, concierge_adapter::AdapterError> {
        if message.reply_to.is_none() {
            message.reply_to = self.reply_to.clone();
        }
        self.adapter.send(message).await
    }
    async fn send_document(
        &self,
        mut document: concierge_adapter::Document,
    ) -> Result<concierge_adapter::SentMessage, concierge_adapter::AdapterError> {
        if document.reply_to.is_none() {
            document.reply_to = self.reply_to.clone();
        }
        self.adapter.send_document(document).await
    }
    async fn edit(
        &self,
        message: &concierge_adapter::SentMessage,
        text: &str,
    ) -> Result<(), concierge_adapter::AdapterError> {
        self.adapter.edit(message, text).await
    }
    async fn typing(
        &self,
        conversation: &concierge_adapter::ConversationRef,
    ) -> Result<(), concierge_adapter::AdapterError> {
        self.adapter.typing(conversation).await
    }
    async fn private_chat(
        &self,
        user_id: &str,
    ) -> Result<concierge_adapter::ConversationRef, concierge_adapter::AdapterError> {
        self.adapter.private_chat(user_id).await
    }
    async fn reply_finished(&self, conversation: &concierge_adapter::ConversationRef) {
        self.adapter.reply_finished(conversation).await
    }
    fn edit_pacing(&self) -> concierge_adapter::EditPacing {
        self.adapter.edit_pacing()
    }
    async fn deliver_stream(
        &self,
        conversation: &concierge_adapter::ConversationRef,
        deltas: DeltaStream,
    ) -> Result<String, concierge_adapter::AdapterError> {
        // Edited replies go through `send` here, so they carry `reply_to`.
        if self.capabilities().can_edit {
            return concierge_adapter::deliver_by_editing(
                self,
                conversation,
                deltas,
                self.adapter.edit_pacing(),
            )
            .await;
        }
        self.adapter.deliver_stream(conversation, deltas).await
    }
}

/// The key of a chat customer in interaction events.
impl Pipeline {
    /// Tells the channel a conversation's reply is over (also after a panic,
    /// so an interactive console prompts again).
    pub async fn reply_finished(&self, conversation: &concierge_adapter::ConversationRef) {
        if let Some(adapter) = self.adapters.get(&conversation.platform) {
            adapter.reply_finished(conversation).await;
        }
    }

    /// Whether `inbound` comes from the agents' spaces (not flood-limited).
    pub fn is_agents_space(&self, inbound: &Inbound) -> bool {
        self.desk.is_agents_space(inbound)
    }

    /// The language to answer in: the message's own, else the customer's
    /// stored one, else the platform's hint, else the default.
    fn reply_locale(
        &self,
        detected: Option<Locale>,
        stored: Option<Locale>,
        sender: &concierge_adapter::SenderRef,
    ) -> Locale {
        detected
            .or(stored)
            .or_else(|| sender.language_hint.as_deref().and_then(Locale::parse))
            .unwrap_or(self.settings.default_locale)
    }

    /// Tells a sender over the flood limits to slow down, in their language:
    /// the message's own, else the customer's stored one, else the platform's
    /// hint. Nothing is stored.
    pub async fn tell_rate_limited(&self, inbound: &Inbound) {
        let Some(adapter) = self.adapters.get(&inbound.conversation.platform).cloned() else {
            return;
        };
        let sender = &inbound.sender;
        let detected = match &inbound.content {
            InboundContent::Text(text) if !text.trim_start().starts_with('/') => {
                crate::language::detect(text)
            }
            _ => None,
        };
        let stored = self
            .store
            .find_customer(&sender.platform, &sender.user_id)
            .ok()
            .flatten()
            .and_then(|customer| customer.locale);
        let locale = self.reply_locale(detected, stored, sender);
        let notice = self.prompts.text(locale, Template::RateLimited).trim();
        let mut message = Outbound::text(inbound.conversation.clone(), notice);
        message.reply_to = inbound.message_id.clone();
        if let Err(err) = adapter.send(message).await {
            tracing::warn!(platform = %inbound.conversation.platform, "could not send the flood notice: {err}");
        }
        adapter.reply_finished(&inbound.conversation).await;
    }

    /// Handles one inbound message that no inbox holds.
    pub async fn handle(&self, inbound: Inbound) {
        self.handle_delivery(&crate::inbox::Delivery::transient(inbound))
            .await;
    }

    /// Whether replies are being cancelled (the daemon stops past its
    /// deadline): a message handled now is not finished.
    pub fn is_stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Handles one delivered message. Never fails: errors are logged and the
    /// customer gets an apology where possible. Returns false when the
    /// handling was cut short by a stop, so the message stays in the inbox.
    pub async fn handle_delivery(&self, delivery: &crate::inbox::Delivery) -> bool {
        if self.is_stopping() {
            return false;
        }
        let inbound = &delivery.message;
        let platform = inbound.conversation.platform.clone();
        let Some(adapter) = self.adapters.get(&platform).cloned() else {
            tracing::error!(%platform, "message from a channel that is not running");
            return true;
        };
        telemetry::message_received(&platform);
        let adapter = InReplyTo {
            adapter,
            reply_to: inbound.message_id.clone(),
        };
        let reply_to_flush = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .handle_with(
                inbound,
                delivery.intake,
                delivery.payment_data_masked,
                &adapter,
                &reply_to_flush,
            )
            .await;
        if self.is_stopping() {
            return false;
        }
        if let Err(err) = result {
            telemetry::reply_failed(&platform);
            tracing::error!(%platform, chat = %inbound.conversation.chat_id, "handling a message failed: {err:#}");
            let locale = self.settings.default_locale;
            let apology = self.prompts.text(locale, Template::EngineError);
            let message = Outbound::text(inbound.conversation.clone(), apology);
            if let Err(err) = adapter.send(message).await {
                tracing::warn!(%platform, "could not send the apology: {err}");
            }
        }
        adapter.reply_finished(&inbound.conversation).await;
        // After the channel was told, and not waited for: the customer's
        // next message waits for no disk, and its own flush covers this
        // one's writes too (the log is written in order).
        if reply_to_flush.load(std::sync::atomic::Ordering::Relaxed) {
            let mut flush = self.store.flush_soon();
            tokio::spawn(async move {
                if let Err(err) = flush.wait().await {
                    tracing::error!(%platform, "the reply could not be made durable: {err}");
                }
            });
        }
        true
    }

    /// understand -> route -> one handler.
    async fn handle_with(
        &self,
        inbound: &Inbound,
        intake: Option<IntakeId>,
        payment_data_masked: bool,
        adapter: &dyn Outbox,
        reply_to_flush: &std::sync::atomic::AtomicBool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut state = route::State {
            agents_space: self.desk.is_agents_space(inbound),
            ticket_with_agents: None,
            handoff: self.escalation.is_some(),
            recommender: self.recommender.is_some(),
            auto_handoff_confidence: self.settings.auto_handoff_confidence,
        };
        let raw = match &inbound.content {
            InboundContent::Choice { id } => {
                return match route::route(Message::Pressed(id), &state) {
                    Route::Agents => self.tickets()?.handle_agent_message(inbound, adapter).await,
                    Route::Choice(button) => self.handle_choice(inbound, adapter, button).await,
                    _ => {
                        tracing::debug!(%id, "a button the bot never made was pressed");
                        Ok(())
                    }
                };
            }
            InboundContent::Text(text) => text.as_str(),
        };
        let (text, was_cut) = crate::sanitize::message(raw, self.settings.max_message_chars);
        if text.is_empty() {
            return Ok(());
        }
        // Masked at intake already; again here for messages no inbox took.
        let (text, masked) =
            crate::privacy::redact::mask_text(&text, &self.settings.privacy.redact);
        let payment_data_masked = payment_data_masked
            || masked.iter().any(|kind| {
                matches!(
                    kind,
                    crate::privacy::redact::Kind::Card | crate::privacy::redact::Kind::Iban
                )
            });
        let mut understood = understand(
            text,
            was_cut,
            self.classifier.as_deref().filter(|_| !state.agents_space),
        );
        self.break_tie(&mut understood).await;
        if let Some(result) = &understood.classification {
            tracing::debug!(
                intent = result.intent.label(),
                escalate = result.escalate,
                confidence = result.confidence,
                "message classified"
            );
        }
        // Agents are no customers: nothing of them is looked up or stored.
        let mut customer = None;
        if !state.agents_space {
            let mut found = self
                .customer_of(&inbound.sender, understood.language)
                .await?;
            if self.escalation.is_some() {
                state.ticket_with_agents = self
                    .store
                    .active_ticket_for(
                        &inbound.conversation.platform,
                        &inbound.conversation.chat_id,
                        found.id,
                    )?
                    .map(|ticket| ticket.id);
            }
            if payment_data_masked && !state.agents_space {
                found = self
                    .warn_about_payment_data(found, inbound, adapter)
                    .await?;
            }
            customer = Some(found);
        }
        let route = route::route(Message::Text(&understood), &state);
        match (route, customer) {
            (Route::Agents, _) => self.tickets()?.handle_agent_message(inbound, adapter).await,
            (route, Some(customer)) => {
                let turn = Turn {
                    inbound,
                    intake,
                    adapter,
                    started,
                    reply_to_flush,
                };
                self.handle_customer(route, customer, &understood, &turn)
                    .await
            }
            // Only agents' spaces have no customer, and they route to `Agents`.
            (_, None) => Ok(()),
        }
    }

    /// The customer behind `sender`, with the language to answer them in
    /// stored when it changed.
    async fn customer_of(
        &self,
        sender: &concierge_adapter::SenderRef,
        language: Option<Locale>,
    ) -> anyhow::Result<Customer> {
        let store = self.store.clone();
        let (platform, user_id) = (sender.platform.clone(), sender.user_id.clone());
        let display_name = sender
            .display_name
            .as_deref()
            .filter(|_| !self.settings.privacy.require_start)
            .and_then(crate::sanitize::display_name);
        let mut customer = tokio::task::spawn_blocking(move || {
            store.customer_for_identity(&platform, &user_id, display_name.as_deref())
        })
        .await
        .context("store task failed")??;
        let locale = self.reply_locale(language, customer.locale, sender);
        if customer.locale != Some(locale) {
            customer.locale = Some(locale);
            self.store.update_customer(&customer)?;
        }
        Ok(customer)
    }

    /// Tells a customer once not to send card or bank details, after some
    /// were masked out of their message.
    async fn warn_about_payment_data(
        &self,
        mut customer: Customer,
        inbound: &Inbound,
        adapter: &dyn Outbox,
    ) -> anyhow::Result<Customer> {
        if customer.warned_payment_data {
            return Ok(customer);
        }
        let locale = customer.locale.unwrap_or(self.settings.default_locale);
        let warning = self.prompts.text(locale, Template::PaymentDataWarning);
        adapter
            .send(Outbound::text(inbound.conversation.clone(), warning.trim()))
            .await?;
        customer.warned_payment_data = true;
        self.store.update_customer(&customer)?;
        Ok(customer)
    }

    /// Runs the handler of a customer's text message.
    async fn handle_customer(
        &self,
        route: Route,
        mut customer: Customer,
        understood: &Understood,
        turn: &Turn<'_>,
    ) -> anyhow::Result<()> {
        let Turn {
            inbound,
            intake,
            adapter,
            started,
            reply_to_flush,
        } = *turn;
        let text = understood.text.as_str();
        let locale = customer.locale.unwrap_or(self.settings.default_locale);
        let platform = &inbound.conversation.platform;
        if self.settings.privacy.require_start
            && !customer.registered
            && !matches!(
                route,
                Route::Command(Command::Start | Command::Help | Command::Export | Command::Forget)
            )
        {
            // Nothing of theirs is stored before they agreed.
            let note = self.prompts.text(locale, Template::StartRequired);
            adapter
                .send(Outbound::text(inbound.conversation.clone(), note.trim()))
                .await?;
            telemetry::reply_delivered(platform, "command", started.elapsed());
            return Ok(());
        }
        match route {
            Route::Relay(ticket) => {
                if self
                    .tickets()?
                    .relay(&customer, &inbound.conversation, text, intake, ticket)
                    .await?
                {
                    return Ok(());
                }
                // Resolved meanwhile: the bot answers.
            }
            Route::HandOff(intent) => {
                self.tickets()?
                    .hand_off(&customer, inbound, intake, adapter, text, intent, locale)
                    .await?;
                telemetry::reply_delivered(platform, "handoff", started.elapsed());
                return Ok(());
            }
            // A guess that the customer is shopping is a question for the
            // knowledge base when the documents answer it ("how long is the
            // reset link good for") or the catalog knows no word of it ("a
            // co-branded credit card").
            Route::Recommend(request)
                if understood.shopping
                    && !understood.asks_for_recommendation
                    && (!self
                        .recommender
                        .as_deref()
                        .is_some_and(|ranker| ranker.current().knows_words_of(&request))
                        || self.knowledge.as_deref().is_some_and(|knowledge| {
                            handlers::answer::documents_answer(knowledge, text, self.settings.top_k)
                        })) => {}
            Route::Recommend(request) => {
                let Some((conversation, _, mut flush)) = self.context().store_unless_answered(
                    &customer,
                    &inbound.conversation,
                    text,
                    intake,
                )?
                else {
                    return Ok(());
                };
                flush.wait().await?;
                return handlers::recommend::run(
                    self.context(),
                    self.model(),
                    self.recommender.as_deref(),
                    &customer,
                    &conversation,
                    &inbound.conversation,
                    adapter,
                    Some(&request),
                    locale,
                    started,
                )
                .await;
            }
            Route::Command(Command::Export) => {
                handlers::privacy::export(self.context(), inbound, adapter, &customer, locale)
                    .await?;
                telemetry::reply_delivered(platform, "command", started.elapsed());
                return Ok(());
            }
            Route::Command(Command::Forget) => {
                handlers::privacy::ask_to_forget(
                    self.context(),
                    inbound,
                    adapter,
                    &customer,
                    locale,
                )
                .await?;
                telemetry::reply_delivered(platform, "command", started.elapsed());
                return Ok(());
            }
            Route::Command(command) => {
                let reply = handlers::command::run(
                    self.context(),
                    &self.link_guard,
                    command,
                    &mut customer,
                    inbound,
                    locale,
                )
                .await?;
                adapter
                    .send(Outbound::text(inbound.conversation.clone(), reply))
                    .await?;
                telemetry::reply_delivered(platform, "command", started.elapsed());
                return Ok(());
            }
            Route::Answer => {}
            Route::Agents | Route::Choice(_) | Route::UnknownChoice => return Ok(()),
        }
        self.record_mentions(&customer, text).await?;
        let chat = &inbound.conversation;
        let Some((conversation, history, flush)) = self
            .context()
            .store_unless_answered(&customer, chat, text, intake)?
        else {
            return Ok(());
        };
        let answering = handlers::answer::Answering {
            ctx: self.context(),
            model: self.model(),
            knowledge: self.knowledge.as_deref(),
            settings: &self.settings,
            fluency: &self.fluency,
            praise: understood
                .classification
                .as_ref()
                .is_some_and(|result| result.praise),
        };
        reply_to_flush.store(true, std::sync::atomic::Ordering::Relaxed);
        handlers::answer::run(
            &answering,
            handlers::answer::Question {
                conversation: &conversation,
                history: &history,
                flush,
                text,
                was_cut: understood.was_cut,
            },
            chat,
            adapter,
            locale,
            started,
        )
        .await
    }

    /// Stores a `view` event for every catalog item the message names.
    async fn record_mentions(&self, customer: &Customer, text: &str) -> anyhow::Result<()> {
        let Some(recommender) = &self.recommender else {
            return Ok(());
        };
        let events: Vec<Event> = recommender
            .current()
            .mentioned(text)
            .into_iter()
            .map(|item| Event {
                v: crate::store::RECORD_VERSION,
                user: event_user(customer),
                item,
                kind: EventKind::View,
                ts_ms: crate::store::now_ms(),
                value: None,
                id: None,
            })
            .collect();
        if !events.is_empty() {
            self.store.events_append(&events)?;
        }
        Ok(())
    }

    async fn handle_choice(
        &self,
        inbound: &Inbound,
        adapter: &dyn Outbox,
        button: Button,
    ) -> anyhow::Result<()> {
        match button {
            Button::Rate { ticket, stars } => {
                self.tickets()?
                    .handle_rating(inbound, adapter, ticket, stars)
                    .await
            }
            Button::Item { action, item } => {
                handlers::choice::item(self.context(), inbound, adapter, action, &item).await
            }
            Button::Forget { customer, erase } => {
                let erased = handlers::privacy::answer_forget(
                    self.context(),
                    inbound,
                    adapter,
                    customer,
                    erase,
                )
                .await?;
                if let (Some(_), false) = (&self.escalation, erased.is_empty()) {
                    let tickets = self.tickets()?;
                    for ticket in &erased {
                        tickets
                            .tell_agents(ticket, Template::AgentTicketErased, &[], None)
                            .await;
                    }
                }
                Ok(())
            }
        }
    }

    /// Settles a classification in the uncertain band by the message's
    /// meaning (`escalation.meaning_tiebreak`), else by asking the model
    /// (`escalation.model_tiebreak`); otherwise leaves it as it is.
    async fn break_tie(&self, understood: &mut crate::understand::Understood) {
        let Some(result) = understood.classification.as_mut() else {
            return;
        };
        let judge = self.classifier.as_ref().and_then(|c| c.meaning()).cloned();
        if let Some(judge) = judge.filter(|judge| judge.band().holds(result)) {
            let mut judged = result.clone();
            match tokio::task::spawn_blocking(move || {
                judge.decide(&mut judged);
                judged
            })
            .await
            {
                Ok(judged) => {
                    tracing::debug!(
                        escalate = judged.escalate,
                        "judged by meaning in the uncertain band"
                    );
                    *result = judged;
                    return;
                }
                Err(err) => tracing::warn!("the meaning judge failed: {err}"),
            }
        }
        let Some(band) = self.settings.tiebreak else {
            return;
        };
        if !band.holds(result) {
            return;
        }
        let locale = result.lang;
        let text = result.text.clone();
        if let Some(needs_person) =
            crate::escalation::tiebreak::ask(self.model(), locale, &text).await
        {
            tracing::debug!(needs_person, "the model broke the classifier's tie");
            crate::escalation::tiebreak::settle(result, needs_person, band);
        }
    }

    /// What the handlers that ask the model may use.
    fn model(&self) -> handlers::Model<'_> {
        handlers::Model {
            llm: self.llm.as_ref(),
            prompts: &self.prompts,
            sampling: self.settings.sampling,
            cancel: &self.cancel,
        }
    }

    /// What the handlers without a model may use.
    fn context(&self) -> handlers::Context<'_> {
        handlers::Context {
            store: &self.store,
            prompts: &self.prompts,
            outboxes: &self.adapters,
            default_locale: self.settings.default_locale,
        }
    }

    /// What the ticket handlers use, when hand-off to people is enabled:
    /// agents' answers and commands, and the SLA clock.
    pub fn tickets(&self) -> anyhow::Result<Tickets<'_>> {
        let escalation = self
            .escalation
            .as_ref()
            .context("hand-off to people is not enabled")?;
        Ok(Tickets {
            ctx: self.context(),
            model: self.model(),
            escalation,
            agents: &self.desk,
            max_message_chars: self.settings.max_message_chars,
        })
    }
}
