//! Errors of the agent's operations, typed at the boundary (the API maps each to a status).
use fault_api::{ApiError, FieldError};

/// What creating, recovering or listing faults can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request body is not JSON / not the expected shape (400).
    #[error("malformed request: {0}")]
    Malformed(FieldError),
    /// A field is invalid (422).
    #[error("invalid request: {0}")]
    Invalid(FieldError),
    /// The fault needs something this kernel or agent lacks (422).
    #[error("unsupported: {0}")]
    Unsupported(FieldError),
    /// No fault with this id (404).
    #[error("no fault {0}")]
    NotFound(String),
    /// The fault conflicts with others (409), e.g. too many overlapping faults.
    #[error("{0}")]
    Conflict(String),
    /// A limit would be exceeded (409, code `capacity`): a map's room, the agent's
    /// `--max-faults` or `--max-rules-per-fault`. Nothing was written.
    #[error("{0}")]
    Capacity(#[from] crate::capacity::CapacityError),
    /// A pre-flight check failed (412, code `preflight_failed`): the message names the check
    /// and what it measured. Nothing was applied.
    #[error("{0}")]
    Precondition(String),
    /// This endpoint does not accept writes here (405): a node agent follows the cluster.
    #[error("{0}")]
    ReadOnly(String),
    /// This agent has no such thing to show (501): the cluster API has no datapath, its
    /// node agents do.
    #[error("{0}")]
    NotHere(String),
    /// The cluster API refused or could not be reached (502).
    #[error("Kubernetes API: {0}")]
    Upstream(String),
    /// The kernel or the state dir refused a write; nothing was changed (500).
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl AgentError {
    /// HTTP status of the error.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_) => 400,
            Self::Invalid(_) | Self::Unsupported(_) => 422,
            Self::NotFound(_) => 404,
            Self::Conflict(_) | Self::Capacity(_) => 409,
            Self::ReadOnly(_) => 405,
            Self::Precondition(_) => 412,
            Self::NotHere(_) => 501,
            Self::Upstream(_) => 502,
            Self::Internal(_) => 500,
        }
    }

    /// The error body.
    pub fn to_api(&self) -> ApiError {
        match self {
            Self::Malformed(f) => {
                ApiError::new("malformed_body", f.to_string()).with_field(f.field.clone())
            }
            Self::Invalid(f) => ApiError::from(f.clone()),
            Self::Unsupported(f) => {
                ApiError::new("unsupported", f.to_string()).with_field(f.field.clone())
            }
            Self::NotFound(id) => ApiError::new("not_found", format!("no fault with id {id}")),
            Self::Conflict(m) => ApiError::new("conflict", m.clone()),
            Self::Capacity(e) => ApiError::new("capacity", e.to_string()),
            Self::ReadOnly(m) => ApiError::new("read_only", m.clone()),
            Self::Precondition(m) => ApiError::new("preflight_failed", m.clone()),
            Self::NotHere(m) => ApiError::new("not_implemented", m.clone()),
            Self::Upstream(m) => ApiError::new("upstream", m.clone()),
            Self::Internal(e) => ApiError::new("internal", format!("{e:#}")),
        }
    }
}
