//! `Client.Pipeline`: many proposals and queries on one bidirectional stream, each answered by
//! its id as soon as it is done.
//!
//! Why: a unary call costs its own HTTP/2 stream, headers both ways and, on a busy leader, two
//! socket writes of its own per request (measured: 2.2 `writev` per request on the leader and
//! as many in the load generator). On a stream a request is one message, and the answers that
//! the consensus loop finishes together (one `Ready` commits many entries) are encoded into one
//! buffer and leave in one write.
//!
//! Each request is served by the very code of its unary call (`propose_command`,
//! `answer_query`), checked against the caller's role like the unary call, and its failure is
//! the unary call's status, carried in the answer. The stream itself fails only when its
//! transport does.

use std::pin::Pin;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use riteraft_proto::{
    PipelineFailure, PipelineRequest, PipelineResponse, pipeline_request, pipeline_response,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use super::*;
use crate::listener::Caller;

/// Requests of one stream being answered at once. Past it the node reads the stream's next
/// request only when an answer has left, and HTTP/2 flow control holds the caller back: a
/// client cannot queue unbounded work on a node. 256 covers a load generator's clients over a
/// few connections; a node's mailbox bounds what all streams together hand the consensus loop.
pub const PIPELINE_DEPTH: usize = 256;

/// Bytes of requests (commands and queries) of one stream being answered at once: with
/// [`PIPELINE_DEPTH`] requests of up to 16 MiB each a stream could otherwise hold 4 GiB. Past
/// it the next request waits as above; a request larger than this on its own is still taken
/// when none is in flight.
pub const PIPELINE_BYTES: usize = 32 << 20;

/// Answers waiting to be sent: enough that a burst of finished requests is written together.
const ANSWERS_QUEUED: usize = PIPELINE_DEPTH;

pub(super) type PipelineAnswers =
    Pin<Box<dyn Stream<Item = Result<PipelineResponse, Status>> + Send>>;

impl NodeService {
    /// Serves one pipeline: reads requests while fewer than [`PIPELINE_DEPTH`] are in flight,
    /// answers each as it finishes. Ends when the caller closes its side and every answer has
    /// left, or when the caller goes away (answers still being worked out are then dropped;
    /// proposals among them still apply, as a unary call's do when its caller hangs up).
    pub(super) fn serve_pipeline(
        &self,
        request: Request<Streaming<PipelineRequest>>,
    ) -> PipelineAnswers {
        let caller = access::caller(&request);
        let forwarded = forwarded(&request);
        let mut requests = request.into_inner();
        let (answers, receiver) = mpsc::channel(ANSWERS_QUEUED);
        let service = self.clone();
        tokio::spawn(async move {
            let mut in_flight = FuturesUnordered::new();
            let mut in_flight_bytes = 0usize;
            let mut reading = true;
            loop {
                let room = in_flight.len() < PIPELINE_DEPTH
                    && (in_flight_bytes < PIPELINE_BYTES || in_flight.is_empty());
                tokio::select! {
                    next = requests.message(), if reading && room => match next {
                        Ok(Some(request)) => {
                            let bytes = request_bytes(&request);
                            in_flight_bytes += bytes;
                            let service = service.clone();
                            let caller = caller.clone();
                            in_flight.push(async move {
                                (service.answer(request, &caller, forwarded).await, bytes)
                            });
                        }
                        // The caller sent its last request: answer what is in flight, then end.
                        Ok(None) => reading = false,
                        // The transport broke (or a message was malformed or too large): the
                        // caller sees the stream fail; nobody is left to answer.
                        Err(status) => {
                            let _ = answers.send(Err(status)).await;
                            return;
                        }
                    },
                    Some((answer, bytes)) = in_flight.next() => {
                        in_flight_bytes -= bytes;
                        if answers.send(Ok(answer)).await.is_err() {
                            return; // the caller went away
                        }
                    }
                    else => return, // done reading and nothing in flight
                }
            }
        });
        Box::pin(ReceiverStream::new(receiver))
    }

    /// One request of a pipeline, answered as its unary call would be.
    async fn answer(
        &self,
        request: PipelineRequest,
        caller: &Caller,
        forwarded: bool,
    ) -> PipelineResponse {
        let id = request.id;
        let result = match request.request {
            Some(pipeline_request::Request::Propose(propose)) => {
                match access::check(caller, Need::Role(Role::Write), "Pipeline (propose)") {
                    Ok(()) => self
                        .propose_command(propose.command, forwarded)
                        .await
                        .map(pipeline_response::Result::Propose),
                    Err(refused) => Err(refused),
                }
            }
            Some(pipeline_request::Request::Query(query)) => {
                match access::check(caller, Need::Role(Role::Read), "Pipeline (query)") {
                    Ok(()) => self
                        .answer_query(query)
                        .await
                        .map(pipeline_response::Result::Query),
                    Err(refused) => Err(refused),
                }
            }
            None => Err(Status::invalid_argument(
                "a pipeline request carries a proposal or a query; this one has neither",
            )),
        };
        PipelineResponse {
            id,
            result: Some(result.unwrap_or_else(|status| {
                pipeline_response::Result::Failure(PipelineFailure {
                    code: status.code() as i32,
                    message: status.message().to_string(),
                })
            })),
        }
    }
}

/// What a request holds in memory while it is answered: its command or query.
fn request_bytes(request: &PipelineRequest) -> usize {
    match &request.request {
        Some(pipeline_request::Request::Propose(propose)) => propose.command.len(),
        Some(pipeline_request::Request::Query(query)) => query.request.len(),
        None => 0,
    }
}
