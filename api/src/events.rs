//! `GET /v1/events`: Server-Sent Events of the caller's tenant's task state changes.
//!
//! One reader per API process follows the Redis event stream and fans out to every
//! connected client through a broadcast channel; each client keeps its own tenant's events.
//! A client reconnecting with `Last-Event-ID` first gets what it missed from the stream
//! (which keeps the last ~100,000 events), then the live feed, without duplicates.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

/// (stream id, tenant id, event JSON).
pub type Entry = (String, String, String);

/// Events buffered per process for slow clients; a client that falls further behind misses
/// events and is told so (a `lagged` event) rather than slowing everyone down.
const FANOUT_CAPACITY: usize = 4096;
/// Most events a reconnecting client is replayed.
const REPLAY_LIMIT: usize = 10_000;
const READ_BLOCK: Duration = Duration::from_secs(5);

/// The process's one reader of the event stream, started with the first subscriber.
#[derive(Default)]
pub struct Fanout {
    sender: tokio::sync::OnceCell<broadcast::Sender<Arc<Entry>>>,
}

impl Fanout {
    async fn subscribe(&self, state: &AppState) -> Result<broadcast::Receiver<Arc<Entry>>, ApiError> {
        let sender = self
            .sender
            .get_or_try_init(|| async {
                let reader = state.queue.dedicated(READ_BLOCK).await?;
                // From the newest event now, not "$" at the first read: nothing published
                // after the first subscriber arrived is missed.
                let mut last = reader.last_event_id().await?;
                let (tx, _) = broadcast::channel(FANOUT_CAPACITY);
                let out = tx.clone();
                tokio::spawn(async move {
                    loop {
                        match reader.read_events(&last, 512, READ_BLOCK).await {
                            Ok(batch) => {
                                for e in batch {
                                    last = e.0.clone();
                                    // No receivers is fine: the next subscriber starts from now.
                                    let _ = out.send(Arc::new(e));
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "reading the event stream failed; retrying");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    }
                });
                Ok::<_, ApiError>(tx)
            })
            .await?;
        Ok(sender.subscribe())
    }
}

/// Stream ids compare as (milliseconds, sequence).
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[utoipa::path(get, path = "/v1/events", tag = "Tasks", summary = "Task state changes as Server-Sent Events", params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "An SSE stream of `task` events (JSON data); `lagged` when this client fell behind", content_type = "text/event-stream", body = String)))]
async fn events(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let tenant = caller.tenant_id.to_string();
    let live = s.fanout.subscribe(&s).await?;
    // A stream id is exactly "<ms>-<seq>", both u64 (what Redis accepts); anything else is
    // ignored, as a fresh subscription.
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).filter(|v| {
        v.split_once('-').is_some_and(|(ms, seq)| {
            ms.parse::<u64>().is_ok_and(|m| m > 0 && m < u64::MAX) && seq.parse::<u64>().is_ok_and(|q| q < u64::MAX)
        })
    });
    let replay: Vec<Entry> = match resume {
        Some(after) => s.queue.events_after(after, REPLAY_LIMIT).await?,
        None => Vec::new(),
    };
    let last_sent = replay.last().map(|e| stream_id(&e.0)).unwrap_or((0, 0));
    let replay: Vec<Entry> = replay.into_iter().filter(|e| e.1 == tenant).collect();
    let replayed = futures::stream::iter(replay.into_iter().map(|e| Ok(event(&e))));
    let follow = futures::stream::unfold((live, last_sent, tenant), |(mut rx, last, tenant)| async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if e.1 != tenant || stream_id(&e.0) <= last {
                        continue;
                    }
                    let ev = event(&e);
                    return Some((Ok(ev), (rx, last, tenant)));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let ev = Event::default().event("lagged").data(format!("{{\"missed\":{n}}}"));
                    return Some((Ok(ev), (rx, last, tenant)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    // The stream ends when the token does; the client reconnects with a fresh one and its
    // Last-Event-ID, and is authorised again.
    let left = Duration::from_secs(u64::try_from(caller.expires_at - chrono::Utc::now().timestamp()).unwrap_or(0));
    let expiry = tokio::time::sleep(left);
    Ok(Sse::new(replayed.chain(follow).take_until(expiry))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn event(e: &Entry) -> Event {
    Event::default().id(e.0.clone()).event("task").data(e.2.clone())
}
