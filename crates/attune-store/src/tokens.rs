//! API tokens: only the sha256 of each token is stored; a token is found by its hash, listed
//! by id and revoked by id (a revoked token stays listed, and no longer authenticates).

use crate::{format_time, StoreError, StoredName, UnknownStoredName};
use attune_protocol::api::{Role, TokenView};
use chrono::{DateTime, Utc};
use sqlx::FromRow;

impl TryFrom<StoredName> for Role {
    type Error = UnknownStoredName;
    fn try_from(name: StoredName) -> Result<Self, Self::Error> {
        crate::decode_name("role", name.0)
    }
}

/// A stored API token (its hash only).
#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    #[sqlx(try_from = "StoredName")]
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRow {
    pub fn to_view(&self) -> TokenView {
        TokenView {
            id: self.id,
            name: self.name.clone(),
            role: self.role,
            created_at: format_time(self.created_at),
            revoked_at: self.revoked_at.map(format_time),
        }
    }
}

const TOKEN_COLUMNS: &str = "id, name, role, created_at, revoked_at";

impl crate::Store {
    /// Stores a new token by its hash.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        token_sha256: &[u8],
    ) -> Result<TokenRow, StoreError> {
        Ok(sqlx::query_as(&format!(
            "INSERT INTO api_tokens (name, role, token_sha256) VALUES ($1, $2, $3)
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(name)
        .bind(role.as_str())
        .bind(token_sha256)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Stores the first token only if there is none yet (several servers may start at once on
    /// one database: exactly one of them creates it). Returns it when this call created it.
    pub async fn create_first_token(
        &self,
        name: &str,
        role: Role,
        token_sha256: &[u8],
    ) -> Result<Option<TokenRow>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("LOCK TABLE api_tokens IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *transaction)
            .await?;
        let created: Option<TokenRow> = sqlx::query_as(&format!(
            "INSERT INTO api_tokens (name, role, token_sha256)
             SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM api_tokens)
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(name)
        .bind(role.as_str())
        .bind(token_sha256)
        .fetch_optional(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(created)
    }

    /// The live (not revoked) token with this hash.
    pub async fn token_by_hash(&self, token_sha256: &[u8]) -> Result<Option<TokenRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens
             WHERE token_sha256 = $1 AND revoked_at IS NULL"
        ))
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every token, revoked ones included, by id.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes a token; the row as it is now, or `NotFound`. Revoking twice keeps the first
    /// revocation time.
    pub async fn revoke_token(&self, id: i64) -> Result<TokenRow, StoreError> {
        sqlx::query_as(&format!(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("token {id}")))
    }
}
