//! Where to find EC2, the metadata service, the region and the credentials.

use crate::sigv4::Credentials;

/// The default instance metadata endpoint.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// Settings for talking to AWS, usually read from the environment with [`AwsConfig::from_env`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AwsConfig {
    /// EC2 endpoint (`AWS_ENDPOINT_URL_EC2`, else `AWS_ENDPOINT_URL`); default
    /// `https://ec2.<region>.amazonaws.com`.
    pub ec2_endpoint: Option<String>,
    /// Metadata endpoint (`AWS_EC2_METADATA_SERVICE_ENDPOINT`); default [`DEFAULT_IMDS_ENDPOINT`].
    pub imds_endpoint: Option<String>,
    /// `AWS_EC2_METADATA_DISABLED=true` turns the metadata service off.
    pub imds_disabled: bool,
    /// Region (`AWS_REGION`, else `AWS_DEFAULT_REGION`); otherwise asked from the metadata service.
    pub region: Option<String>,
    /// Credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); otherwise
    /// the instance role's, from the metadata service.
    pub credentials: Option<Credentials>,
}

impl AwsConfig {
    /// Reads the process environment.
    #[must_use]
    pub fn from_env() -> AwsConfig {
        AwsConfig::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup` (variable name → value), so tests need no global state.
    #[must_use]
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> AwsConfig {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let credentials = match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => Some(Credentials {
                access_key_id,
                secret_access_key,
                session_token: get("AWS_SESSION_TOKEN"),
            }),
            _ => None,
        };
        AwsConfig {
            ec2_endpoint: get("AWS_ENDPOINT_URL_EC2").or_else(|| get("AWS_ENDPOINT_URL")),
            imds_endpoint: get("AWS_EC2_METADATA_SERVICE_ENDPOINT"),
            imds_disabled: get("AWS_EC2_METADATA_DISABLED")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
            credentials,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_map_to_settings() {
        let vars = [
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://generic"),
            ("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:5000"),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                "http://127.0.0.1:6000/",
            ),
        ];
        let config = AwsConfig::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        });
        assert_eq!(
            config.ec2_endpoint.as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(
            config.imds_endpoint.as_deref(),
            Some("http://127.0.0.1:6000/")
        );
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        let credentials = config.credentials.unwrap();
        assert_eq!(credentials.access_key_id, "AKID");
        assert_eq!(credentials.session_token, None);
        assert!(!config.imds_disabled);
    }

    #[test]
    fn half_set_credentials_are_ignored() {
        let config =
            AwsConfig::from_lookup(|k| (k == "AWS_ACCESS_KEY_ID").then(|| "AKID".to_owned()));
        assert_eq!(config.credentials, None);
    }
}
