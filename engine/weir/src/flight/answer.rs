//! Answers as Flight data: a query's answer streamed as it comes, or a small batch
//! (metadata listings) at once.

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::ipc::reader::StreamDecoder;
use futures::StreamExt;
use tonic::Status;

use super::status_of;
use crate::queries::Answer;

pub type DoGetStream =
    <super::FlightSql as arrow_flight::flight_service_server::FlightService>::DoGetStream;

/// A query's answer as Flight data. It arrives as Arrow IPC (the governed path every
/// query takes) and is decoded back into batches message by message for Flight's own
/// framing; dropping the stream cancels the query.
pub fn stream(answer: Answer) -> DoGetStream {
    let Answer { first, rest, guard } = answer;
    let chunks = futures::stream::once(async move { Ok(first) }).chain(futures::stream::unfold(
        (rest, guard),
        |(mut rx, guard)| async move {
            let item = rx.recv().await?;
            Some((item, (rx, guard)))
        },
    ));
    let batches = chunks
        .scan(StreamDecoder::new(), |decoder, chunk| {
            let out: Vec<Result<RecordBatch, FlightError>> = match chunk {
                Ok(bytes) => {
                    let mut buf = Buffer::from(bytes.to_vec());
                    let mut out = Vec::new();
                    while !buf.is_empty() {
                        match decoder.decode(&mut buf) {
                            Ok(Some(b)) => out.push(Ok(b)),
                            Ok(None) => {}
                            Err(e) => {
                                out.push(Err(FlightError::Arrow(e)));
                                break;
                            }
                        }
                    }
                    out
                }
                Err(e) => vec![Err(FlightError::Tonic(Box::new(status_of(e))))],
            };
            std::future::ready(Some(futures::stream::iter(out)))
        })
        .flatten();
    let stream = FlightDataEncoderBuilder::new()
        .build(batches)
        .map(|r| r.map_err(Status::from));
    Box::pin(stream)
}

/// One batch as Flight data.
pub fn batch(batch: RecordBatch) -> DoGetStream {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(futures::stream::once(async move { Ok(batch) }))
        .map(|r| r.map_err(Status::from));
    Box::pin(stream)
}
