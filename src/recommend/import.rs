//! Importing the catalog and interaction events from CSV or JSON Lines files.
//! Bad rows are reported with their line numbers; good rows are imported.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::store::{now_ms, CatalogItem, Event, EventKind, Store, RECORD_VERSION};

/// A row that could not be imported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RowError {
    /// 1-based line in the file.
    pub line: usize,
    /// What is wrong.
    pub error: String,
}

/// The outcome of an import.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    /// New records.
    pub added: usize,
    /// Records replaced (catalog items with a known id).
    pub updated: usize,
    /// Events skipped because an event with the same id is stored already.
    pub duplicates: usize,
    /// Rows that could not be imported.
    pub errors: Vec<RowError>,
}

/// One row as named fields, whatever the file format.
type Row = serde_json::Map<String, Value>;

/// Rows with their line numbers, and the lines that could not be read.
type ParsedRows = (Vec<(usize, Row)>, Vec<RowError>);

/// Reads rows from CSV (with a header) or JSON Lines (`.jsonl`, `.ndjson`,
/// or a first line starting with `{`), with their line numbers.
fn rows(path: &Path) -> anyhow::Result<ParsedRows> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json_lines = path
        .extension()
        .is_some_and(|ext| matches!(ext.to_string_lossy().as_ref(), "jsonl" | "ndjson" | "json"))
        || text.trim_start().starts_with('{');
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    if json_lines {
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(map)) => rows.push((index + 1, map)),
                Ok(_) => errors.push(RowError {
                    line: index + 1,
                    error: "not a JSON object".into(),
                }),
                Err(err) => errors.push(RowError {
                    line: index + 1,
                    error: format!("invalid JSON: {err}"),
                }),
            }
        }
        return Ok((rows, errors));
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: unreadable header", path.display()))?
        .iter()
        .map(|header| header.to_ascii_lowercase())
        .collect();
    for record in reader.records() {
        match record {
            Ok(record) => {
                let line = record
                    .position()
                    .map_or(0, |position| position.line() as usize);
                let map = headers
                    .iter()
                    .zip(record.iter())
                    .filter(|(_, value)| !value.is_empty())
                    .map(|(header, value)| (header.clone(), Value::String(value.to_string())))
                    .collect();
                rows.push((line, map));
            }
            Err(err) => errors.push(RowError {
                line: err
                    .position()
                    .map_or(0, |position| position.line() as usize),
                error: format!("unreadable row: {err}"),
            }),
        }
    }
    Ok((rows, errors))
}

fn text(row: &Row, key: &str) -> Option<String> {
    match row.get(key)? {
        Value::String(text) => Some(text.trim().to_string()).filter(|text| !text.is_empty()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn number(row: &Row, key: &str) -> Result<Option<f64>, String> {
    match row.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => Ok(number.as_f64()),
        Some(Value::String(text)) => text
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("{key} {text:?} is not a number")),
        Some(other) => Err(format!("{key} {other} is not a number")),
    }
}

fn catalog_item(row: &Row) -> Result<CatalogItem, String> {
    let id = text(row, "id").ok_or("missing id")?;
    let title = text(row, "title").ok_or("missing title")?;
    let price = number(row, "price")?;
    if price.is_some_and(|price| !price.is_finite() || price < 0.0) {
        return Err("price must be a positive number".into());
    }
    let tags = tag_list(row, "tags");
    let in_stock = match row.get("in_stock") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(flag)) => *flag,
        Some(value) => match value
            .to_string()
            .trim_matches('"')
            .to_ascii_lowercase()
            .as_str()
        {
            "true" | "1" | "yes" | "y" => true,
            "false" | "0" | "no" | "n" => false,
            other => return Err(format!("in_stock {other:?} is not true or false")),
        },
    };
    Ok(CatalogItem {
        v: RECORD_VERSION,
        id,
        title,
        description: text(row, "description").unwrap_or_default(),
        category: text(row, "category").unwrap_or_default(),
        tags,
        price,
        currency: text(row, "currency").unwrap_or_default(),
        url: text(row, "url").unwrap_or_default(),
        in_stock,
        title_zh: text(row, "title_zh").unwrap_or_default(),
        description_zh: text(row, "description_zh").unwrap_or_default(),
        tags_zh: tag_list(row, "tags_zh"),
    })
}

/// A list of tags: a JSON array, or text separated by `|`, `,` or `;`.
fn tag_list(row: &Row, key: &str) -> Vec<String> {
    match row.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(joined)) => joined
            .split(['|', ',', ';', '，', '、'])
            .map(|tag| tag.trim().to_lowercase())
            .filter(|tag| !tag.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// Parses a timestamp: Unix seconds or milliseconds, or RFC 3339.
fn timestamp_ms(row: &Row) -> Result<u64, String> {
    let Some(raw) = text(row, "timestamp") else {
        return Ok(now_ms());
    };
    if let Ok(number) = raw.parse::<f64>() {
        if !number.is_finite() || number < 0.0 {
            return Err(format!("timestamp {raw:?} is out of range"));
        }
        // Values this large are already milliseconds.
        let ms = if number >= 1e11 {
            number
        } else {
            number * 1000.0
        };
        return Ok(ms as u64);
    }
    chrono::DateTime::parse_from_rfc3339(&raw)
        .map(|time| time.timestamp_millis().max(0) as u64)
        .map_err(|_| format!("timestamp {raw:?} is neither Unix time nor RFC 3339"))
}

/// Builds an event from named fields (a file row or an API request).
/// Longest event id accepted.
const MAX_EVENT_ID_BYTES: usize = 200;

pub fn event_from_row(row: &Row) -> Result<Event, String> {
    let user = text(row, "user").ok_or("missing user")?;
    let item = text(row, "item").ok_or("missing item")?;
    let kind_text = text(row, "kind").ok_or("missing kind")?;
    let kind = EventKind::parse(&kind_text).ok_or_else(|| {
        format!("unknown kind {kind_text:?} (view, click, like, dislike, cart, purchase, rating)")
    })?;
    let value = number(row, "value")?;
    if kind == EventKind::Rating && value.is_none() {
        return Err("a rating needs a value".into());
    }
    let id = text(row, "id");
    if id.as_ref().is_some_and(|id| id.len() > MAX_EVENT_ID_BYTES) {
        return Err(format!("id longer than {MAX_EVENT_ID_BYTES} bytes"));
    }
    Ok(Event {
        v: RECORD_VERSION,
        user,
        item,
        kind,
        ts_ms: timestamp_ms(row)?,
        value,
        id,
    })
}

/// Imports catalog items; re-importing an id updates it.
pub fn catalog(store: &Store, path: &Path) -> anyhow::Result<ImportReport> {
    let (rows, mut errors) = rows(path)?;
    let mut items = Vec::new();
    for (line, row) in rows {
        match catalog_item(&row) {
            Ok(item) => items.push(item),
            Err(error) => errors.push(RowError { line, error }),
        }
    }
    let (added, updated) = store.catalog_put(&items)?;
    store.flush_blocking()?;
    errors.sort_by_key(|error| error.line);
    Ok(ImportReport {
        added,
        updated,
        duplicates: 0,
        errors,
    })
}

/// Imports interaction events; they are flushed before this returns.
pub fn events(store: &Store, path: &Path) -> anyhow::Result<ImportReport> {
    let (rows, mut errors) = rows(path)?;
    let mut events = Vec::new();
    for (line, row) in rows {
        match event_from_row(&row) {
            Ok(event) => events.push(event),
            Err(error) => errors.push(RowError { line, error }),
        }
    }
    let added = store.events_append(&events)?;
    store.flush_blocking()?;
    errors.sort_by_key(|error| error.line);
    Ok(ImportReport {
        added,
        updated: 0,
        duplicates: events.len() - added,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_rows_are_checked_and_reimport_updates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let file = dir.path().join("catalog.csv");
        std::fs::write(
            &file,
            "id,title,description,category,tags,price,currency,url,in_stock\n\
             A1,Trail shoe,\"Grippy, light\",shoes,trail|light,89.95,EUR,https://x.example/a1,true\n\
             ,No id,,,,,,,\n\
             A2,Jacket,,jackets,,cheap,EUR,,true\n\
             A3,Sock,,socks,,5,EUR,,maybe\n\
             A4,Bottle,,bottles,,12.5,EUR,,false\n",
        )
        .unwrap();
        let report = catalog(&store, &file).unwrap();
        assert_eq!((report.added, report.updated), (2, 0));
        let lines: Vec<usize> = report.errors.iter().map(|error| error.line).collect();
        assert_eq!(lines, [3, 4, 5]);
        let item = store.catalog_item("A1").unwrap().unwrap();
        assert_eq!(item.description, "Grippy, light");
        assert_eq!(item.tags, ["trail", "light"]);
        assert_eq!(item.price, Some(89.95));
        assert!(!store.catalog_item("A4").unwrap().unwrap().in_stock);

        let jsonl = dir.path().join("update.jsonl");
        std::fs::write(
            &jsonl,
            "{\"id\":\"A1\",\"title\":\"Trail shoe v2\",\"tags\":[\"trail\"],\"price\":79,\"in_stock\":true,\"title_zh\":\"越野跑鞋\",\"tags_zh\":\"越野|轻量\"}\nnot json\n",
        )
        .unwrap();
        let report = catalog(&store, &jsonl).unwrap();
        assert_eq!((report.added, report.updated), (0, 1));
        assert_eq!(report.errors[0].line, 2);
        assert_eq!(store.catalog_items().unwrap().len(), 2, "no duplicates");
        let item = store.catalog_item("A1").unwrap().unwrap();
        assert_eq!(item.title, "Trail shoe v2");
        assert_eq!(item.title_in(crate::prompts::Locale::Zh), "越野跑鞋");
        assert_eq!(item.tags_zh, ["越野", "轻量"]);
        assert_eq!(
            item.description_in(crate::prompts::Locale::Zh),
            "",
            "no Chinese description: the main one, empty here"
        );
    }

    #[test]
    fn a_re_imported_file_with_event_ids_adds_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let file = dir.path().join("events.csv");
        std::fs::write(
            &file,
            "id,user,item,kind,timestamp\nord-1,u1,A1,purchase,1700000000\nord-2,u1,A2,view,1700000001\n,u1,A3,view,1700000002\n",
        )
        .unwrap();
        let first = events(&store, &file).unwrap();
        assert_eq!((first.added, first.duplicates), (3, 0));
        let again = events(&store, &file).unwrap();
        assert_eq!(
            (again.added, again.duplicates),
            (1, 2),
            "only the row without an id"
        );
        assert_eq!(store.user_events("u1").unwrap().len(), 4);
    }

    #[test]
    fn events_accept_unix_and_rfc3339_times_and_reject_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let file = dir.path().join("events.csv");
        std::fs::write(
            &file,
            "user,item,kind,timestamp,value\n\
             u1,A1,view,1700000000,\n\
             u1,A2,purchase,2024-05-01T10:00:00Z,\n\
             u2,A1,rating,1700000000000,4.5\n\
             u2,A1,teleport,1700000000,\n\
             u3,A1,rating,1700000000,\n",
        )
        .unwrap();
        let report = events(&store, &file).unwrap();
        assert_eq!(report.added, 3);
        let lines: Vec<usize> = report.errors.iter().map(|error| error.line).collect();
        assert_eq!(lines, [5, 6]);
        let u1 = store.user_events("u1").unwrap();
        assert_eq!(u1.len(), 2);
        assert_eq!(u1[0].ts_ms, 1_700_000_000_000);
        assert_eq!(u1[1].kind, EventKind::Purchase);
        assert_eq!(store.user_events("u2").unwrap()[0].ts_ms, 1_700_000_000_000);
        assert_eq!(store.all_events().unwrap().len(), 3);
    }
}
