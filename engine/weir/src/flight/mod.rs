//! Arrow Flight SQL on the gRPC listener (`[listen] grpc`), so standard clients (ADBC,
//! JDBC, pyarrow.flight) run SQL against the same tables as `POST /api/v1/query`.
//!
//! Authentication is the tenant's bearer token in the `authorization` metadata
//! (`Bearer TOKEN`; ADBC: `adbc.flight.sql.authorization_header`); with no tenants
//! configured, loopback clients are the default tenant. A query only ever sees its
//! tenant's tables (it runs through `HotStore::query`).
//!
//! Flow: `GetFlightInfo(CommandStatementQuery)` plans the query (its schema, no rows)
//! and keeps the statement under a handle bound to the tenant; `DoGet(TicketStatementQuery)`
//! runs it once, through the same admission, runtime, limits and caps as HTTP queries
//! (`crate::queries`), streaming batches as they come. Unfetched statements are dropped
//! after [`RESULT_TTL`]; each tenant has at most [`MAX_PENDING`] waiting (its own oldest
//! go first), so no tenant's calls evict another's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::ipc::reader::StreamDecoder;
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message;
use tonic::{Request, Response, Status};
use weir_core::config::DEFAULT_TENANT;
use weir_core::Config;
use weir_store::query_answer::IpcEncoder;
use weir_store::{HotStore, QueryError};

use crate::queries::QueryService;

/// How long a result waits for its `DoGet`.
pub const RESULT_TTL: Duration = Duration::from_secs(60);
/// Most statements of one tenant waiting at once.
pub const MAX_PENDING: usize = 64;

struct Pending {
    tenant: String,
    sql: String,
    at: Instant,
}

pub struct FlightSql {
    config: Arc<Config>,
    queries: Arc<QueryService>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
}

fn status_of(e: QueryError) -> Status {
    match e {
        QueryError::Sql(m) | QueryError::Refused(m) | QueryError::Execution(m) => {
            Status::invalid_argument(m)
        }
        QueryError::TooExpensive(m) => Status::failed_precondition(m),
        QueryError::TenantBusy(m) => Status::resource_exhausted(m),
        QueryError::NodeBusy(m) => Status::unavailable(m),
        QueryError::Store(e) => Status::internal(e.to_string()),
    }
}

impl FlightSql {
    pub fn new(
        config: Arc<Config>,
        _store: Arc<HotStore>,
        queries: Arc<QueryService>,
    ) -> FlightSql {
        FlightSql {
            config,
            queries,
            pending: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }

    fn tenant<T>(&self, request: &Request<T>) -> Result<String, Status> {
        if self.config.open_mode() {
            return match request.remote_addr() {
                Some(a) if a.ip().is_loopback() => Ok(DEFAULT_TENANT.to_owned()),
                _ => Err(Status::unauthenticated(
                    "no tenants are configured: only loopback clients are accepted",
                )),
            };
        }
        request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| self.config.tenant_for_token(t.trim()))
            .map(str::to_owned)
            .ok_or_else(|| Status::unauthenticated("missing or unknown bearer token"))
    }
}

fn handle_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let tenant = self.tenant(&request)?;
        let schema = self
            .queries
            .schema(&tenant, query.query.clone())
            .await
            .map_err(status_of)?;
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))?;
        {
            let mut p = self.pending.lock();
            p.retain(|_, r| r.at.elapsed() < RESULT_TTL);
            loop {
                let mine = p.iter().filter(|(_, r)| r.tenant == tenant);
                if mine.clone().count() < MAX_PENDING {
                    break;
                }
                let oldest = mine.min_by_key(|(_, r)| r.at).map(|(h, _)| *h);
                match oldest {
                    Some(h) => p.remove(&h),
                    None => break,
                };
            }
            p.insert(
                handle,
                Pending {
                    tenant,
                    sql: query.query,
                    at: Instant::now(),
                },
            );
        }
        let ticket = TicketStatementQuery {
            statement_handle: handle.to_be_bytes().to_vec().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        Ok(Response::new(
            info.with_endpoint(endpoint)
                .with_descriptor(request.into_inner())
                .with_total_records(-1),
        ))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let tenant = self.tenant(&request)?;
        let gone = || Status::not_found("unknown or expired statement handle");
        let handle = handle_of(&ticket.statement_handle).ok_or_else(gone)?;
        let pending = {
            let mut p = self.pending.lock();
            // Another tenant's handle is as unknown as a made-up one.
            match p.get(&handle) {
                Some(r) if r.tenant == tenant && r.at.elapsed() < RESULT_TTL => p.remove(&handle),
                _ => None,
            }
        }
        .ok_or_else(gone)?;
        // The answer arrives as Arrow IPC (the governed path every query takes) and is
        // decoded back into batches message by message for Flight's own framing.
        let answer = self
            .queries
            .run(&tenant, pending.sql, IpcEncoder::default())
            .await
            .map_err(status_of)?;
        let crate::queries::Answer { first, rest, guard } = answer;
        let chunks = futures::stream::once(async move { Ok(first) }).chain(
            futures::stream::unfold((rest, guard), |(mut rx, guard)| async move {
                let item = rx.recv().await?;
                Some((item, (rx, guard)))
            }),
        );
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
        Ok(Response::new(Box::pin(stream)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<T>(msg: T, token: &str) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }

    /// A statement handle answers only its own tenant, once.
    #[tokio::test]
    async fn results_belong_to_their_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            Config::from_toml("[tenants.a]\ntokens = [\"ta\"]\n[tenants.b]\ntokens = [\"tb\"]\n")
                .unwrap();
        let store = Arc::new(HotStore::open(&dir.path().join("s.redb"), usize::MAX).unwrap());
        let queries = Arc::new(QueryService::new(
            store.clone(),
            &config.query,
            tokio::runtime::Handle::current(),
            &weir_core::metrics::Registry::default(),
        ));
        let f = FlightSql::new(Arc::new(config), store, queries);
        let q = CommandStatementQuery {
            query: "SELECT 1 AS one".into(),
            transaction_id: None,
        };
        let bad = f
            .get_flight_info_statement(q.clone(), request(FlightDescriptor::default(), "nope"))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::Unauthenticated);
        let info = f
            .get_flight_info_statement(q.clone(), request(FlightDescriptor::default(), "ta"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.total_records, -1, "known only once it runs");
        // Another tenant's calls never evict this tenant's statement.
        for _ in 0..2 * MAX_PENDING {
            f.get_flight_info_statement(q.clone(), request(FlightDescriptor::default(), "tb"))
                .await
                .unwrap();
        }
        assert_eq!(f.pending.lock().len(), MAX_PENDING + 1);
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let any = arrow_flight::sql::Any::decode(ticket.ticket.clone()).unwrap();
        let handle: TicketStatementQuery = any.unpack().unwrap().unwrap();
        let other = f
            .do_get_statement(handle.clone(), request(ticket.clone(), "tb"))
            .await
            .err()
            .unwrap();
        assert_eq!(
            other.code(),
            tonic::Code::NotFound,
            "another tenant's handle"
        );
        let mine = f
            .do_get_statement(handle.clone(), request(ticket.clone(), "ta"))
            .await
            .unwrap()
            .into_inner();
        let data: Vec<_> = mine.collect().await;
        let batches = arrow_flight::utils::flight_data_to_batches(
            &data.into_iter().map(|d| d.unwrap()).collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
        let again = f
            .do_get_statement(handle, request(ticket, "ta"))
            .await
            .err()
            .unwrap();
        assert_eq!(again.code(), tonic::Code::NotFound, "fetched once");
        assert_eq!(super::handle_of(b"short"), None);
    }
}
