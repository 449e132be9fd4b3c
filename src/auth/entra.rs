//! One form POST to the Microsoft identity platform v2.0 token endpoint, and the reading of its
//! answer: a token, or an error classified by what the relay must do next. Holds no state.

use std::time::Duration;

use serde::Deserialize;

use super::TokenError;
use crate::outbound::describe;

/// A successful token response.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: String,
    #[serde(default = "default_lifetime")]
    pub expires_in: u64,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

fn default_lifetime() -> u64 {
    3599
}

/// The v2.0 error body: `{"error":..,"error_description":"AADSTS..: ..","error_codes":[..]}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EntraError {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: String,
    #[serde(default)]
    pub error_codes: Vec<u64>,
}

impl EntraError {
    /// "AADSTS700082: The refresh token has expired..." without the trace lines Entra appends.
    pub fn summary(&self) -> String {
        let first_line = self.error_description.lines().next().unwrap_or("").trim();
        if first_line.is_empty() {
            self.error.clone()
        } else {
            format!("{}: {first_line}", self.error)
        }
    }
}

/// OAuth `error` values and AADSTS codes that no retry can fix: a person must act.
const REAUTH_ERRORS: &[&str] = &[
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "interaction_required",
    "consent_required",
];
const REAUTH_CODES: &[u64] = &[
    700082, 70008, 50173, 7000222, 7000215, 65001, 50132, 50133, 50076, 50079, 70043, 65004, 50055,
    50057, 53003, 700016, 700011, 90002, 70001, 7000112, 70002, 700027, 50012, 7000218,
];
/// Codes Microsoft marks retryable even inside an `invalid_grant`-looking answer.
const TRANSIENT_CODES: &[u64] = &[
    50196, 50033, 90006, 90024, 90033, 90090, 50087, 90012, 90055, 50000,
];

/// Posts `form` to `url` and reads the answer.
pub async fn request_token(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<TokenResponse, TokenError> {
    let response = http.post(url).form(form).send().await.map_err(|e| {
        TokenError::transient(
            format!("token endpoint unreachable: {}", describe(&e)),
            None,
        )
    })?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response.bytes().await.map_err(|e| {
        TokenError::transient(
            format!("token endpoint response cut short: {}", describe(&e)),
            None,
        )
    })?;
    if status.is_success() {
        return serde_json::from_slice(&body)
            .map_err(|e| TokenError::transient(format!("unreadable token response ({e})"), None));
    }
    let error: EntraError = serde_json::from_slice(&body).unwrap_or_default();
    Err(classify(status.as_u16(), &error, retry_after))
}

/// Decides between "retry later" and "a person must re-authorize" (design section 5).
pub fn classify(status: u16, error: &EntraError, retry_after: Option<Duration>) -> TokenError {
    let summary = if error.error.is_empty() {
        format!("HTTP {status} from the token endpoint")
    } else {
        error.summary()
    };
    let transient_code = error
        .error_codes
        .iter()
        .any(|c| TRANSIENT_CODES.contains(c));
    let reauth = !transient_code
        && (REAUTH_ERRORS.contains(&error.error.as_str())
            || error.error_codes.iter().any(|c| REAUTH_CODES.contains(c)));
    if reauth {
        match error.error_codes.iter().find_map(|c| plain_meaning(*c)) {
            Some(meaning) => TokenError::Reauth(format!("{meaning} ({summary})")),
            None => TokenError::Reauth(summary),
        }
    } else {
        TokenError::transient(summary, retry_after)
    }
}

/// What the common re-authorization codes mean, in words an admin can act on.
fn plain_meaning(code: u64) -> Option<&'static str> {
    Some(match code {
        700082 | 70008 => "The sign-in expired after 90 days without use",
        50173 | 50132 | 50133 => "The sign-in was revoked (password reset or tokens revoked)",
        50076 | 50079 => "Multi-factor authentication is now required: sign in again",
        70043 => "Conditional Access asks for a fresh sign-in",
        65001 | 65004 => "Consent for the app is missing or was revoked",
        7000222 => "The app's client secret has expired: create a new one",
        7000215 | 70002 => "The client secret is wrong",
        700027 | 50012 => "The certificate assertion was refused (wrong certificate or key?)",
        70001 | 7000112 => "The app registration is disabled",
        700016 | 700011 => "No such app in this tenant (check microsoft.client_id and tenant)",
        90002 => "No such tenant (check microsoft.tenant)",
        50057 => "The signed-in user is disabled",
        50055 => "The user's password has expired",
        53003 => "Blocked by Conditional Access",
        _ => return None,
    })
}

/// `Retry-After` in seconds (fractions allowed). HTTP dates are rare here; they are ignored and
/// the caller's backoff applies.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entra(error: &str, codes: &[u64], description: &str) -> EntraError {
        EntraError {
            error: error.into(),
            error_description: description.into(),
            error_codes: codes.to_vec(),
        }
    }

    #[test]
    fn revoked_and_expired_credentials_need_a_person() {
        let cases = [
            entra(
                "invalid_grant",
                &[700082],
                "AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: x",
            ),
            entra(
                "invalid_client",
                &[7000222],
                "AADSTS7000222: The provided client secret keys are expired.",
            ),
            entra(
                "invalid_client",
                &[7000215],
                "AADSTS7000215: Invalid client secret provided.",
            ),
            entra("invalid_grant", &[65001], "AADSTS65001: consent"),
        ];
        for case in cases {
            match classify(400, &case, None) {
                TokenError::Reauth(reason) => {
                    // Plain words first, then Entra's own error and code.
                    assert!(
                        reason.contains(&format!("({}: AADSTS", case.error)),
                        "{reason}"
                    );
                    assert!(!reason.starts_with(&case.error), "{reason}");
                    assert!(!reason.contains("Trace ID"), "{reason}");
                }
                other => panic!("{case:?} classified as {other:?}"),
            }
        }
    }

    #[test]
    fn outages_and_throttling_are_transient() {
        let throttled = classify(429, &EntraError::default(), Some(Duration::from_secs(60)));
        assert!(
            matches!(throttled, TokenError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(60))
        );
        assert!(matches!(
            classify(503, &entra("temporarily_unavailable", &[], ""), None),
            TokenError::Transient { .. }
        ));
        // AADSTS50196 (loop detected) comes as invalid_grant but is a back-off signal.
        assert!(matches!(
            classify(400, &entra("invalid_grant", &[50196], ""), None),
            TokenError::Transient { .. }
        ));
    }

    #[test]
    fn retry_after_accepts_fractions_and_ignores_junk() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "2.128".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(2128)));
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
