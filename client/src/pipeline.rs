//! One node's `Client.Pipeline` stream, shared by every call of a [`crate::Client`] (and its
//! clones) to that node: proposals and queries go out on it as messages with an id, and a
//! reader task hands each answer to the call waiting for that id.
//!
//! A request fails exactly as its unary call would: the node's per-request failure carries the
//! unary call's status code and message, and a stream that breaks fails every request still
//! waiting with the transport's own status, which `failover::classify` reads as it reads a
//! broken unary call (a write may have applied; a read can go elsewhere). The stream is opened
//! on first use and again after it broke. A node that does not know `Pipeline` (an older
//! version) answers `UNIMPLEMENTED`, and the client then uses the unary calls with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Status};

use crate::proto::client_client::ClientClient;
use crate::proto::{PipelineRequest, PipelineResponse, pipeline_request, pipeline_response};

type Grpc = ClientClient<tonic::transport::Channel>;

/// The answer a waiting call gets: the node's result, or the status of a broken stream.
type Answer = Result<pipeline_response::Result, Status>;

/// A node's pipeline, opened lazily.
#[derive(Default)]
pub(crate) struct Pipeline {
    /// The open stream, if any; `None` before the first call and after one broke.
    open: Mutex<Option<Arc<Stream>>>,
    /// Held while a stream is being opened, so that concurrent first calls open one.
    opening: tokio::sync::Mutex<()>,
    /// The node answered `UNIMPLEMENTED`: use the unary calls.
    unsupported: AtomicBool,
}

/// One open stream. Its sending half lives here, not in the reader task: when the client
/// goes, the stream's requests end, the node finishes and closes it, and the reader ends too.
struct Stream {
    requests: mpsc::UnboundedSender<PipelineRequest>,
    state: Arc<StreamState>,
}

/// What a stream's calls and its reader share.
struct StreamState {
    /// The calls waiting for an answer, by request id. Unbounded on purpose: each entry is a
    /// caller awaiting its answer, so callers bound it (the node reads at most 256 at a time
    /// and flow control holds the rest in this process).
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_id: AtomicU64,
    /// Set by the reader when the stream ended: every later request fails with it.
    broken: Mutex<Option<Status>>,
}

/// What a pipelined call asks.
pub(crate) enum Ask {
    Propose(crate::proto::ProposeRequest),
    Query(crate::proto::QueryRequest),
}

impl Pipeline {
    /// Whether the node said it has no pipeline.
    pub(crate) fn unsupported(&self) -> bool {
        self.unsupported.load(Ordering::Relaxed)
    }

    /// Sends `ask` on the stream to the node behind `grpc` (opening it if need be) and waits
    /// for its answer; `Err(ask)` if the node has no pipeline (use the unary call).
    pub(crate) async fn call(&self, grpc: Grpc, ask: Ask) -> Result<Answer, Ask> {
        match self.stream(grpc).await {
            Ok(stream) => Ok(stream.call(ask).await),
            Err(None) => Err(ask),
            Err(Some(status)) => Ok(Err(status)),
        }
    }

    /// The open stream, opened now if need be; `Err(None)`: the node has no pipeline.
    async fn stream(&self, mut grpc: Grpc) -> Result<Arc<Stream>, Option<Status>> {
        if let Some(stream) = self.current() {
            return Ok(stream);
        }
        let _opening = self.opening.lock().await;
        if let Some(stream) = self.current() {
            return Ok(stream);
        }
        let (requests, outgoing) = mpsc::unbounded_channel();
        let answers = match grpc.pipeline(UnboundedReceiverStream::new(outgoing)).await {
            Ok(answers) => answers.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => {
                self.unsupported.store(true, Ordering::Relaxed);
                return Err(None);
            }
            // Could not open it (the node is down, TLS refused...): fails this call as the
            // unary call would have failed to connect.
            Err(status) => return Err(Some(status)),
        };
        let state = Arc::new(StreamState {
            waiting: Mutex::default(),
            next_id: AtomicU64::new(1),
            broken: Mutex::default(),
        });
        tokio::spawn(read_answers(state.clone(), answers));
        let stream = Arc::new(Stream { requests, state });
        *self.open.lock().expect("pipeline lock") = Some(stream.clone());
        Ok(stream)
    }

    /// The open stream, unless it broke.
    fn current(&self) -> Option<Arc<Stream>> {
        let mut open = self.open.lock().expect("pipeline lock");
        match &*open {
            Some(stream) if stream.state.broken.lock().expect("pipeline lock").is_none() => {
                Some(stream.clone())
            }
            Some(_) => {
                *open = None;
                None
            }
            None => None,
        }
    }
}

impl Stream {
    async fn call(&self, ask: Ask) -> Answer {
        let state = &*self.state;
        let id = state.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        {
            let mut waiting = state.waiting.lock().expect("pipeline lock");
            // Checked under the same lock the reader fails the waiting calls under: a call is
            // either failed by the reader or sees the stream broken here, never neither.
            if let Some(status) = &*state.broken.lock().expect("pipeline lock") {
                return Err(status.clone());
            }
            waiting.insert(id, sender);
        }
        // A call given up on (its timeout) takes its entry with it.
        let _forget = Forget { state, id };
        let request = match ask {
            Ask::Propose(propose) => pipeline_request::Request::Propose(propose),
            Ask::Query(query) => pipeline_request::Request::Query(query),
        };
        let request = PipelineRequest {
            id,
            request: Some(request),
        };
        if self.requests.send(request).is_err() {
            // The stream's sending half is gone: the reader ended (or is ending) it.
            return Err(state.broken_status());
        }
        receiver
            .await
            .unwrap_or_else(|_| Err(state.broken_status()))
    }
}

impl StreamState {
    fn broken_status(&self) -> Status {
        self.broken
            .lock()
            .expect("pipeline lock")
            .clone()
            .unwrap_or_else(ended)
    }
}

/// Removes a call's entry when the call ends, answered or not.
struct Forget<'a> {
    state: &'a StreamState,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.state
            .waiting
            .lock()
            .expect("pipeline lock")
            .remove(&self.id);
    }
}

/// The stream ended without the transport failing (the node closed it, e.g. shutting down),
/// with requests unanswered: they may or may not have been applied, as with a broken
/// connection, so the status carries a transport error as its source for `classify`.
fn ended() -> Status {
    Status::from_error(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the node ended the pipeline stream with requests unanswered",
    )))
}

/// Hands each answer to its call; when the stream ends, fails every call still waiting.
async fn read_answers(stream: Arc<StreamState>, mut answers: tonic::Streaming<PipelineResponse>) {
    let status = loop {
        match answers.message().await {
            Ok(Some(PipelineResponse { id, result })) => {
                let waiter = stream.waiting.lock().expect("pipeline lock").remove(&id);
                let Some(waiter) = waiter else {
                    continue; // its call gave up (timeout) already
                };
                let _ = waiter.send(result.ok_or_else(|| {
                    Status::internal(format!("the node's answer to request {id} is empty"))
                }));
            }
            Ok(None) => break ended(),
            Err(status) => break status,
        }
    };
    let waiting = {
        let mut waiting = stream.waiting.lock().expect("pipeline lock");
        *stream.broken.lock().expect("pipeline lock") = Some(status.clone());
        std::mem::take(&mut *waiting)
    };
    for (_, waiter) in waiting {
        let _ = waiter.send(Err(status.clone()));
    }
}
