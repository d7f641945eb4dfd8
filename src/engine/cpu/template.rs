//! The model's own chat template (`tokenizer.chat_template`, Jinja), rendered
//! with minijinja under the settings Hugging Face uses for these templates
//! (trimmed and left-stripped blocks, Python string methods), and the set of
//! tokens that end a reply.

use std::collections::BTreeSet;
use std::path::Path;

use minijinja::{context, Environment, ErrorKind};

use crate::engine::gguf::{GgufHeader, MetaValue};
use crate::engine::{ChatMessage, ChatRole, EngineError};

/// Names of end-of-turn tokens used by the supported model families; those
/// present in the vocabulary stop generation besides the declared ids.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
    "</s>",
];

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn token_text(header: &GgufHeader, key: &str) -> Option<String> {
    let id = header.metadata.get(key)?.as_u64()? as usize;
    match header.metadata.get("tokenizer.ggml.tokens")? {
        MetaValue::Array(tokens) => tokens.get(id)?.as_str().map(str::to_string),
        _ => None,
    }
}

impl ChatTemplate {
    /// Compiles the template of `header`.
    pub fn from_header(path: &Path, header: &GgufHeader) -> Result<Self, EngineError> {
        let source = header
            .metadata
            .get("tokenizer.chat_template")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| EngineError::Unsupported {
                path: path.to_path_buf(),
                detail: "metadata key tokenizer.chat_template is missing".into(),
            })?;
        Self::new(
            source,
            token_text(header, "tokenizer.ggml.bos_token_id").unwrap_or_default(),
            token_text(header, "tokenizer.ggml.eos_token_id").unwrap_or_default(),
        )
        .map_err(|detail| EngineError::Unsupported {
            path: path.to_path_buf(),
            detail: format!("its chat template does not compile: {detail}"),
        })
    }

    /// Compiles `source`.
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |format: String| {
            chrono::Local::now().format(&format).to_string()
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|err| err.to_string())?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// The prompt text for `messages`, ending where the assistant's reply
    /// starts. A template that refuses a system message or two turns of one
    /// role in a row (Mistral's and Llama 2's raise an exception) gets the
    /// system prompt at the head of the first user turn and each run of
    /// turns of one role joined.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let first = self.render_as_given(messages);
        if first.is_ok() {
            return first;
        }
        let folded = fold_for_alternating_templates(messages);
        if folded.as_slice() == messages || folded.is_empty() {
            return first;
        }
        // When the folded turns fail too, the template's own complaint
        // about what was asked is the clearer error.
        self.render_as_given(&folded).or(first)
    }

    fn render_as_given(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let messages: Vec<_> = messages
            .iter()
            .map(|message| {
                let role = match message.role {
                    ChatRole::System => "system",
                    ChatRole::User => "user",
                    ChatRole::Assistant => "assistant",
                };
                context! { role => role, content => message.content.as_str() }
            })
            .collect();
        let template = self
            .env
            .get_template("chat")
            .map_err(|err| EngineError::Generation(format!("chat template: {err}")))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|err| EngineError::Generation(format!("chat template: {err:#}")))
    }
}

/// `messages` as strictly alternating user and assistant turns: system text
/// goes ahead of the first user turn, and consecutive turns of one role are
/// joined with a blank line.
fn fold_for_alternating_templates(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let system: Vec<&str> = messages
        .iter()
        .filter(|message| message.role == ChatRole::System)
        .map(|message| message.content.as_str())
        .collect();
    let mut folded: Vec<ChatMessage> = Vec::new();
    for message in messages.iter().filter(|m| m.role != ChatRole::System) {
        match folded.last_mut() {
            Some(last) if last.role == message.role => {
                last.content.push_str("\n\n");
                last.content.push_str(&message.content);
            }
            _ => folded.push(message.clone()),
        }
    }
    if !system.is_empty() {
        let instructions = system.join("\n\n");
        match folded
            .iter_mut()
            .find(|message| message.role == ChatRole::User)
        {
            Some(user) => user.content = format!("{instructions}\n\n{}", user.content),
            None => folded.insert(0, ChatMessage::new(ChatRole::User, instructions)),
        }
    }
    // Alternating templates expect the user to speak first.
    if folded
        .first()
        .is_some_and(|m| m.role == ChatRole::Assistant)
    {
        folded.remove(0);
    }
    folded
}

/// Token ids that end a reply: the declared end-of-sequence, end-of-turn and
/// end-of-message ids, and the known end-of-turn tokens of the vocabulary.
pub fn stop_tokens(header: &GgufHeader) -> BTreeSet<u32> {
    let mut stops: BTreeSet<u32> = [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ]
    .iter()
    .filter_map(|key| header.metadata.get(*key)?.as_u64())
    .map(|id| id as u32)
    .collect();
    if let Some(MetaValue::Array(tokens)) = header.metadata.get("tokenizer.ggml.tokens") {
        for (id, token) in tokens.iter().enumerate() {
            if token
                .as_str()
                .is_some_and(|text| END_OF_TURN_TOKENS.contains(&text))
            {
                stops.insert(id as u32);
            }
        }
    }
    stops
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nDefault<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// An instruction template of the Llama 2 / Mistral kind: strictly
    /// alternating user and assistant turns, no system role.
    const ALTERNATING: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}{{ raise_exception('no such role') }}{% endif %}{% endfor %}";

    #[test]
    fn a_template_without_a_system_role_gets_the_instructions_in_the_first_turn() {
        let template = ChatTemplate::new(ALTERNATING, "<s>".into(), "</s>".into()).unwrap();
        let text = template
            .render(&[
                ChatMessage::new(ChatRole::System, "Be brief."),
                ChatMessage::new(ChatRole::User, "Hi"),
                ChatMessage::new(ChatRole::Assistant, "Hello!"),
                ChatMessage::new(ChatRole::User, "Where is my parcel?"),
                ChatMessage::new(ChatRole::User, "It is late."),
            ])
            .unwrap();
        assert_eq!(
            text,
            "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Where is my parcel?\n\nIt is late. [/INST]"
        );
        // What the template accepts as it is is not rewritten.
        let plain = template
            .render(&[ChatMessage::new(ChatRole::User, "Hi")])
            .unwrap();
        assert_eq!(plain, "<s>[INST] Hi [/INST]");
    }

    #[test]
    fn a_template_that_refuses_even_the_folded_turns_is_an_error() {
        let template = ChatTemplate::new(
            "{{ raise_exception('never') }}",
            String::new(),
            String::new(),
        )
        .unwrap();
        let err = template
            .render(&[
                ChatMessage::new(ChatRole::System, "Be brief."),
                ChatMessage::new(ChatRole::User, "Hi"),
            ])
            .unwrap_err();
        assert!(err.to_string().contains("never"), "{err}");
    }

    #[test]
    fn renders_chatml_with_the_generation_prompt() {
        let template = ChatTemplate::new(CHATML, String::new(), String::new()).unwrap();
        let text = template
            .render(&[
                ChatMessage::new(ChatRole::System, "Be brief."),
                ChatMessage::new(ChatRole::User, "你好"),
            ])
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
        );
        let text = template
            .render(&[ChatMessage::new(ChatRole::User, "hi")])
            .unwrap();
        assert!(text.starts_with("<|im_start|>system\nDefault<|im_end|>\n"));
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let source = "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('bad order') }}{% endif %}{% for m in messages %}{{ m['content'].strip() | upper }}{% endfor %}";
        let template = ChatTemplate::new(source, String::new(), String::new()).unwrap();
        let text = template
            .render(&[ChatMessage::new(ChatRole::User, "  hi  ")])
            .unwrap();
        assert_eq!(text, "HI");
        let err = template
            .render(&[ChatMessage::new(ChatRole::Assistant, "x")])
            .unwrap_err();
        assert!(err.to_string().contains("bad order"), "{err}");
    }

    #[test]
    fn a_broken_template_is_an_error_not_a_panic() {
        assert!(ChatTemplate::new("{% for %}", String::new(), String::new()).is_err());
    }
}
