//! AWS Signature Version 4, pure: request parts and a timestamp in, headers out.
//!
//! Follows the AWS General Reference "Create a signed AWS API request": canonical request,
//! string to sign, derived signing key, `Authorization` header. Only what the EC2 Query API
//! needs: one path, a query string or a form body, a handful of headers.

use std::fmt;
use std::fmt::Write as _;

use hmac::Hmac;
use hmac::Mac;
use sha2::Digest;
use sha2::Sha256;

/// Static or temporary AWS credentials. `Debug` redacts the secret and the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials (instance roles always have one).
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The parts of an HTTP request that SigV4 covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningRequest<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The `Host` header as the client sends it (`host` or `host:port`).
    pub host: &'a str,
    /// The absolute path, already URI-encoded (`/` for EC2).
    pub path: &'a str,
    /// The query parameters, unencoded.
    pub query: &'a [(String, String)],
    /// Headers to sign besides `host` and `x-amz-*` ones the signer adds.
    pub headers: &'a [(String, String)],
    /// The request body.
    pub payload: &'a [u8],
}

/// Where and when the signature is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    /// e.g. `us-east-1`.
    pub region: &'a str,
    /// e.g. `ec2`.
    pub service: &'a str,
    /// Seconds since the Unix epoch.
    pub unix_time: u64,
}

/// Headers to add to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `(name, value)` pairs: `x-amz-date`, optionally `x-amz-security-token`, `authorization`.
    pub headers: Vec<(String, String)>,
}

/// Signs `request`; returns the headers to send along with it.
#[must_use]
pub fn sign(request: &SigningRequest<'_>, scope: &Scope<'_>, credentials: &Credentials) -> Signed {
    let (date, amz_date) = amz_timestamps(scope.unix_time);
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), normalize_header_value(v)))
        .collect();
    headers.push(("host".to_owned(), request.host.to_owned()));
    headers.push(("x-amz-date".to_owned(), amz_date.clone()));
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token".to_owned(), token.clone()));
    }
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut canonical = String::new();
    canonical.push_str(request.method);
    canonical.push('\n');
    canonical.push_str(request.path);
    canonical.push('\n');
    canonical.push_str(&canonical_query(request.query));
    canonical.push('\n');
    for (k, v) in &headers {
        canonical.push_str(k);
        canonical.push(':');
        canonical.push_str(v);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&signed_headers);
    canonical.push('\n');
    canonical.push_str(&hex(&Sha256::digest(request.payload)));

    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{credential_scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(
        &credentials.secret_access_key,
        &date,
        scope.region,
        scope.service,
    );
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, \
         Signature={signature}",
        credentials.access_key_id
    );
    let mut out = vec![("x-amz-date".to_owned(), amz_date)];
    if let Some(token) = &credentials.session_token {
        out.push(("x-amz-security-token".to_owned(), token.clone()));
    }
    out.push(("authorization".to_owned(), authorization));
    Signed { headers: out }
}

/// The derived signing key: HMAC chain over date, region, service and `aws4_request`.
#[must_use]
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Percent-encodes per RFC 3986 as SigV4 wants: everything but `A-Za-z0-9-_.~`.
#[must_use]
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Encodes parameters sorted by name then value, `a=b&c=d`: the canonical query string and
/// also a valid `application/x-www-form-urlencoded` body.
#[must_use]
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `(YYYYMMDD, YYYYMMDDTHHMMSSZ)` in UTC for a Unix time: RFC 3339 without its separators.
#[must_use]
pub fn amz_timestamps(unix_time: u64) -> (String, String) {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_time);
    let basic: String = felis_api::time::format_rfc3339(time)
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    (basic.get(..8).unwrap_or_default().to_string(), basic)
}

fn normalize_header_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; fall back to an
    // empty MAC input rather than panicking to keep the no-panic rule without `expect`.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_credentials() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned(),
            session_token: None,
        }
    }

    // 2015-08-30T12:36:00Z, the timestamp of the AWS documentation examples.
    const EXAMPLE_TIME: u64 = 1_440_938_160;

    #[test]
    fn timestamps_match_the_documentation_example() {
        assert_eq!(
            amz_timestamps(EXAMPLE_TIME),
            ("20150830".to_owned(), "20150830T123600Z".to_owned())
        );
        assert_eq!(amz_timestamps(0).1, "19700101T000000Z");
        // 2024-02-29T23:59:59Z: a leap day.
        assert_eq!(amz_timestamps(1_709_251_199).1, "20240229T235959Z");
    }

    #[test]
    fn signing_key_matches_the_documentation_example() {
        // AWS General Reference, "Examples of how to derive a signing key for Signature Version 4".
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex(&key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn iam_list_users_example_signature() {
        // AWS General Reference, "Signature Version 4 signing process" worked example:
        // GET https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08
        let query = [
            ("Action".to_owned(), "ListUsers".to_owned()),
            ("Version".to_owned(), "2010-05-08".to_owned()),
        ];
        let headers = [(
            "Content-Type".to_owned(),
            "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
        )];
        let request = SigningRequest {
            method: "GET",
            host: "iam.amazonaws.com",
            path: "/",
            query: &query,
            headers: &headers,
            payload: b"",
        };
        let scope = Scope {
            region: "us-east-1",
            service: "iam",
            unix_time: EXAMPLE_TIME,
        };
        let signed = sign(&request, &scope, &example_credentials());
        let auth = signed
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn get_vanilla_from_the_sigv4_test_suite() {
        // aws-sig-v4-test-suite/get-vanilla: GET / Host: example.amazonaws.com
        let request = SigningRequest {
            method: "GET",
            host: "example.amazonaws.com",
            path: "/",
            query: &[],
            headers: &[],
            payload: b"",
        };
        let scope = Scope {
            region: "us-east-1",
            service: "service",
            unix_time: EXAMPLE_TIME,
        };
        let signed = sign(&request, &scope, &example_credentials());
        let auth = &signed.headers[1].1;
        assert!(
            auth.ends_with(
                "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            ),
            "{auth}"
        );
    }

    #[test]
    fn session_token_is_signed_and_sent() {
        let mut credentials = example_credentials();
        credentials.session_token = Some("TOKEN".to_owned());
        let request = SigningRequest {
            method: "POST",
            host: "127.0.0.1:5000",
            path: "/",
            query: &[],
            headers: &[],
            payload: b"Action=DescribeInstances",
        };
        let scope = Scope {
            region: "eu-west-1",
            service: "ec2",
            unix_time: EXAMPLE_TIME,
        };
        let signed = sign(&request, &scope, &credentials);
        let names: Vec<&str> = signed.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["x-amz-date", "x-amz-security-token", "authorization"]
        );
        assert!(
            signed.headers[2]
                .1
                .contains("SignedHeaders=host;x-amz-date;x-amz-security-token")
        );
        assert!(!format!("{credentials:?}").contains("TOKEN"));
        assert!(!format!("{credentials:?}").contains("EXAMPLEKEY"));
    }

    #[test]
    fn query_is_sorted_and_strictly_encoded() {
        let params = [
            ("Filter.1.Value.1".to_owned(), "10.0.0.1".to_owned()),
            ("Action".to_owned(), "Describe Things".to_owned()),
            ("A".to_owned(), "a/b+c=~".to_owned()),
        ];
        assert_eq!(
            canonical_query(&params),
            "A=a%2Fb%2Bc%3D~&Action=Describe%20Things&Filter.1.Value.1=10.0.0.1"
        );
    }
}
