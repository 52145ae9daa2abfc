//! A small blocking EC2 Query API client: SigV4-signed form POSTs, XML answers.

use std::net::Ipv4Addr;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use tracing::debug;
use tracing::warn;

use crate::config::AwsConfig;
use crate::error::Error;
use crate::imds::Imds;
use crate::model;
use crate::model::Instance;
use crate::model::NetworkInterface;
use crate::model::SecurityGroup;
use crate::model::Subnet;
use crate::sigv4;
use crate::sigv4::Credentials;

/// The EC2 API version every request names.
pub const API_VERSION: &str = "2016-11-15";

/// Immediate retries after the first attempt on a retriable failure (as Calico's felix/aws).
pub const IMMEDIATE_RETRIES: u32 = 3;

/// EC2 accepts at most this many ids or filter values in one request.
pub const MAX_LIST_VALUES: usize = 200;

/// A bound on `nextToken` pages per request, against a server that never stops paging.
const MAX_PAGES: usize = 100;

const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// A blocking EC2 client for one region and endpoint.
#[derive(Debug)]
pub struct Ec2Client {
    agent: ureq::Agent,
    endpoint: String,
    host: String,
    region: String,
    credentials: Credentials,
}

impl Ec2Client {
    /// A client for `endpoint` (`http://` or `https://`, no path) in `region`.
    #[must_use]
    pub fn new(endpoint: &str, region: &str, credentials: Credentials) -> Ec2Client {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let host = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .timeout_connect(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        Ec2Client {
            agent,
            endpoint,
            host,
            region: region.to_owned(),
            credentials,
        }
    }

    /// Resolves region, credentials and endpoint from `config`, asking `imds` for what is missing.
    ///
    /// # Errors
    /// [`Error::NoRegion`] or [`Error::NoCredentials`] when neither source has them.
    pub fn from_config(config: &AwsConfig, imds: Option<&Imds>) -> Result<Ec2Client, Error> {
        let region = match (&config.region, imds) {
            (Some(r), _) => r.clone(),
            (None, Some(imds)) => imds.region().map_err(|e| {
                warn!(error = %e, "no region from instance metadata");
                Error::NoRegion
            })?,
            (None, None) => return Err(Error::NoRegion),
        };
        let credentials = match (&config.credentials, imds) {
            (Some(c), _) => c.clone(),
            (None, Some(imds)) => imds.role_credentials()?,
            (None, None) => return Err(Error::NoCredentials),
        };
        let endpoint = config
            .ec2_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
        Ok(Ec2Client::new(&endpoint, &region, credentials))
    }

    /// The endpoint in use.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Calls `action` with `params` (without `Action`/`Version`); returns the XML answer.
    /// Retries [`IMMEDIATE_RETRIES`] times on throttling, 5xx and transport failures.
    ///
    /// # Errors
    /// [`Error::Api`] naming the action and AWS code; [`Error::HttpStatus`]; [`Error::Transport`].
    pub fn call(&self, action: &str, params: &[(String, String)]) -> Result<String, Error> {
        let mut attempt = 0;
        loop {
            match self.call_once(action, params) {
                Err(e) if e.is_retriable() && attempt < IMMEDIATE_RETRIES => {
                    attempt += 1;
                    warn!(action, attempt, error = %e, "EC2 call failed, retrying");
                }
                other => return other,
            }
        }
    }

    fn call_once(&self, action: &str, params: &[(String, String)]) -> Result<String, Error> {
        let mut all = Vec::with_capacity(params.len() + 2);
        all.push(("Action".to_owned(), action.to_owned()));
        all.push(("Version".to_owned(), API_VERSION.to_owned()));
        all.extend(params.iter().cloned());
        let body = sigv4::canonical_query(&all);
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let headers = [("content-type".to_owned(), CONTENT_TYPE.to_owned())];
        let signed = sigv4::sign(
            &sigv4::SigningRequest {
                method: "POST",
                host: &self.host,
                path: "/",
                query: &[],
                headers: &headers,
                payload: body.as_bytes(),
            },
            &sigv4::Scope {
                region: &self.region,
                service: "ec2",
                unix_time,
            },
            &self.credentials,
        );
        let url = format!("{}/", self.endpoint);
        let mut request = self.agent.post(&url).header("content-type", CONTENT_TYPE);
        for (k, v) in &signed.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        debug!(action, endpoint = %self.endpoint, "EC2 call");
        let transport = |source: ureq::Error| Error::Transport {
            action: action.to_owned(),
            endpoint: self.endpoint.clone(),
            source: Box::new(source),
        };
        let response = request.send(body.as_bytes()).map_err(transport)?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().map_err(transport)?;
        if (200..300).contains(&status) {
            return Ok(text);
        }
        match model::parse_error_document(&text) {
            Some((code, message)) => Err(Error::Api {
                action: action.to_owned(),
                code,
                message,
                status,
            }),
            None => Err(Error::HttpStatus {
                action: action.to_owned(),
                status,
            }),
        }
    }

    /// DescribeInstances for one instance.
    ///
    /// # Errors
    /// As [`Ec2Client::call`]; [`Error::InstanceNotFound`] when the answer is empty.
    pub fn describe_instance(&self, instance_id: &str) -> Result<Instance, Error> {
        let body = self.call(
            "DescribeInstances",
            &[("InstanceId.1".to_owned(), instance_id.to_owned())],
        )?;
        model::parse_describe_instances(&body)?
            .into_iter()
            .find(|i| i.id == instance_id)
            .ok_or_else(|| Error::InstanceNotFound(instance_id.to_owned()))
    }

    /// DescribeNetworkInterfaces by id.
    ///
    /// # Errors
    /// As [`Ec2Client::call`].
    pub fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<NetworkInterface>, Error> {
        self.describe_chunked(
            "DescribeNetworkInterfaces",
            ids,
            |chunk| numbered("NetworkInterfaceId", chunk),
            model::parse_describe_network_interfaces,
        )
    }

    /// DescribeNetworkInterfaces of the interfaces holding any of `addresses` (filter
    /// `addresses.private-ip-address`).
    ///
    /// # Errors
    /// As [`Ec2Client::call`].
    pub fn network_interfaces_by_address(
        &self,
        addresses: &[Ipv4Addr],
    ) -> Result<Vec<NetworkInterface>, Error> {
        let values: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        self.describe_chunked(
            "DescribeNetworkInterfaces",
            &values,
            |chunk| {
                let mut params = vec![(
                    "Filter.1.Name".to_owned(),
                    "addresses.private-ip-address".to_owned(),
                )];
                params.extend(numbered("Filter.1.Value", chunk));
                params
            },
            model::parse_describe_network_interfaces,
        )
    }

    /// DescribeSubnets by id.
    ///
    /// # Errors
    /// As [`Ec2Client::call`].
    pub fn describe_subnets(&self, ids: &[String]) -> Result<Vec<Subnet>, Error> {
        self.describe_chunked(
            "DescribeSubnets",
            ids,
            |chunk| numbered("SubnetId", chunk),
            model::parse_describe_subnets,
        )
    }

    /// DescribeSecurityGroups by id.
    ///
    /// # Errors
    /// As [`Ec2Client::call`].
    pub fn describe_security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, Error> {
        self.describe_chunked(
            "DescribeSecurityGroups",
            ids,
            |chunk| numbered("GroupId", chunk),
            model::parse_describe_security_groups,
        )
    }

    /// Calls `action` once per [`MAX_LIST_VALUES`] values (EC2's limit on ids and filter values
    /// per request), following `nextToken` pages; concatenates the decoded items.
    fn describe_chunked<T>(
        &self,
        action: &str,
        values: &[String],
        params: impl Fn(&[String]) -> Vec<(String, String)>,
        parse: fn(&str) -> Result<Vec<T>, Error>,
    ) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        for chunk in values.chunks(MAX_LIST_VALUES) {
            let base = params(chunk);
            let mut next_token: Option<String> = None;
            for _page in 0..MAX_PAGES {
                let mut p = base.clone();
                if let Some(token) = next_token.take() {
                    p.push(("NextToken".to_owned(), token));
                }
                let body = self.call(action, &p)?;
                out.extend(parse(&body)?);
                next_token = model::parse_next_token(&body);
                if next_token.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// ModifyNetworkInterfaceAttribute `SourceDestCheck.Value=<enabled>`.
    ///
    /// # Errors
    /// As [`Ec2Client::call`].
    pub fn set_source_dest_check(&self, interface_id: &str, enabled: bool) -> Result<(), Error> {
        self.call(
            "ModifyNetworkInterfaceAttribute",
            &[
                ("NetworkInterfaceId".to_owned(), interface_id.to_owned()),
                ("SourceDestCheck.Value".to_owned(), enabled.to_string()),
            ],
        )?;
        Ok(())
    }
}

/// `Name.1=a, Name.2=b, …`: the Query API's list encoding.
fn numbered(name: &str, values: &[String]) -> Vec<(String, String)> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("{name}.{}", i + 1), v.clone()))
        .collect()
}
