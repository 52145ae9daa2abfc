//! Instance metadata service client, IMDSv2 only (session token, then GETs).

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tracing::debug;

use crate::config::AwsConfig;
use crate::config::DEFAULT_IMDS_ENDPOINT;
use crate::error::Error;
use crate::sigv4::Credentials;

const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_TTL_SECONDS: &str = "21600";

/// One network interface as the metadata service lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsInterface {
    /// MAC address.
    pub mac: String,
    /// `device-number` (0 = primary).
    pub device_number: Option<u32>,
    /// `interface-id` (`eni-…`).
    pub interface_id: Option<String>,
    /// `local-ipv4s`, the first being the primary.
    pub local_ipv4s: Vec<Ipv4Addr>,
}

/// A blocking IMDSv2 client. Caches its session token.
#[derive(Debug)]
pub struct Imds {
    agent: ureq::Agent,
    endpoint: String,
    disabled: bool,
    token: Mutex<Option<String>>,
}

impl Imds {
    /// A client for `config.imds_endpoint` (or the link-local default).
    #[must_use]
    pub fn new(config: &AwsConfig) -> Imds {
        let endpoint = config
            .imds_endpoint
            .as_deref()
            .unwrap_or(DEFAULT_IMDS_ENDPOINT)
            .trim_end_matches('/')
            .to_owned();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .timeout_connect(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            // The link-local metadata service is never reached through a proxy.
            .proxy(None)
            .build()
            .into();
        Imds {
            agent,
            endpoint,
            disabled: config.imds_disabled,
            token: Mutex::new(None),
        }
    }

    /// The metadata endpoint in use.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// GETs a metadata path (e.g. `/latest/meta-data/instance-id`); trims the answer.
    ///
    /// # Errors
    /// [`Error::Imds`] when unreachable, [`Error::ImdsStatus`] on an error status.
    pub fn get(&self, path: &str) -> Result<String, Error> {
        let mut token = self.token()?;
        for attempt in 0..2 {
            let url = format!("{}{path}", self.endpoint);
            let response = self
                .agent
                .get(&url)
                .header("X-aws-ec2-metadata-token", &token)
                .call()
                .map_err(|e| self.unreachable(path, e))?;
            let status = response.status().as_u16();
            // 401: the token expired; fetch a new one once.
            if status == 401 && attempt == 0 {
                self.clear_token();
                token = self.token()?;
                continue;
            }
            if status != 200 {
                return Err(Error::ImdsStatus {
                    path: path.to_owned(),
                    status,
                });
            }
            let body = response
                .into_body()
                .read_to_string()
                .map_err(|e| self.unreachable(path, e))?;
            return Ok(body.trim().to_owned());
        }
        Err(Error::ImdsStatus {
            path: path.to_owned(),
            status: 401,
        })
    }

    /// This instance's id (`i-…`).
    ///
    /// # Errors
    /// As [`Imds::get`].
    pub fn instance_id(&self) -> Result<String, Error> {
        self.get("/latest/meta-data/instance-id")
    }

    /// This instance's region.
    ///
    /// # Errors
    /// As [`Imds::get`].
    pub fn region(&self) -> Result<String, Error> {
        self.get("/latest/meta-data/placement/region")
    }

    /// This instance's network interfaces, by MAC, sorted by device number.
    ///
    /// # Errors
    /// As [`Imds::get`].
    pub fn interfaces(&self) -> Result<Vec<ImdsInterface>, Error> {
        let base = "/latest/meta-data/network/interfaces/macs/";
        let listing = self.get(base)?;
        let mut out = Vec::new();
        for line in listing.lines() {
            let mac = line.trim().trim_end_matches('/');
            if mac.is_empty() {
                continue;
            }
            let path = |leaf: &str| format!("{base}{mac}/{leaf}");
            let device_number = self
                .optional(&path("device-number"))?
                .and_then(|v| v.parse().ok());
            let interface_id = self.optional(&path("interface-id"))?;
            let local_ipv4s = self
                .optional(&path("local-ipv4s"))?
                .map(|v| v.lines().filter_map(|l| l.trim().parse().ok()).collect())
                .unwrap_or_default();
            out.push(ImdsInterface {
                mac: mac.to_owned(),
                device_number,
                interface_id,
                local_ipv4s,
            });
        }
        out.sort_by_key(|i| i.device_number.unwrap_or(u32::MAX));
        Ok(out)
    }

    /// The interface at device number 0, as the metadata service sees it.
    ///
    /// # Errors
    /// As [`Imds::get`]; [`Error::ImdsStatus`] with 404 when no interface has device number 0.
    pub fn primary_interface(&self) -> Result<ImdsInterface, Error> {
        self.interfaces()?
            .into_iter()
            .find(|i| i.device_number == Some(0))
            .ok_or_else(|| Error::ImdsStatus {
                path: "/latest/meta-data/network/interfaces/macs/<mac>/device-number".to_owned(),
                status: 404,
            })
    }

    /// The instance role's temporary credentials.
    ///
    /// # Errors
    /// [`Error::NoCredentials`] when no role is attached; [`Error::RoleCredentials`] when the
    /// document is not what IMDS documents; otherwise as [`Imds::get`].
    pub fn role_credentials(&self) -> Result<Credentials, Error> {
        let base = "/latest/meta-data/iam/security-credentials/";
        let Some(listing) = self.optional(base)? else {
            return Err(Error::NoCredentials);
        };
        let Some(role) = listing.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return Err(Error::NoCredentials);
        };
        let body = self.get(&format!("{base}{role}"))?;
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Document {
            code: Option<String>,
            access_key_id: Option<String>,
            secret_access_key: Option<String>,
            token: Option<String>,
        }
        let doc: Document = serde_json::from_str(&body).map_err(|e| Error::RoleCredentials {
            role: role.to_owned(),
            what: format!("not JSON: {e}"),
        })?;
        if let Some(code) = doc.code.filter(|c| c != "Success") {
            return Err(Error::RoleCredentials {
                role: role.to_owned(),
                what: format!("Code {code}"),
            });
        }
        match (doc.access_key_id, doc.secret_access_key) {
            (Some(access_key_id), Some(secret_access_key)) => {
                debug!(%role, "using instance role credentials");
                Ok(Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token: doc.token,
                })
            }
            _ => Err(Error::RoleCredentials {
                role: role.to_owned(),
                what: "no AccessKeyId or SecretAccessKey".to_owned(),
            }),
        }
    }

    /// GET that maps 404 to `None`.
    fn optional(&self, path: &str) -> Result<Option<String>, Error> {
        match self.get(path) {
            Ok(v) => Ok(Some(v)),
            Err(Error::ImdsStatus { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn token(&self) -> Result<String, Error> {
        if self.disabled {
            return Err(Error::ImdsDisabled);
        }
        if let Ok(guard) = self.token.lock()
            && let Some(t) = guard.as_ref()
        {
            return Ok(t.clone());
        }
        let url = format!("{}{TOKEN_PATH}", self.endpoint);
        let response = self
            .agent
            .put(&url)
            .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)
            .send_empty()
            .map_err(|e| self.unreachable(TOKEN_PATH, e))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(Error::ImdsStatus {
                path: TOKEN_PATH.to_owned(),
                status,
            });
        }
        let token = response
            .into_body()
            .read_to_string()
            .map_err(|e| self.unreachable(TOKEN_PATH, e))?
            .trim()
            .to_owned();
        if let Ok(mut guard) = self.token.lock() {
            *guard = Some(token.clone());
        }
        Ok(token)
    }

    fn clear_token(&self) {
        if let Ok(mut guard) = self.token.lock() {
            *guard = None;
        }
    }

    fn unreachable(&self, path: &str, e: ureq::Error) -> Error {
        Error::Imds {
            path: path.to_owned(),
            endpoint: self.endpoint.clone(),
            source: Box::new(e),
        }
    }
}
