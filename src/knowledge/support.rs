//! Whether each sentence a model wrote rests on a sentence the shop wrote.
//! A claim is split into clauses; each clause must be covered by one clause
//! of the evidence (the passages, and the catalog's links), with the same
//! polarity (a "not", "never", 不, 没 on one side only is a contradiction),
//! its figures in that evidence sentence with the same unit beside them, and
//! its links among the shop's own. A bare "yes" or "no" must agree with the
//! polarity of what supports the rest of the sentence. A claim resting on a
//! sentence that states a condition ("once", "only", 一旦) must state one
//! too. Courtesy ("Happy to help!") needs no support. What the customer
//! wrote is never evidence: only the shop's text goes into an `Evidence`.

use std::collections::HashSet;

use super::text::{analyze, query_units, unit_covered, word_analyzer, QueryUnit};

/// Share of a clause's content words that its supporting clause must cover.
const MIN_COVERAGE: f32 = 0.67;

/// Why a sentence was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// No clause of the evidence says this.
    NoSupport(String),
    /// The evidence says the opposite.
    Polarity(String),
    /// A figure, or its unit, is not the evidence's.
    Figure(String),
    /// A link the shop never wrote.
    Link(String),
    /// A bare yes or no that nothing confirms.
    Verdict(String),
    /// Written in another language than the customer's.
    Language(String),
    /// Only the customer's own question again.
    Echo(String),
    /// The shop's sentence holds only under a condition ("once shipped",
    /// "only before it is packed") that the claim leaves out.
    Condition(String),
}

/// Words of a piece of the shop's text, for coverage.
struct Words {
    tokens: HashSet<String>,
    lowered: String,
}

impl Words {
    fn of(analyzer: &mut tantivy::tokenizer::TextAnalyzer, text: &str) -> Self {
        Self {
            tokens: analyze(analyzer, text).into_iter().collect(),
            lowered: text.to_lowercase(),
        }
    }

    fn covered(&self, units: &[QueryUnit]) -> usize {
        units.iter().filter(|unit| self.holds(unit)).count()
    }

    fn holds(&self, unit: &QueryUnit) -> bool {
        unit_covered(unit, &self.tokens, &self.lowered)
    }
}

/// One sentence of the shop's text.
struct EvidenceSentence {
    words: Words,
    clauses: Vec<EvidenceClause>,
    /// Whether it states a condition (`conditional`).
    conditional: bool,
    /// Its figures, with the units beside them.
    figures: Vec<Figure>,
    /// Whether it is one of the sentences that answer the question.
    answering: bool,
    /// The sentence before it in the same text, if any (an index into
    /// `Evidence::sentences`): "We ship to Canada. Delivery costs €19.95."
    previous: Option<usize>,
    text: String,
}

/// One clause of a shop's sentence.
struct EvidenceClause {
    words: Words,
    /// Whether it says "not".
    negated: bool,
    /// `without_negation` of it, made once: every clause of an answer is
    /// compared with it.
    without_negation: String,
}

/// What a checked sentence says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// It states something the shop said (not only courtesy).
    pub states: bool,
    /// The sentences marked as answering that it rests on.
    pub answering: Vec<String>,
}

/// The shop's sentences a model's answer may rest on.
pub struct Evidence {
    sentences: Vec<EvidenceSentence>,
    links: HashSet<String>,
    /// The customer's question: never support, and a sentence that only
    /// repeats it says nothing.
    asked: Option<(Words, Vec<Figure>)>,
}

impl Evidence {
    /// Evidence from the shop's texts (passages and their titles).
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut analyzer = word_analyzer();
        let mut evidence = Self {
            sentences: Vec::new(),
            links: HashSet::new(),
            asked: None,
        };
        for text in texts {
            evidence.links.extend(links(text));
            for (position, sentence) in super::answer::sentences(text).into_iter().enumerate() {
                let previous = (position > 0).then(|| evidence.sentences.len() - 1);
                let clauses = clauses(sentence)
                    .into_iter()
                    .map(|clause| EvidenceClause {
                        words: Words::of(&mut analyzer, clause),
                        negated: negated(clause),
                        without_negation: without_negation(clause),
                    })
                    .collect();
                evidence.sentences.push(EvidenceSentence {
                    words: Words::of(&mut analyzer, sentence),
                    clauses,
                    conditional: conditional(sentence),
                    figures: figures(&without_links(sentence)),
                    answering: false,
                    previous,
                    text: sentence.trim().to_string(),
                });
            }
        }
        evidence
    }

    /// Also allows these links (the catalog's item pages).
    pub fn allow_links(mut self, allowed: impl IntoIterator<Item = String>) -> Self {
        self.links
            .extend(allowed.into_iter().map(|link| normalise_link(&link)));
        self
    }

    /// Refuses sentences that only repeat `question` ("Yes, what's the
    /// email of …"): an answer must add something the shop said.
    pub fn asked(mut self, question: &str) -> Self {
        let mut analyzer = word_analyzer();
        self.asked = Some((
            Words::of(&mut analyzer, question),
            figures(&without_links(question)),
        ));
        self
    }

    /// Marks the shop's sentences that answer the question (those quoted
    /// when the model strays), so that `check_statement_answering` tells
    /// a relevant statement from a true but beside-the-point one.
    pub fn answering<'a>(mut self, answers: impl IntoIterator<Item = &'a str>) -> Self {
        let answers: HashSet<&str> = answers.into_iter().map(str::trim).collect();
        for sentence in &mut self.sentences {
            sentence.answering |= answers.contains(sentence.text.as_str());
        }
        self
    }

    /// Checks every sentence of `answer`; the first refused one, with why.
    pub fn check_answer(&self, answer: &str) -> Result<(), Unsupported> {
        if answer.trim().is_empty() {
            return Err(Unsupported::NoSupport(String::new()));
        }
        for sentence in super::answer::sentences(answer) {
            self.check_sentence(sentence)?;
        }
        Ok(())
    }

    /// Checks one sentence.
    pub fn check_sentence(&self, sentence: &str) -> Result<(), Unsupported> {
        self.check_statement(sentence).map(|_| ())
    }

    /// Checks one sentence; `Ok(true)` when it states something the shop
    /// said, `Ok(false)` when it is only courtesy.
    pub fn check_statement(&self, sentence: &str) -> Result<bool, Unsupported> {
        self.check_statement_answering(sentence)
            .map(|statement| statement.states)
    }

    /// Checks one sentence, and says whether it states something and
    /// which of the sentences marked as answering it rests on.
    pub fn check_statement_answering(&self, sentence: &str) -> Result<Statement, Unsupported> {
        for link in links(sentence) {
            if !self.links.contains(&link) {
                return Err(Unsupported::Link(link));
            }
        }
        if let Some((question, asked_figures)) = &self.asked {
            let said: Vec<&str> = clauses(sentence)
                .into_iter()
                .filter(|clause| bare_verdict(clause).is_none())
                .collect();
            let plain = without_links(&said.join(" "));
            let claimed: Vec<QueryUnit> = query_units(&plain)
                .into_iter()
                .filter(|unit| {
                    !COURTESY.contains(&unit.term.as_str())
                        && !POINTING.contains(&unit.term.as_str())
                })
                .collect();
            let new_figure = figures(&plain).iter().any(|figure| {
                !asked_figures
                    .iter()
                    .any(|asked| asked.value == figure.value)
            });
            if !claimed.is_empty() && !new_figure && question.covered(&claimed) == claimed.len() {
                return Err(Unsupported::Echo(sentence.to_string()));
            }
        }
        let mut verdict = None;
        let mut supports = Vec::new();
        let mut answering = Vec::new();
        for clause in clauses(sentence) {
            if let Some(said) = bare_verdict(clause) {
                verdict = Some(said);
                continue;
            }
            // Links are checked above; their words say nothing more.
            let plain = without_links(clause);
            let units = query_units(&plain);
            let clause_figures = figures(&plain);
            if units.is_empty() && clause_figures.is_empty() {
                continue;
            }
            if clause_figures.is_empty() && is_courtesy(&units) {
                continue;
            }
            // "See … for": pointing at a link claims nothing.
            let claimed: Vec<QueryUnit> = units
                .into_iter()
                .filter(|unit| !POINTING.contains(&unit.term.as_str()))
                .collect();
            // A figure is bound to what it is said of: every other word of
            // the clause must be in the sentence that gives the figure, or
            // the one before it ("€120" to Canada is refused where the
            // shop's €120 is the EU threshold).
            let support = if clause_figures.is_empty() {
                self.support_of(clause, &claimed)?
            } else {
                let words: Vec<QueryUnit> = claimed
                    .iter()
                    .filter(|unit| {
                        let unit_of_figure = unit_name(&unit.term).is_some_and(|name| {
                            clause_figures
                                .iter()
                                .any(|figure| figure.unit.as_deref() == Some(name.as_str()))
                        });
                        !unit_of_figure && !unit.term.chars().any(|ch| ch.is_ascii_digit())
                    })
                    .cloned()
                    .collect();
                self.support_of_figures(clause, &words, &clause_figures)?
            };
            // A condition the shop states must not be dropped: "Once the
            // parcel has been shipped, we can no longer change the address"
            // does not support "You cannot change your address".
            if support.conditional && !conditional(sentence) {
                return Err(Unsupported::Condition(clause.to_string()));
            }
            for figure in &clause_figures {
                if !support.figures.iter().any(|known| known.matches(figure)) {
                    return Err(Unsupported::Figure(figure.shown()));
                }
            }
            if support.answering {
                answering.push(support);
            }
            supports.push(negated(clause));
        }
        // A sentence that drops the shop's figure ("Northwind bags carry an
        // extended warranty" for "an extended 5-year warranty") does not
        // restate it: the shop's sentence is still quoted.
        let said_figures = figures(&without_links(sentence));
        let mut seen = HashSet::new();
        let answering = answering
            .into_iter()
            .filter(|support| seen.insert(support.text.as_str()))
            .filter(|support| {
                support
                    .figures
                    .iter()
                    .all(|known| said_figures.iter().any(|figure| known.matches(figure)))
            })
            .map(|support| support.text.clone())
            .collect();
        let statement = Statement {
            states: !supports.is_empty(),
            answering,
        };
        match verdict {
            None => Ok(statement),
            // "No." alone, or a verdict over nothing the shop said.
            Some(_) if !statement.states => Err(Unsupported::Verdict(sentence.to_string())),
            Some(no) if supports.iter().all(|negated| *negated == no) => Ok(statement),
            Some(_) => Err(Unsupported::Verdict(sentence.to_string())),
        }
    }

    /// The evidence sentence that gives every figure of `clause` (with its
    /// unit), holds each of `words` itself or in the sentence before it,
    /// and says it the same way round.
    fn support_of_figures(
        &self,
        clause: &str,
        words: &[QueryUnit],
        claimed: &[Figure],
    ) -> Result<&EvidenceSentence, Unsupported> {
        let gives = |sentence: &EvidenceSentence, figure: &Figure| {
            sentence.figures.iter().any(|known| known.matches(figure))
        };
        if let Some(unknown) = claimed.iter().find(|figure| {
            !self
                .sentences
                .iter()
                .any(|sentence| gives(sentence, figure))
        }) {
            return Err(Unsupported::Figure(unknown.shown()));
        }
        let said_not = negated(clause);
        let mut bound = false;
        for sentence in &self.sentences {
            if !claimed.iter().all(|figure| gives(sentence, figure)) {
                continue;
            }
            let before = sentence.previous.map(|at| &self.sentences[at].words);
            let holds_all = words.iter().all(|word| {
                sentence.words.holds(word) || before.is_some_and(|before| before.holds(word))
            });
            if !holds_all {
                continue;
            }
            bound = true;
            // Its polarity: that of its clauses that give the figures.
            let agrees = sentence
                .clauses
                .iter()
                .filter(|clause| {
                    claimed
                        .iter()
                        .any(|figure| clause.words.lowered.contains(figure.value.as_str()))
                })
                .all(|clause| clause.negated == said_not);
            if agrees {
                return Ok(sentence);
            }
        }
        if bound {
            Err(Unsupported::Polarity(clause.to_string()))
        } else {
            Err(Unsupported::NoSupport(clause.to_string()))
        }
    }

    /// The evidence sentence that covers `clause` best and says it the
    /// same way round. A sentence's polarity is that of its clauses that
    /// cover the most of the claim.
    fn support_of(
        &self,
        clause: &str,
        units: &[QueryUnit],
    ) -> Result<&EvidenceSentence, Unsupported> {
        let needed = ((units.len() as f32 * MIN_COVERAGE).ceil() as usize).max(1);
        let said_not = negated(clause);
        // The shop's own clause with a "not" taken out or put in: another
        // sentence that shares some words cannot stand in for it.
        let claim = without_negation(clause);
        if self.sentences.iter().any(|sentence| {
            sentence
                .clauses
                .iter()
                .any(|shop| shop.negated != said_not && shop.without_negation == claim)
        }) {
            return Err(Unsupported::Polarity(clause.to_string()));
        }
        let mut candidates: Vec<(usize, &EvidenceSentence)> = self
            .sentences
            .iter()
            .map(|sentence| (sentence.words.covered(units), sentence))
            .filter(|(covered, _)| *covered >= needed)
            .collect();
        if candidates.is_empty() {
            return Err(Unsupported::NoSupport(clause.to_string()));
        }
        candidates.sort_by_key(|(covered, _)| std::cmp::Reverse(*covered));
        for (_, sentence) in candidates {
            let coverage: Vec<usize> = sentence
                .clauses
                .iter()
                .map(|clause| clause.words.covered(units))
                .collect();
            let most = coverage.iter().copied().max().unwrap_or(0);
            let agrees = sentence
                .clauses
                .iter()
                .zip(&coverage)
                .filter(|(_, covered)| **covered == most)
                .all(|(clause, _)| clause.negated == said_not);
            if agrees {
                return Ok(sentence);
            }
        }
        Err(Unsupported::Polarity(clause.to_string()))
    }
}

/// Clauses of a sentence: split at commas (not between digits),
/// semicolons, colons and dashes, Latin and Chinese, and at " but ".
fn clauses(sentence: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = sentence.char_indices().collect();
    let mut parts = Vec::new();
    let mut start = 0;
    for (index, &(at, ch)) in chars.iter().enumerate() {
        let next = chars.get(index + 1).map(|(_, next)| *next);
        // "1,000", "12:20" and "https://" are no clause boundaries.
        let inside = (matches!(ch, ',' | ':')
            && index > 0
            && chars[index - 1].1.is_ascii_digit()
            && next.is_some_and(|next| next.is_ascii_digit()))
            || (ch == ':' && next == Some('/'));
        if matches!(ch, ',' | ';' | ':' | '，' | '；' | '：' | '、' | '—') && !inside {
            parts.push(&sentence[start..at]);
            start = at + ch.len_utf8();
        }
    }
    parts.push(&sentence[start..]);
    parts
        .into_iter()
        .flat_map(|part| split_at_but(part))
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect()
}

fn split_at_but(part: &str) -> Vec<&str> {
    let lowered = part.to_ascii_lowercase();
    let mut pieces = Vec::new();
    let mut start = 0;
    while let Some(found) = lowered[start..].find(" but ") {
        pieces.push(&part[start..start + found]);
        start += found + " but ".len();
    }
    pieces.push(&part[start..]);
    pieces
}

/// Words that make a statement hold only sometimes. "After" and "before"
/// are left out: they mostly measure time ("expire after 24 months").
const ENGLISH_CONDITIONS: &[&str] = &["once", "if", "until", "unless", "only", "provided"];
const CHINESE_CONDITIONS: &[&str] = &["如果", "一旦", "只要", "只有", "除非", "只能", "假如"];

/// Whether `text` states a condition: "once", "only", "unless", "as long
/// as", 如果, 一旦, 只有 and the like.
fn conditional(text: &str) -> bool {
    let lowered = text.to_lowercase();
    lowered
        .split(|ch: char| !ch.is_alphanumeric() && ch != '\'')
        .any(|word| ENGLISH_CONDITIONS.contains(&word))
        || lowered.contains("as long as")
        || CHINESE_CONDITIONS
            .iter()
            .any(|marker| lowered.contains(marker))
}

const ENGLISH_NEGATIONS: &[&str] = &[
    "not", "no", "never", "cannot", "none", "nothing", "nobody", "nowhere", "neither", "nor",
    "without",
];

/// Han characters that negate what follows.
const CHINESE_NEGATIONS: &[char] = &['不', '没', '沒', '无', '無', '未', '非', '别', '勿'];

/// Words with a negating character that negate nothing ("very", "whatever",
/// "other", "future", "however", "not only").
const NOT_NEGATIONS: &[&str] = &[
    "非常", "无论", "別的", "别的", "别人", "别处", "未来", "不过", "不仅", "不错",
];

/// Whether a clause says "not": an odd number of negations.
fn negated(clause: &str) -> bool {
    let lowered = clause.to_lowercase().replace('’', "'");
    let mut count = 0;
    for word in lowered.split(|ch: char| !(ch.is_alphanumeric() || ch == '\'')) {
        if ENGLISH_NEGATIONS.contains(&word) || word.ends_with("n't") {
            count += 1;
        }
    }
    let mut han = lowered.clone();
    for word in NOT_NEGATIONS {
        han = han.replace(word, "");
    }
    count += han
        .chars()
        .filter(|ch| CHINESE_NEGATIONS.contains(ch))
        .count();
    count % 2 == 1
}

/// A clause's words without its negations, run together: "is not what
/// you ordered" and "is what you ordered" come out the same, as do
/// "doesn't expire" and "does expire", "不能兑换" and "能兑换".
fn without_negation(clause: &str) -> String {
    let lowered = clause.to_lowercase().replace('’', "'");
    let mut kept = String::new();
    for word in lowered.split(|ch: char| !(ch.is_alphanumeric() || ch == '\'')) {
        if ENGLISH_NEGATIONS.contains(&word) {
            continue;
        }
        let word = match word {
            "can't" => "can",
            "won't" => "will",
            _ => word.strip_suffix("n't").unwrap_or(word),
        };
        kept.push_str(word);
    }
    // As in `negated`: words such as 非常 hold a negating character and
    // negate nothing.
    for word in NOT_NEGATIONS {
        kept = kept.replace(word, "");
    }
    kept.chars()
        .filter(|ch| !CHINESE_NEGATIONS.contains(ch))
        .collect()
}

/// A clause that is only a yes (`false`) or a no (`true`).
pub(super) fn bare_verdict(clause: &str) -> Option<bool> {
    let word = clause
        .trim_matches(|ch: char| !ch.is_alphanumeric())
        .to_lowercase();
    match word.as_str() {
        "yes" | "yeah" | "yep" | "sure" | "correct" | "是" | "是的" | "对" | "对的" | "可以"
        | "有" => Some(false),
        "no" | "nope" | "不" | "不是" | "不可以" | "不行" | "没有" | "沒有" => {
            Some(true)
        }
        _ => None,
    }
}

/// Words of pointing at a link or page, that state nothing about the shop.
const POINTING: &[&str] = &[
    "find",
    "see",
    "here",
    "look",
    "link",
    "page",
    "visit",
    "click",
    "detail",
    "details",
    "more",
    "inform",
    "information",
    "查看",
    "详情",
    "这里",
    "链接",
    "页面",
    "点击",
];

/// Words of courtesy that state nothing about the shop.
const COURTESY: &[&str] = &[
    "happi",
    "happy",
    "glad",
    "help",
    "assist",
    "thank",
    "thanks",
    "welcom",
    "welcome",
    "hope",
    "hello",
    "hi",
    "great",
    "sorri",
    "sorry",
    "pleas",
    "please",
    "anyth",
    "anything",
    "els",
    "else",
    "question",
    "let",
    "know",
    "feel",
    "free",
    "ask",
    "certainli",
    "certainly",
    "sure",
    "day",
    "nice",
    "good",
    "inconveni",
    "inconvenience",
    "sincer",
    "您好",
    "你好",
    "谢谢",
    "感谢",
    "很高兴",
    "高兴",
    "帮助",
    "帮",
    "乐意",
    "请问",
    "还有",
    "其他",
    "问题",
    "抱歉",
    "随时",
    "欢迎",
    "祝您",
    "愉快",
];

fn is_courtesy(units: &[QueryUnit]) -> bool {
    !units.is_empty()
        && units.iter().all(|unit| {
            COURTESY.contains(&unit.term.as_str()) || POINTING.contains(&unit.term.as_str())
        })
}

/// A number with the word or symbol written beside it.
#[derive(Clone, Debug, PartialEq)]
struct Figure {
    value: String,
    unit: Option<String>,
}

impl Figure {
    /// Whether `claimed` is this figure: the same number, and the same unit
    /// when the claim names one.
    fn matches(&self, claimed: &Figure) -> bool {
        self.value == claimed.value
            && match (&claimed.unit, &self.unit) {
                (None, _) => true,
                (Some(claimed), Some(known)) => claimed == known,
                (Some(_), None) => false,
            }
    }

    fn shown(&self) -> String {
        match &self.unit {
            Some(unit) => format!("{} {unit}", self.value),
            None => self.value.clone(),
        }
    }
}

/// The one name of a unit written in any of its ways, for units this
/// check knows.
fn known_unit(word: &str) -> Option<&'static str> {
    Some(match word.to_lowercase().as_str() {
        "€" | "eur" | "euro" | "euros" | "欧元" => "eur",
        "$" | "usd" | "dollar" | "dollars" | "美元" => "usd",
        "£" | "gbp" | "pound" | "pounds" | "英镑" => "gbp",
        "¥" | "￥" | "元" | "rmb" | "cny" | "yuan" | "块" => "cny",
        "%" | "％" | "percent" => "percent",
        "天" | "日" | "工作日" | "个工作日" | "day" | "days" => "day",
        "hour" | "hours" | "hrs" | "h" | "小时" | "个小时" => "hour",
        "minute" | "minutes" | "min" | "mins" | "分钟" => "minute",
        "week" | "weeks" | "周" | "星期" | "个星期" => "week",
        "month" | "months" | "个月" | "月" => "month",
        "year" | "years" | "年" => "year",
        "kg" | "kilogram" | "kilograms" | "公斤" | "千克" => "kg",
        _ => return None,
    })
}

/// A unit's name: a known unit's one name, else the word itself.
fn unit_name(word: &str) -> Option<String> {
    if word.is_empty() {
        return None;
    }
    Some(known_unit(word).map_or_else(|| word.to_lowercase(), str::to_string))
}

/// The units of the figures `text` states, by their one name ("day",
/// "eur"); figures without a unit are left out.
pub(super) fn figure_units(text: &str) -> Vec<String> {
    figures(text)
        .into_iter()
        .filter_map(|figure| figure.unit)
        .collect()
}

/// The figures of `text`: digit runs (with "4.95" and "1,000" kept whole)
/// and the unit after them, or a currency before them.
fn figures(text: &str) -> Vec<Figure> {
    let chars: Vec<char> = text.chars().collect();
    let mut found = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        if !chars[at].is_ascii_digit() {
            at += 1;
            continue;
        }
        let start = at;
        let mut value = String::new();
        while at < chars.len() {
            let ch = chars[at];
            let separator = (ch == '.' || ch == ',')
                && chars.get(at + 1).is_some_and(char::is_ascii_digit)
                && !value.is_empty();
            if ch.is_ascii_digit() {
                value.push(ch);
            } else if separator {
                // "1,000" is a thousand; "4,95" a decimal comma.
                let digits_after = chars[at + 1..]
                    .iter()
                    .take_while(|ch| ch.is_ascii_digit())
                    .count();
                if ch == ',' && digits_after == 3 {
                } else {
                    value.push('.');
                }
            } else {
                break;
            }
            at += 1;
        }
        // "€1,000 ship": the currency, not the next word.
        let unit = unit_before(&chars[..start]).or_else(|| unit_after(&chars[at..]));
        found.push(Figure {
            value,
            unit: unit.and_then(|unit| unit_name(&unit)),
        });
    }
    found
}

/// Words after a number searched for a known unit ("4 working days",
/// "2 to 4 days").
const UNIT_LOOKAHEAD: usize = 4;

fn unit_after(rest: &[char]) -> Option<String> {
    let text: String = rest.iter().take(48).collect();
    let text = text.trim_start();
    let first = text.chars().next()?;
    if matches!(first, '%' | '％' | '€' | '$' | '£' | '¥' | '￥') {
        return Some(first.to_string());
    }
    if super::text::is_han(first) {
        // 个月, 小时, 个工作日: the longest unit that starts here.
        let han: Vec<char> = text
            .chars()
            .take_while(|ch| super::text::is_han(*ch))
            .collect();
        for length in (1..=han.len().min(4)).rev() {
            let piece: String = han[..length].iter().collect();
            if known_unit(&piece).is_some() {
                return Some(piece);
            }
        }
        return Some(first.to_string());
    }
    let words: Vec<&str> = text
        .split(|ch: char| ch.is_whitespace())
        .take(UNIT_LOOKAHEAD)
        .map(|word| word.trim_matches(|ch: char| !ch.is_alphanumeric()))
        .collect();
    if let Some(unit) = words.iter().find(|word| known_unit(word).is_some()) {
        return Some(unit.to_string());
    }
    let word: String = text
        .chars()
        .take_while(|ch| ch.is_alphabetic() && !super::text::is_han(*ch))
        .collect();
    (!word.is_empty()).then_some(word)
}

fn unit_before(before: &[char]) -> Option<String> {
    let trimmed: Vec<char> = before
        .iter()
        .rev()
        .skip_while(|ch| **ch == ' ')
        .copied()
        .collect();
    let first = *trimmed.first()?;
    if matches!(first, '€' | '$' | '£' | '¥' | '￥') {
        return Some(first.to_string());
    }
    let word: String = trimmed
        .iter()
        .take_while(|ch| ch.is_ascii_alphabetic())
        .collect::<String>()
        .chars()
        .rev()
        .collect();
    matches!(
        word.to_lowercase().as_str(),
        "eur" | "usd" | "gbp" | "rmb" | "cny"
    )
    .then_some(word)
}

/// The words of `text` as links are looked for in it.
fn link_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|ch: char| {
        ch.is_whitespace() || matches!(ch, '<' | '>' | '(' | ')' | '"' | '，' | '。' | '（' | '）')
    })
}

/// `text` without its links.
fn without_links(text: &str) -> String {
    link_words(text)
        .filter(|word| link_in(word).is_none())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as a normalised link or e-mail address, if it is one.
fn link_in(word: &str) -> Option<String> {
    let lowered = word.to_lowercase();
    let is_link = lowered.starts_with("http://")
        || lowered.starts_with("https://")
        || lowered.starts_with("www.")
        || (word.contains('@') && word.contains('.') && !word.starts_with('@'));
    is_link.then(|| normalise_link(word))
}

/// Links and e-mail addresses in `text`, normalised.
fn links(text: &str) -> Vec<String> {
    link_words(text)
        .filter_map(link_in)
        .filter(|link| !link.is_empty())
        .collect()
}

fn normalise_link(link: &str) -> String {
    let lowered = link
        .trim_end_matches(['.', ',', '!', '?', ';', ':', '/'])
        .to_lowercase();
    let bare = lowered
        .strip_prefix("https://")
        .or_else(|| lowered.strip_prefix("http://"))
        .unwrap_or(&lowered);
    bare.strip_prefix("www.").unwrap_or(bare).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> Evidence {
        Evidence::new([
            "Returns: you can send items back within 45 days of delivery. Refunds reach your card in 5 business days.",
            "Loyalty points expire after 24 months. Points cannot be exchanged for cash.",
            "Rented stoves need a deposit of 100 EUR, returned when the stove comes back.",
            "We accept Visa, Mastercard and American Express. Write to help@example-shop.com or see https://example-shop.com/pay.",
            "退货：收货后45天内可以退货。积分24个月后过期，不能兑换现金。",
        ])
    }

    #[test]
    fn a_statement_that_drops_the_figure_does_not_restate_the_answer() {
        let answer = "Our own sleeping bags carry an extended 5-year warranty.";
        let shop = Evidence::new([answer, "All down is certified."]).answering([answer]);
        let vague = shop
            .check_statement_answering("Our own sleeping bags carry an extended warranty.")
            .unwrap();
        assert!(vague.states);
        assert!(vague.answering.is_empty(), "{:?}", vague.answering);
        let restated = shop
            .check_statement_answering("Our sleeping bags have an extended 5-year warranty.")
            .unwrap();
        assert_eq!(restated.answering, [answer]);
        // Figures spread over the clauses of one sentence are all said.
        let refund = "PayPal refunds arrive within 24 hours, card refunds take 3-5 working days.";
        let shop = Evidence::new([refund]).answering([refund]);
        let whole = shop
            .check_statement_answering(
                "PayPal refunds arrive within 24 hours, card refunds take 3-5 working days.",
            )
            .unwrap();
        assert_eq!(whole.answering, [refund]);
    }

    #[test]
    fn a_faithful_paraphrase_passes() {
        let shop = shop();
        for answer in [
            "You can send items back within 45 days of delivery.",
            "Happy to help! Loyalty points expire after 24 months.",
            "Rented stoves need a deposit of 100 EUR.",
            "No, points cannot be exchanged for cash.",
            "Yes, we accept American Express.",
            "You can write to help@example-shop.com.",
            "收货后45天内可以退货。",
            "积分不能兑换现金。",
        ] {
            assert_eq!(shop.check_answer(answer), Ok(()), "{answer}");
        }
    }

    /// The sentence that says most nearly the same thing decides the
    /// polarity: a weaker match elsewhere that happens to agree does not
    /// let a dropped "not" through.
    #[test]
    fn a_dropped_not_is_refused_even_where_another_sentence_shares_the_words() {
        let shop = Evidence::new([
            "If an item arrives damaged, faulty or is not what you ordered, tell us within 14 days of delivery.",
            "If the box is clearly crushed or torn, ask the driver to note the damage, or refuse the parcel.",
        ]);
        let flipped = "If an item arrives damaged, faulty or is what you ordered, tell us within 14 days of delivery.";
        assert!(
            matches!(shop.check_answer(flipped), Err(Unsupported::Polarity(_))),
            "{:?}",
            shop.check_answer(flipped)
        );
        let faithful = "If an item arrives damaged, faulty or is not what you ordered, tell us within 14 days of delivery.";
        assert_eq!(shop.check_answer(faithful), Ok(()));
        let chinese = Evidence::new(["积分不能兑换现金，也不能转让。", "积分可以兑换代金券。"]);
        assert!(matches!(
            chinese.check_answer("积分能兑换现金。"),
            Err(Unsupported::Polarity(_))
        ));
    }

    #[test]
    fn a_condition_the_shop_states_must_not_be_dropped() {
        let shop = Evidence::new([
            "The delivery address can only be changed before the order is packed. Once the parcel has been shipped, we can no longer change the address.",
            "一旦发货，就不能再修改地址了。",
        ]);
        for dropped in [
            "No, you cannot change your shipping address.",
            "You can change the delivery address.",
            "不能修改地址。",
            "不能修改收货地址。",
        ] {
            assert!(
                matches!(shop.check_answer(dropped), Err(Unsupported::Condition(_))),
                "{dropped}"
            );
        }
        for kept in [
            "You can change the delivery address only before the order is packed.",
            "Once the parcel has been shipped, we can no longer change the address.",
            "一旦发货，就不能修改地址。",
        ] {
            assert!(shop.check_answer(kept).is_ok(), "{kept}");
        }
    }

    #[test]
    fn contradictions_are_refused() {
        let shop = shop();
        for answer in [
            "No, my points never expire.",
            "Points can be exchanged for cash.",
            "Is there a deposit? No.",
            "No.",
            "No, rented stoves need a deposit of 100 EUR.",
            "积分可以兑换现金。",
            "积分不会过期。",
            "Rented stoves are free.",
        ] {
            assert!(shop.check_answer(answer).is_err(), "{answer}");
        }
    }

    #[test]
    fn swapped_figures_and_units_are_refused() {
        let shop = shop();
        assert!(matches!(
            shop.check_answer("You can send items back within 30 days of delivery."),
            Err(Unsupported::Figure(_))
        ));
        assert!(matches!(
            shop.check_answer("Rented stoves need a deposit of 100 USD."),
            Err(Unsupported::Figure(_))
        ));
        assert!(matches!(
            shop.check_answer("You can send items back within 45 weeks of delivery."),
            Err(Unsupported::Figure(_))
        ));
        // A figure from another sentence of the shop is not this one's.
        assert!(shop
            .check_answer("Loyalty points expire after 45 months.")
            .is_err());
        assert!(shop.check_answer("收货后30天内可以退货。").is_err());
    }

    #[test]
    fn a_figure_said_of_something_its_sentence_does_not_name_is_refused() {
        let shop = Evidence::new([
            "Standard delivery within the EU costs €8.95, and it is free for orders of €120 or more.",
            "We ship to Switzerland, Canada and Japan. International delivery costs a flat €19.95 per order.",
            "Men's sizes by chest circumference: M 96-104 cm, L 104-112 cm.",
            "欧盟境内标准配送运费 €8.95，满 €120 免运费。",
        ])
        .asked("shipping cost to canada? what chest size is a men's large jacket?");
        for borrowed in [
            "Shipping to Canada costs €120.",
            "The chest size for a men's large jacket is M 96-104 cm.",
            "寄到加拿大的运费是 €120。",
        ] {
            assert!(
                matches!(shop.check_answer(borrowed), Err(Unsupported::NoSupport(_))),
                "{borrowed}"
            );
        }
        for bound in [
            "International delivery costs a flat €19.95 per order.",
            // Canada is named in the sentence before the figure's.
            "The shipping cost to Canada is €19.95.",
            "Standard delivery within the EU is free for orders of €120 or more.",
            "Size L is 104-112 cm chest circumference.",
            "满 €120 免运费。",
            // A clause that is only a figure.
            "Yes, €8.95.",
            "Standard delivery: €8.95.",
        ] {
            assert_eq!(shop.check_answer(bound), Ok(()), "{bound}");
        }
    }

    #[test]
    fn repeating_the_question_is_no_answer() {
        let asked = shop().asked("Do my loyalty points expire?");
        assert!(matches!(
            asked.check_answer("Yes, my loyalty points expire."),
            Err(Unsupported::Echo(_))
        ));
        assert_eq!(
            asked.check_answer("Loyalty points expire after 24 months."),
            Ok(())
        );
        let chinese = shop().asked("积分会过期吗");
        assert!(matches!(
            chinese.check_answer("是的，积分会过期。"),
            Err(Unsupported::Echo(_))
        ));
        assert_eq!(chinese.check_answer("积分24个月后过期。"), Ok(()));
    }

    #[test]
    fn only_the_shops_links_pass() {
        let shop = shop().allow_links(["https://example-shop.com/items/42".to_string()]);
        assert_eq!(
            shop.check_answer(
                "See https://example-shop.com/pay for how we accept American Express."
            ),
            Ok(())
        );
        assert!(matches!(
            shop.check_answer("We accept American Express, see https://evil.example/pay."),
            Err(Unsupported::Link(_))
        ));
        assert!(matches!(
            shop.check_answer("Write to refunds@evil.example for your refund."),
            Err(Unsupported::Link(_))
        ));
        assert_eq!(
            shop.check_answer("You find it at https://example-shop.com/items/42."),
            Ok(())
        );
    }

    #[test]
    fn claims_the_shop_never_made_are_refused() {
        let shop = shop();
        for answer in [
            "We ship worldwide for free.",
            "Refunds reach your card in 5 business days and we add a voucher of 10 EUR.",
            "My order never arrived and I want a refund now.",
        ] {
            assert!(shop.check_answer(answer).is_err(), "{answer}");
        }
        assert!(shop.check_answer("").is_err());
    }

    #[test]
    fn figures_keep_their_units_and_separators() {
        let found = figures("Orders over €1,000 ship in 2 days; 4,95 EUR fee; 15% off; 3个月");
        let shown: Vec<String> = found.iter().map(Figure::shown).collect();
        assert_eq!(
            shown,
            ["1000 eur", "2 day", "4.95 eur", "15 percent", "3 month"]
        );
    }

    #[test]
    fn negation_is_counted_in_both_languages() {
        assert!(negated("Points don't expire"));
        assert!(negated("Points do not expire"));
        assert!(!negated("It is not true that points do not expire"));
        assert!(negated("积分不会过期"));
        assert!(!negated("积分24个月后过期"));
    }
}
