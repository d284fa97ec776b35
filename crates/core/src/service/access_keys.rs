//! Tern-issued access keys: key pairs that unmodified SMS clients (which sign with SigV4 for
//! service `sms`) use against a deployment that verifies signatures itself — the `api`
//! Lambda's `sms` route. Administrators issue, rotate and revoke them (`tern keys`); each key
//! authenticates an administrator or a connector.
//!
//! A key is an `ACCESSKEY` item holding its secret (the store encrypts at rest: DynamoDB's
//! server-side encryption with KMS in the stack). Revoking keeps the record, marked, so that
//! the key stays unusable and listed; rotating issues a new key with the same role and
//! description and revokes the old one in one transaction.

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{put, Service};
use crate::error::{DomainError, Result};
use crate::store::{Expect, Key, StoreError};

pub const ACCESS_KEY: &str = "ACCESSKEY";

fn key(id: &str) -> Key {
    Key::new(ACCESS_KEY, id)
}

/// Whom a key authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    Admin,
    Connector,
}

impl KeyRole {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(KeyRole::Admin),
            "connector" => Ok(KeyRole::Connector),
            other => Err(DomainError::InvalidParameter(format!(
                "role {other:?} is not admin or connector"
            ))),
        }
    }
}

/// A stored key. `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub role: KeyRole,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .field("role", &self.role)
            .field("description", &self.description)
            .field("created_at", &self.created_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// A new key pair in AWS's shapes: a 20-character id starting `TERN`, a 40-character secret,
/// from the operating system's CSPRNG (through `rand`'s thread generator).
pub fn generate_pair() -> (String, String) {
    const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET_ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    let mut pick = |alphabet: &[u8], n: usize| -> String {
        (0..n)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
            .collect()
    };
    (
        format!("TERN{}", pick(ID_ALPHABET, 16)),
        pick(SECRET_ALPHABET, 40),
    )
}

/// A concurrent change of the same key won: the caller may retry.
fn lost_race(e: StoreError, id: &str) -> DomainError {
    match e {
        StoreError::ConditionFailed { .. } => DomainError::Contention(format!("access key {id}")),
        other => other.into(),
    }
}

impl Service {
    /// Issues a key for `role`; the answer is the only place its secret is shown.
    pub async fn issue_access_key(&self, role: KeyRole, description: &str) -> Result<AccessKey> {
        let (access_key_id, secret_access_key) = generate_pair();
        let new = AccessKey {
            access_key_id,
            secret_access_key,
            role,
            description: description.trim().to_owned(),
            created_at: self.now(),
            revoked_at: None,
        };
        self.store
            .transact(vec![put(key(&new.access_key_id), &new, Expect::Absent)?])
            .await?;
        tracing::info!(access_key_id = %new.access_key_id, ?role, "access key issued");
        Ok(new)
    }

    /// Revokes a key at once: requests signed with it are refused from now on. Revoking a
    /// revoked key changes nothing.
    pub async fn revoke_access_key(&self, id: &str) -> Result<AccessKey> {
        let Some(stored) = self.read::<AccessKey>(&key(id)).await? else {
            return Err(DomainError::InvalidParameter(format!(
                "access key {id} does not exist"
            )));
        };
        let mut k = stored.value.clone();
        if k.revoked_at.is_some() {
            return Ok(k);
        }
        k.revoked_at = Some(self.now());
        self.store
            .transact(vec![put(key(id), &k, stored.expect())?])
            .await
            .map_err(|e| lost_race(e, id))?;
        tracing::info!(access_key_id = %id, "access key revoked");
        Ok(k)
    }

    /// Issues a new key with the role and description of `id` and revokes `id`, in one
    /// transaction: there is no moment with both or neither usable by accident.
    pub async fn rotate_access_key(&self, id: &str) -> Result<AccessKey> {
        let Some(stored) = self.read::<AccessKey>(&key(id)).await? else {
            return Err(DomainError::InvalidParameter(format!(
                "access key {id} does not exist"
            )));
        };
        if stored.value.revoked_at.is_some() {
            return Err(DomainError::OperationNotPermitted(format!(
                "access key {id} is revoked; issue a new one instead"
            )));
        }
        let now = self.now();
        let mut old = stored.value.clone();
        old.revoked_at = Some(now);
        let (access_key_id, secret_access_key) = generate_pair();
        let new = AccessKey {
            access_key_id,
            secret_access_key,
            created_at: now,
            revoked_at: None,
            ..stored.value.clone()
        };
        self.store
            .transact(vec![
                put(key(id), &old, stored.expect())?,
                put(key(&new.access_key_id), &new, Expect::Absent)?,
            ])
            .await
            .map_err(|e| lost_race(e, id))?;
        tracing::info!(old = %id, new = %new.access_key_id, "access key rotated");
        Ok(new)
    }

    /// Every key, revoked ones included, without their secrets.
    pub async fn list_access_keys(&self) -> Result<Vec<AccessKey>> {
        Ok(self
            .list_all::<AccessKey>(ACCESS_KEY)
            .await?
            .into_iter()
            .map(|v| AccessKey {
                secret_access_key: String::new(),
                ..v.value
            })
            .collect())
    }

    /// The secret and role of a key that may sign requests: `None` for an unknown or revoked
    /// key.
    pub async fn usable_access_key(&self, id: &str) -> Result<Option<(String, KeyRole)>> {
        Ok(self
            .read::<AccessKey>(&key(id))
            .await?
            .map(|v| v.value)
            .filter(|k| k.revoked_at.is_none())
            .map(|k| (k.secret_access_key, k.role)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{MemoryStore, RandomIds, SystemClock};

    fn service() -> Service {
        Service::new(
            Arc::new(MemoryStore::new()),
            Arc::new(SystemClock),
            Arc::new(RandomIds),
            crate::Config::default(),
        )
    }

    #[tokio::test]
    async fn issued_keys_sign_until_revoked_and_rotation_swaps_them_at_once() {
        let svc = service();
        let admin = svc
            .issue_access_key(KeyRole::Admin, " ops team ")
            .await
            .unwrap();
        assert_eq!(admin.access_key_id.len(), 20);
        assert!(admin.access_key_id.starts_with("TERN"));
        assert_eq!(admin.secret_access_key.len(), 40);
        assert_eq!(admin.description, "ops team");
        assert!(!format!("{admin:?}").contains(&admin.secret_access_key));
        assert_eq!(
            svc.usable_access_key(&admin.access_key_id).await.unwrap(),
            Some((admin.secret_access_key.clone(), KeyRole::Admin))
        );

        let rotated = svc.rotate_access_key(&admin.access_key_id).await.unwrap();
        assert_ne!(rotated.access_key_id, admin.access_key_id);
        assert_eq!(
            (rotated.role, rotated.description.as_str()),
            (KeyRole::Admin, "ops team")
        );
        assert_eq!(
            svc.usable_access_key(&admin.access_key_id).await.unwrap(),
            None
        );
        assert!(svc
            .usable_access_key(&rotated.access_key_id)
            .await
            .unwrap()
            .is_some());
        assert!(matches!(
            svc.rotate_access_key(&admin.access_key_id).await,
            Err(DomainError::OperationNotPermitted(_))
        ));

        let revoked = svc.revoke_access_key(&rotated.access_key_id).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(
            svc.usable_access_key(&rotated.access_key_id).await.unwrap(),
            None
        );
        // Idempotent.
        assert_eq!(
            svc.revoke_access_key(&rotated.access_key_id)
                .await
                .unwrap()
                .revoked_at,
            revoked.revoked_at
        );
        assert!(matches!(
            svc.revoke_access_key("TERNNOSUCHKEY0000000").await,
            Err(DomainError::InvalidParameter(m)) if m.contains("does not exist")
        ));
        assert_eq!(
            svc.usable_access_key("TERNNOSUCHKEY0000000").await.unwrap(),
            None
        );

        let listed = svc.list_access_keys().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|k| k.secret_access_key.is_empty()));
        assert!(listed.iter().all(|k| k.revoked_at.is_some()));
    }
}
