//! The shop's catalog items.

use super::*;

/// One item of the shop's catalog.
#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogItem {
    /// Record schema version.
    pub v: u32,
    /// The shop's item id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Category.
    pub category: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Price, if the item has one.
    pub price: Option<f64>,
    /// Currency of the price, e.g. EUR.
    pub currency: String,
    /// Link to the item.
    pub url: String,
    /// Whether it can be bought now.
    pub in_stock: bool,
    /// Chinese title; empty when the shop gives none.
    #[serde(default)]
    pub title_zh: String,
    /// Chinese description.
    #[serde(default)]
    pub description_zh: String,
    /// Chinese tags.
    #[serde(default)]
    pub tags_zh: Vec<String>,
}

impl CatalogItem {
    /// The title in `locale`, falling back to the shop's main title.
    pub fn title_in(&self, locale: crate::prompts::Locale) -> &str {
        match locale {
            crate::prompts::Locale::Zh if !self.title_zh.is_empty() => &self.title_zh,
            _ => &self.title,
        }
    }

    /// The description in `locale`, falling back to the main one.
    pub fn description_in(&self, locale: crate::prompts::Locale) -> &str {
        match locale {
            crate::prompts::Locale::Zh if !self.description_zh.is_empty() => &self.description_zh,
            _ => &self.description,
        }
    }
}

impl Store {
    /// Adds or replaces catalog items by id; returns (added, updated).
    pub fn catalog_put(&self, items: &[CatalogItem]) -> Result<(usize, usize), StoreError> {
        let (mut added, mut updated) = (0, 0);
        for item in items {
            let previous = self
                .catalog
                .insert(item.id.as_bytes(), Self::encode(item))
                .map_err(|err| self.err(err))?;
            if previous.is_some() {
                updated += 1;
            } else {
                added += 1;
            }
        }
        Ok((added, updated))
    }

    /// Every catalog item, ordered by id.
    pub fn catalog_items(&self) -> Result<Vec<CatalogItem>, StoreError> {
        self.records(&self.catalog, TREE_CATALOG)
    }

    /// One catalog item.
    pub fn catalog_item(&self, id: &str) -> Result<Option<CatalogItem>, StoreError> {
        self.record(&self.catalog, TREE_CATALOG, id.as_bytes())
    }
}
