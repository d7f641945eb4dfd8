//! Customers and their platform identities: one customer per person, found or created by the identity a platform gives them.

use super::*;

/// A customer, one person across platforms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    /// Record schema version.
    pub v: u32,
    /// Store-wide id.
    pub id: u64,
    /// When the profile was created (Unix milliseconds).
    pub created_ms: u64,
    /// Set by `/start`: the customer saw the privacy note.
    pub registered: bool,
    /// Language of the customer's latest message.
    pub locale: Option<Locale>,
    /// A display name from the platform, if any.
    pub display_name: Option<String>,
    /// Data keys of customers joined into this one by `/link`: their
    /// messages stay sealed under them, and erasure destroys them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherited_keys: Vec<u64>,
    /// Told once not to send card or bank details.
    #[serde(default)]
    pub warned_payment_data: bool,
    /// The data key new records are sealed with, after a rotation (else
    /// the key numbered like the customer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<u64>,
}

impl Customer {
    /// The key this customer's new records are sealed with.
    pub fn sealing_key(&self) -> KeyId {
        KeyId::Customer(self.key.unwrap_or(self.id))
    }

    /// Every data key this customer's records may be sealed with.
    pub fn data_keys(&self) -> Vec<KeyId> {
        let mut keys: Vec<KeyId> = std::iter::once(self.id)
            .chain(self.key)
            .chain(self.inherited_keys.iter().copied())
            .map(KeyId::Customer)
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

impl Store {
    pub(super) fn identity_key(platform: &str, user_id: &str) -> Vec<u8> {
        let mut key = platform.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(user_id.as_bytes());
        key
    }

    /// The customer behind a platform identity, if known.
    pub fn find_customer(
        &self,
        platform: &str,
        user_id: &str,
    ) -> Result<Option<Customer>, StoreError> {
        let key = Self::identity_key(platform, user_id);
        let Some(id) = self.identities.get(key).map_err(|err| self.err(err))? else {
            return Ok(None);
        };
        let id = decode_u64(&id).ok_or_else(|| StoreError::Corrupt {
            path: self.path.clone(),
            detail: "identity record has the wrong size".into(),
        })?;
        self.customer(id)
    }

    /// A customer by id.
    pub fn customer(&self, id: u64) -> Result<Option<Customer>, StoreError> {
        self.record(&self.customers, TREE_CUSTOMERS, &id.to_be_bytes())
    }

    /// The customer behind a platform identity, created on first contact.
    pub fn customer_for_identity(
        &self,
        platform: &str,
        user_id: &str,
        display_name: Option<&str>,
    ) -> Result<Customer, StoreError> {
        if let Some(customer) = self.find_customer(platform, user_id)? {
            return Ok(customer);
        }
        let customer = Customer {
            v: RECORD_VERSION,
            id: self.next_id()?,
            created_ms: now_ms(),
            registered: false,
            locale: None,
            display_name: display_name.map(str::to_string),
            inherited_keys: Vec::new(),
            warned_payment_data: false,
            key: None,
        };
        let key = Self::identity_key(platform, user_id);
        let customer_bytes = self.seal(customer.sealing_key(), &customer)?;
        let _one = self.one_transaction();
        let result = (&self.customers, &self.identities).transaction(|(customers, identities)| {
            if let Some(existing) = identities.get(&key)? {
                return Ok(Some(existing));
            }
            customers.insert(&customer.id.to_be_bytes(), customer_bytes.as_slice())?;
            identities.insert(key.as_slice(), &customer.id.to_be_bytes())?;
            Ok(None)
        });
        match result {
            Ok(None) => Ok(customer),
            Ok(Some(_)) => self
                .find_customer(platform, user_id)?
                .ok_or_else(|| StoreError::NotFound(format!("customer for {platform}:{user_id}"))),
            Err(err) => Err(self.transaction_error(err)),
        }
    }

    /// The key records of `customer_id` are sealed with now; the one
    /// numbered like them when they have no profile.
    pub(super) fn sealing_key_of(&self, customer_id: u64) -> Result<KeyId, StoreError> {
        Ok(self
            .customer(customer_id)?
            .map_or(KeyId::Customer(customer_id), |customer| {
                customer.sealing_key()
            }))
    }

    /// Saves a changed customer profile; a customer erased meanwhile stays
    /// erased.
    pub fn update_customer(&self, customer: &Customer) -> Result<(), StoreError> {
        if !self
            .customers
            .contains_key(customer.id.to_be_bytes())
            .map_err(|err| self.err(err))?
        {
            return Ok(());
        }
        let record = self.seal(customer.sealing_key(), customer)?;
        self.customers
            .update_and_fetch(customer.id.to_be_bytes(), |old| old.map(|_| record.clone()))
            .map_err(|err| self.err(err))?;
        Ok(())
    }
}
