//! A blocking client of the agent's native API (`/v1`), used by `faultctl` and the tests.
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::{
    ApiError, ErrorBody, Fault, FaultList, FaultSpec,
    fault::{CleanupRequest, CleanupResponse},
    kill_switch::{KillSwitch, KillSwitchRequest},
};

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, ClientError> {
    serde_json::to_value(v).map_err(|e| ClientError::Transport(e.to_string()))
}

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent answered with an error body.
    #[error("{status}: {error}")]
    Api { status: u16, error: ApiError },
    /// The agent could not be reached, or answered something that is not our API.
    #[error("{0}")]
    Transport(String),
}

/// Client of one agent. `base` is like `http://127.0.0.1:8080` or `https://faultline:8080`.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// TLS settings (ring provider) that trust `roots`, or the system's roots when `None` (read
/// once per process; `SSL_CERT_FILE`/`SSL_CERT_DIR` honoured). Shared with the agent's own
/// HTTP probes.
pub fn tls_config(roots: Option<Vec<ureq::tls::Certificate<'static>>>) -> ureq::tls::TlsConfig {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    static SYSTEM: std::sync::OnceLock<Vec<Certificate<'static>>> = std::sync::OnceLock::new();
    let roots = roots.unwrap_or_else(|| {
        SYSTEM
            .get_or_init(|| {
                rustls_native_certs::load_native_certs()
                    .certs
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                    .collect()
            })
            .clone()
    });
    TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&roots))
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .build()
}

fn agent(roots: Option<Vec<ureq::tls::Certificate<'static>>>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .tls_config(tls_config(roots))
        .build()
        .into()
}

impl Client {
    /// A client of the agent at `base`; an `https://` agent's certificate must chain to one
    /// of the system's roots (see [`Client::with_ca_pem`] for a private CA).
    pub fn new(base: &str) -> Self {
        let https = base.starts_with("https://");
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: None,
            // The system's roots are read only when they can be needed.
            agent: agent((!https).then(Vec::new)),
        }
    }

    /// Trusts only the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks, e.g.
    /// the `ca.crt` of the agent's certificate) for `https://` agents.
    ///
    /// Errors: `pem` holds no certificate or a malformed one ([`ClientError::Transport`]).
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let certs = CertificateDer::pem_slice_iter(pem)
            .map(|c| c.map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Transport(format!("CA certificates: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Transport(
                "CA certificates: no PEM CERTIFICATE block".into(),
            ));
        }
        self.agent = agent(Some(certs));
        Ok(self)
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn decode<T: DeserializeOwned>(
        &self,
        res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut res = res.map_err(|e| ClientError::Transport(format!("{}: {e}", self.base)))?;
        let status = res.status().as_u16();
        let body = res
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::Transport(format!("reading the answer: {e}")))?;
        if (200..300).contains(&status) {
            serde_json::from_str(&body)
                .map_err(|e| ClientError::Transport(format!("unexpected answer ({e}): {body}")))
        } else {
            match serde_json::from_str::<ErrorBody>(&body) {
                Ok(b) => Err(ClientError::Api {
                    status,
                    error: b.error,
                }),
                Err(_) => Err(ClientError::Api {
                    status,
                    error: ApiError::new("http", format!("HTTP {status}: {body}")),
                }),
            }
        }
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.decode(req.call())
    }

    pub(crate) fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "DELETE" => self.agent.delete(url).force_send_body(),
            _ => self.agent.post(url),
        };
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.send_empty(),
        };
        self.decode(res)
    }

    /// `GET /v1/kill-switch`.
    pub fn kill_switch(&self) -> Result<KillSwitch, ClientError> {
        self.get("/v1/kill-switch")
    }

    /// `POST /v1/kill-switch`: every datapath passes all traffic until [`Client::lift_kill_switch`].
    pub fn engage_kill_switch(&self, req: &KillSwitchRequest) -> Result<KillSwitch, ClientError> {
        self.send("POST", "/v1/kill-switch", Some(&to_json(req)?))
    }

    /// `DELETE /v1/kill-switch`: faults act again (those not expired meanwhile).
    pub fn lift_kill_switch(&self, req: &KillSwitchRequest) -> Result<KillSwitch, ClientError> {
        self.send("DELETE", "/v1/kill-switch", Some(&to_json(req)?))
    }

    /// `POST /v1/faults`.
    pub fn create(&self, spec: &FaultSpec) -> Result<Fault, ClientError> {
        let body = serde_json::to_value(spec).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.send("POST", "/v1/faults", Some(&body))
    }

    /// `POST /v1/faults?dryRun=true`: what creating `spec` would do, and the guards it would
    /// trip; nothing is applied.
    pub fn plan(&self, spec: &FaultSpec) -> Result<crate::FaultPlan, ClientError> {
        let body = serde_json::to_value(spec).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.send("POST", "/v1/faults?dryRun=true", Some(&body))
    }

    /// `POST /v1/faults` with a raw JSON body (for tests of bad input).
    pub fn create_raw(&self, body: &serde_json::Value) -> Result<Fault, ClientError> {
        self.send("POST", "/v1/faults", Some(body))
    }

    /// `POST /v1/faults?verify=true`: create, then probe; the report is the fault's
    /// `verification` (a verify that could not run is one of its `warnings`).
    pub fn create_verified(&self, spec: &FaultSpec) -> Result<Fault, ClientError> {
        let body = serde_json::to_value(spec).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.send("POST", "/v1/faults?verify=true", Some(&body))
    }

    /// `POST /v1/faults/{id}/verify`: probe an active fault (about a second).
    pub fn verify(&self, id: &str) -> Result<crate::Verification, ClientError> {
        self.send("POST", &format!("/v1/faults/{id}/verify"), None)
    }

    /// `GET /v1/faults`, optionally for one namespace.
    pub fn list(&self, namespace: Option<&str>) -> Result<FaultList, ClientError> {
        match namespace {
            Some(ns) => self.get(&format!("/v1/faults?namespace={ns}")),
            None => self.get("/v1/faults"),
        }
    }

    /// `GET /v1/faults/{id}`.
    pub fn get_fault(&self, id: &str) -> Result<Fault, ClientError> {
        self.get(&format!("/v1/faults/{id}"))
    }

    /// `DELETE /v1/faults/{id}`: recover at once. Returns the fault in its final state.
    pub fn recover(&self, id: &str) -> Result<Fault, ClientError> {
        self.send("DELETE", &format!("/v1/faults/{id}"), None)
    }

    /// `POST /v1/faults/cleanup`: recover every fault of a namespace (or all).
    pub fn cleanup(&self, req: &CleanupRequest) -> Result<CleanupResponse, ClientError> {
        let body = serde_json::to_value(req).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.send("POST", "/v1/faults/cleanup", Some(&body))
    }

    /// Whether `GET /readyz` answers 200.
    pub fn ready(&self) -> bool {
        self.agent
            .get(format!("{}/readyz", self.base))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200)
    }

    /// `GET` any JSON document of the agent (`/v1/pods`, `/v1/capabilities`, ...).
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.get(path)
    }
}
