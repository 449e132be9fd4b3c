//! Sign-in upkeep for `serve`: asks for a token at start-up and then every twelve hours, so the
//! token state people see is current and a delegated sign-in never lapses for want of use. Only
//! asks its token source; never looks at or logs the token it gets.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::TokenSource;

/// How often the relay renews its sign-in even when no mail flows.
pub const KEEP_SIGNED_IN: Duration = Duration::from_secs(12 * 3600);

/// Asks for a token at start-up, so a wrong or expired credential shows on /status and raises
/// its notice before the first message, and again every `every`: a delegated sign-in is then
/// refreshed (rotating its refresh token) even on a relay that sends nothing for months, so
/// Entra's 90-day inactivity limit never ends it, and an expiring app secret is noticed early.
pub async fn keep_signed_in(
    tokens: Arc<dyn TokenSource>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let _ = tokens.token().await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AccessToken, StatusCell, TokenError, TokenState, TokenStatus};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        asked: AtomicUsize,
        status: StatusCell,
    }

    #[async_trait]
    impl TokenSource for Counting {
        async fn token(&self) -> Result<AccessToken, TokenError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Err(TokenError::transient("test", None))
        }
        fn invalidate(&self, _: &AccessToken) {}
        fn status_cell(&self) -> &StatusCell {
            &self.status
        }
        fn rejected(&self, _: &str) {}
    }

    #[tokio::test(start_paused = true)]
    async fn the_sign_in_is_renewed_at_start_and_every_twelve_hours() {
        let source = Arc::new(Counting {
            asked: AtomicUsize::new(0),
            status: StatusCell::new(TokenStatus {
                state: TokenState::Valid,
                reason: String::new(),
                expires_at: None,
            }),
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(keep_signed_in(
            source.clone(),
            KEEP_SIGNED_IN,
            shutdown.clone(),
        ));
        let asked = || source.asked.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(asked(), 1, "asked at start-up");
        tokio::time::sleep(KEEP_SIGNED_IN - Duration::from_secs(2)).await;
        assert_eq!(asked(), 1, "not before twelve hours");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(asked(), 2);
        tokio::time::sleep(KEEP_SIGNED_IN * 3).await;
        assert_eq!(asked(), 5);
        shutdown.cancel();
        task.await.unwrap();
    }
}
