//! The crate's error type.

/// Everything that can go wrong talking to EC2 or the instance metadata service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// EC2 answered with an `<Errors><Error><Code>` document.
    #[error("EC2 {action} failed with {code} (HTTP {status}): {message}")]
    Api {
        /// The Query API action, e.g. `DescribeInstances`.
        action: String,
        /// The AWS error code, e.g. `UnauthorizedOperation`.
        code: String,
        /// The AWS error message.
        message: String,
        /// The HTTP status of the answer.
        status: u16,
    },
    /// EC2 answered with an HTTP error status and no error document.
    #[error("EC2 {action} returned HTTP {status}")]
    HttpStatus {
        /// The Query API action.
        action: String,
        /// The HTTP status.
        status: u16,
    },
    /// The request never got an answer (connection, TLS, timeout).
    #[error("EC2 {action} request to {endpoint} failed")]
    Transport {
        /// The Query API action.
        action: String,
        /// The endpoint URL.
        endpoint: String,
        /// The HTTP client's error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The answer was not well-formed XML.
    #[error("cannot parse the EC2 {action} response as XML")]
    Xml {
        /// The Query API action.
        action: String,
        /// The XML parser's error.
        #[source]
        source: roxmltree::Error,
    },
    /// The answer was XML but lacked a field or held a bad value.
    #[error("EC2 {action} response: {what}")]
    Malformed {
        /// The Query API action.
        action: String,
        /// What was missing or wrong, naming the element.
        what: String,
    },
    /// The instance metadata service could not be reached.
    #[error("instance metadata request {path} to {endpoint} failed")]
    Imds {
        /// The metadata path.
        path: String,
        /// The metadata endpoint.
        endpoint: String,
        /// The HTTP client's error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The instance metadata service answered with an error status.
    #[error("instance metadata {path} returned HTTP {status}")]
    ImdsStatus {
        /// The metadata path.
        path: String,
        /// The HTTP status.
        status: u16,
    },
    /// The instance role's credentials document was not what IMDS documents.
    #[error("instance role credentials for role {role}: {what}")]
    RoleCredentials {
        /// The IAM role name.
        role: String,
        /// What was wrong.
        what: String,
    },
    /// `AWS_EC2_METADATA_DISABLED=true` but the instance metadata service was needed.
    #[error("instance metadata is needed but AWS_EC2_METADATA_DISABLED is true")]
    ImdsDisabled,
    /// No credentials in the environment and none from an instance role.
    #[error(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or attach an instance role"
    )]
    NoCredentials,
    /// No region in the environment and none from instance metadata.
    #[error("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION) or run on EC2")]
    NoRegion,
    /// DescribeInstances did not return the instance.
    #[error("instance {0} not found by DescribeInstances")]
    InstanceNotFound(String),
    /// The instance has no network interface attached at device index 0.
    #[error("instance {0} has no network interface with device index 0")]
    NoPrimaryInterface(String),
}

impl Error {
    /// Whether a retry may succeed: throttling, AWS-side failures, HTTP 5xx, transport errors.
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Api { code, status, .. } => {
                *status >= 500
                    || matches!(
                        code.as_str(),
                        "Throttling"
                            | "ThrottlingException"
                            | "RequestLimitExceeded"
                            | "RequestThrottled"
                            | "RequestThrottledException"
                            | "TooManyRequestsException"
                            | "InternalError"
                            | "InternalFailure"
                            | "ServiceUnavailable"
                            | "Unavailable"
                    )
            }
            Error::HttpStatus { status, .. } => *status >= 500 || *status == 429,
            Error::Transport { .. } => true,
            _ => false,
        }
    }

    /// The AWS error code when EC2 returned one.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn error_can_cross_threads_and_into_anyhow() {
        assert_send_sync::<Error>();
    }

    #[test]
    fn throttling_and_server_errors_are_retriable() {
        let api = |code: &str, status: u16| Error::Api {
            action: "DescribeInstances".to_owned(),
            code: code.to_owned(),
            message: String::new(),
            status,
        };
        assert!(api("RequestLimitExceeded", 503).is_retriable());
        assert!(api("Throttling", 400).is_retriable());
        assert!(api("Whatever", 500).is_retriable());
        assert!(!api("UnauthorizedOperation", 403).is_retriable());
        assert!(!api("InvalidInstanceID.NotFound", 400).is_retriable());
        assert!(!Error::NoCredentials.is_retriable());
    }
}
